//! Callers from outside the mesh: bearer tokens (JWTs) checked at the server, object-level
//! access by the token's subject, and the limits every caller meets (message and metadata
//! size, per-caller rate), against the real services on 127.0.0.1 ports.
//!
//! Keys are fixed test PEMs (`tests/fixtures/jwt/`); tokens are signed here, with
//! `jsonwebtoken`, as an identity provider would.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CancelOrderRequest, CreateOrderRequest, GetOrderRequest, LineItem, ListOrdersRequest, OrderState,
    order_service_client::OrderServiceClient,
};
use shopmesh::api::payment::v1::{ListPaymentsRequest, payment_service_client::PaymentServiceClient};
use shopmesh::api::user::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User,
    user_service_client::UserServiceClient,
};
use shopmesh::mesh::config::{JwtConfig, MeshConfig, TokenRequirement};
use shopmesh::mesh::ids::new_id;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_order::OrderConfig;
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use tonic::transport::Channel;

#[path = "common/pki.rs"]
mod pki;
use shopmesh::api::catalog::v1::{
    CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
};
use shopmesh::mesh::security::certificates::Ca;
use shopmesh_catalog::CatalogConfig;
use tonic::{Code, Request};

const ISSUER: &str = "https://id.shopmesh.test";
const AUDIENCE: &str = "shopmesh";
const REJECTED: &str = "missing or invalid bearer token";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read fixture")
}

fn jwt(require: TokenRequirement) -> JwtConfig {
    JwtConfig {
        jwt_jwks: Some(fixture("jwks.json")),
        jwt_issuer: Some(ISSUER.into()),
        jwt_audience: Some(AUDIENCE.into()),
        jwt_require: require,
        ..JwtConfig::default()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

/// Claims of a token that is valid for ten minutes.
fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600 })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa.pem")).expect("rsa key")
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&read("ec.pem")).expect("ec key")
}

fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(&read("ed25519.pem")).expect("ed25519 key")
}

/// A valid RS256 token for `sub`.
fn token_for(sub: &str) -> String {
    sign(Algorithm::RS256, "rsa-1", &rsa(), &claims(sub))
}

/// `message` with `authorization: Bearer <token>`.
fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor })
}

fn order_of(user_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user_id.into(),
        line_items: vec![LineItem { sku: "TEA".into(), quantity: 2, unit_price: usd(450) }],
        request_id: new_id(),
    }
}

/// The policy of the tests with mutual TLS: any workload of the namespace may call any method
/// (which rule allows what is `authz.rs`'s and `mtls.rs`'s to test), and the gateway is an edge:
/// it acts for end users, so each of its calls must carry the user's token.
const POLICY: &str = r#"{
  "rules": [ {
    "callers": ["spiffe://cluster.local/ns/default/sa/*"],
    "methods": ["/shopmesh.user.v1.UserService/*", "/shopmesh.order.v1.OrderService/*",
                "/shopmesh.payment.v1.PaymentService/*", "/shopmesh.catalog.v1.CatalogService/*"]
  } ],
  "edges": ["spiffe://cluster.local/ns/default/sa/shopmesh-gateway"]
}"#;

/// The user, payment, catalog and order services as the chart runs them with tokens on: mutual
/// TLS between them, each its own workload identity, the policy above, tokens required of
/// callers without a mesh identity. End users come through the edge (`shopmesh-gateway`) with
/// their tokens; `shopmesh-admin` is a workload of the mesh acting for itself (a sign-up flow,
/// an operator's tool).
struct Mesh {
    services: Vec<Spawned>,
    dbs: Vec<TestDb>,
    _pki: tempfile::TempDir,
    /// Clients as the edge, for end users' calls.
    users: UserServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    /// Clients as a workload of the mesh.
    mesh_users: UserServiceClient<Channel>,
    mesh_payments: PaymentServiceClient<Channel>,
}

