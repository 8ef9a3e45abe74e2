//! The order service's calls to its dependencies, declared once as data ([`UPSTREAMS`]: the
//! mesh finds them in its table, the binary makes their flags), through the generated clients
//! over the mesh's client stack (which gives each call its deadline and retries); answers are
//! reduced to what the order flow needs. Catalog prices are kept in an in-process cache for a short,
//! configured time, so a hit costs no network hop.

use std::collections::HashMap;
use std::time::Duration;

use shopmesh::api::catalog::v1::{BatchGetProductsRequest, catalog_service_client::CatalogServiceClient};
use shopmesh::api::common::v1::Money;
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, PaymentState, RefundRequest,
    payment_service_client::PaymentServiceClient,
};
use shopmesh::api::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::Error;
use shopmesh::mesh::client::Channel;
use shopmesh::mesh::service::Mesh;
use shopmesh::mesh::upstream::Upstream as Callee;
use tonic::{Code, Status};

use tonic_types::{ErrorDetail, StatusExt as _};

use crate::domain::{CatalogPrice, Order};

/// The user service, which says whether a user may order.
pub(crate) const USER: Callee = Callee {
    name: "user",
    grpc_service: shopmesh::api::user::v1::user_service_server::SERVICE_NAME,
    default_url: "http://127.0.0.1:50051",
    role: "says who may order",
};
/// The catalog service, which prices every order.
pub(crate) const CATALOG: Callee = Callee {
    name: "catalog",
    grpc_service: shopmesh::api::catalog::v1::catalog_service_server::SERVICE_NAME,
    default_url: "http://127.0.0.1:50054",
    role: "prices every order",
};
/// The payment service, which charges and refunds orders.
pub(crate) const PAYMENT: Callee = Callee {
    name: "payment",
    grpc_service: shopmesh::api::payment::v1::payment_service_server::SERVICE_NAME,
    default_url: "http://127.0.0.1:50053",
    role: "charges and refunds orders",
};

/// The services the order service calls.
pub const UPSTREAMS: &[Callee] = &[USER, CATALOG, PAYMENT];

/// Most products a BatchGetProducts may ask for.
const BATCH_LIMIT: usize = 100;

/// Most products the price cache holds.
const CACHE_CAPACITY: u64 = 100_000;

/// What the catalog answered for a set of SKUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prices {
    /// Every SKU, priced.
    Found(HashMap<String, CatalogPrice>),
    /// The catalog has no product with this SKU.
    Missing(String),
}

/// What the user service says about an orderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCheck {
    /// Exists and may order.
    Active,
    /// Exists but is deactivated.
    Inactive,
    /// No such user.
    Missing,
}

/// What the payment service answered to a Charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// Captured, by this payment.
    Succeeded(String),
    /// Declined, by this payment, for this reason.
    Declined(String, String),
    /// Captured by this payment, then refunded (on the payment service itself): the money is
    /// back with the user, so the order is not paid.
    Refunded(String),
    /// Recorded but not decided yet (another Charge with this key is in flight).
    Processing,
}

/// What the payment service answered to a Refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refunded {
    /// Refunded by this request (or a repeat of it).
    Now,
    /// Already refunded under another key (on the payment service itself): nothing to do.
    Before,
}

