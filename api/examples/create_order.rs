//! A caller that depends on `shopmesh-api` alone: creates a product, a user and an order on a
//! running mesh (`cargo run --release` in another terminal), each call with a deadline, the
//! order with a request id so a retry can never charge twice.
//!
//! `cargo run -p shopmesh-api --example create_order [user_addr] [catalog_addr] [order_addr]`
//! (defaults: the all-in-one's ports, 50051, 50054 and 50052 on 127.0.0.1).

use std::time::Duration;

use shopmesh_api::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh_api::catalog::v1::{CreateProductRequest, Product};
use shopmesh_api::common::v1::Money;
use shopmesh_api::order::v1::order_service_client::OrderServiceClient;
use shopmesh_api::order::v1::{CreateOrderRequest, LineItem};
use shopmesh_api::user::v1::CreateUserRequest;
use shopmesh_api::user::v1::user_service_client::UserServiceClient;
use tonic::{Code, Request};

/// Every call gets a deadline: the server sees it as `grpc-timeout` and passes what is left on.
fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_secs(2));
    request
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut url = |default: &str| format!("http://{}", args.next().unwrap_or_else(|| default.to_owned()));
    let (user_url, catalog_url, order_url) =
        (url("127.0.0.1:50051"), url("127.0.0.1:50054"), url("127.0.0.1:50052"));

    let run = std::process::id();
    let sku = format!("EXAMPLE-{run}");
    let product = Product {
        sku: sku.clone(),
        display_name: "An example product".to_owned(),
        unit_price: Some(Money { currency_code: "USD".to_owned(), amount_minor: 1250 }),
        active: true,
        ..Product::default()
    };
    let mut catalog = CatalogServiceClient::connect(catalog_url).await?;
    match catalog.create_product(with_deadline(CreateProductRequest { product: Some(product) })).await {
        Ok(_) => {}
        // Run again in the same process id: the product is there already.
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => return Err(status.into()),
    }

    let mut users = UserServiceClient::connect(user_url).await?;
    let user = users
        .create_user(with_deadline(CreateUserRequest {
            email: format!("example-{run}@example.com"),
            display_name: "Example".to_owned(),
            ..CreateUserRequest::default()
        }))
        .await?
        .into_inner();

    // The request id makes the call safe to repeat: the same id returns the same order.
    let order = CreateOrderRequest {
        user_id: user.id.clone(),
        request_id: format!("example-order-{run}"),
        line_items: vec![LineItem { sku, quantity: 2, unit_price: None }],
    };
    let mut orders = OrderServiceClient::connect(order_url).await?;
    let first = orders.create_order(with_deadline(order.clone())).await?.into_inner();
    let again = orders.create_order(with_deadline(order)).await?.into_inner();
    assert_eq!(first.id, again.id, "a repeated request id returns the same order");
    println!("order {} for user {}: {:?}, total {:?}", first.id, user.id, first.state(), first.total);
    Ok(())
}