async fn start(backend: Backend) -> Mesh {
    let pki_dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("trust boundaries CA").expect("ca");
    let policy = pki_dir.path().join("policy.json");
    std::fs::write(&policy, POLICY).expect("write the policy");
    let as_workload = |sa: &str| {
        let mut mesh = MeshConfig { jwt: jwt(TokenRequirement::Unidentified), ..testing::mesh_config() };
        mesh.security = pki::security(&pki_dir.path().join(sa), &pki::workload(&ca, sa));
        mesh.security.authz_policy = Some(policy.clone());
        testing::mesh(mesh)
    };
    let client = |sa: &str, addr| {
        pki::channel(addr, pki::client_config(&ca.cert_pem(), Some(&pki::workload(&ca, sa))))
    };

    let user_db = testing::database(backend, "user").await;
    let payment_db = testing::database(backend, "payment").await;
    let order_db = testing::database(backend, "order").await;
    let catalog_db = testing::database(backend, "catalog").await;

    let config = UserConfig::new(testing::ANY_PORT, user_db.url.clone());
    let user =
        testing::spawn_service_probed::<shopmesh_user::User>(&as_workload("shopmesh-user"), config).await.0;
    let config = PaymentConfig {
        listen: testing::ANY_PORT,
        database_url: payment_db.url.clone(),
        database_read_url: None,
        payment_limit_minor: 100_000,
        payment_currencies: vec!["USD".into()],
        payment_latency: Duration::ZERO,
        // The simulated processor's ledger beside payment's tables: this test does not read it.
        processor_ledger_url: payment_db.url.clone(),
        payment_processing_lease: Duration::from_secs(10),
    };
    let payment =
        testing::spawn_service_probed::<shopmesh_payment::Payment>(&as_workload("shopmesh-payment"), config)
            .await
            .0;
    let config = CatalogConfig {
        listen: testing::ANY_PORT,
        database_url: catalog_db.url.clone(),
        database_read_url: None,
    };
    let catalog =
        testing::spawn_service_probed::<shopmesh_catalog::Catalog>(&as_workload("shopmesh-catalog"), config)
            .await
            .0;
    // The catalog sells the tea ordered here; products are the mesh's to create.
    let tea = Product {
        sku: "TEA".into(),
        display_name: "Tea".into(),
        unit_price: usd(450),
        active: true,
        ..Product::default()
    };
    CatalogServiceClient::new(client("shopmesh-admin", catalog.addr))
        .create_product(CreateProductRequest { product: Some(tea) })
        .await
        .expect("the mesh creates a product");
    let config = OrderConfig {
        listen: testing::ANY_PORT,
        database_url: order_db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl: Duration::from_secs(1),
        reconcile: Default::default(),
    };
    let order = testing::spawn_service_probed::<shopmesh_order::Order>(
        &as_workload("shopmesh-order").with_upstreams(
            Upstreams::new().at("user", user.url()).at("catalog", catalog.url()).at("payment", payment.url()),
        ),
        config,
    )
    .await
    .0;
    let edge = |addr| client("shopmesh-gateway", addr);
    Mesh {
        users: UserServiceClient::new(edge(user.addr)),
        orders: OrderServiceClient::new(edge(order.addr)),
        payments: PaymentServiceClient::new(edge(payment.addr)),
        mesh_users: UserServiceClient::new(client("shopmesh-admin", user.addr)),
        mesh_payments: PaymentServiceClient::new(client("shopmesh-admin", payment.addr)),
        services: vec![order, catalog, payment, user],
        dbs: vec![user_db, payment_db, order_db, catalog_db],
        _pki: pki_dir,
    }
}

impl Mesh {
    async fn stop(self) {
        for service in self.services {
            service.stop().await.expect("service stops cleanly");
        }
        for db in self.dbs {
            db.drop_database().await;
        }
    }

    /// A user created by a workload of the mesh (no token), as a sign-up flow would.
    async fn new_user(&mut self, email: &str) -> User {
        let req =
            CreateUserRequest { email: email.into(), display_name: "Test".into(), request_id: String::new() };
        self.mesh_users.create_user(req).await.expect("create user").into_inner()
    }
}

/// Tokens that must never be accepted, each with what is wrong with it.
fn bad_tokens(sub: &str) -> Vec<(&'static str, String)> {
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let with = |patch: serde_json::Value| {
        let mut c = claims(sub);
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let public_pem = read("rsa.pub.pem");
    vec![
        ("expired", sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "exp": now() - 3600 })))),
        ("not yet valid", sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "nbf": now() + 3600 })))),
        ("no exp", sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "exp": null })))),
        (
            "valid for 100 years, over --jwt-max-lifetime",
            sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "exp": now() + 100 * 365 * 86_400 }))),
        ),
        (
            "valid for 25 hours, over --jwt-max-lifetime",
            sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "exp": now() + 25 * 3600 }))),
        ),
        (
            "no iat, so no lifetime to check",
            sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "iat": null }))),
        ),
        (
            "issued an hour from now",
            sign(
                Algorithm::RS256,
                "rsa-1",
                &rsa(),
                &with(json!({ "iat": now() + 3600, "exp": now() + 4000 })),
            ),
        ),
        ("no sub", sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "sub": null })))),
        (
            "wrong issuer",
            sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "iss": "https://evil.test" }))),
        ),
        ("wrong audience", sign(Algorithm::RS256, "rsa-1", &rsa(), &with(json!({ "aud": "someone-else" })))),
        ("unknown kid", sign(Algorithm::RS256, "rsa-2", &rsa(), &claims(sub))),
        (
            "signed by another key",
            sign(
                Algorithm::RS256,
                "rsa-1",
                &EncodingKey::from_rsa_pem(&read("rsa-other.pem")).expect("key"),
                &claims(sub),
            ),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({ "alg": "none", "typ": "JWT", "kid": "rsa-1" })),
                b64(&claims(sub))
            ),
        ),
        (
            "HS256 with the RSA public key as secret",
            sign(
                Algorithm::HS256,
                "rsa-1",
                &EncodingKey::from_secret(&public_pem).expect("secret"),
                &claims(sub),
            ),
        ),
        ("RS384, not on the allow-list", sign(Algorithm::RS384, "rsa-1", &rsa(), &claims(sub))),
        ("ES256 claiming the RSA key", sign(Algorithm::ES256, "rsa-1", &ec(), &claims(sub))),
        ("RS256 claiming the EC key", sign(Algorithm::RS256, "ec-1", &rsa(), &claims(sub))),
        ("not a JWT", "abc.def".into()),
    ]
}

