//! The shipped authorization policy (`deploy/authz-policy.json`) enforced by the real user,
//! payment, catalog, order, inventory and notification services over mutual TLS: every identity
//! against every method, with the expected answer taken from the intent written below (not from
//! the policy code), an order placed through the mesh with every hop on mTLS, and stock set
//! through inventory's own call to the catalog.

#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pki::{call, id, workload};
use shopmesh::api::catalog::v1::{
    CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
};
use shopmesh::api::common::v1::Money;
use shopmesh::api::inventory::v1::{SetStockRequest, inventory_service_client::InventoryServiceClient};
use shopmesh::api::order::v1::{
    CreateOrderRequest, LineItem, OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::config::SecurityConfig;
use shopmesh::mesh::security::certificates::{Ca, Leaf};
use shopmesh::mesh::security::connect::TlsConnector;
use shopmesh::mesh::security::tls::MeshTls;
use shopmesh::mesh::service::MeshService;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_catalog::{Catalog, CatalogConfig};
use shopmesh_inventory::{Inventory, InventoryConfig};
use shopmesh_notification::{Notification, NotificationConfig};
use shopmesh_order::{Order, OrderConfig};
use shopmesh_payment::{Payment, PaymentConfig};
use shopmesh_user::{User, UserConfig};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;

const USER: [&str; 4] = [
    "/shopmesh.user.v1.UserService/CreateUser",
    "/shopmesh.user.v1.UserService/GetUser",
    "/shopmesh.user.v1.UserService/ListUsers",
    "/shopmesh.user.v1.UserService/UpdateUser",
];
const ORDER: [&str; 4] = [
    "/shopmesh.order.v1.OrderService/CreateOrder",
    "/shopmesh.order.v1.OrderService/GetOrder",
    "/shopmesh.order.v1.OrderService/ListOrders",
    "/shopmesh.order.v1.OrderService/CancelOrder",
];
const PAYMENT: [&str; 4] = [
    "/shopmesh.payment.v1.PaymentService/Charge",
    "/shopmesh.payment.v1.PaymentService/GetPayment",
    "/shopmesh.payment.v1.PaymentService/Refund",
    "/shopmesh.payment.v1.PaymentService/ListPayments",
];
const CATALOG: [&str; 5] = [
    "/shopmesh.catalog.v1.CatalogService/CreateProduct",
    "/shopmesh.catalog.v1.CatalogService/GetProduct",
    "/shopmesh.catalog.v1.CatalogService/ListProducts",
    "/shopmesh.catalog.v1.CatalogService/UpdateProduct",
    "/shopmesh.catalog.v1.CatalogService/BatchGetProducts",
];
const INVENTORY: [&str; 3] = [
    "/shopmesh.inventory.v1.InventoryService/SetStock",
    "/shopmesh.inventory.v1.InventoryService/GetStock",
    "/shopmesh.inventory.v1.InventoryService/ListStock",
];
const NOTIFICATION: [&str; 2] = [
    "/shopmesh.notification.v1.NotificationService/ListNotifications",
    "/shopmesh.notification.v1.NotificationService/GetNotification",
];
/// Served beside every service.
const INFRA: [&str; 3] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The callers of the matrix: the mesh's workloads, the edge, and two that must get nothing.
const CALLERS: [&str; 10] = [
    "spiffe://cluster.local/ns/default/sa/shopmesh-order",
    "spiffe://cluster.local/ns/default/sa/shopmesh-inventory",
    "spiffe://cluster.local/ns/default/sa/shopmesh-notification",
    "spiffe://cluster.local/ns/default/sa/shopmesh-gateway",
    "spiffe://cluster.local/ns/default/sa/shopmesh-admin",
    "spiffe://cluster.local/ns/default/sa/shopmesh-catalog",
    "spiffe://cluster.local/ns/default/sa/shopmesh-user",
    "spiffe://cluster.local/ns/default/sa/shopmesh-payment",
    "spiffe://cluster.local/ns/default/sa/shopmesh-intruder",
    "spiffe://cluster.local/ns/other/sa/shopmesh-order",
];

/// The documented intent (README "Authorization policy"), written out independently of the
/// policy file: may `caller` call `method`?
fn intended(caller: &str, method: &str) -> bool {
    let order = caller == id("shopmesh-order");
    let gateway = caller == id("shopmesh-gateway");
    let admin = caller == id("shopmesh-admin");
    let inventory = caller == id("shopmesh-inventory");
    let in_namespace = caller.starts_with("spiffe://cluster.local/ns/default/sa/");
    match method {
        // Probes carry no identity; health is never refused.
        "/grpc.health.v1.Health/Check" => true,
        // Any workload of the namespace may describe the (public) API.
        m if m.starts_with("/grpc.reflection.") => in_namespace,
        // Only the order service moves money.
        "/shopmesh.payment.v1.PaymentService/Charge" | "/shopmesh.payment.v1.PaymentService/Refund" => order,
        // The order service checks the orderer; the edge serves the user API.
        "/shopmesh.user.v1.UserService/GetUser" => order || gateway,
        m if m.starts_with("/shopmesh.user.v1.") || m.starts_with("/shopmesh.order.v1.") => gateway,
        // Only the catalog's administrators change products.
        "/shopmesh.catalog.v1.CatalogService/CreateProduct"
        | "/shopmesh.catalog.v1.CatalogService/UpdateProduct" => admin,
        // Inventory sets stock only of products the catalog has: it reads the product.
        "/shopmesh.catalog.v1.CatalogService/GetProduct" => order || gateway || inventory,
        // The order service prices orders from the catalog; the edge serves it read-only.
        m if m.starts_with("/shopmesh.catalog.v1.") => order || gateway,
        // Stock and the notifications sent are the shop's administrators' (support); the edge
        // gets neither, and the services feed each other through events, not these APIs.
        m if m.starts_with("/shopmesh.inventory.v1.") || m.starts_with("/shopmesh.notification.v1.") => admin,
        // Payment reads are nobody's business outside the payment service.
        _ => false,
    }
}

/// What the catalog sells here: (SKU, unit price in minor units, currency).
const PRODUCTS: &[(&str, i64, &str)] = &[("BOOK-42", 1250, "USD")];

fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/authz-policy.json")
}

