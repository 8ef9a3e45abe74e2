//! What a run creates before measuring: its own users (so it needs no data in the mesh), the
//! products it orders (the order service prices every line from the catalog) and, when it reads
//! orders, its own orders.

use std::time::Duration;

use super::Channel;
use futures::StreamExt as _;
use shopmesh::api::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh::api::catalog::v1::{CreateProductRequest, GetProductRequest, Product as CatalogProduct};
use shopmesh::api::common::v1::Money;
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use tonic::{Code, Request, Status};

use super::scenario::{Caller, Product, code_name, code_of};

/// Products the bench orders: `BENCH-1` to `BENCH-10`.
pub const PRODUCTS: u32 = 10;

/// Calls made at once while setting up.
const PARALLEL: usize = 16;

/// Sends per user when the user service answers UNAVAILABLE or times out (with the same
/// request id, so a retry never makes a second user).
const ATTEMPTS: u32 = 3;

/// Creates `n` users named after `run_id` and returns their ids, or the first failure when not
/// one could be created. Some failing is only reported: the run goes on with the others.
pub async fn users(
    clients: &[UserServiceClient<Channel>],
    n: u32,
    run_id: &str,
    timeout: Duration,
) -> Result<Vec<String>, Status> {
    let results: Vec<Result<String, Status>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut client = clients[usize::try_from(i).unwrap_or(0) % clients.len()].clone();
            let message = CreateUserRequest {
                email: format!("bench-{run_id}-{i}@example.com"),
                display_name: format!("Bench {i}"),
                request_id: format!("bench-{run_id}-user-{i}"),
            };
            async move {
                let mut attempt = 1;
                loop {
                    let mut request = Request::new(message.clone());
                    request.set_timeout(timeout);
                    match client.create_user(request).await {
                        Ok(user) => return Ok(user.into_inner().id),
                        Err(status)
                            if attempt < ATTEMPTS
                                && matches!(code_of(&status), Code::Unavailable | Code::DeadlineExceeded) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => return Err(status),
                    }
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let mut first_error = None;
    let mut ids = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(id) => ids.push(id),
            Err(status) => {
                first_error.get_or_insert(status);
            }
        }
    }
    match first_error {
        Some(status) if ids.is_empty() => Err(status),
        Some(status) => {
            eprintln!(
                "warning: {failed} of {n} users could not be created ({}: {}); going on with {}",
                code_name(code_of(&status)),
                status.message(),
                ids.len()
            );
            Ok(ids)
        }
        None => Ok(ids),
    }
}

/// Creates `n` orders through `caller` (so each is in the record file like any CreateOrder)
/// and returns their ids, or the first failure's code when not one could be created.
pub async fn orders(caller: &Caller, n: u32) -> Result<Vec<String>, &'static str> {
    let outcomes: Vec<_> = futures::stream::iter(0..u64::from(n))
        .map(|i| caller.create_order(i))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failed: Vec<Code> = outcomes.iter().filter(|(_, id)| id.is_none()).map(|(o, _)| o.code).collect();
    let ids: Vec<String> = outcomes.into_iter().filter_map(|(_, id)| id).collect();
    match failed.first() {
        Some(code) if ids.is_empty() => Err(code_name(*code)),
        Some(code) => {
            eprintln!(
                "warning: {} of {n} orders could not be created (first: {}); going on with {}",
                failed.len(),
                code_name(*code),
                ids.len()
            );
            Ok(ids)
        }
        None => Ok(ids),
    }
}

/// The SKU and price (USD minor units) of bench product `n` (from 1): fixed, so that every run
/// on the same catalog means the same products; 1.00 to 9.99 USD, far below any payment limit.
fn bench_product(n: u32) -> (String, i64) {
    (format!("BENCH-{n}"), 100 + i64::from(n) * 137 % 900)
}

/// Makes sure products `BENCH-1` to `BENCH-<PRODUCTS>` exist and are for sale, and returns
/// them as the catalog prices them. A product already there (ALREADY_EXISTS: an earlier run on
/// the same database, or a retried create whose first answer was lost), or one the bench may not
/// create (PERMISSION_DENIED: it calls with the edge's identity, and a catalog administrator
/// created the products beforehand), is read back and used at the catalog's price, whatever it is now; one that is inactive is left out with a
/// warning. Fails with the first failure when not one product can be used.
pub async fn products(
    client: &CatalogServiceClient<Channel>,
    timeout: Duration,
) -> Result<Vec<Product>, Status> {
    let results: Vec<Result<CatalogProduct, Status>> = futures::stream::iter(1..=PRODUCTS)
        .map(|n| {
            let client = client.clone();
            let (sku, amount_minor) = bench_product(n);
            let product = CatalogProduct {
                sku: sku.clone(),
                display_name: format!("Bench product {n}"),
                unit_price: Some(Money { currency_code: "USD".into(), amount_minor }),
                active: true,
                ..CatalogProduct::default()
            };
            async move {
                let created = with_retries(|| {
                    let (mut client, product) = (client.clone(), product.clone());
                    async move {
                        client
                            .create_product(timed(CreateProductRequest { product: Some(product) }, timeout))
                            .await
                    }
                })
                .await;
                match created {
                    // PERMISSION_DENIED: the bench calls as the edge, which may read the catalog
                    // but not write it (the chart's policy); an administrator made the products.
                    Err(status) if matches!(status.code(), Code::AlreadyExists | Code::PermissionDenied) => {
                        with_retries(|| {
                            let (mut client, sku) = (client.clone(), sku.clone());
                            async move { client.get_product(timed(GetProductRequest { sku }, timeout)).await }
                        })
                        .await
                    }
                    other => other,
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut first_error = None;
    let mut products = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(product) => match (product.active, product.unit_price) {
                (true, Some(price)) => products.push(Product {
                    sku: product.sku,
                    amount_minor: price.amount_minor,
                    currency_code: price.currency_code,
                }),
                _ => eprintln!("warning: product {} is not for sale; the run leaves it out", product.sku),
            },
            Err(status) => {
                first_error.get_or_insert(status);
            }
        }
    }
    // Ordered by SKU number, so that request `i` orders the same product in every run.
    products.sort_by_key(|p| p.sku.trim_start_matches("BENCH-").parse::<u32>().unwrap_or(u32::MAX));
    match first_error {
        Some(status) if products.is_empty() => Err(status),
        None if products.is_empty() => {
            Err(Status::failed_precondition(format!("none of BENCH-1 to BENCH-{PRODUCTS} is for sale")))
        }
        Some(status) => {
            eprintln!(
                "warning: some products could not be created ({}: {}); going on with {}",
                code_name(code_of(&status)),
                status.message(),
                products.len()
            );
            Ok(products)
        }
        None => Ok(products),
    }
}

/// A request carrying `timeout` as `grpc-timeout`.
fn timed<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Makes the call `send` makes up to [`ATTEMPTS`] times while it fails UNAVAILABLE or
/// DEADLINE_EXCEEDED.
async fn with_retries<F, Fut>(mut send: F) -> Result<CatalogProduct, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<CatalogProduct>, Status>>,
{
    let mut attempt = 1;
    loop {
        match send().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status)
                if attempt < ATTEMPTS
                    && matches!(code_of(&status), Code::Unavailable | Code::DeadlineExceeded) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_products_follow_the_catalogs_rules() {
        for n in 1..=PRODUCTS {
            let (sku, amount) = bench_product(n);
            assert!(sku.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'), "{sku}");
            assert!((100..1000).contains(&amount), "{sku}: {amount}");
        }
        assert_eq!(bench_product(1), ("BENCH-1".into(), 237));
    }
}
