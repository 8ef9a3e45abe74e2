//! The gRPC statuses every service answers with in the same way: invalid input with
//! `google.rpc.BadRequest` details, preconditions with `google.rpc.PreconditionFailure`, and
//! database or upstream failures mapped so a caller never sees UNKNOWN or an internal cause.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

use crate::mesh::validation::Violations;

/// INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` field violation.
pub fn invalid_argument(violations: &Violations) -> Status {
    let fields: Vec<FieldViolation> =
        violations.iter().map(|v| FieldViolation::new(&v.field, &v.description)).collect();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {violations}"),
        ErrorDetails::with_bad_request(fields),
    )
}

/// FAILED_PRECONDITION with one `google.rpc.PreconditionFailure` violation: `kind` is a
/// machine-readable reason (`USER_INACTIVE`), `subject` what it is about (`users/<id>`).
pub fn failed_precondition(kind: &str, subject: &str, description: String) -> Status {
    Status::with_error_details(
        Code::FailedPrecondition,
        description.clone(),
        ErrorDetails::with_precondition_failure(vec![PreconditionViolation::new(kind, subject, description)]),
    )
}

/// The status for a database failure. A pool that cannot hand out a connection in time, or a
/// database that cannot be reached, is UNAVAILABLE (the caller may retry); anything else is
/// INTERNAL. The cause is logged here and never sent to the caller.
pub fn database(err: &sqlx::Error) -> Status {
    if crate::mesh::deadline::expired() {
        tracing::debug!(error = %err, "database work cut short by the request's deadline");
        return Status::deadline_exceeded("deadline exceeded during database work");
    }
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %err, "database unavailable");
            Status::unavailable("database unavailable, retry later")
        }
        _ => {
            tracing::error!(error = %err, "database error");
            Status::internal("internal error")
        }
    }
}

/// The status to answer with when a call to another service failed. Statuses that mean "try
/// again" or "out of time" keep their code so the caller can act on them; anything else means
/// this service misused its dependency or the dependency broke, which is INTERNAL here.
pub fn upstream(service: &str, status: &Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            tracing::warn!(%service, code = ?status.code(), message = status.message(), "dependency failed");
            let code = if status.code() == Code::Cancelled { Code::Unavailable } else { status.code() };
            Status::new(code, format!("{service}: {}", status.message()))
        }
        _ => {
            tracing::error!(%service, code = ?status.code(), message = status.message(), "unexpected dependency error");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let mut v = Violations::new();
        v.add("email", "is required");
        v.add("display_name", "is too long");
        let status = invalid_argument(&v);
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .expect("BadRequest detail")
            .field_violations
            .iter()
            .map(|f| f.field.clone())
            .collect();
        assert_eq!(fields, ["email", "display_name"]);
    }

    #[test]
    fn database_errors_are_never_unknown() {
        assert_eq!(database(&sqlx::Error::PoolTimedOut).code(), Code::Unavailable);
        let internal = database(&sqlx::Error::RowNotFound);
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("row"), "cause leaked: {}", internal.message());
    }

    #[test]
    fn upstream_keeps_retryable_codes_only() {
        assert_eq!(upstream("user", &Status::unavailable("x")).code(), Code::Unavailable);
        assert_eq!(upstream("user", &Status::cancelled("x")).code(), Code::Unavailable);
        assert_eq!(upstream("user", &Status::deadline_exceeded("x")).code(), Code::DeadlineExceeded);
        assert_eq!(upstream("user", &Status::invalid_argument("x")).code(), Code::Internal);
        assert_eq!(upstream("user", &Status::unknown("x")).code(), Code::Internal);
    }
}