/// The six services over mTLS with the shipped policy (events discarded: no broker here).
struct Mesh {
    user: Spawned,
    payment: Spawned,
    order: Spawned,
    catalog: Spawned,
    inventory: Spawned,
    notification: Spawned,
    dbs: Vec<TestDb>,
    ca: Ca,
    dir: TempDir,
}

/// Spawns service `S` as service account `sa`, waiting on its probe port.
async fn spawn<S: MeshService>(ca: &Ca, dir: &Path, sa: &str, config: S::Config) -> Spawned {
    spawn_calling::<S>(ca, dir, sa, config, Upstreams::new()).await
}

/// Like [`spawn`], calling the services `upstreams` names.
async fn spawn_calling<S: MeshService>(
    ca: &Ca,
    dir: &Path,
    sa: &str,
    config: S::Config,
    upstreams: Upstreams,
) -> Spawned {
    let mut mesh = testing::mesh_config();
    mesh.security = SecurityConfig {
        authz_policy: Some(policy_file()),
        ..pki::security(&dir.join(sa), &workload(ca, sa))
    };
    testing::spawn_service_probed::<S>(&testing::mesh(mesh).with_upstreams(upstreams), config).await.0
}

impl Mesh {
    async fn start(backend: Backend) -> Self {
        let ca = Ca::new("mesh CA").expect("ca");
        let dir = tempfile::tempdir().expect("tempdir");
        let dbs = vec![
            testing::database(backend, "user").await,
            testing::database(backend, "payment").await,
            testing::database(backend, "order").await,
            testing::database(backend, "catalog").await,
            testing::database(backend, "inventory").await,
            testing::database(backend, "notification").await,
        ];
        let url = dbs[0].url.clone();
        let config = UserConfig::new(testing::ANY_PORT, url);
        let user = spawn::<User>(&ca, dir.path(), "shopmesh-user", config).await;
        let url = dbs[1].url.clone();
        let config = PaymentConfig {
            listen: testing::ANY_PORT,
            // The simulated processor's ledger beside payment's tables: this test does not read it.
            processor_ledger_url: url.clone(),
            database_url: url,
            database_read_url: None,
            payment_limit_minor: 100_000,
            payment_currencies: vec!["USD".into()],
            payment_latency: std::time::Duration::ZERO,
            payment_processing_lease: std::time::Duration::from_secs(10),
        };
        let payment = spawn::<Payment>(&ca, dir.path(), "shopmesh-payment", config).await;
        let config = CatalogConfig {
            listen: testing::ANY_PORT,
            database_url: dbs[3].url.clone(),
            database_read_url: None,
        };
        let catalog = spawn::<Catalog>(&ca, dir.path(), "shopmesh-catalog", config).await;
        let (url, user_url, payment_url) = (dbs[2].url.clone(), user.url(), payment.url());
        let config = OrderConfig {
            listen: testing::ANY_PORT,
            database_url: url,
            database_read_url: None,
            catalog_cache_ttl: std::time::Duration::from_secs(5),
            user_check_ttl: std::time::Duration::from_secs(1),
            reconcile: Default::default(),
        };
        let order = spawn_calling::<Order>(
            &ca,
            dir.path(),
            "shopmesh-order",
            config,
            Upstreams::new().at("user", user_url).at("catalog", catalog.url()).at("payment", payment_url),
        )
        .await;
        let config = InventoryConfig {
            listen: testing::ANY_PORT,
            database_url: dbs[4].url.clone(),
            database_read_url: None,
        };
        let inventory = spawn_calling::<Inventory>(
            &ca,
            dir.path(),
            "shopmesh-inventory",
            config,
            Upstreams::new().at("catalog", catalog.url()),
        )
        .await;
        let config = NotificationConfig {
            listen: testing::ANY_PORT,
            database_url: dbs[5].url.clone(),
            database_read_url: None,
        };
        let notification = spawn::<Notification>(&ca, dir.path(), "shopmesh-notification", config).await;
        let mesh = Self { user, payment, order, catalog, inventory, notification, dbs, ca, dir };
        // The catalog's administrators stock it, through the policy like everyone else.
        let mut products = CatalogServiceClient::new(mesh.channel(&id("shopmesh-admin"), mesh.catalog.addr));
        for (sku, amount_minor, currency) in PRODUCTS {
            let product = Product {
                sku: (*sku).to_owned(),
                display_name: format!("Product {sku}"),
                unit_price: Some(Money {
                    currency_code: (*currency).to_owned(),
                    amount_minor: *amount_minor,
                }),
                active: true,
                ..Product::default()
            };
            products
                .create_product(CreateProductRequest { product: Some(product) })
                .await
                .expect("admin stocks");
        }
        mesh
    }

