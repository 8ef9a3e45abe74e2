//! How a payment-service call fails: one enum, each variant documenting its gRPC status.

use shopmesh::mesh::identity::Unproven;
use shopmesh::mesh::{status, validation::Violations};
use tonic::Status;

use crate::domain::State;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` violation per bad field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// UNAUTHENTICATED: a caller that proved no identity (no token, no mesh identity, where
    /// tokens are optional) asked for what needs one.
    #[error(transparent)]
    Unauthenticated(#[from] Unproven),
    /// PERMISSION_DENIED: a bearer-token caller; payments are moved by the order service only.
    #[error("permission denied: the payment service serves the mesh, not bearer-token callers")]
    PermissionDenied,
    /// NOT_FOUND: no payment has this id.
    #[error("payment {0} not found")]
    NotFound(String),
    /// FAILED_PRECONDITION: the request id was already used for a different request.
    #[error("request_id {0} was already used with a different request")]
    RequestIdReused(String),
    /// FAILED_PRECONDITION: the payment was already refunded under another request id.
    #[error("payment {0} is already refunded")]
    AlreadyRefunded(String),
    /// FAILED_PRECONDITION: only a SUCCEEDED payment can be refunded.
    #[error("payment {id} is {} and cannot be refunded", state.as_str())]
    NotRefundable {
        /// The payment.
        id: String,
        /// Its state.
        state: State,
    },
    /// UNAVAILABLE: another call is refunding the payment and did not finish within this
    /// call's deadline; retrying (with any key) waits for it again, or finishes it.
    #[error("payment {0} is being refunded by another call; retry")]
    RefundInFlight(String),
    /// ABORTED: a concurrent change got in the way; retrying the same request is safe.
    #[error("{0}")]
    Conflict(String),
    /// UNAVAILABLE: the payment's PROCESSING row was gone when its outcome came back, lost with
    /// the database's last commits (a crash before that commit reached the disk, a failover to
    /// a standby that was behind, a restore). Retrying the same request writes it again and
    /// gets the processor's answer under the same key, so it is charged at most once.
    #[error(
        "payment {0} was lost by the database before its outcome was stored; retry with the same request_id"
    )]
    Lost(String),
    /// UNAVAILABLE: the processor (its ledger) could not be reached; nothing is known to have
    /// been charged, and retrying the same request is safe.
    #[error("payment processor: {0}")]
    Processor(sqlx::Error),
    /// UNAVAILABLE when the database cannot be reached in time, INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<Violations> for Error {
    fn from(v: Violations) -> Self {
        Self::Invalid(v)
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Invalid(v) => status::invalid_argument(&v),
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::PermissionDenied => Status::permission_denied(err.to_string()),
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::RequestIdReused(ref id) => {
                status::failed_precondition("REQUEST_ID_REUSED", &format!("request_id/{id}"), err.to_string())
            }
            Error::AlreadyRefunded(ref id) => {
                status::failed_precondition("ALREADY_REFUNDED", &format!("payments/{id}"), err.to_string())
            }
            Error::NotRefundable { ref id, .. } => {
                status::failed_precondition("NOT_REFUNDABLE", &format!("payments/{id}"), err.to_string())
            }
            Error::RefundInFlight(_) => Status::unavailable(err.to_string()),
            Error::Lost(ref id) => {
                tracing::warn!(payment_id = %id, "a PROCESSING payment vanished from the database before its outcome was stored");
                Status::unavailable(err.to_string())
            }
            Error::Conflict(_) => Status::aborted(err.to_string()),
            Error::Processor(ref cause) => {
                tracing::warn!(error = %cause, "payment processor unavailable");
                Status::unavailable("payment processor unavailable, retry with the same request_id")
            }
            Error::Database(e) => status::database(&e),
        }
    }
}
