//! `shopmesh bench` as a harness runs it: the real binary against the user, payment, catalog and
//! order services on their own 127.0.0.1 ports and databases. Its report must add up, its OK
//! counts must match what the services stored (at the catalog's prices), and its record file
//! must name every order it created.

use std::collections::{BTreeMap, HashSet};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use shopmesh::api::catalog::v1::GetProductRequest;
use shopmesh::api::order::v1::order_service_server::{OrderService, OrderServiceServer};
use shopmesh::api::order::v1::{
    CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order,
    OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::payment::v1::{ListPaymentsRequest, payment_service_client::PaymentServiceClient};
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_order::OrderConfig;
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use tokio::process::Command;
use tonic::{Request, Response, Status};

mod common;
use common::free_addr;
#[path = "common/catalog.rs"]
mod catalog;
use catalog::Catalog;

/// The four services on 127.0.0.1:0, each with a database of its own.
struct Mesh {
    user: Spawned,
    payment: Spawned,
    catalog: Catalog,
    order: Spawned,
    dbs: Vec<TestDb>,
}

async fn start(backend: Backend) -> Mesh {
    let user_db = testing::database(backend, "user").await;
    let payment_db = testing::database(backend, "payment").await;
    let order_db = testing::database(backend, "order").await;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), user_db.url.clone());
    let user =
        testing::spawn_service::<shopmesh_user::User>(&testing::mesh(testing::mesh_config()), config).await;
    let config = PaymentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
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
        testing::spawn_service::<shopmesh_payment::Payment>(&testing::mesh(testing::mesh_config()), config)
            .await;
    let catalog = Catalog::start(backend).await;
    let config = OrderConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: order_db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl: Duration::from_secs(1),
        reconcile: Default::default(),
    };
    let order = testing::spawn_service::<shopmesh_order::Order>(
        &testing::mesh(testing::mesh_config()).with_upstreams(
            Upstreams::new().at("user", user.url()).at("catalog", catalog.url()).at("payment", payment.url()),
        ),
        config,
    )
    .await;
    Mesh { user, payment, catalog, order, dbs: vec![user_db, payment_db, order_db] }
}

impl Mesh {
    /// `--user … --order … --catalog …` pointing at this mesh.
    fn targets(&self) -> [String; 6] {
        [
            "--user".into(),
            self.user.url(),
            "--order".into(),
            self.order.url(),
            "--catalog".into(),
            self.catalog.url(),
        ]
    }

    async fn stop(self) {
        self.order.stop().await.expect("order stops");
        self.catalog.stop().await;
        self.payment.stop().await.expect("payment stops");
        self.user.stop().await.expect("user stops");
        for db in self.dbs {
            db.drop_database().await;
        }
    }
}

/// Runs `shopmesh bench args…` to the end. Async, so the services in this process keep serving.
async fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .arg("bench")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run shopmesh bench")
}

/// The JSON report of a run that must have succeeded.
fn report(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed with {}: {stderr}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// Answers by status code name.
fn codes(report: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(report["codes"].clone()).expect("codes")
}

/// Checks what every report must satisfy: the answers by code add up to the calls sent, and
/// sent plus not sent to the requests.
fn assert_adds_up(report: &Value) {
    let by_code: u64 = codes(report).values().sum();
    assert_eq!(by_code, count(report, "sent"), "codes add up to the calls sent: {report}");
    assert_eq!(count(report, "sent") + count(report, "not_sent"), count(report, "requests"), "{report}");
    let by_call: u64 = report["calls"]
        .as_object()
        .expect("calls")
        .values()
        .flat_map(|c| c.as_object().expect("codes of a call").values())
        .map(|n| n.as_u64().expect("count"))
        .sum();
    assert_eq!(by_call, by_code, "{report}");
}

/// The lines of a record file.
fn record(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("record file")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}")))
        .collect()
}