    /// A channel to `addr` through the mesh's own TLS client, as the workload `uri`.
    fn channel(&self, uri: &str, addr: SocketAddr) -> Channel {
        let sa_dir = self.dir.path().join(format!("client-{}", uri.replace(['/', ':'], "_")));
        let issued = self.ca.issue(&Leaf { uris: vec![uri.to_owned()], ..Leaf::default() }).expect("issue");
        let tls = MeshTls::load(&pki::security(&sa_dir, &issued)).expect("client TLS").expect("configured");
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_with_connector_lazy(TlsConnector::new(tls))
    }

    async fn stop(self) {
        for service in [self.inventory, self.notification, self.order, self.catalog, self.payment, self.user]
        {
            service.stop().await.expect("clean stop");
        }
        for db in self.dbs {
            db.drop_database().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_gets_what_the_policy_intends() {
    pki::metrics();
    let mesh = Mesh::start(Backend::Sqlite).await;
    let mut wrong = Vec::new();
    for caller in CALLERS {
        for (addr, methods) in [
            (mesh.user.addr, &USER[..]),
            (mesh.order.addr, &ORDER[..]),
            (mesh.payment.addr, &PAYMENT[..]),
            (mesh.catalog.addr, &CATALOG[..]),
            (mesh.inventory.addr, &INVENTORY[..]),
            (mesh.notification.addr, &NOTIFICATION[..]),
        ] {
            let channel = mesh.channel(caller, addr);
            for method in methods.iter().copied().chain(INFRA) {
                let code = call(channel.clone(), method).await;
                let ok = if intended(caller, method) {
                    // Reached the handler: its own answer to an empty request, whatever it is.
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated | Code::Unavailable)
                } else {
                    code == Code::PermissionDenied
                };
                if !ok {
                    wrong.push(format!("{caller} {method}: {code:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "not as intended:\n{}", wrong.join("\n"));
    // Nine callers may not charge; each refusal is counted.
    let charge = [
        ("rpc_service", "shopmesh.payment.v1.PaymentService"),
        ("rpc_method", "Charge"),
        ("reason", "not_allowed"),
    ];
    assert!(
        pki::counted("shopmesh_server_authz_denied_total", &charge) >= 9.0,
        "{}",
        pki::metrics().render()
    );
    mesh.stop().await;
}

async fn order_through_the_mesh(backend: Backend) {
    let mesh = Mesh::start(backend).await;
    let gateway = id("shopmesh-gateway");
    let mut users = UserServiceClient::new(mesh.channel(&gateway, mesh.user.addr));
    let mut orders = OrderServiceClient::new(mesh.channel(&gateway, mesh.order.addr));
    let user = users
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            request_id: "ada".into(),
        })
        .await
        .expect("the gateway creates a user")
        .into_inner();
    // The order service calls GetUser, BatchGetProducts and Charge as shopmesh-order, over mTLS.
    let order = orders
        .create_order(CreateOrderRequest {
            user_id: user.id,
            request_id: "first-order".into(),
            line_items: vec![LineItem {
                sku: "BOOK-42".into(),
                quantity: 2,
                unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
            }],
        })
        .await
        .expect("the order is placed through the mesh")
        .into_inner();
    assert_eq!(order.state(), OrderState::Paid, "{order:?}");
    assert_eq!(order.total, Some(Money { currency_code: "USD".into(), amount_minor: 2 * 1250 }));
    // An administrator sets stock; inventory asks the catalog for the product as
    // shopmesh-inventory, over mTLS and through the catalog's policy.
    let mut stock = InventoryServiceClient::new(mesh.channel(&id("shopmesh-admin"), mesh.inventory.addr));
    let set = stock
        .set_stock(SetStockRequest { sku: "BOOK-42".into(), on_hand: 7 })
        .await
        .expect("the administrator sets stock of a product the catalog has")
        .into_inner();
    assert_eq!((set.sku.as_str(), set.on_hand), ("BOOK-42", 7), "{set:?}");
    let unknown = stock
        .set_stock(SetStockRequest { sku: "NOPE-1".into(), on_hand: 1 })
        .await
        .expect_err("a SKU the catalog lacks");
    assert_eq!(unknown.code(), Code::FailedPrecondition, "{unknown:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_placed_with_mtls_and_the_policy_on_every_hop() {
    for backend in testing::backends() {
        order_through_the_mesh(backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_calls_are_unauthenticated_but_health_answers() {
    pki::metrics();
    let db = testing::database(Backend::Sqlite, "noid").await;
    let mut mesh = testing::mesh_config();
    mesh.security.authz_policy = Some(policy_file());
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    // Plaintext: no certificate, so no identity.
    let user = testing::spawn_service::<User>(&testing::mesh(mesh), config).await;
    let channel = tonic::transport::Endpoint::from_shared(user.url()).expect("endpoint").connect_lazy();
    assert_eq!(call(channel.clone(), USER[2]).await, Code::Unauthenticated);
    assert_eq!(call(channel.clone(), INFRA[1]).await, Code::Unauthenticated, "reflection needs an identity");
    assert_eq!(call(channel, INFRA[0]).await, Code::Ok, "health is always allowed");
    let labels = [("rpc_method", "ListUsers"), ("reason", "no_identity")];
    assert!(
        pki::counted("shopmesh_server_authz_denied_total", &labels) >= 1.0,
        "{}",
        pki::metrics().render()
    );
    user.stop().await.expect("clean stop");
}
