//! How an inventory-service call fails: one enum, each variant documenting its gRPC status.

use shopmesh::mesh::identity::Unproven;
use shopmesh::mesh::{status, validation::Violations};
use tonic::Status;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` violation per bad field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// UNAUTHENTICATED: a caller that proved no identity asked for what needs one.
    #[error(transparent)]
    Unauthenticated(#[from] Unproven),
    /// PERMISSION_DENIED: a bearer-token caller (an end user) setting stock.
    #[error("permission denied: stock is set by the mesh's administrators, not bearer-token callers")]
    PermissionDenied,
    /// FAILED_PRECONDITION `PRODUCT_UNKNOWN` (a `google.rpc.PreconditionFailure` on
    /// `products/<sku>`): SetStock of a SKU the catalog does not have. A state of the catalog,
    /// not a malformed request: the same call succeeds once the product is created.
    #[error("the catalog has no product with SKU {0}: create it there before setting its stock")]
    UnknownProduct(String),
    /// The catalog could not answer: UNAVAILABLE (or DEADLINE_EXCEEDED), as the mesh maps a
    /// dependency's failure; the caller may retry.
    #[error("catalog: {0}")]
    Catalog(tonic::Status),
    /// NOT_FOUND: the SKU has no stock record.
    #[error("no stock record for SKU {0}")]
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
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::PermissionDenied => Status::permission_denied(err.to_string()),
            Error::NotFound(_) => Status::not_found(err.to_string()),
            Error::UnknownProduct(ref sku) => {
                status::failed_precondition("PRODUCT_UNKNOWN", &format!("products/{sku}"), err.to_string())
            }
            Error::Catalog(s) => status::upstream(crate::catalog::CATALOG.name, &s),
            Error::Database(e) => status::database(&e),
        }
    }
}
