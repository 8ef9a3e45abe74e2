//! Mutual TLS against the real user service on 127.0.0.1: which client certificates are
//! served and how the others are refused, that plaintext gets nothing, that the probe port
//! answers health and nothing else, and that rotated files are picked up.

#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use pki::{Mounted, Outcome, call, channel, client_config, handshake, id, workload};
use rustls::AlertDescription;
use shopmesh::api::user::v1::ListUsersRequest;
use shopmesh::api::user::v1::user_service_client::UserServiceClient;
use shopmesh::mesh::config::SecurityConfig;
use shopmesh::mesh::security::certificates::{Ca, Leaf};
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_user::{User, UserConfig};
use tonic::Code;

const LIST_USERS: &str = "/shopmesh.user.v1.UserService/ListUsers";

/// Starts the user service with `security`, returning it and its probe port.
async fn start_user(db: &TestDb, security: SecurityConfig) -> (Spawned, SocketAddr) {
    let mut mesh = testing::mesh_config();
    mesh.security = security;
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    testing::spawn_service_probed::<User>(&testing::mesh(mesh), config).await
}

/// Asserts that `config` is refused with `alert` at the handshake and that a gRPC call over it
/// gets no answer from the service.
async fn assert_refused(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    alert: AlertDescription,
    case: &str,
) {
    assert_eq!(handshake(addr, config.clone()).await, Outcome::Alert(alert), "{case}");
    // With TLS 1.3 the client's handshake completes before the server's alert arrives, so tonic
    // reports it as whatever the broken connection looks like (UNKNOWN, CANCELLED, UNAVAILABLE);
    // what matters is that the call, which a served caller gets OK for, is not served.
    let code = call(channel(addr, config), LIST_USERS).await;
    assert_ne!(code, Code::Ok, "{case}: served over gRPC");
}

