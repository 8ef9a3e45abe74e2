//! The gRPC statuses every service answers with in the same way: invalid input with
//! `google.rpc.BadRequest` details, preconditions with `google.rpc.PreconditionFailure`, and
//! database or upstream failures mapped so a caller never sees UNKNOWN or an internal cause.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, PreconditionViolation, StatusExt as _};

use crate::mesh::validation::{self, Violations};

/// The most bytes of HTTP/2 metadata (name + value + 32 per entry, as SETTINGS_MAX_HEADER_LIST_SIZE
/// counts) an answer to bad input may take. gRPC's C core (the Python, C++, Ruby… clients)
/// drops trailers over 8 KiB at random and over 16 KiB always; tonic's client (hyper) refuses
/// over 16 KiB. A rejection the client cannot read is no rejection.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// Longest `grpc-message` of an INVALID_ARGUMENT, in bytes before percent-encoding (which can
/// triple it); the `google.rpc.BadRequest` details carry the whole list.
pub const MAX_INVALID_MESSAGE: usize = 256;

/// INVALID_ARGUMENT listing every bad field (up to [`validation::MAX_LISTED_VIOLATIONS`]) as a
/// `google.rpc.BadRequest` field violation, within [`MAX_METADATA_BYTES`].
pub fn invalid_argument(violations: &Violations) -> Status {
    let fields: Vec<FieldViolation> =
        violations.iter().map(|v| FieldViolation::new(&v.field, &v.description)).collect();
    let mut message = format!("invalid request: {violations}");
    if message.len() > MAX_INVALID_MESSAGE {
        // Cut, but keep the count where the cut cannot reach it.
        let problems = violations.iter().count() + violations.omitted();
        message = validation::clip(
            format!("invalid request ({problems} problems, see the field violations): {violations}"),
            MAX_INVALID_MESSAGE,
        );
    }
    Status::with_error_details(Code::InvalidArgument, message, ErrorDetails::with_bad_request(fields))
}

/// The HTTP/2 metadata `status` takes on the wire, counted as SETTINGS_MAX_HEADER_LIST_SIZE
/// counts it (RFC 9113 §6.5.2: name + value + 32 per field).
pub fn metadata_bytes(status: &Status) -> usize {
    let mut headers = http::HeaderMap::new();
    // A status whose metadata cannot be encoded at all goes out as a bare INTERNAL instead.
    if status.add_header(&mut headers).is_err() {
        return 0;
    }
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
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

/// The status for a database failure. A pool that cannot hand out a connection in time, a
/// database that cannot be reached, or one that is failing over (see [`database_unavailable`])
/// is UNAVAILABLE: the caller may retry, a call with side effects with the same `request_id`,
/// which lands on the same record whether or not the lost attempt committed. Anything else is
/// INTERNAL. The cause is logged here and never sent to the caller.
pub fn database(err: &sqlx::Error) -> Status {
    if crate::mesh::request_deadline::expired() {
        tracing::debug!(error = %err, "database work cut short by the request's deadline");
        return Status::deadline_exceeded("deadline exceeded during database work");
    }
    if database_unavailable(err) {
        tracing::warn!(error = %err, "database unavailable");
        return Status::unavailable(
            "database unavailable (restarting or failing over); retry later, a call with side effects \
             with the same request_id",
        );
    }
    tracing::error!(error = %err, "database error");
    Status::internal("internal error")
}

/// Whether `err` means the database cannot serve this call now but may on a retry, as while a
/// primary fails over: the pool out of connections in time or closed; the connection lost
/// (I/O); SQLSTATE class 08 (connection exception, also what PgBouncer answers when it cannot
/// reach its server); class 57 (operator intervention: `57P01` admin shutdown, which a
/// promotion or a fast stop sends every backend, `57P02` crash shutdown, `57P03` cannot connect
/// now, while the server starts or recovers); `53300` too many connections; and `25006` a write
/// on a read-only server: the old primary, restarted as a standby, or a standby the name still
/// points to. A pooled connection the server dropped is replaced by the pool: it is not
/// pinged before every acquire, so its next statement fails with one of these.
pub fn database_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57") || code == "53300" || code == "25006"
        }),
        _ => false,
    }
}

