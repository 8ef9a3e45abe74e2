//! The all-in-one run's banner: where each service listens, who may call, and the grpcurl
//! commands of the README's quick start pointed at these ports.

use std::net::SocketAddr;
use std::time::Duration;

/// Prints the banner: `services` as (name, address, gRPC service), up after `took`.
pub fn print_banner(
    services: &[(&'static str, SocketAddr, &'static str)],
    took: Duration,
    authenticated: bool,
    tls_files: Option<&str>,
) {
    let address =
        |name: &str| services.iter().find(|s| s.0 == name).map_or(String::new(), |s| s.1.to_string());
    let (u, c, o) = (address("user"), address("catalog"), address("order"));
    let mut table = String::new();
    for (name, addr, grpc_service) in services {
        table.push_str(&format!("  {name:<8} {addr:<16} {grpc_service}\n"));
    }
    // The order service prices every line from the catalog: create the product first, then
    // order it without a price.
    let product = r#"'{"product":{"sku":"BOOK-42","display_name":"A book","active":true,
      "unit_price":{"currency_code":"USD","amount_minor":1250}}}'"#;
    let user = r#"'{"email":"ada@example.com","display_name":"Ada"}'"#;
    let order = r#""{\"user_id\":\"$USER_ID\",\"request_id\":\"first-order\",\"line_items\":[{\"sku\":\"BOOK-42\",\"quantity\":2}]}""#;
    // Said on the banner, not only in the logs: whoever started it should know who may call.
    let exposure = if authenticated {
        ""
    } else {
        "Running without authentication: plaintext, no mutual TLS, no bearer tokens; any caller \
         that reaches these ports may call every method (docs/security.md).\n\n"
    };
    // Over mTLS, grpcurl presents the mesh's certificate (the policy decides what it may call).
    let how = tls_files.unwrap_or("-plaintext");
    println!(
        "\nshopmesh is up in {took:.0?}: {} services, each on its own port.\n\n{table}\n{exposure}\
         Try it (grpcurl and jq): create a product, a user, and an order the server prices.\n\n  \
         grpcurl {how} {o} list\n  \
         grpcurl {how} -d {product} \\\n      \
         {c} shopmesh.catalog.v1.CatalogService/CreateProduct\n  \
         USER_ID=$(grpcurl {how} -d {user} \\\n      \
         {u} shopmesh.user.v1.UserService/CreateUser | jq -r .id)\n  \
         grpcurl {how} -d {order} \\\n      \
         {o} shopmesh.order.v1.OrderService/CreateOrder\n\n\
         Ctrl-C stops every service.\n",
        services.len()
    );
}