async fn matrix(backend: Backend) {
    let db = testing::database(backend, "mtls").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mesh CA").expect("ca");
    // Valid for 30 days, so the exported end of validity can be checked against it; an
    // account of its own, as the gauge is per identity and other tests run user services too.
    let user_cert = ca
        .issue(&Leaf {
            uris: vec![pki::id("shopmesh-user-matrix")],
            dns: vec!["localhost".into()],
            validity: Some(Duration::from_secs(30 * 86_400)),
            ..Leaf::default()
        })
        .expect("issue");
    let (user, probe) = start_user(&db, pki::security(dir.path(), &user_cert)).await;
    let expiry = pki::counted(
        shopmesh::mesh::security::tls::EXPIRY_GAUGE,
        &[("identity", &pki::id("shopmesh-user-matrix"))],
    );
    let in_30_days =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64()
            + 30.0 * 86_400.0;
    assert!(
        (in_30_days - 120.0..=in_30_days + 1.0).contains(&expiry),
        "the certificate's end of validity is exported as {expiry}, not about {in_30_days}"
    );
    let addr = user.addr;
    let ca_pem = ca.cert_pem();

    // Valid: a certificate of the mesh's CA naming a SPIFFE ID of the trust domain.
    let valid = client_config(&ca_pem, Some(&workload(&ca, "shopmesh-order")));
    assert_eq!(handshake(addr, valid.clone()).await, Outcome::Served);
    let mut users = UserServiceClient::new(channel(addr, valid.clone()));
    users.list_users(ListUsersRequest::default()).await.expect("a valid identity is served");

    // No client certificate at all.
    assert_refused(
        addr,
        client_config(&ca_pem, None),
        AlertDescription::CertificateRequired,
        "no certificate",
    )
    .await;

    // A certificate of another CA, for an otherwise valid identity.
    let foreign = Ca::new("foreign CA").expect("ca");
    let foreign_cert = workload(&foreign, "shopmesh-order");
    assert_refused(
        addr,
        client_config(&ca_pem, Some(&foreign_cert)),
        AlertDescription::UnknownCA,
        "foreign CA",
    )
    .await;

    // Expired.
    let expired = ca.issue(&Leaf { expired: true, ..Leaf::spiffe(&id("shopmesh-order")) }).expect("issue");
    assert_refused(
        addr,
        client_config(&ca_pem, Some(&expired)),
        AlertDescription::CertificateExpired,
        "expired",
    )
    .await;

    // A SPIFFE ID of another trust domain.
    let other_td =
        ca.issue(&Leaf::spiffe("spiffe://example.org/ns/default/sa/shopmesh-order")).expect("issue");
    assert_refused(
        addr,
        client_config(&ca_pem, Some(&other_td)),
        AlertDescription::AccessDenied,
        "trust domain",
    )
    .await;

    // A URI SAN that is not a SPIFFE ID.
    let https = ca.issue(&Leaf::spiffe("https://cluster.local/ns/default/sa/shopmesh-order")).expect("issue");
    assert_refused(addr, client_config(&ca_pem, Some(&https)), AlertDescription::AccessDenied, "not SPIFFE")
        .await;

    // No URI SAN: a host-name certificate of the right CA.
    let dns_only = ca.issue(&Leaf { dns: vec!["order".into()], ..Leaf::default() }).expect("issue");
    assert_refused(
        addr,
        client_config(&ca_pem, Some(&dns_only)),
        AlertDescription::AccessDenied,
        "no URI SAN",
    )
    .await;

    // Plaintext to the TLS port: nothing is served.
    let plain =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint").connect_lazy();
    assert_ne!(call(plain, LIST_USERS).await, Code::Ok, "plaintext served");

    // Six refused handshakes (plaintext included) were counted.
    assert!(
        pki::counted("shopmesh_server_tls_handshake_failures_total", &[]) >= 6.0,
        "{}",
        pki::metrics().render()
    );

    // The valid client still works after all that.
    users.list_users(ListUsersRequest::default()).await.expect("still served");

    // The probe port: health, in plaintext, and nothing else.
    let status = shopmesh::mesh::health::check(
        &format!("http://{probe}"),
        shopmesh_user::User::GRPC_SERVICE,
        Duration::from_secs(5),
    )
    .await
    .expect("health on the probe port");
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving);
    let probe_channel =
        tonic::transport::Endpoint::from_shared(format!("http://{probe}")).expect("endpoint").connect_lazy();
    assert_eq!(call(probe_channel.clone(), LIST_USERS).await, Code::Unimplemented, "API on the probe port");
    assert_eq!(
        call(probe_channel, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").await,
        Code::Unimplemented,
        "reflection on the probe port"
    );

    user.stop().await.expect("clean stop");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_mesh_identities_are_served() {
    pki::metrics();
    for backend in testing::backends() {
        matrix(backend).await;
    }
}

/// Waits (up to 30 s) until `config`'s handshake is served.
async fn wait_served(addr: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> bool {
    for _ in 0..300 {
        if handshake(addr, config.clone()).await == Outcome::Served {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_are_used_by_new_handshakes() {
    let db = testing::database(Backend::Sqlite, "reload").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Ca::new("old CA").expect("ca");
    let mut mount = Mounted::new(dir.path().to_owned(), &workload(&old_ca, "shopmesh-user"));
    let (user, _probe) = start_user(&db, pki::files(&mount.dir)).await;
    let addr = user.addr;
    let old_client = client_config(&old_ca.cert_pem(), Some(&workload(&old_ca, "shopmesh-order")));
    assert_eq!(handshake(addr, old_client.clone()).await, Outcome::Served);

    // The Secret is reissued by a new CA: new server certificate, new CA bundle.
    let new_ca = Ca::new("new CA").expect("ca");
    let server = workload(&new_ca, "shopmesh-user");
    mount.swap(&server.cert_pem, &server.key_pem, &new_ca.cert_pem());
    // Trusting only the new CA both ways: served means the server presents the new
    // certificate and accepts certificates of the new CA.
    let new_client = client_config(&new_ca.cert_pem(), Some(&workload(&new_ca, "shopmesh-order")));
    assert!(wait_served(addr, new_client.clone()).await, "the rotated files were not picked up within 30s");
    assert_ne!(handshake(addr, old_client).await, Outcome::Served, "the old CA is still trusted");

    // A broken update (a key that is not PEM) is refused and the loaded files stay in use.
    mount.swap(&server.cert_pem, "not a key", &new_ca.cert_pem());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        handshake(addr, new_client.clone()).await,
        Outcome::Served,
        "a bad update replaced a good config"
    );
    let mut users = UserServiceClient::new(channel(addr, new_client));
    users.list_users(ListUsersRequest::default()).await.expect("served after a bad update");

    user.stop().await.expect("clean stop");
    db.drop_database().await;
}

/// Spawns service `S` as service account `sa` over mTLS (no policy), waiting on its probe port.
async fn spawn_as<S: shopmesh::mesh::service::MeshService>(
    ca: &Ca,
    dir: &std::path::Path,
    sa: &str,
    config: S::Config,
) -> Spawned {
    spawn_calling::<S>(ca, dir, sa, config, Upstreams::new()).await
}

/// Like [`spawn_as`], calling the services `upstreams` names.
async fn spawn_calling<S: shopmesh::mesh::service::MeshService>(
    ca: &Ca,
    dir: &std::path::Path,
    sa: &str,
    config: S::Config,
    upstreams: Upstreams,
) -> Spawned {
    let mut mesh = testing::mesh_config();
    mesh.security = pki::security(&dir.join(sa), &workload(ca, sa));
    testing::spawn_service_probed::<S>(&testing::mesh(mesh).with_upstreams(upstreams), config).await.0
}

/// A channel through the mesh's own TLS client to `addr`, as the workload `sa`.
fn mesh_channel(ca: &Ca, dir: &std::path::Path, sa: &str, addr: SocketAddr) -> tonic::transport::Channel {
    let security = pki::security(&dir.join(format!("client-{sa}")), &workload(ca, sa));
    let tls =
        shopmesh::mesh::security::tls::MeshTls::load(&security).expect("client TLS").expect("configured");
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector_lazy(shopmesh::mesh::security::connect::TlsConnector::new(tls))
}

fn payment_config(db: &TestDb) -> shopmesh_payment::PaymentConfig {
    shopmesh_payment::PaymentConfig {
        listen: testing::ANY_PORT,
        database_url: db.url.clone(),
        database_read_url: None,
        payment_limit_minor: 100_000,
        payment_currencies: vec!["USD".into()],
        payment_latency: Duration::ZERO,
        processor_ledger_url: db.url.clone(),
        payment_processing_lease: Duration::from_secs(10),
    }
}

/// The order service over mTLS as `shopmesh-order`, calling `user`, `catalog` and `payment`.
async fn order_calling(
    ca: &Ca,
    dir: &std::path::Path,
    db: &TestDb,
    user: &Spawned,
    catalog: &Spawned,
    payment: &Spawned,
) -> Spawned {
    let config = shopmesh_order::OrderConfig {
        listen: testing::ANY_PORT,
        database_url: db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl: Duration::from_secs(1),
        reconcile: shopmesh_order::ReconcileConfig {
            reconcile_interval: Duration::ZERO,
            ..Default::default()
        },
    };
    spawn_calling::<shopmesh_order::Order>(
        ca,
        dir,
        "shopmesh-order",
        config,
        Upstreams::new().at("user", user.url()).at("catalog", catalog.url()).at("payment", payment.url()),
    )
    .await
}

async fn impostors_are_refused(backend: Backend) {
    use shopmesh::api::catalog::v1::{
        CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
    };
    use shopmesh::api::common::v1::Money;
    use shopmesh::api::order::v1::{
        CreateOrderRequest, LineItem, OrderState, order_service_client::OrderServiceClient,
    };
    use shopmesh::api::user::v1::CreateUserRequest;

    let ca = Ca::new("mesh CA").expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let dbs = [
        testing::database(backend, "pin-user").await,
        testing::database(backend, "pin-catalog").await,
        testing::database(backend, "pin-payment").await,
        testing::database(backend, "pin-impostor").await,
        testing::database(backend, "pin-order").await,
        testing::database(backend, "pin-order2").await,
    ];
    let config = UserConfig::new(testing::ANY_PORT, dbs[0].url.clone());
    let user = spawn_as::<User>(&ca, dir, "shopmesh-user", config).await;
    let config = shopmesh_catalog::CatalogConfig {
        listen: testing::ANY_PORT,
        database_url: dbs[1].url.clone(),
        database_read_url: None,
    };
    let catalog = spawn_as::<shopmesh_catalog::Catalog>(&ca, dir, "shopmesh-catalog", config).await;
    let payment =
        spawn_as::<shopmesh_payment::Payment>(&ca, dir, "shopmesh-payment", payment_config(&dbs[2])).await;
    // A real payment service with a valid certificate of the mesh's CA and trust domain, but
    // another workload's identity: what a pod that gets payment's traffic (a reused pod IP,
    // labels matching the headless Service) would present.
    let impostor =
        spawn_as::<shopmesh_payment::Payment>(&ca, dir, "shopmesh-gateway", payment_config(&dbs[3])).await;

    let mut users = UserServiceClient::new(mesh_channel(&ca, dir, "shopmesh-gateway", user.addr));
    let user_id = users
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            request_id: String::new(),
        })
        .await
        .expect("create user")
        .into_inner()
        .id;
    let mut products = CatalogServiceClient::new(mesh_channel(&ca, dir, "shopmesh-admin", catalog.addr));
    let product = Product {
        sku: "BOOK-42".into(),
        display_name: "A book".into(),
        unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
        active: true,
        ..Product::default()
    };
    products.create_product(CreateProductRequest { product: Some(product) }).await.expect("create product");
    let order_request = |request_id: &str| CreateOrderRequest {
        user_id: user_id.clone(),
        request_id: request_id.into(),
        line_items: vec![LineItem { sku: "BOOK-42".into(), quantity: 1, unit_price: None }],
    };

    // Pointed at the impostor, the order service refuses its handshake: no charge is sent
    // and no answer of the impostor's is believed.
    let fooled = order_calling(&ca, dir, &dbs[4], &user, &catalog, &impostor).await;
    let mut orders = OrderServiceClient::new(mesh_channel(&ca, dir, "shopmesh-gateway", fooled.addr));
    let status =
        orders.create_order(order_request("to-the-impostor")).await.expect_err("not paid by an impostor");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let charged = shopmesh::mesh::db::connect(&dbs[3].url, &testing::mesh_config()).expect("pool");
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM payments").fetch_one(&*charged).await.expect("count");
    assert_eq!(n, 0, "the impostor was sent a charge");
    charged.close().await;

    // The genuine payment service (shopmesh-payment, the ID derived from shopmesh-order's own
    // by the chart's naming) is accepted.
    let genuine = order_calling(&ca, dir, &dbs[5], &user, &catalog, &payment).await;
    let mut orders = OrderServiceClient::new(mesh_channel(&ca, dir, "shopmesh-gateway", genuine.addr));
    let order = orders.create_order(order_request("to-payment")).await.expect("paid").into_inner();
    assert_eq!(order.state(), OrderState::Paid, "{order:?}");

    for service in [fooled, genuine, impostor, payment, catalog, user] {
        service.stop().await.expect("clean stop");
    }
    for db in dbs {
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_service_refuses_upstreams_of_another_identity() {
    for backend in testing::backends() {
        impostors_are_refused(backend).await;
    }
}

#[tokio::test]
async fn handshakes_in_progress_are_capped() {
    use tokio::io::AsyncReadExt as _;
    pki::metrics();
    let db = testing::database(Backend::Sqlite, "mtls-pending").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mesh CA").expect("ca");
    let mut security = pki::security(dir.path(), &workload(&ca, "shopmesh-user"));
    // Long enough that only the cap can close a silent connection during the test.
    security.tls_handshake_timeout = Duration::from_secs(300);
    security.tls_max_pending_handshakes = 2;
    let (user, _probe) = start_user(&db, security).await;
    let addr = user.addr;

    // Two connections that never send a ClientHello take both handshake slots; connections
    // are accepted in order, so the third is over the cap and closed at once.
    let idle = [
        tokio::net::TcpStream::connect(addr).await.expect("connect"),
        tokio::net::TcpStream::connect(addr).await.expect("connect"),
    ];
    let mut third = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(60), third.read(&mut byte))
        .await
        .expect("the connection over the cap is closed, not left to the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    assert!(
        pki::counted("shopmesh_server_tls_handshake_failures_total", &[("reason", "too_many_handshakes")])
            >= 1.0,
        "{}",
        pki::metrics().render()
    );

    // Once the silent peers go, their slots are free and a valid client is served again.
    drop(idle);
    let valid = client_config(&ca.cert_pem(), Some(&workload(&ca, "shopmesh-order")));
    let served = async {
        while handshake(addr, valid.clone()).await != Outcome::Served {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), served).await.expect("served once the slots are free");
    user.stop().await.expect("stops cleanly");
}
