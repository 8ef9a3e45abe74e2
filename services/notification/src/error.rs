//! How a notification-service call fails: one enum, each variant documenting its gRPC status.

use shopmesh::mesh::{status, validation::Violations};
use tonic::Status;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` violation per bad field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// NOT_FOUND: no notification has this id.
    #[error("notification {0} not found")]
    NotFound(String),
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
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::Database(e) => status::database(&e),
        }
    }
}