#[tokio::test]
async fn tokens_are_checked_and_callers_reach_only_their_own_objects() {
    for backend in testing::backends() {
        let mut m = start(backend).await;
        let a = m.new_user("a@example.com").await;
        let b = m.new_user("b@example.com").await;
        let (tok_a, tok_b) = (token_for(&a.id), sign(Algorithm::ES256, "ec-1", &ec(), &claims(&b.id)));

        // Valid tokens, each key type: the handler sees the subject and lets it order for itself.
        let own =
            m.orders.create_order(bearer(order_of(&a.id), &tok_a)).await.expect("A orders").into_inner();
        assert_eq!(own.state(), OrderState::Paid, "{backend:?}");
        let theirs =
            m.orders.create_order(bearer(order_of(&b.id), &tok_b)).await.expect("B orders").into_inner();
        let tok_a_ed = sign(Algorithm::EdDSA, "ed-1", &ed(), &claims(&a.id));
        m.orders
            .get_order(bearer(GetOrderRequest { id: own.id.clone() }, &tok_a_ed))
            .await
            .expect("an EdDSA token works too");
        let day_long =
            json!({ "sub": a.id, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 23 * 3600 });
        m.orders
            .get_order(bearer(
                GetOrderRequest { id: own.id.clone() },
                &sign(Algorithm::RS256, "rsa-1", &rsa(), &day_long),
            ))
            .await
            .expect("a token within --jwt-max-lifetime (24h) works");

        // The edge without a token, or with any bad one: UNAUTHENTICATED, and nothing written.
        let no_token = m.orders.create_order(order_of(&a.id)).await.expect_err("no token");
        assert_eq!(no_token.code(), Code::Unauthenticated, "{backend:?}: {no_token:?}");
        assert!(no_token.message().contains("bearer token"), "{backend:?}: {no_token:?}");
        for (what, token) in bad_tokens(&a.id) {
            let err = m.orders.create_order(bearer(order_of(&a.id), &token)).await.expect_err(what);
            assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: {what}: {err:?}");
            assert_eq!(err.message(), REJECTED, "{backend:?}: {what}: no detail leaks");
        }
        let mut basic = Request::new(order_of(&a.id));
        basic.metadata_mut().insert("authorization", "Basic YTpi".parse().expect("ascii"));
        let err = m.orders.create_order(basic).await.expect_err("not a bearer token");
        assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}");
        let listed = m
            .orders
            .list_orders(bearer(ListOrdersRequest { user_id: a.id.clone(), ..Default::default() }, &tok_a))
            .await
            .expect("A lists its orders")
            .into_inner()
            .orders;
        assert_eq!(
            listed.iter().map(|o| &o.id).collect::<Vec<_>>(),
            [&own.id],
            "{backend:?}: nothing else written"
        );

        // Leaving the token out never gives the edge's caller more than sending one: every call
        // that would reach another user's data with A's token is UNAUTHENTICATED without one.
        let unauthenticated = |r: Result<(), tonic::Status>, what: &str| {
            let err = r.err().unwrap_or_else(|| panic!("{backend:?}: {what} without a token succeeded"));
            assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: {what}: {err:?}");
        };
        unauthenticated(m.users.list_users(ListUsersRequest::default()).await.map(drop), "list users");
        unauthenticated(m.users.get_user(GetUserRequest { id: b.id.clone() }).await.map(drop), "read B");
        let rename_b = UpdateUserRequest {
            user: Some(User { display_name: "Mallory".into(), ..b.clone() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        };
        unauthenticated(m.users.update_user(rename_b).await.map(drop), "rename B");
        let list_b = ListOrdersRequest { user_id: b.id.clone(), ..Default::default() };
        unauthenticated(m.orders.list_orders(list_b).await.map(drop), "list B's orders");
        unauthenticated(
            m.orders.get_order(GetOrderRequest { id: theirs.id.clone() }).await.map(drop),
            "read B's order",
        );
        let payments_of_b = ListPaymentsRequest { order_id: theirs.id.clone(), ..Default::default() };
        unauthenticated(m.payments.list_payments(payments_of_b).await.map(drop), "read B's payments");

        // Orders: another's, or one that does not exist, are both PERMISSION_DENIED (AIP-211).
        let denied = |r: Result<(), tonic::Status>, what: &str| {
            let err = r.err().unwrap_or_else(|| panic!("{backend:?}: {what} succeeded"));
            assert_eq!(err.code(), Code::PermissionDenied, "{backend:?}: {what}: {err:?}");
        };
        denied(
            m.orders.get_order(bearer(GetOrderRequest { id: theirs.id.clone() }, &tok_a)).await.map(drop),
            "get B's order",
        );
        denied(
            m.orders.get_order(bearer(GetOrderRequest { id: new_id() }, &tok_a)).await.map(drop),
            "get a missing order",
        );
        let list_b = ListOrdersRequest { user_id: b.id.clone(), ..Default::default() };
        denied(m.orders.list_orders(bearer(list_b, &tok_a)).await.map(drop), "list B's orders");
        denied(m.orders.create_order(bearer(order_of(&b.id), &tok_a)).await.map(drop), "order for B");
        let cancel_b = CancelOrderRequest { id: theirs.id.clone(), request_id: new_id() };
        denied(m.orders.cancel_order(bearer(cancel_b, &tok_a)).await.map(drop), "cancel B's order");
        let cancel_missing = CancelOrderRequest { id: new_id(), request_id: new_id() };
        denied(
            m.orders.cancel_order(bearer(cancel_missing, &tok_a)).await.map(drop),
            "cancel a missing order",
        );
        let still = m.orders.get_order(bearer(GetOrderRequest { id: theirs.id.clone() }, &tok_b)).await;
        assert_eq!(still.expect("B reads its order").into_inner().state(), OrderState::Paid, "{backend:?}");
        let cancel_own = CancelOrderRequest { id: own.id.clone(), request_id: new_id() };
        let cancelled = m.orders.cancel_order(bearer(cancel_own, &tok_a)).await.expect("A cancels its own");
        assert_eq!(cancelled.into_inner().state(), OrderState::Cancelled, "{backend:?}");

        // Users: only one's own; listing and creating are the mesh's.
        let got =
            m.users.get_user(bearer(GetUserRequest { id: a.id.clone() }, &tok_a)).await.expect("A reads A");
        assert_eq!(got.into_inner().id, a.id);
        denied(
            m.users.get_user(bearer(GetUserRequest { id: b.id.clone() }, &tok_a)).await.map(drop),
            "read B",
        );
        denied(
            m.users.get_user(bearer(GetUserRequest { id: new_id() }, &tok_a)).await.map(drop),
            "read a missing user",
        );
        denied(m.users.list_users(bearer(ListUsersRequest::default(), &tok_a)).await.map(drop), "list users");
        let rename = |user: &User, name: &str| UpdateUserRequest {
            user: Some(User { display_name: name.into(), ..user.clone() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["display_name".into()] }),
        };
        denied(m.users.update_user(bearer(rename(&b, "Mallory"), &tok_a)).await.map(drop), "rename B");
        let renamed = m.users.update_user(bearer(rename(&a, "Alice"), &tok_a)).await.expect("A renames A");
        assert_eq!(renamed.into_inner().display_name, "Alice");
        let reactivate = UpdateUserRequest {
            user: Some(User { active: true, ..a.clone() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["active".into()] }),
        };
        denied(m.users.update_user(bearer(reactivate, &tok_a)).await.map(drop), "change own active state");
        let create = CreateUserRequest {
            email: "c@example.com".into(),
            display_name: "C".into(),
            request_id: String::new(),
        };
        denied(m.users.create_user(bearer(create, &tok_a)).await.map(drop), "create a user with a token");
        // Payments: the mesh's alone.
        let payments_of_own = ListPaymentsRequest { order_id: own.id.clone(), ..Default::default() };
        denied(m.payments.list_payments(bearer(payments_of_own, &tok_a)).await.map(drop), "read payments");
        let paid = m
            .mesh_payments
            .list_payments(ListPaymentsRequest { order_id: own.id.clone(), ..Default::default() })
            .await;
        assert_eq!(paid.expect("the mesh reads payments").into_inner().payments.len(), 1, "{backend:?}");

        let read_b = m.mesh_users.get_user(GetUserRequest { id: b.id.clone() }).await;
        assert_eq!(
            read_b.expect("a workload of the mesh (no token) reads any user").into_inner().display_name,
            "Test"
        );
        let expired = &bad_tokens(&a.id)[0].1;
        let err = m
            .users
            .get_user(bearer(GetUserRequest { id: a.id.clone() }, expired))
            .await
            .expect_err("expired");
        assert_eq!(
            err.code(),
            Code::Unauthenticated,
            "{backend:?}: a bad token is refused at the user service too"
        );
        let err = m
            .mesh_users
            .get_user(bearer(GetUserRequest { id: a.id.clone() }, expired))
            .await
            .expect_err("expired, from a workload");
        assert_eq!(err.code(), Code::Unauthenticated, "{backend:?}: a bad token is refused whoever sends it");

        m.stop().await;
    }
}

/// A user service with small limits: 4 KiB messages and metadata, and 5 calls per caller
/// before a bucket that refills one token per 1000 s (so nothing refills during the test,
/// however slow the machine).
async fn limited_user_service(db: &TestDb) -> Spawned {
    let mut mesh = MeshConfig { jwt: jwt(TokenRequirement::Never), ..testing::mesh_config() };
    mesh.server.max_message_bytes = 4096;
    mesh.server.max_metadata_bytes = 4096;
    mesh.server.rate_limit_rps = 0.001;
    mesh.server.rate_limit_burst = 5;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), db.url.clone());
    testing::spawn_service::<shopmesh_user::User>(&testing::mesh(mesh), config).await
}