/// The status to answer with when a call to another service failed. Statuses that mean "try
/// again" or "out of time" keep their code so the caller can act on them, with a message that
/// names the dependency and nothing of the transport (addresses, OS errors: the cause is logged
/// here, inside the call's span, so it reaches the log and the trace). A dependency refusing
/// this service's credentials (UNAUTHENTICATED, PERMISSION_DENIED) is the mesh's configuration,
/// not the caller's doing: UNAVAILABLE, with an error log naming the settings to check. Anything
/// else means this service misused its dependency or the dependency broke: INTERNAL here.
pub fn upstream(service: &str, status: &Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            tracing::warn!(%service, code = ?status.code(), message = status.message(), "dependency failed");
            let code = if status.code() == Code::Cancelled { Code::Unavailable } else { status.code() };
            crate::mesh::grpc::respond::Refusal::DependencyFailed { service: service.to_owned(), code }
                .status()
        }
        Code::Unauthenticated | Code::PermissionDenied => {
            // The mesh's own configuration, never the caller's doing: say which settings.
            tracing::error!(
                %service,
                code = ?status.code(),
                message = status.message(),
                "the dependency refused this service's calls: check this service's mesh identity \
                 (--tls-cert, --tls-key, --tls-ca; the chart's tls.*) and the dependency's \
                 authorization policy (--authz-policy; the chart's authz.policy) for a rule that lets \
                 this service call it"
            );
            crate::mesh::grpc::respond::Refusal::DependencyFailed {
                service: service.to_owned(),
                code: Code::Unavailable,
            }
            .status()
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
    fn invalid_argument_fits_every_clients_metadata_limit() {
        // The worst a request can cause: more violations than are listed, every field path and
        // description as long as kept, all of it non-ASCII (percent-encoding triples it).
        let mut v = Violations::new();
        let long = "\u{10FFFF}".repeat(1000);
        for _ in 0..100 {
            v.add(&long, &long);
        }
        let status = invalid_argument(&v);
        assert!(metadata_bytes(&status) <= MAX_METADATA_BYTES, "{} bytes", metadata_bytes(&status));
        assert!(status.message().len() <= MAX_INVALID_MESSAGE);
        let details = status.get_error_details();
        let listed = details.bad_request().expect("BadRequest detail").field_violations.len();
        assert_eq!(listed, validation::MAX_LISTED_VIOLATIONS);
        assert!(status.message().starts_with("invalid request (100 problems"), "{}", status.message());
    }

    #[test]
    fn database_errors_are_never_unknown() {
        assert_eq!(database(&sqlx::Error::PoolTimedOut).code(), Code::Unavailable);
        let internal = database(&sqlx::Error::RowNotFound);
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("row"), "cause leaked: {}", internal.message());
    }

    /// A database error as PostgreSQL (or PgBouncer) reports it: its SQLSTATE and message.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "from the server"
        }

        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// What a failover throws at a call: each is UNAVAILABLE, retry-safe, never INTERNAL.
    #[test]
    fn failover_errors_are_unavailable() {
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let failover = [
            sqlx::Error::Io(lost),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            // terminating connection due to administrator command (promotion, fast stop)
            sqlx::Error::Database(Box::new(Sqlstate("57P01"))),
            // terminating connection because of crash of another server process
            sqlx::Error::Database(Box::new(Sqlstate("57P02"))),
            // the database system is starting up / in recovery mode
            sqlx::Error::Database(Box::new(Sqlstate("57P03"))),
            // connection failure; PgBouncer's "server conn crashed?", "query_wait_timeout"
            sqlx::Error::Database(Box::new(Sqlstate("08006"))),
            sqlx::Error::Database(Box::new(Sqlstate("08P01"))),
            // cannot execute INSERT in a read-only transaction (the old primary, now a standby)
            sqlx::Error::Database(Box::new(Sqlstate("25006"))),
            // sorry, too many clients already
            sqlx::Error::Database(Box::new(Sqlstate("53300"))),
        ];
        for err in &failover {
            let status = database(err);
            assert_eq!(status.code(), Code::Unavailable, "{err}");
            assert!(status.message().contains("request_id"), "{}", status.message());
            assert!(!status.message().contains("SQLSTATE"), "cause leaked: {}", status.message());
        }
        // A bug, not a failover: a constraint, a syntax error, a missing table stay INTERNAL.
        for code in ["23505", "42601", "42P01", "22P02"] {
            let err = sqlx::Error::Database(Box::new(Sqlstate(code)));
            assert_eq!(database(&err).code(), Code::Internal, "{code}");
        }
    }

    #[test]
    fn upstream_keeps_retryable_codes_only() {
        assert_eq!(upstream("user", &Status::unavailable("x")).code(), Code::Unavailable);
        assert_eq!(upstream("user", &Status::cancelled("x")).code(), Code::Unavailable);
        assert_eq!(upstream("user", &Status::deadline_exceeded("x")).code(), Code::DeadlineExceeded);
        assert_eq!(upstream("user", &Status::invalid_argument("x")).code(), Code::Internal);
        assert_eq!(upstream("user", &Status::unknown("x")).code(), Code::Internal);
    }

    #[test]
    fn a_dependency_refusing_this_services_credentials_is_unavailable_never_internal() {
        for refused in [Status::unauthenticated("no token"), Status::permission_denied("not allowed")] {
            let answered = upstream("user", &refused);
            assert_eq!(
                answered.code(),
                Code::Unavailable,
                "{refused:?}: a configuration problem is not INTERNAL"
            );
            assert!(answered.message().starts_with("user:"), "names the dependency: {answered:?}");
            assert!(!answered.message().contains("not allowed"), "tells nothing of the dependency's words");
        }
    }
}
