//! How an order-service call fails: one enum, each variant documenting its gRPC status.

use shopmesh::mesh::identity::Unproven;
use shopmesh::mesh::{status, validation::Violations};
use tonic::{Code, Status};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// INVALID_ARGUMENT, with a `google.rpc.BadRequest` violation per bad field.
    #[error("invalid request: {0}")]
    Invalid(Violations),
    /// NOT_FOUND: no order has this id.
    #[error("order {0} not found")]
    NotFound(String),
    /// UNAUTHENTICATED: a caller that proved no identity (no token, no mesh identity, where
    /// tokens are optional) asked for what needs one.
    #[error(transparent)]
    Unauthenticated(#[from] Unproven),
    /// PERMISSION_DENIED: a bearer-token caller acting on another user's orders; answered
    /// whether or not the order exists (AIP-211), so it reveals nothing.
    #[error("permission denied: a caller may access only its own orders")]
    PermissionDenied,
    /// NOT_FOUND: the ordering user does not exist.
    #[error("user {0} not found")]
    UserNotFound(String),
    /// FAILED_PRECONDITION: the ordering user is deactivated.
    #[error("user {0} is inactive and cannot order")]
    UserInactive(String),
    /// FAILED_PRECONDITION: the request id was already used for a different CreateOrder.
    #[error("request_id {0} was already used with different fields")]
    RequestIdReused(String),
    /// FAILED_PRECONDITION: the order is already cancelled (by another request id).
    #[error("order {0} is already cancelled")]
    AlreadyCancelled(String),
    /// UNAVAILABLE: the charge is still being processed; retrying with the same request id
    /// returns the settled order.
    #[error("the payment of order {0} is still processing; retry with the same request_id")]
    PaymentInFlight(String),
    /// FAILED_PRECONDITION `PRODUCT_UNAVAILABLE`: the catalog has no such product, or it is
    /// inactive. Nothing is written.
    #[error("product {0} is not in the catalog or not for sale")]
    ProductUnavailable(String),
    /// FAILED_PRECONDITION `PRICE_CHANGED`: the caller expected another price than the
    /// catalog's (ask the catalog, or send no price). Nothing is written.
    #[error(
        "the price of {sku} is {actual_amount} {actual_currency}, not the {expected_amount} {expected_currency} expected"
    )]
    PriceChanged {
        /// The product.
        sku: String,
        /// What the caller expected.
        expected_amount: i64,
        /// Its currency.
        expected_currency: String,
        /// The catalog's price.
        actual_amount: i64,
        /// Its currency.
        actual_currency: String,
    },
    /// FAILED_PRECONDITION `CURRENCY_MISMATCH`: the catalog prices this product in another
    /// currency than the order's first line; an order has one currency.
    #[error("product {0} is priced in another currency than the order's first line")]
    CurrencyMismatch(String),
    /// The catalog service failed: as for the user service. Nothing is written.
    #[error("catalog service: {0}")]
    Catalog(Status),
    /// The user service failed: UNAVAILABLE or DEADLINE_EXCEEDED pass through, the rest INTERNAL.
    #[error("user service: {0}")]
    User(Status),
    /// The payment service failed: as for the user service. The order stays as it was
    /// (PENDING_PAYMENT on create), so retrying with the same request id is safe.
    #[error("payment service: {0}")]
    Payment(Status),
    /// ABORTED: a concurrent change got in the way; retrying the same request is safe.
    #[error("{0}")]
    Conflict(String),
    /// UNAVAILABLE when the database cannot be reached in time, INTERNAL otherwise.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<crate::domain::Unpriced> for Error {
    fn from(unpriced: crate::domain::Unpriced) -> Self {
        use crate::domain::Unpriced;
        match unpriced {
            Unpriced::Unavailable(sku) => Self::ProductUnavailable(sku),
            Unpriced::PriceChanged { sku, expected, actual } => Self::PriceChanged {
                sku,
                expected_amount: expected.0,
                expected_currency: expected.1,
                actual_amount: actual.0,
                actual_currency: actual.1,
            },
            Unpriced::CurrencyMismatch(sku) => Self::CurrencyMismatch(sku),
            Unpriced::Invalid(v) => Self::Invalid(v),
        }
    }
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
            Error::NotFound(_) | Error::UserNotFound(_) => Status::not_found(err.to_string()),
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::PermissionDenied => Status::permission_denied(err.to_string()),
            Error::UserInactive(ref id) => {
                status::failed_precondition("USER_INACTIVE", &format!("users/{id}"), err.to_string())
            }
            Error::RequestIdReused(ref id) => {
                status::failed_precondition("REQUEST_ID_REUSED", &format!("request_id/{id}"), err.to_string())
            }
            Error::AlreadyCancelled(ref id) => {
                status::failed_precondition("ALREADY_CANCELLED", &format!("orders/{id}"), err.to_string())
            }
            Error::ProductUnavailable(ref sku) => status::failed_precondition(
                "PRODUCT_UNAVAILABLE",
                &format!("products/{sku}"),
                err.to_string(),
            ),
            Error::PriceChanged { ref sku, .. } => {
                status::failed_precondition("PRICE_CHANGED", &format!("products/{sku}"), err.to_string())
            }
            Error::CurrencyMismatch(ref sku) => {
                status::failed_precondition("CURRENCY_MISMATCH", &format!("products/{sku}"), err.to_string())
            }
            Error::Catalog(s) => status::upstream(crate::upstream::CATALOG.name, &s),
            Error::PaymentInFlight(_) => Status::unavailable(err.to_string()),
            Error::User(s) => status::upstream(crate::upstream::USER.name, &s),
            Error::Payment(s) => {
                let mapped = status::upstream(crate::upstream::PAYMENT.name, &s);
                if matches!(mapped.code(), Code::Unavailable | Code::DeadlineExceeded) {
                    Status::new(
                        mapped.code(),
                        format!("{}; the order is kept, retry with the same request_id", mapped.message()),
                    )
                } else {
                    mapped
                }
            }
            Error::Conflict(_) => Status::aborted(err.to_string()),
            Error::Database(e) => status::database(&e),
        }
    }
}