#[tokio::test]
async fn limits_answer_resource_exhausted_per_caller() {
    let db = testing::database(Backend::Sqlite, "limits").await;
    // Users are created by the mesh: here a second user service over the same database, with
    // tokens off, where every caller is the mesh (a token-optional service serves no one's data
    // to a caller without a token).
    let signup = testing::spawn_service::<shopmesh_user::User>(
        &testing::mesh(testing::mesh_config()),
        UserConfig::new(testing::ANY_PORT, db.url.clone()),
    )
    .await;
    let create = |email: &str| {
        let req =
            CreateUserRequest { email: email.into(), display_name: "T".into(), request_id: String::new() };
        let url = signup.url();
        async move {
            let mut users = UserServiceClient::connect(url).await.expect("connect");
            users.create_user(req).await.expect("create user").into_inner()
        }
    };
    let (a, b) = (create("a@example.com").await, create("b@example.com").await);
    signup.stop().await.expect("stops cleanly");
    let service = limited_user_service(&db).await;
    let mut users = UserServiceClient::connect(service.url()).await.expect("connect");
    // Two calls from this address (no token): its bucket has 3 left.
    for _ in 0..2 {
        let anonymous = users.get_user(GetUserRequest { id: a.id.clone() }).await.expect_err("anonymous");
        assert_eq!(
            anonymous.code(),
            Code::Unauthenticated,
            "no token and no identity reads no one: {anonymous:?}"
        );
    }
    let (tok_a, tok_b) = (token_for(&a.id), token_for(&b.id));

    // A message over --max-message-bytes.
    let big = CreateUserRequest {
        email: "big@example.com".into(),
        display_name: "x".repeat(8000),
        request_id: String::new(),
    };
    let err = users.create_user(bearer(big, &token_for("big-sender"))).await.expect_err("too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Metadata over --max-metadata-bytes, but under the HTTP/2 cap: refused by the layer, before
    // the rate limiter counts it.
    let mut padded = bearer(GetUserRequest { id: a.id.clone() }, &tok_a);
    padded.metadata_mut().insert("x-padding", "p".repeat(6000).parse().expect("ascii"));
    let err = users.get_user(padded).await.expect_err("metadata too large");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("metadata"), "{err:?}");

    // Metadata over the HTTP/2 cap (16 KiB here): h2 answers HTTP 431 before any layer runs, and
    // a tonic client reports UNKNOWN. This is why the layer exists; if h2 or tonic ever answer
    // differently, the README's "Limits" must say so.
    let mut huge = bearer(GetUserRequest { id: a.id.clone() }, &tok_a);
    huge.metadata_mut().insert("x-padding", "p".repeat(20_000).parse().expect("ascii"));
    let err = users.get_user(huge).await.expect_err("metadata over the HTTP/2 cap");
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(err.message().contains("431"), "{err:?}");

    // A's rate: 5 calls, then RESOURCE_EXHAUSTED with the time until its next token.
    for i in 0..5 {
        let got = users.get_user(bearer(GetUserRequest { id: a.id.clone() }, &tok_a)).await;
        assert!(got.is_ok(), "call {i} within A's burst: {got:?}");
    }
    let err =
        users.get_user(bearer(GetUserRequest { id: a.id.clone() }, &tok_a)).await.expect_err("over A's rate");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let pushback: u64 = err
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("milliseconds");
    assert!((1..=1_000_000).contains(&pushback) && pushback > 900_000, "{pushback} ms");

    // Meanwhile B, and calls without a token from this address, keep their own buckets.
    for _ in 0..3 {
        users
            .get_user(bearer(GetUserRequest { id: b.id.clone() }, &tok_b))
            .await
            .expect("B is not limited by A");
    }
    let anonymous = users.get_user(GetUserRequest { id: a.id.clone() }).await.expect_err("anonymous");
    assert_eq!(
        anonymous.code(),
        Code::Unauthenticated,
        "this address has tokens left: the call reaches the handler, which reads no one for nobody"
    );
    // And health is never limited.
    for _ in 0..10 {
        testing::wait_serving(service.addr, shopmesh_user::User::GRPC_SERVICE).await;
    }

    service.stop().await.expect("stops cleanly");
}

