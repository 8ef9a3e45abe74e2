//! How a user-service call fails: one enum, each variant documenting its gRPC status.

use shopmesh::mesh::identity::Unproven;
use shopmesh::mesh::{status, validation::Violations};
use tonic::Status;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` violation per bad field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// NOT_FOUND: no user has this id.
    #[error("user {0} not found")]
    NotFound(String),
    /// UNAUTHENTICATED: a caller that proved no identity (no token, no mesh identity, where
    /// tokens are optional) asked for what needs one.
    #[error(transparent)]
    Unauthenticated(#[from] Unproven),
    /// PERMISSION_DENIED: a bearer-token caller acting on another user, or on what only the
    /// mesh may do; answered whether or not the user exists (AIP-211), so it reveals nothing.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// ALREADY_EXISTS: another user has this email.
    #[error("a user with email {0} already exists")]
    EmailTaken(String),
    /// FAILED_PRECONDITION: the request id was already used for a different CreateUser.
    #[error("request_id {0} was already used with different fields")]
    RequestIdReused(String),
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
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::PermissionDenied(_) => Status::permission_denied(err.to_string()),
            Error::EmailTaken(_) => Status::already_exists(err.to_string()),
            Error::RequestIdReused(ref id) => {
                status::failed_precondition("REQUEST_ID_REUSED", &format!("request_id/{id}"), err.to_string())
            }
            Error::Database(e) => status::database(&e),
        }
    }
}
