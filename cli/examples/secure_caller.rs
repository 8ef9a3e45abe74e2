//! A Rust service of another team calling the mesh's secure default through the SDK: the
//! generated clients of `shopmesh-api` (re-exported as `shopmesh::api`) over the mesh's own
//! client stack (`shopmesh::mesh::client::channel`), which gives a caller what the services give
//! each other: mutual TLS with its mesh certificate (files re-read as they are renewed), every
//! address of a target balanced (power of two choices; a DNS name resolves to all its pods),
//! retries only of what the protos declare safe (the same policy `clients/grpc-service-config.json`
//! gives other languages), and a deadline on every call. Errors' `google.rpc` details are read
//! with tonic-types.
//!
//! Configured like the other examples by SHOPMESH_* variables (clients/secure/README.md); run
//! against a local secure mesh by scripts/check-secure-clients:
//! `cargo run -p shopmesh-cli --example secure_caller`.

use std::time::Duration;

use shopmesh::api::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh::api::catalog::v1::{CreateProductRequest, Product};
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::order_service_client::OrderServiceClient;
use shopmesh::api::order::v1::{CreateOrderRequest, LineItem, OrderState};
use shopmesh::api::payment::v1::GetPaymentRequest;
use shopmesh::api::payment::v1::payment_service_client::PaymentServiceClient;
use shopmesh::api::user::v1::user_service_client::UserServiceClient;
use shopmesh::api::user::v1::{CreateUserRequest, GetUserRequest};
use shopmesh::mesh::client::{Channel, channel};
use shopmesh::mesh::config::{ClientConfig, SecurityConfig};
use shopmesh::mesh::grpc::catalogue::Catalogue;
use shopmesh::mesh::security::tls::MeshTls;
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

type Error = Box<dyn std::error::Error>;

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

/// Every call carries a deadline, sent as `grpc-timeout`.
fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(5));
    request
}

/// A channel over every address in `addresses` (comma-separated `host:port`; in a cluster the
/// headless Service's name, which resolves to every pod).
async fn connect(addresses: &str, tls: &MeshTls) -> Result<Channel, Error> {
    // `http://`: the mesh's URLs name the address; TLS comes from the mesh's certificate.
    let target: Vec<String> = addresses.split(',').map(|a| format!("http://{a}")).collect();
    let catalogue = Catalogue::new(shopmesh::api::CALL_POLICY);
    Ok(channel(&target.join(","), &ClientConfig::default(), catalogue, Some(tls)).await?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let security = SecurityConfig {
        tls_cert: Some(env("SHOPMESH_CERT")?.into()),
        tls_key: Some(env("SHOPMESH_KEY")?.into()),
        tls_ca: Some(env("SHOPMESH_CA")?.into()),
        ..SecurityConfig::default()
    };
    let tls = MeshTls::load(&security)?.ok_or("no certificate configured")?;
    let mut users = UserServiceClient::new(connect(&env("SHOPMESH_USER_ADDRS")?, &tls).await?);
    let mut products = CatalogServiceClient::new(connect(&env("SHOPMESH_CATALOG_ADDR")?, &tls).await?);
    let mut orders = OrderServiceClient::new(connect(&env("SHOPMESH_ORDER_ADDR")?, &tls).await?);
    let mut payments = PaymentServiceClient::new(connect(&env("SHOPMESH_PAYMENT_ADDR")?, &tls).await?);
    let run = shopmesh::mesh::ids::new_id();
    let usd = |amount_minor| Some(Money { currency_code: "USD".to_owned(), amount_minor });

    let user = users
        .create_user(with_deadline(CreateUserRequest {
            email: format!("rust-{run}@example.com"),
            display_name: "Rust caller".to_owned(),
            request_id: format!("rust-user-{run}"),
        }))
        .await?
        .into_inner();
    for _ in 0..20 {
        let got = users.get_user(with_deadline(GetUserRequest { id: user.id.clone() })).await?.into_inner();
        assert_eq!(got, user);
    }
    let sku = format!("RUST-{}", &run[run.len() - 8..]).to_uppercase();
    let product = Product {
        sku: sku.clone(),
        display_name: "Rust example".to_owned(),
        unit_price: usd(1250),
        active: true,
        ..Product::default()
    };
    products.create_product(with_deadline(CreateProductRequest { product: Some(product) })).await?;
    let order = orders
        .create_order(with_deadline(CreateOrderRequest {
            user_id: user.id.clone(),
            request_id: format!("rust-order-{run}"),
            line_items: vec![LineItem { sku: sku.clone(), quantity: 2, unit_price: None }],
        }))
        .await?
        .into_inner();
    assert_eq!(order.state(), OrderState::Paid);

    // Field violations of a bad request, from the status details.
    let bad = users
        .create_user(with_deadline(CreateUserRequest {
            email: "not-an-email".to_owned(),
            ..CreateUserRequest::default()
        }))
        .await
        .expect_err("an invalid user");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = bad
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert!(fields.iter().any(|f| f == "email"), "{fields:?}");
    // The machine-readable kind of a failed precondition.
    let stale = orders
        .create_order(with_deadline(CreateOrderRequest {
            user_id: user.id.clone(),
            request_id: format!("rust-stale-{run}"),
            line_items: vec![LineItem { sku, quantity: 1, unit_price: usd(999) }],
        }))
        .await
        .expect_err("a stale price");
    let kinds: Vec<String> = stale
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| v.r#type).collect())
        .unwrap_or_default();
    assert_eq!((stale.code(), kinds), (Code::FailedPrecondition, vec!["PRICE_CHANGED".to_owned()]));
    // The policy admits this caller to users, the catalog and orders only.
    let denied = payments.get_payment(with_deadline(GetPaymentRequest { id: order.payment_id })).await;
    assert_eq!(denied.expect_err("payments are not this caller's").code(), Code::PermissionDenied);
    println!(
        "rust secure caller: order {} PAID over mTLS; BadRequest(email), PRICE_CHANGED, PERMISSION_DENIED on payments",
        order.id
    );
    Ok(())
}