/// `CreateUserRequest` with `display_name` as raw bytes, so a test can send what a string
/// field may not hold.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreateUser {
    #[prost(string, tag = "1")]
    email: String,
    #[prost(bytes = "vec", tag = "2")]
    display_name: Vec<u8>,
}

#[tokio::test]
async fn an_undecodable_message_is_invalid_argument_and_says_nothing_of_the_decoder() {
    let db = testing::database(Backend::Sqlite, "undecodable").await;
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    let user =
        testing::spawn_service::<shopmesh_user::User>(&testing::mesh(testing::mesh_config()), config).await;
    let channel =
        tonic::transport::Endpoint::from_shared(user.url()).expect("url").connect().await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    // Invalid UTF-8 in a string field: prost refuses to decode the message.
    let request = RawCreateUser { email: "ada@example.com".into(), display_name: vec![b'A', 0xff, 0xfe] };
    grpc.ready().await.expect("ready");
    let status = grpc
        .unary::<_, shopmesh::api::user::v1::User, _>(
            Request::new(request),
            http::uri::PathAndQuery::from_static("/shopmesh.user.v1.UserService/CreateUser"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("an undecodable request is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message().to_ascii_lowercase();
    for leaked in ["utf-8", "utf8", "decode", "display_name", "createuserrequest", "invalid string"] {
        assert!(!message.contains(leaked), "the answer shows the decoder's {leaked:?}: {status:?}");
    }
    // Nothing was written; the service answers the next caller as usual.
    let mut users = UserServiceClient::new(channel);
    let listed = users.list_users(ListUsersRequest { page_size: 10, page_token: String::new() }).await;
    assert!(listed.expect("list").into_inner().users.is_empty());
    user.stop().await.expect("clean stop");
    db.drop_database().await;
}

/// A raw HTTP/2 connection to `addr` (the `h2` crate, as an attacker's client would be), with
/// its connection task running; a PING round trip on it returns only once the server has read
/// every frame sent before it.
async fn raw_h2(addr: std::net::SocketAddr) -> (h2::client::SendRequest<bytes::Bytes>, h2::PingPong) {
    raw_h2_from(std::net::Ipv4Addr::LOCALHOST.into(), addr).await
}

/// Opens a gRPC call to `path` that sends its HEADERS and never its message (nor ends the stream).
async fn headers_only(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    *send = send.clone().ready().await.expect("a free stream");
    send.send_request(request, false).expect("send headers")
}

#[tokio::test]
async fn calls_that_never_send_their_message_take_no_slot_and_are_answered_after_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let db = testing::database(Backend::Sqlite, "slow-streams").await;
    let mut mesh = testing::mesh_config();
    mesh.server.max_concurrent_requests = 4;
    mesh.server.request_read_timeout = READ_TIMEOUT;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), db.url.clone());
    let service = testing::spawn_service::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    let addr = service.addr;
    let mut users = UserServiceClient::connect(service.url()).await.expect("connect");
    let user = users
        .create_user(CreateUserRequest {
            email: "s@example.com".into(),
            display_name: "S".into(),
            request_id: String::new(),
        })
        .await
        .expect("create user")
        .into_inner();

    // Two connections × 8 calls that send HEADERS and never DATA: four times the service's slots.
    let mut held = Vec::new();
    let mut connections = Vec::new();
    for _ in 0..2 {
        let (mut send, mut ping) = raw_h2(addr).await;
        for _ in 0..8 {
            held.push(headers_only(&mut send, addr, "/shopmesh.user.v1.UserService/GetUser").await);
        }
        ping.ping(h2::Ping::opaque()).await.expect("the server has read every HEADERS frame");
        connections.push((send, ping));
    }
    // Waiting for a message takes no slot: another caller is served at once, not after the
    // read timeout (before, every slot stayed taken until the stalled clients went away).
    let got = users.get_user(GetUserRequest { id: user.id.clone() }).await;
    assert!(got.is_ok(), "a call beside 16 stalled ones: {got:?}");
    // Each stalled call is answered DEADLINE_EXCEEDED once the read timeout has passed.
    for (response, _body) in held {
        let response = tokio::time::timeout(READ_TIMEOUT + Duration::from_secs(30), response)
            .await
            .expect("a stalled call is answered after the read timeout")
            .expect("a response");
        let status = response.headers().get("grpc-status").map(|v| v.as_bytes().to_vec());
        assert_eq!(status.as_deref(), Some(&b"4"[..]), "DEADLINE_EXCEEDED: {response:?}");
    }
    users.get_user(GetUserRequest { id: user.id.clone() }).await.expect("served after the timeout too");
    drop(connections);
    service.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn the_probe_port_has_the_same_http2_limits_as_the_service_port() {
    let db = testing::database(Backend::Sqlite, "probe-limits").await;
    let mut mesh = testing::mesh_config();
    mesh.server.max_concurrent_streams = 7;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), db.url.clone());
    let (service, probe) =
        testing::spawn_service_probed::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    for (port, addr) in [("service", service.addr), ("probe", probe)] {
        let (send, mut ping) = raw_h2(addr).await;
        // The server's SETTINGS come before its PING ack.
        ping.ping(h2::Ping::opaque()).await.expect("ping");
        assert_eq!(send.current_max_send_streams(), 7, "--max-concurrent-streams on the {port} port");
    }
    service.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn bytes_of_messages_being_read_are_bounded() {
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let db = testing::database(Backend::Sqlite, "read-budget").await;
    let mut mesh = testing::mesh_config();
    mesh.server.max_message_bytes = 4096;
    mesh.server.max_buffered_request_bytes = 3000;
    mesh.server.request_read_timeout = READ_TIMEOUT;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), db.url.clone());
    let service = testing::spawn_service::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    let addr = service.addr;
    let mut users = UserServiceClient::connect(service.url()).await.expect("connect");
    let create = |email: &str| CreateUserRequest {
        email: email.into(),
        display_name: "D".into(),
        request_id: String::new(),
    };

    // A client sends 2990 bytes of a 4000-byte message, then stalls: they stay buffered.
    let (mut send, mut ping) = raw_h2(addr).await;
    let (response, mut body) =
        headers_only(&mut send, addr, "/shopmesh.user.v1.UserService/CreateUser").await;
    let mut partial = vec![0u8, 0, 0, 0x0f, 0xa0];
    partial.resize(2990, b'x');
    body.send_data(bytes::Bytes::from(partial), false).expect("send part of the message");
    ping.ping(h2::Ping::opaque()).await.expect("the server has read the DATA");

    // Another message (some 30 bytes) does not fit beside them.
    let err = users.create_user(create("over@example.com")).await.expect_err("over the read budget");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // The stalled call is answered after the read timeout, and its bytes are given back.
    let response = tokio::time::timeout(READ_TIMEOUT + Duration::from_secs(30), response)
        .await
        .expect("answered after the read timeout")
        .expect("a response");
    assert_eq!(
        response.headers().get("grpc-status").map(|v| v.as_bytes().to_vec()).as_deref(),
        Some(&b"4"[..])
    );
    users.create_user(create("fits@example.com")).await.expect("fits once the stalled call is gone");
    drop((send, body));
    service.stop().await.expect("stops cleanly");
}

