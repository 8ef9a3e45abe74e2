//! How a catalog call fails: one enum, each variant documenting its gRPC status.

use std::collections::HashMap;
use std::fmt::Write as _;

use shopmesh::mesh::identity::Unproven;
use shopmesh::mesh::status::{self, MAX_INVALID_MESSAGE};
use shopmesh::mesh::validation::{self, MAX_LISTED_VIOLATIONS, Violations};
use tonic::{Code, Status};
use tonic_types::{ErrorDetail, ErrorInfo, ResourceInfo, StatusExt as _};

use crate::domain::Sku;

/// The `resource_type` of the `google.rpc.ResourceInfo` details naming a product.
pub const RESOURCE_TYPE: &str = "shopmesh.catalog.v1.Product";

/// The `domain` of the `google.rpc.ErrorInfo` details this service sends.
const ERROR_DOMAIN: &str = "catalog.shopmesh";

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
    /// PERMISSION_DENIED: a bearer-token caller changing the catalog, which only the mesh may.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// NOT_FOUND: no product has these SKUs (one for GetProduct and UpdateProduct, each
    /// missing one for BatchGetProducts), with a `google.rpc.ResourceInfo` per SKU, up to
    /// [`MAX_LISTED_VIOLATIONS`] of them, so that the answer stays within gRPC metadata limits.
    #[error("{}", not_found_message(.0))]
    NotFound(Vec<Sku>),
    /// ALREADY_EXISTS: a product with this SKU exists (a repeated CreateProduct included).
    #[error("a product with sku {0} already exists")]
    SkuTaken(Sku),
    /// ABORTED: the product changed since the etag the caller sent was read; nothing was
    /// written. `google.rpc.ErrorInfo` reason `ETAG_MISMATCH`.
    #[error("product {sku} changed since etag {etag} was read; read it again and retry")]
    EtagMismatch {
        /// The product.
        sku: Sku,
        /// The stale etag the caller sent.
        etag: String,
    },
    /// UNAVAILABLE when the database cannot be reached in time, INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<Violations> for Error {
    fn from(v: Violations) -> Self {
        Self::Invalid(v)
    }
}

/// "product A not found", or "3 products not found: A, B, C", within [`MAX_INVALID_MESSAGE`]
/// bytes (a batch can name 100 SKUs of 64 characters).
fn not_found_message(missing: &[Sku]) -> String {
    let mut message = match missing {
        [one] => return format!("product {one} not found"),
        _ => format!("{} products not found:", missing.len()),
    };
    for (i, sku) in missing.iter().enumerate() {
        let _ = write!(message, "{} {sku}", if i == 0 { "" } else { "," });
    }
    validation::clip(message, MAX_INVALID_MESSAGE)
}

fn resource_info(sku: &Sku, description: &str) -> ErrorDetail {
    ResourceInfo::new(RESOURCE_TYPE, sku.as_str(), "", description).into()
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::Invalid(v) => status::invalid_argument(&v),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::NotFound(missing) => Status::with_error_details_vec(
                Code::NotFound,
                message,
                missing.iter().take(MAX_LISTED_VIOLATIONS).map(|sku| resource_info(sku, "not found")),
            ),
            Error::SkuTaken(sku) => Status::with_error_details_vec(
                Code::AlreadyExists,
                message,
                [resource_info(&sku, "already exists")],
            ),
            Error::EtagMismatch { sku, .. } => Status::with_error_details_vec(
                Code::Aborted,
                message,
                [ErrorDetail::from(ErrorInfo::new(
                    "ETAG_MISMATCH",
                    ERROR_DOMAIN,
                    HashMap::from([("sku".to_owned(), sku.to_string())]),
                ))],
            ),
            Error::Database(e) => status::database(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh::mesh::status::{MAX_METADATA_BYTES, metadata_bytes};

    fn sku(s: &str) -> Sku {
        Sku::parse(s).expect("sku")
    }

    #[test]
    fn not_found_names_each_missing_sku() {
        let status = Status::from(Error::NotFound(vec![sku("A"), sku("B.2")]));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "2 products not found: A, B.2");
        let named: Vec<String> = status
            .get_error_details_vec()
            .into_iter()
            .filter_map(|d| match d {
                ErrorDetail::ResourceInfo(r) => Some(r.resource_name),
                _ => None,
            })
            .collect();
        assert_eq!(named, ["A", "B.2"]);
        assert_eq!(Status::from(Error::NotFound(vec![sku("A")])).message(), "product A not found");
    }

    #[test]
    fn a_hundred_long_missing_skus_fit_in_metadata() {
        let missing: Vec<Sku> = (0..100).map(|i| sku(&format!("{i:0>64}"))).collect();
        let status = Status::from(Error::NotFound(missing));
        assert!(metadata_bytes(&status) <= MAX_METADATA_BYTES, "{} bytes", metadata_bytes(&status));
        assert!(status.message().starts_with("100 products not found:"), "{}", status.message());
        assert_eq!(status.get_error_details_vec().len(), MAX_LISTED_VIOLATIONS);
    }

    #[test]
    fn conflicts_say_why() {
        let status = Status::from(Error::EtagMismatch { sku: sku("A"), etag: "\"1\"".into() });
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.get_error_details().error_info().map(|i| i.reason.as_str()), Some("ETAG_MISMATCH"));
        let status = Status::from(Error::SkuTaken(sku("A")));
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.get_error_details().resource_info().map(|r| r.resource_name.as_str()), Some("A"));
    }
}