fn text<'a>(line: &'a Value, field: &str) -> &'a str {
    line[field].as_str().unwrap_or_else(|| panic!("no {field} in {line}"))
}

#[tokio::test]
async fn create_order_runs_match_the_record_and_the_databases() {
    for backend in testing::backends() {
        let mesh = start(backend).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orders.jsonl");
        let targets = mesh.targets();
        let mut args: Vec<&str> = targets.iter().map(String::as_str).collect();
        args.extend([
            "create-order",
            "--requests=40",
            "--concurrency=4",
            "--connections=2",
            "--users=3",
            "--warmup=200ms",
            "--json",
            "--record",
            path.to_str().expect("utf-8 path"),
        ]);
        let report = report(&bench(&args).await);
        assert_adds_up(&report);
        assert_eq!(count(&report, "requests"), 40, "{backend:?}: {report}");
        assert_eq!(codes(&report), BTreeMap::from([("OK".into(), 40)]), "{backend:?}: {report}");
        assert_eq!(report["mode"], "closed");
        assert_eq!(report["users"], 3);
        // No gRPC call over a loopback socket answers in under 20 µs: a smaller figure is a
        // broken clock or histogram, not a fast server.
        let (p50, max) = (report["latency_ms"]["p50"].as_f64(), report["latency_ms"]["max"].as_f64());
        assert!(p50.expect("p50") >= 0.02 && max.expect("max") >= p50.expect("p50"), "{report}");
        let warmup = count(&report, "warmup_requests");

        // Every CreateOrder, warm-up included, is one line with a fresh request id.
        let lines = record(&path);
        assert_eq!(lines.len() as u64, 40 + warmup, "{backend:?}");
        let request_ids: HashSet<&str> = lines.iter().map(|l| text(l, "request_id")).collect();
        assert_eq!(request_ids.len(), lines.len(), "request ids are unique");
        assert!(request_ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()), "UUID request ids");

        // Each line names an order that exists as recorded, and the users hold no others.
        let mut orders = OrderServiceClient::connect(mesh.order.url()).await.expect("order");
        let mut payments = PaymentServiceClient::connect(mesh.payment.url()).await.expect("payment");
        let mut catalog = mesh.catalog.client().await;
        let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
        for line in &lines {
            assert_eq!(text(line, "code"), "OK", "{line}");
            assert_eq!(text(line, "state"), "ORDER_STATE_PAID", "{line}");
            let order = orders
                .get_order(GetOrderRequest { id: text(line, "order_id").into() })
                .await
                .unwrap_or_else(|s| panic!("recorded order missing: {s:?} {line}"))
                .into_inner();
            assert_eq!(order.request_id, text(line, "request_id"));
            assert_eq!(order.user_id, text(line, "user_id"));
            assert_eq!(order.state(), OrderState::Paid);
            let total = order.total.expect("total");
            assert_eq!(Some(total.amount_minor), line["total_minor"].as_i64(), "{line}");
            assert_eq!(total.currency_code, text(line, "currency_code"));
            // One line of a product the bench created, priced by the catalog.
            let [item] = order.line_items.as_slice() else { panic!("one line: {:?}", order.line_items) };
            assert!(item.sku.starts_with("BENCH-"), "{item:?}");
            let product = catalog
                .get_product(GetProductRequest { sku: item.sku.clone() })
                .await
                .expect("the bench's product is in the catalog")
                .into_inner();
            assert_eq!(item.unit_price, product.unit_price, "{line}");
            *per_user.entry(order.user_id).or_default() += 1;
        }
        assert!(per_user.len() <= 3, "orders spread over the bench's own users");
        for (user_id, recorded) in &per_user {
            let listed = orders
                .list_orders(ListOrdersRequest {
                    user_id: user_id.clone(),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await
                .expect("list orders")
                .into_inner()
                .orders;
            assert_eq!(
                listed.len(),
                *recorded,
                "{backend:?}: the database holds exactly the recorded orders"
            );
        }
        let first = text(&lines[0], "order_id");
        let charged = payments
            .list_payments(ListPaymentsRequest {
                order_id: first.into(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("list payments")
            .into_inner()
            .payments;
        assert_eq!(charged.len(), 1, "one payment per order");

        // A second run on the same catalog finds the products the first one created
        // (ALREADY_EXISTS) and orders them at the catalog's prices.
        let mut args: Vec<&str> = targets.iter().map(String::as_str).collect();
        args.extend(["create-order", "--requests=6", "--concurrency=2", "--users=1", "--json"]);
        let again = self::report(&bench(&args).await);
        assert_eq!(codes(&again), BTreeMap::from([("OK".into(), 6)]), "{backend:?}: {again}");
        mesh.stop().await;
    }
}

#[tokio::test]
async fn read_scenarios_and_the_mix_add_up() {
    let mesh = start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let targets = mesh.targets();
    let with = |extra: &[&'static str]| {
        let mut args: Vec<String> = targets.to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let run =
        |args: Vec<String>| async move { bench(&args.iter().map(String::as_str).collect::<Vec<_>>()).await };

    let get_user = report(&run(with(&["get-user", "--requests=60", "--users=2", "--json"])).await);
    assert_adds_up(&get_user);
    assert_eq!(codes(&get_user), BTreeMap::from([("OK".into(), 60)]), "{get_user}");
    assert_eq!(get_user["calls"]["get-user"]["OK"], 60);

    let path = dir.path().join("get-order.jsonl");
    let mut args = with(&["get-order", "--requests=30", "--orders=5", "--users=2", "--json", "--record"]);
    args.push(path.display().to_string());
    let get_order = report(&run(args).await);
    assert_adds_up(&get_order);
    assert_eq!(codes(&get_order), BTreeMap::from([("OK".into(), 30)]), "{get_order}");
    assert_eq!(get_order["orders"], 5, "it created the orders it reads");
    assert_eq!(record(&path).len(), 5, "the orders it created first are recorded too");

    let path = dir.path().join("mix.jsonl");
    let mut args = with(&[
        "mix",
        "--mix=create-order=1,get-order=3,get-user=6",
        "--requests=100",
        "--orders=4",
        "--users=2",
        "--json",
        "--record",
    ]);
    args.push(path.display().to_string());
    let mix = report(&run(args).await);
    assert_adds_up(&mix);
    assert_eq!(codes(&mix), BTreeMap::from([("OK".into(), 100)]), "{mix}");
    assert_eq!(mix["calls"]["create-order"]["OK"], 10, "{mix}");
    assert_eq!(mix["calls"]["get-order"]["OK"], 30, "{mix}");
    assert_eq!(mix["calls"]["get-user"]["OK"], 60, "{mix}");
    assert_eq!(mix["mix"], "create-order=1,get-order=3,get-user=6");
    assert_eq!(record(&path).len(), 4 + 10, "set-up orders and the mix's CreateOrders");

    // The text report, for people.
    let out = run(with(&["get-user", "--requests=5", "--users=1", "--quiet"])).await;
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK 5") && stdout.contains("p99.9"), "{stdout}");
    mesh.stop().await;
}

#[tokio::test]
async fn an_open_loop_keeps_to_its_rate() {
    let mesh = start(Backend::Sqlite).await;
    let targets = mesh.targets();
    let mut args: Vec<&str> = targets.iter().map(String::as_str).collect();
    args.extend(["get-user", "--rate=50", "--requests=100", "--users=1", "--json"]);
    let report = report(&bench(&args).await);
    assert_adds_up(&report);
    assert_eq!(report["mode"], "open");
    assert_eq!(report["target_rate"], 50);
    assert_eq!(count(&report, "requests"), 100);
    // The 100th call is due 1.98 s after the first: a sender that did not keep to the rate
    // (a closed loop does thousands per second here) would finish far sooner.
    let elapsed = report["elapsed_seconds"].as_f64().expect("elapsed");
    assert!(elapsed >= 1.98, "{report}");
    let achieved = report["achieved_rate"].as_f64().expect("rate");
    assert!((15.0..=50.6).contains(&achieved), "about 50/s: {report}");
    assert!(report["latency_ms"]["p50"].as_f64().expect("p50") >= 0.02, "{report}");
    mesh.stop().await;
}

#[tokio::test]
async fn a_dead_order_service_is_counted_unavailable_and_the_run_still_ends_cleanly() {
    let mesh = start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.jsonl");
    // Nothing listens here: every CreateOrder is refused at connect.
    let dead = format!("http://{}", free_addr());
    let out = bench(&[
        "create-order",
        "--user",
        &mesh.user.url(),
        "--order",
        &dead,
        "--catalog",
        &mesh.catalog.url(),
        "--requests=12",
        "--concurrency=3",
        "--users=2",
        "--retries=1",
        "--json",
        "--record",
        path.to_str().expect("utf-8 path"),
    ])
    .await;
    let report = report(&out);
    assert_adds_up(&report);
    assert_eq!(codes(&report), BTreeMap::from([("UNAVAILABLE".into(), 12)]), "{report}");
    assert_eq!(count(&report, "retries"), 12, "each sent again once, with its request id");
    let lines = record(&path);
    assert_eq!(lines.len(), 12);
    for line in &lines {
        assert_eq!(text(line, "code"), "UNAVAILABLE", "{line}");
        assert_eq!(line["attempts"], 2, "{line}");
        assert!(line.get("order_id").is_none(), "{line}");
    }

    // A user service that is down leaves nothing to run with: exit 1, saying why.
    let out = bench(&["get-user", "--user", &dead, "--requests=5", "--timeout=2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create users") && stderr.contains("UNAVAILABLE"), "{stderr}");

    // Nor does a catalog that is down: no product to order.
    let out = bench(&[
        "create-order",
        "--user",
        &mesh.user.url(),
        "--order",
        &mesh.order.url(),
        "--catalog",
        &dead,
        "--requests=5",
        "--users=1",
        "--timeout=2s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create products") && stderr.contains("UNAVAILABLE"), "{stderr}");
    mesh.stop().await;
}

/// An order service that answers each CreateOrder UNAVAILABLE the first time its request id is
/// seen and OK the second, counting the sends of every request id: it shows what the bench's
/// retries put on the wire.
#[derive(Debug, Default, Clone)]
struct FlakyOrders {
    sends: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u32>>>,
}

#[tonic::async_trait]
impl OrderService for FlakyOrders {
    async fn create_order(&self, req: Request<CreateOrderRequest>) -> Result<Response<Order>, Status> {
        let req = req.into_inner();
        let sends = {
            let mut sends = self.sends.lock().expect("lock");
            let n = sends.entry(req.request_id.clone()).or_default();
            *n += 1;
            *n
        };
        if sends == 1 {
            return Err(Status::unavailable("first send of this request id"));
        }
        Ok(Response::new(Order {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: req.user_id,
            request_id: req.request_id,
            state: OrderState::Paid.into(),
            ..Order::default()
        }))
    }
    async fn get_order(&self, _: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn list_orders(
        &self,
        _: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn cancel_order(&self, _: Request<CancelOrderRequest>) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn retries_resend_a_create_order_with_its_request_id() {
    let mesh = start(Backend::Sqlite).await;
    let flaky = FlakyOrders::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OrderServiceServer::new(flaky.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.jsonl");
    let out = bench(&[
        "create-order",
        "--user",
        &mesh.user.url(),
        "--order",
        &url,
        "--catalog",
        &mesh.catalog.url(),
        "--requests=10",
        "--concurrency=2",
        "--users=2",
        "--retries=2",
        "--json",
        "--record",
        path.to_str().expect("utf-8 path"),
    ])
    .await;
    let report = report(&out);
    assert_eq!(codes(&report), BTreeMap::from([("OK".into(), 10)]), "{report}");
    assert_eq!(count(&report, "retries"), 10, "one retry each: {report}");
    let sends = flaky.sends.lock().expect("lock").clone();
    assert_eq!(sends.len(), 10, "ten request ids, no new one on a retry: {sends:?}");
    assert!(sends.values().all(|n| *n == 2), "each sent twice: {sends:?}");
    let lines = record(&path);
    assert_eq!(lines.len(), 10);
    for line in &lines {
        assert_eq!(sends.get(text(line, "request_id")), Some(&2), "{line}");
        assert_eq!((text(line, "code"), &line["attempts"]), ("OK", &Value::from(2)), "{line}");
    }
    server.abort();
    mesh.stop().await;
}

#[tokio::test]
async fn bad_arguments_are_refused_with_a_clear_message() {
    for (args, names) in [
        (&["get-user", "--rate=0"][..], "--rate"),
        (&["get-user", "--rate=5", "--concurrency=2"], "--concurrency"),
        (&["get-user", "--duration=0s"], "--duration"),
        (&["get-user", "--duration=5s", "--requests=5"], "--requests"),
        (&["get-user", "--mix=get-user=1"], "--mix"),
        (&["mix", "--mix=delete-user=1"], "delete-user"),
        (&["get-user", "--max-in-flight=5"], "--max-in-flight"),
        (&["get-user", "--user=not a url"], "--user"),
        (&["get-user", "--catalog=ftp://127.0.0.1:50054"], "--catalog"),
        (&["get-user", "--retries=11"], "--retries"),
        (&["drop-tables"], "drop-tables"),
    ] {
        let out = bench(args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?} names {names}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn sigterm_stops_the_load_reports_and_completes_the_record() {
    let mesh = start(Backend::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("orders.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .args(["bench", "create-order", "--user", &mesh.user.url(), "--order", &mesh.order.url()])
        .args(["--catalog", &mesh.catalog.url()])
        .args(["--rate=20", "--duration=120s", "--users=2", "--json", "--record"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start bench");
    let pid = child.id().expect("pid").to_string();
    // Wait for the first orders to exist, so the signal lands while the load runs.
    let mut orders = OrderServiceClient::connect(mesh.order.url()).await.expect("order");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let users = mesh_user_ids(&mesh).await;
        let mut n = 0;
        for user_id in users {
            n += orders
                .list_orders(ListOrdersRequest { user_id, page_size: 1000, page_token: String::new() })
                .await
                .expect("list")
                .into_inner()
                .orders
                .len();
        }
        if n >= 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no orders within 60s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("bench exits within 30s of SIGTERM")
        .expect("wait");
    let report = report(&out);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_adds_up(&report);
    let ok = codes(&report).get("OK").copied().unwrap_or(0);
    assert!(ok >= 5, "{report}");
    // The record is complete: one line per CreateOrder answered, every one OK and stored.
    let lines = record(&path);
    assert_eq!(lines.len() as u64, count(&report, "sent"), "{report}");
    for line in &lines {
        assert_eq!(text(line, "code"), "OK", "{line}");
        orders.get_order(GetOrderRequest { id: text(line, "order_id").into() }).await.expect("stored");
    }
    mesh.stop().await;
}

/// The ids of every user in the mesh (the bench's own, here).
async fn mesh_user_ids(mesh: &Mesh) -> Vec<String> {
    use shopmesh::api::user::v1::{ListUsersRequest, user_service_client::UserServiceClient};
    let mut users = UserServiceClient::connect(mesh.user.url()).await.expect("user");
    users
        .list_users(ListUsersRequest { page_size: 1000, page_token: String::new() })
        .await
        .expect("list users")
        .into_inner()
        .users
        .into_iter()
        .map(|u| u.id)
        .collect()
}

/// A valid RS256 token of the test key set (`tests/fixtures/jwt`) for `sub`.
fn token_for(sub: &str) -> String {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let key = std::fs::read(fixtures.join("rsa.pem")).expect("key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&key).expect("rsa key");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = serde_json::json!({
        "sub": sub, "iss": "https://id.shopmesh.test", "aud": "shopmesh", "iat": now, "exp": now + 600,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

#[tokio::test]
async fn a_mesh_on_mtls_with_tokens_is_measured_with_tls_flags_and_metadata() {
    use shopmesh::mesh::security::certificates::{Ca, Leaf};
    let db = testing::database(Backend::Sqlite, "bench-mtls").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mesh CA").expect("ca");
    let issue = |sa: &str| {
        let issued = ca
            .issue(&Leaf {
                uris: vec![format!("spiffe://cluster.local/ns/default/sa/{sa}")],
                dns: vec!["localhost".into()],
                ..Leaf::default()
            })
            .expect("issue");
        let at = dir.path().join(sa);
        issued.write_to(&at).expect("write");
        at
    };
    let (server, client) = (issue("shopmesh-user"), issue("shopmesh-gateway"));
    let mut mesh = testing::mesh_config();
    mesh.security = shopmesh::mesh::config::SecurityConfig {
        tls_cert: Some(server.join("tls.crt")),
        tls_key: Some(server.join("tls.key")),
        tls_ca: Some(server.join("ca.crt")),
        ..Default::default()
    };
    mesh.jwt = shopmesh::mesh::config::JwtConfig {
        jwt_jwks: Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/jwks.json")),
        jwt_issuer: Some("https://id.shopmesh.test".into()),
        jwt_audience: Some("shopmesh".into()),
        ..Default::default()
    };
    let config = UserConfig::new(testing::ANY_PORT, db.url.clone());
    let (user, _probe) =
        testing::spawn_service_probed::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
    let target = user.url();
    let file = |name: &str| client.join(name).to_string_lossy().into_owned();
    let (ca_file, cert, key) = (file("ca.crt"), file("tls.crt"), file("tls.key"));
    let secured = |extra: &[&str]| {
        let mut args = vec!["get-user", "--user", &target, "--tls-ca", &ca_file, "--tls-cert", &cert];
        args.extend(["--tls-key", &key, "--requests=20", "--users=3", "--json", "--quiet"]);
        args.extend(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run =
        |args: Vec<String>| async move { bench(&args.iter().map(String::as_str).collect::<Vec<_>>()).await };

    // Over mTLS as the gateway: every call served.
    let report = report(&run(secured(&[])).await);
    assert_adds_up(&report);
    assert_eq!(codes(&report), BTreeMap::from([("OK".to_owned(), 20)]), "{report}");

    // -H sends metadata with every call: a forged token is refused at the first call...
    let out = run(secured(&["-H", "authorization: Bearer forged"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    // ...and a valid one is verified, its subject then held to its own objects (a subject may
    // not create users), which shows the header and value arrived intact.
    let token = format!("authorization:Bearer {}", token_for("someone"));
    let out = run(secured(&["-H", "x-bench-run: 1", "-H", &token])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");

    // Without the TLS flags an mTLS port gives nothing; bad metadata is a usage error.
    let out = run(vec![
        "get-user".into(),
        "--user".into(),
        target.clone(),
        "--requests=1".into(),
        "--quiet".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    for bad in [&["-H", "no-colon"][..], &["-H", "Bad Name: x"], &["--tls-ca", &ca_file]] {
        let out =
            run(secured(&[]).into_iter().take(3).chain(bad.iter().map(|s| (*s).to_owned())).collect()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
    }
    user.stop().await.expect("clean stop");
    db.drop_database().await;
}