/// Clients of the user, catalog and payment services.
#[derive(Clone)]
pub struct Upstream {
    users: UserServiceClient<Channel>,
    catalog: CatalogServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    /// Prices by SKU, each kept for the cache's time to live; `None` when it is zero.
    prices: Option<mini_moka::sync::Cache<String, CatalogPrice>>,
    /// Ids of users found active, each kept for `--user-check-ttl`; `None` when it is zero.
    active_users: Option<mini_moka::sync::Cache<String, ()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("cached_prices", &self.prices.as_ref().map(|c| c.entry_count()))
            .field("cached_active_users", &self.active_users.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

impl Upstream {
    /// Clients over the given channels; catalog prices are reused for `price_ttl`, and a user
    /// found active for `user_ttl` (zero: asked on every order).
    pub fn new(
        users: Channel,
        catalog: Channel,
        payments: Channel,
        price_ttl: Duration,
        user_ttl: Duration,
    ) -> Self {
        let prices = (!price_ttl.is_zero()).then(|| {
            mini_moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(price_ttl).build()
        });
        let active_users = (!user_ttl.is_zero()).then(|| {
            mini_moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(user_ttl).build()
        });
        Self {
            users: UserServiceClient::new(users),
            catalog: CatalogServiceClient::new(catalog),
            payments: PaymentServiceClient::new(payments),
            prices,
            active_users,
        }
    }

    /// Clients of the services `mesh`'s table names, called as service `own`; catalog prices
    /// are reused for `price_ttl`, and a user found active for `user_ttl`.
    pub async fn connect(
        mesh: &Mesh,
        own: &str,
        price_ttl: Duration,
        user_ttl: Duration,
    ) -> Result<Self, Error> {
        Ok(Self::new(
            mesh.upstream_channel(own, &USER).await?,
            mesh.upstream_channel(own, &CATALOG).await?,
            mesh.upstream_channel(own, &PAYMENT).await?,
            price_ttl,
            user_ttl,
        ))
    }

    /// The catalog's price of every SKU in `skus` (at most one order's lines): from the cache
    /// where it has them, the rest in one BatchGetProducts.
    pub async fn prices(&self, skus: &[&str]) -> Result<Prices, Status> {
        let mut found = HashMap::with_capacity(skus.len());
        let mut asked = Vec::new();
        for sku in skus {
            match self.prices.as_ref().and_then(|cache| cache.get(&(*sku).to_owned())) {
                Some(price) => {
                    found.insert((*sku).to_owned(), price);
                }
                None => asked.push((*sku).to_owned()),
            }
        }
        for chunk in asked.chunks(BATCH_LIMIT) {
            let request = BatchGetProductsRequest { skus: chunk.to_vec() };
            let products = match self.catalog.clone().batch_get_products(request).await {
                Ok(reply) => reply.into_inner().products,
                Err(status) if status.code() == Code::NotFound => {
                    return Ok(Prices::Missing(missing_sku(&status).unwrap_or_else(|| chunk[0].clone())));
                }
                Err(status) => return Err(status),
            };
            for product in products {
                let Some(money) = product.unit_price else { continue };
                let price = CatalogPrice {
                    amount_minor: money.amount_minor,
                    currency_code: money.currency_code,
                    active: product.active,
                };
                if let Some(cache) = &self.prices {
                    cache.insert(product.sku.clone(), price.clone());
                }
                found.insert(product.sku, price);
            }
        }
        Ok(Prices::Found(found))
    }

    /// Whether `user_id` may order.
    pub async fn check_user(&self, user_id: &str) -> Result<UserCheck, Status> {
        let id = user_id.to_owned();
        if self.active_users.as_ref().is_some_and(|c| c.contains_key(&id)) {
            return Ok(UserCheck::Active);
        }
        match self.users.clone().get_user(GetUserRequest { id: id.clone() }).await {
            Ok(reply) if reply.get_ref().active => {
                if let Some(cache) = &self.active_users {
                    cache.insert(id, ());
                }
                Ok(UserCheck::Active)
            }
            Ok(_) => Ok(UserCheck::Inactive),
            Err(status) if status.code() == Code::NotFound => Ok(UserCheck::Missing),
            Err(status) => Err(status),
        }
    }

    /// Charges `order`'s total with the order id as the idempotency key.
    pub async fn charge(&self, order: &Order) -> Result<Charged, Status> {
        let request = ChargeRequest {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            amount: Some(Money {
                currency_code: order.currency_code.clone(),
                amount_minor: order.total_minor,
            }),
            request_id: order.id.clone(),
        };
        let payment = self.payments.clone().charge(request).await?.into_inner();
        Ok(match payment.state() {
            PaymentState::Succeeded => Charged::Succeeded(payment.id),
            PaymentState::Refunded => Charged::Refunded(payment.id),
            PaymentState::Declined => Charged::Declined(payment.id, payment.decline_reason),
            PaymentState::Processing | PaymentState::Unspecified => Charged::Processing,
        })
    }

    /// Refunds `payment_id` with the order id as the idempotency key, so every CancelOrder of
    /// one order lands on the same refund. A payment refunded before under another key (on the
    /// payment service itself) is [`Refunded::Before`]: it is not refunded twice.
    pub async fn refund(&self, order_id: &str, payment_id: &str) -> Result<Refunded, Status> {
        let request = RefundRequest { payment_id: payment_id.to_owned(), request_id: order_id.to_owned() };
        match self.payments.clone().refund(request).await {
            Ok(_) => Ok(Refunded::Now),
            Err(status) if precondition(&status) == Some("ALREADY_REFUNDED") => Ok(Refunded::Before),
            Err(status) => Err(status),
        }
    }

    /// The state of payment `id`; `None` if the payment service has no such payment.
    pub async fn payment_state(&self, id: &str) -> Result<Option<PaymentState>, Status> {
        match self.payments.clone().get_payment(GetPaymentRequest { id: id.to_owned() }).await {
            Ok(reply) => Ok(Some(reply.get_ref().state())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }
}

/// The kind of the first precondition failure in `status`'s details, if it is one.
fn precondition(status: &Status) -> Option<&'static str> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let details = status.get_error_details();
    let kind = details.precondition_failure()?.violations.first()?.r#type.as_str();
    // Only the kinds the order flow acts on, so the answer borrows nothing from `status`.
    ["ALREADY_REFUNDED"].into_iter().find(|k| *k == kind)
}

/// The first SKU a NOT_FOUND from the catalog names in its `google.rpc.ResourceInfo` details.
fn missing_sku(status: &Status) -> Option<String> {
    status.get_error_details_vec().into_iter().find_map(|detail| match detail {
        ErrorDetail::ResourceInfo(info) => Some(info.resource_name),
        _ => None,
    })
}