/// [`raw_h2`] from another loopback address, so the server sees another caller (its IP).
async fn raw_h2_from(
    local: std::net::IpAddr,
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<bytes::Bytes>, h2::PingPong) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(std::net::SocketAddr::new(local, 0)).expect("bind another loopback address");
    let tcp = socket.connect(addr).await.expect("connect");
    let (send, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let ping = connection.ping_pong().expect("ping_pong taken once");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (send.ready().await.expect("ready"), ping)
}

/// Opens `calls` calls to `path` on `send`, each sending `sent` bytes of a 4 000-byte message and
/// then stalling; returns them once the server has read every frame.
async fn stalled_calls(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    ping: &mut h2::PingPong,
    addr: std::net::SocketAddr,
    path: &str,
    calls: usize,
) -> Vec<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>)> {
    let mut held = Vec::new();
    for _ in 0..calls {
        let (response, mut body) = headers_only(send, addr, path).await;
        let mut partial = vec![0u8, 0, 0, 0x0f, 0xa0];
        partial.resize(3990, b'x');
        body.send_data(bytes::Bytes::from(partial), false).expect("send part of a message");
        held.push((response, body));
    }
    ping.ping(h2::Ping::opaque()).await.expect("the server has read the DATA");
    held
}

/// The status and message of a call answered within 10 s (well before the read timeout of the
/// tests that use it, so the answer was not the timeout's).
async fn answered(response: h2::client::ResponseFuture) -> (String, String) {
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered at once, not after the read timeout")
        .expect("a response");
    let header = |name: &str| {
        response.headers().get(name).map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default()
    };
    (header("grpc-status"), header("grpc-message"))
}

/// The health of `service` at `addr`, asked once within 10 s.
async fn health(addr: std::net::SocketAddr, service: &str) -> Result<i32, Code> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .map_err(|_| Code::Unavailable)?;
    let mut client = HealthClient::new(channel);
    let mut request = Request::new(HealthCheckRequest { service: service.into() });
    request.set_timeout(Duration::from_secs(10));
    client.check(request).await.map(|r| r.into_inner().status).map_err(|s| s.code())
}

#[tokio::test]
async fn one_client_cannot_take_the_read_buffer_from_others_nor_starve_health() {
    // Long: every answer asserted below comes long before it.
    const READ_TIMEOUT: Duration = Duration::from_secs(60);
    let db = testing::database(Backend::Sqlite, "read-shares").await;
    let mut mesh = testing::mesh_config();
    mesh.server.max_message_bytes = 4096;
    mesh.server.max_buffered_request_bytes = 40_000;
    mesh.server.max_buffered_request_bytes_per_connection = 8_000;
    mesh.server.max_buffered_request_bytes_per_caller = 12_000;
    mesh.server.request_read_timeout = READ_TIMEOUT;
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    let (service, probe) =
        testing::spawn_service_probed::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    let addr = service.addr;
    let attacker: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let path = "/shopmesh.user.v1.UserService/CreateUser";

    // One connection opens 16 calls of ~4 KB and never finishes them (64 KB, more than the
    // port's 40 KB): the connection's share holds two; the others are answered at once.
    let (mut send, mut ping) = raw_h2_from(attacker, addr).await;
    let mut first = stalled_calls(&mut send, &mut ping, addr, path, 16).await;
    for (response, _) in first.drain(2..) {
        let (code, message) = answered(response).await;
        assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
        assert!(message.contains("connection"), "says whose share is full: {message}");
        assert!(!message.contains("too many calls"), "says what happened: {message}");
    }
    // Its second connection holds one more, then the caller's share (all its connections) is full.
    let (mut send2, mut ping2) = raw_h2_from(attacker, addr).await;
    let mut second = stalled_calls(&mut send2, &mut ping2, addr, path, 4).await;
    for (response, _) in second.drain(1..) {
        let (code, message) = answered(response).await;
        assert_eq!(code, "8", "RESOURCE_EXHAUSTED: {message}");
        assert!(message.contains("caller"), "says whose share is full: {message}");
    }

    // Everyone else is served: calls, and health on both ports.
    let mut users = UserServiceClient::connect(service.url()).await.expect("connect");
    for i in 0..5 {
        let req = CreateUserRequest {
            email: format!("other-{i}@example.com"),
            display_name: "Other".into(),
            request_id: String::new(),
        };
        users.create_user(req).await.expect("another caller is served while one holds its share");
    }
    assert_eq!(health(addr, shopmesh_user::User::GRPC_SERVICE).await, Ok(1), "SERVING on the service port");
    assert_eq!(health(probe, shopmesh_user::User::GRPC_SERVICE).await, Ok(1), "SERVING on the probe port");

    // The probe port reads nothing but health: API calls stalled there hold nothing and are
    // answered UNIMPLEMENTED at once, and health stays answered.
    let (mut send3, mut ping3) = raw_h2_from(attacker, probe).await;
    for (response, _) in stalled_calls(&mut send3, &mut ping3, probe, path, 16).await {
        let (code, _) = answered(response).await;
        assert_eq!(code, "12", "UNIMPLEMENTED on the probe port");
    }
    // Health stalled by the same client takes no share of anyone's, and others' health is answered.
    let health_path = "/grpc.health.v1.Health/Check";
    let _stalled_health = stalled_calls(&mut send, &mut ping, addr, health_path, 8).await;
    assert_eq!(health(addr, shopmesh_user::User::GRPC_SERVICE).await, Ok(1));
    assert_eq!(health(probe, "").await, Ok(1));

    drop((first, second, send, send2, send3));
    service.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_caller_without_a_token_is_refused_before_it_holds_a_byte() {
    const READ_TIMEOUT: Duration = Duration::from_secs(60);
    let db = testing::database(Backend::Sqlite, "read-unauthenticated").await;
    let mut mesh = MeshConfig { jwt: jwt(TokenRequirement::Unidentified), ..testing::mesh_config() };
    mesh.server.max_message_bytes = 4096;
    mesh.server.max_buffered_request_bytes = 8_000;
    mesh.server.request_read_timeout = READ_TIMEOUT;
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    let service = testing::spawn_service::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    let addr = service.addr;
    let path = "/shopmesh.user.v1.UserService/GetUser";
    let (mut send, mut ping) = raw_h2_from("127.0.0.2".parse().expect("ip"), addr).await;
    for (response, _) in stalled_calls(&mut send, &mut ping, addr, path, 16).await {
        let (code, message) = answered(response).await;
        assert_eq!(code, "16", "UNAUTHENTICATED at once, unread: {message}");
    }
    // Nothing was held: a caller with a token sends a message as large as the whole buffer allows.
    let req =
        CreateUserRequest { email: "x".repeat(3000), display_name: "T".into(), request_id: String::new() };
    let mut users = UserServiceClient::connect(service.url()).await.expect("connect");
    let err =
        users.create_user(bearer(req, &token_for("someone"))).await.expect_err("a user creates no user");
    assert_eq!(err.code(), Code::PermissionDenied, "read in full and answered by the handler: {err:?}");
    service.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn without_mtls_no_token_is_nobody_and_tokens_need_mtls_between_services() {
    let user_db = testing::database(Backend::Sqlite, "anonymous-user").await;
    let order_db = testing::database(Backend::Sqlite, "anonymous-order").await;
    let optional =
        || testing::mesh(MeshConfig { jwt: jwt(TokenRequirement::Never), ..testing::mesh_config() });
    let user = testing::spawn_service::<shopmesh_user::User>(
        &optional(),
        UserConfig::new(testing::ANY_PORT, user_db.url.clone()),
    )
    .await;
    let catalog_db = testing::database(Backend::Sqlite, "anonymous-catalog").await;
    let catalog = testing::spawn_service::<shopmesh_catalog::Catalog>(
        &optional(),
        CatalogConfig {
            listen: testing::ANY_PORT,
            database_url: catalog_db.url.clone(),
            database_read_url: None,
        },
    )
    .await;

    // Tokens optional, no mTLS: a caller without a token proves nothing, so it changes nothing
    // and reads no one's data; it reads what is public.
    let mut products = CatalogServiceClient::connect(catalog.url()).await.expect("connect");
    let tea = Product {
        sku: "TEA".into(),
        display_name: "Tea".into(),
        unit_price: usd(450),
        active: true,
        ..Product::default()
    };
    let create = CreateProductRequest { product: Some(tea) };
    let err = products.create_product(create.clone()).await.expect_err("anonymous writes");
    assert_eq!(err.code(), Code::Unauthenticated, "the catalog is never writable by anyone: {err:?}");
    let err = products.create_product(bearer(create, &token_for("customer"))).await.expect_err("a user");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let listed = products
        .list_products(shopmesh::api::catalog::v1::ListProductsRequest::default())
        .await
        .expect("the catalog is public to read");
    assert!(listed.into_inner().products.is_empty(), "nothing was created");
    let mut users = UserServiceClient::connect(user.url()).await.expect("connect");
    let err = users.list_users(ListUsersRequest::default()).await.expect_err("anonymous lists users");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let req = CreateUserRequest {
        email: "a@example.com".into(),
        display_name: "A".into(),
        request_id: String::new(),
    };
    let err = users.create_user(req).await.expect_err("anonymous signs up");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A service that calls others refuses to start with tokens on and no mTLS, naming the fix:
    // its calls would carry no credential of its own.
    let config = OrderConfig {
        listen: testing::ANY_PORT,
        database_url: order_db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl: Duration::from_secs(1),
        reconcile: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(testing::ANY_PORT).await.expect("bind");
    let refused = shopmesh::mesh::server::run::<shopmesh_order::Order, _>(
        &optional().with_upstreams(
            Upstreams::new().at("user", user.url()).at("catalog", catalog.url()).at("payment", user.url()),
        ),
        config,
        shopmesh::mesh::service::Listeners::new(listener),
        std::future::pending(),
    )
    .await
    .expect_err("order with tokens and without mTLS");
    let refused = refused.to_string();
    for named in ["--tls-cert", "mutual TLS", "tls.enabled"] {
        assert!(refused.contains(named), "the refusal names {named}: {refused}");
    }
    for service in [user, catalog] {
        service.stop().await.expect("stops cleanly");
    }
}
