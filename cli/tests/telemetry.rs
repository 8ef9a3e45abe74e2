//! Telemetry end to end: the four services as separate `shopmesh serve` processes export
//! their spans over OTLP/gRPC to a real trace receiver running in this test, write JSON logs
//! with trace ids, and serve Prometheus metrics.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use shopmesh::api::catalog::v1::{
    CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
};
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CreateOrderRequest, LineItem, OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::testing::{self, Backend};
use tokio::io::AsyncBufReadExt as _;

mod common;
use common::{Process, free_addr};
#[path = "common/metrics_table.rs"]
mod metrics_table;

/// A span as received, with its service (from the resource) and attributes flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    resource: HashMap<String, String>,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, String>,
    status: i32,
    /// The trace ids of the span's links.
    links: Vec<String>,
}

fn flatten(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Value::StringValue(s)) => s,
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC trace receiver that keeps every span.
#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let resource = flatten(&resource_spans.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        resource: resource.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes: flatten(&span.attributes),
                        status: span.status.map_or(0, |s| s.code),
                        links: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Received> {
        self.0.lock().expect("lock").clone()
    }
}

fn find<'a>(spans: &'a [Received], service: &str, name: &str, kind: SpanKind) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.service == service && s.name == name && s.kind == kind as i32).collect()
}

fn one<'a>(spans: &'a [Received], service: &str, name: &str, kind: SpanKind) -> &'a Received {
    let found = find(spans, service, name, kind);
    assert_eq!(
        found.len(),
        1,
        "{service} {name} {kind:?}: {found:#?}\nall: {:#?}",
        spans.iter().map(|s| (&s.service, &s.name)).collect::<Vec<_>>()
    );
    found[0]
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect metrics");
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

/// The value of the sample line that starts with `series` (name and labels), if any.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let has_all = labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
        (series.starts_with(&format!("{name}{{")) && has_all).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn one_order_is_one_trace_across_four_processes() {
    for backend in testing::backends() {
        one_trace(backend).await;
    }
}

/// The all-in-one run: a CreateOrder's calls to user, catalog and payment go in-process
/// (counted per callee; a fallback to the local ports would count none) and still make one
/// trace: each callee's server span under the order service's client span, under the order
/// server span that continues the caller's trace. Its events stay in that trace too (issue
/// 27): the relay's PRODUCER span of OrderPaid, the CONSUMER spans of inventory and
/// notification under it, the inventory's PRODUCER span of what it did under its CONSUMER
/// span, and the CONSUMER spans of order and notification under that. On both engines: on
/// PostgreSQL the settle writes OrderPaid's row, its trace context included, in its own
/// statement.
#[tokio::test]
async fn in_the_all_in_one_calls_go_in_process_and_stay_one_trace() {
    for backend in testing::backends() {
        all_in_one_trace(backend).await;
    }
}

async fn all_in_one_trace(backend: Backend) {
    let (receiver, otlp) = otlp_receiver().await;
    let mut dbs = Vec::new();
    for name in ["user", "payment", "catalog", "order", "inventory", "notification", "processor"] {
        dbs.push((name, testing::database(backend, name).await));
    }
    let db = |name: &str| dbs.iter().find(|(n, _)| *n == name).expect("db").1.url.clone();
    let (user_addr, catalog_addr, order_addr, metrics_addr) =
        (free_addr(), free_addr(), free_addr(), free_addr());
    let args = [
        format!("--user-listen={user_addr}"),
        format!("--catalog-listen={catalog_addr}"),
        format!("--order-listen={order_addr}"),
        "--payment-listen=127.0.0.1:0".to_owned(),
        "--inventory-listen=127.0.0.1:0".to_owned(),
        "--notification-listen=127.0.0.1:0".to_owned(),
        // Every CreateOrder asks the catalog, so the traced one shows the hop.
        "--catalog-cache-ttl=0s".to_owned(),
        format!("--processor-ledger-url={}", db("processor")),
    ]
    .into_iter()
    .chain(
        ["user", "payment", "catalog", "order", "inventory", "notification"]
            .map(|svc| format!("--{svc}-database-url={}", db(svc))),
    )
    .collect::<Vec<_>>();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("SHOPMESH_METRICS_LISTEN", metrics_addr.to_string()),
        ("RUST_LOG", "warn".to_owned()),
    ];
    let process = Process::start_with(&args, &env, Stdio::null());
    testing::wait_serving(user_addr, "shopmesh.user.v1.UserService").await;
    testing::wait_serving(catalog_addr, "shopmesh.catalog.v1.CatalogService").await;
    testing::wait_serving(order_addr, "shopmesh.order.v1.OrderService").await;

    let ada = book_and_buyer(catalog_addr, user_addr).await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let caller_span = "10f067aa0ba902b8";
    let mut orders = OrderServiceClient::connect(format!("http://{order_addr}")).await.expect("connect");
    let mut request = tonic::Request::new(CreateOrderRequest {
        user_id: ada,
        line_items: vec![LineItem {
            sku: "BOOK-42".into(),
            quantity: 2,
            unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
        }],
        request_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().expect("ascii"));
    let paid = orders.create_order(request).await.expect("order").into_inner();
    assert_eq!(paid.state(), OrderState::Paid);

    let metrics = scrape(metrics_addr).await;
    for target in ["user", "catalog", "payment"] {
        let calls = sample(&metrics, "shopmesh_client_in_process_calls_total", &[("target", target)]);
        assert!(calls.is_some_and(|n| n >= 1.0), "no in-process call to {target}: {metrics}");
    }
    let exposition = metrics.split_once("\r\n\r\n").map_or(metrics.as_str(), |(_, body)| body);
    let wrong = metrics_table::disagreements(exposition);
    assert!(wrong.is_empty(), "/metrics and docs/observability.md disagree:\n{}", wrong.join("\n"));

    // The events' four CONSUMER spans (two per event) end once they are handled, after the
    // answer; exported within the batch delay.
    let in_trace =
        || -> Vec<Received> { receiver.spans().into_iter().filter(|s| s.trace_id == trace_id).collect() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_trace().iter().filter(|s| s.kind == SpanKind::Consumer as i32).count() < 4
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process.terminate().await.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let traced = loop {
        let traced = in_trace();
        if traced.iter().filter(|s| s.kind == SpanKind::Server as i32).count() >= 4
            || Instant::now() > deadline
        {
            break traced;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let order_server =
        one(&traced, "shopmesh", "shopmesh.order.v1.OrderService/CreateOrder", SpanKind::Server);
    assert_eq!(order_server.parent, caller_span);
    for name in [
        "shopmesh.user.v1.UserService/GetUser",
        "shopmesh.catalog.v1.CatalogService/BatchGetProducts",
        "shopmesh.payment.v1.PaymentService/Charge",
    ] {
        let client = one(&traced, "shopmesh", name, SpanKind::Client);
        assert_eq!(client.parent, order_server.span_id, "{name} client span's parent");
        let server = one(&traced, "shopmesh", name, SpanKind::Server);
        assert_eq!(server.parent, client.span_id, "{name} server span's parent");
        assert_eq!(
            server.attributes.get("rpc.grpc.status_code").map(String::as_str),
            Some("0"),
            "{server:#?}"
        );
    }

    // OrderPaid, sent by the order's relay, handled by inventory and notification; the
    // inventory (no stock set) backorders the order, and order and notification handle that.
    let paid_sent = one(&traced, "shopmesh", "send shopmesh.order.v1.OrderPaid", SpanKind::Producer);
    let paid_handled = find(&traced, "shopmesh", "process shopmesh.order.v1.OrderPaid", SpanKind::Consumer);
    assert_eq!(paid_handled.len(), 2, "{backend:?}: inventory and notification: {paid_handled:#?}");
    assert!(paid_handled.iter().all(|s| s.parent == paid_sent.span_id), "{backend:?}: {paid_handled:#?}");
    let by_inventory = paid_handled
        .iter()
        .find(|s| {
            s.attributes.get("messaging.consumer.group.name").map(String::as_str) == Some("inventory-order")
        })
        .unwrap_or_else(|| panic!("{backend:?}: no inventory CONSUMER span: {paid_handled:#?}"));
    let backordered = "shopmesh.inventory.v1.OrderBackordered";
    let backordered_sent = one(&traced, "shopmesh", &format!("send {backordered}"), SpanKind::Producer);
    assert_eq!(
        backordered_sent.parent, by_inventory.span_id,
        "{backend:?}: caused by the inventory's handling"
    );
    let backordered_handled =
        find(&traced, "shopmesh", &format!("process {backordered}"), SpanKind::Consumer);
    assert_eq!(backordered_handled.len(), 2, "{backend:?}: order and notification: {backordered_handled:#?}");
    assert!(
        backordered_handled.iter().all(|s| s.parent == backordered_sent.span_id),
        "{backend:?}: {backordered_handled:#?}"
    );
    for (_, db) in dbs {
        db.drop_database().await;
    }
}

/// Creates BOOK-42 (12.50 USD) in the catalog at `catalog_addr` and Ada at the user service at
/// `user_addr`; Ada's id.
async fn book_and_buyer(catalog_addr: std::net::SocketAddr, user_addr: std::net::SocketAddr) -> String {
    let mut products =
        CatalogServiceClient::connect(format!("http://{catalog_addr}")).await.expect("connect catalog");
    let book = Product {
        sku: "BOOK-42".into(),
        display_name: "The book".into(),
        unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
        active: true,
        ..Product::default()
    };
    products.create_product(CreateProductRequest { product: Some(book) }).await.expect("create product");
    let mut users = UserServiceClient::connect(format!("http://{user_addr}")).await.expect("connect");
    let ada = CreateUserRequest {
        email: "ada@example.com".into(),
        display_name: "Ada".into(),
        request_id: String::new(),
    };
    users.create_user(ada).await.expect("user").into_inner().id
}

/// A real OTLP trace receiver on 127.0.0.1, and its endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
async fn otlp_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (receiver, otlp)
}

async fn one_trace(backend: Backend) {
    let (receiver, otlp) = otlp_receiver().await;

    // The services, each its own process exporting to the receiver.
    let (user_addr, payment_addr, order_addr) = (free_addr(), free_addr(), free_addr());
    let catalog_addr = free_addr();
    let order_metrics = free_addr();
    // user, payment and catalog log only warnings: the log filter must not turn tracing off.
    let env = |metrics: Option<std::net::SocketAddr>| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("SHOPMESH_LOG_FORMAT", "json".to_owned()),
            // `debug` for the order service's own lines (its per-order lines are at debug),
            // `info` for the rest: a filter that mixes levels by target once made
            // tracing-subscriber leave the call's span out of the trace now and then (5 runs in
            // 6 on PostgreSQL; see the filter in src/mesh/telemetry/mod.rs).
            ("RUST_LOG", if metrics.is_some() { "info,shopmesh_order=debug" } else { "warn" }.to_owned()),
        ];
        if let Some(addr) = metrics {
            env.push(("SHOPMESH_METRICS_LISTEN", addr.to_string()));
        }
        env
    };
    let mut dbs = Vec::new();
    for svc in ["user", "payment", "catalog", "order"] {
        let db = testing::database(backend, svc).await;
        dbs.push((svc, db));
    }
    // The simulated processor's ledger on the same engine, so payment's spans name one system.
    let ledger = testing::database(backend, "processor").await;
    let db = |svc: &str| {
        let url = &dbs.iter().find(|(s, _)| *s == svc).expect("db").1.url;
        format!("--{svc}-database-url={url}")
    };
    let system = if backend == Backend::Sqlite { "sqlite" } else { "postgresql" };
    let user = Process::start_with(
        &["serve", "user", &format!("--user-listen={user_addr}"), &db("user")],
        &env(None),
        Stdio::null(),
    );
    let payment = Process::start_with(
        &[
            "serve",
            "payment",
            &format!("--payment-listen={payment_addr}"),
            &db("payment"),
            &format!("--processor-ledger-url={}", ledger.url),
        ],
        &env(None),
        Stdio::null(),
    );
    let catalog = Process::start_with(
        &["serve", "catalog", &format!("--catalog-listen={catalog_addr}"), &db("catalog")],
        &env(None),
        Stdio::null(),
    );
    let mut order = Process::start_with(
        &[
            "serve",
            "order",
            &format!("--order-listen={order_addr}"),
            &db("order"),
            &format!("--user-url=http://{user_addr}"),
            &format!("--catalog-url=http://{catalog_addr}"),
            // No price cache: every CreateOrder asks the catalog, so the traced one shows the hop.
            "--catalog-cache-ttl=0s",
            &format!("--payment-url=http://{payment_addr}"),
            // No broker: this test follows the synchronous calls.
            "--events-url=none",
        ],
        &env(Some(order_metrics)),
        Stdio::piped(),
    );
    // The order service's log lines, as they come.
    let stderr =
        tokio::process::ChildStderr::from_std(order.child.stderr.take().expect("stderr")).expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lock().expect("lock").push(line);
            }
        });
    }
    testing::wait_serving(user_addr, "shopmesh.user.v1.UserService").await;
    testing::wait_serving(payment_addr, "shopmesh.payment.v1.PaymentService").await;
    testing::wait_serving(catalog_addr, "shopmesh.catalog.v1.CatalogService").await;
    testing::wait_serving(order_addr, "shopmesh.order.v1.OrderService").await;

    // The order service prices orders from the catalog: the product is created there first.
    let ada = book_and_buyer(catalog_addr, user_addr).await;

    // A caller that is itself traced: its traceparent must be continued.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut orders = OrderServiceClient::connect(format!("http://{order_addr}")).await.expect("connect");
    let order_of = |user_id: &str| CreateOrderRequest {
        user_id: user_id.into(),
        line_items: vec![LineItem {
            sku: "BOOK-42".into(),
            quantity: 2,
            unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
        }],
        request_id: String::new(),
    };
    let mut request = tonic::Request::new(order_of(&ada));
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().expect("ascii"));
    let paid = orders.create_order(request).await.expect("order").into_inner();
    assert_eq!(paid.state(), OrderState::Paid);
    // And a call that fails downstream: no such user.
    let missing = orders.create_order(order_of(&shopmesh::mesh::ids::new_id())).await.expect_err("no user");
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Metrics, before the processes go.
    let metrics = scrape(order_metrics).await;
    let server = [("rpc_service", "shopmesh.order.v1.OrderService"), ("rpc_method", "CreateOrder")];
    assert_eq!(
        sample(
            &metrics,
            "rpc_server_call_duration_seconds_count",
            &[server[0], server[1], ("rpc_grpc_status_code", "0")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "rpc_server_call_duration_seconds_count",
            &[server[0], server[1], ("rpc_grpc_status_code", "5")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // The RPC conventions' system label, a build-info series, and a HELP line for every series
    // this process exports (the order service's own gauges included).
    assert_eq!(
        sample(
            &metrics,
            "rpc_server_call_duration_seconds_count",
            &[server[0], server[1], ("rpc_system", "grpc"), ("rpc_grpc_status_code", "0")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "shopmesh_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    // The exposition, without the HTTP response's status line and headers.
    let exposition = metrics.split_once("\r\n\r\n").map_or(metrics.as_str(), |(_, body)| body);
    for line in exposition.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        // A histogram's series end in _bucket, _sum, _count; a gauge may be named *_count itself.
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            metrics.contains(&format!("# HELP {name} ")) || metrics.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line:\n{metrics}"
        );
    }
    let get_user = [("rpc_service", "shopmesh.user.v1.UserService"), ("rpc_method", "GetUser")];
    assert_eq!(
        sample(
            &metrics,
            "rpc_client_call_duration_seconds_count",
            &[get_user[0], get_user[1], ("rpc_grpc_status_code", "5")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "rpc_client_call_duration_seconds_count",
            &[("rpc_method", "Charge"), ("rpc_grpc_status_code", "0")]
        ),
        Some(1.0),
        "{metrics}"
    );
    // Fine buckets for percentiles: the 1 ms bucket exists for the server histogram.
    assert!(
        sample(&metrics, "rpc_server_call_duration_seconds_bucket", &[server[0], server[1], ("le", "0.001")])
            .is_some(),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "rpc_server_active_requests", &[("rpc_service", "shopmesh.order.v1.OrderService")]),
        Some(0.0)
    );
    assert!(
        metrics.contains(
            "db_client_connection_count{db_client_connection_pool_name=\"order\",db_client_connection_state=\"used\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("db_client_connection_max{db_client_connection_pool_name=\"order\"}"),
        "pools are told apart: {metrics}"
    );
    assert!(!metrics.contains("pool_name=\"unnamed\""), "a series for a pool with no name: {metrics}");
    // One label scheme: every series has exactly the labels docs/observability.md's table
    // lists for it (the RPC labels on every metric about a call, none named `service`).
    let retried =
        [("rpc_system", "grpc"), ("rpc_service", "shopmesh.user.v1.UserService"), ("rpc_method", "GetUser")];
    assert!(sample(&metrics, "rpc_client_call_duration_seconds_count", &retried).is_some(), "{metrics}");
    let wrong = metrics_table::disagreements(exposition);
    assert!(wrong.is_empty(), "/metrics and docs/observability.md disagree:\n{}", wrong.join("\n"));
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(process)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {process}: {metrics}"));
        // CPU seconds are read every 5 s and may still be the first reading, 0.
        assert!(value > 0.0 || process == "process_cpu_seconds_total", "{process} = {value}");
    }

    // SIGTERM flushes each process's spans.
    for process in [order, catalog, payment, user] {
        assert!(process.terminate().await.success());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans();
        let services: std::collections::BTreeSet<_> = spans.iter().map(|s| s.service.clone()).collect();
        if services.len() >= 4 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let traced: Vec<Received> = spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
    // Health checks (the test's own, like a kubelet's) are counted but not traced.
    assert!(!spans.iter().any(|s| s.name.starts_with("grpc.health")), "health checks were traced");

    // order server continues the caller's trace.
    let order_server =
        one(&traced, "shopmesh-order", "shopmesh.order.v1.OrderService/CreateOrder", SpanKind::Server);
    assert_eq!(order_server.parent, caller_span);
    for (key, want) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "shopmesh.order.v1.OrderService"),
        ("rpc.method", "CreateOrder"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(
            order_server.attributes.get(key).map(String::as_str),
            Some(want),
            "{key}: {order_server:#?}"
        );
    }
    // Busy and idle time are tracked when spans are exported (they are not otherwise).
    for key in ["busy_ns", "idle_ns"] {
        assert!(order_server.attributes.contains_key(key), "{key}: {order_server:#?}");
    }
    for key in ["service.version", "service.instance.id"] {
        assert!(order_server.resource.contains_key(key), "resource lacks {key}: {:?}", order_server.resource);
    }
    // order → user, order → catalog (the prices) and order → payment: client span under the
    // order server span, the callee's server span under the client span, all in one trace.
    for (callee, name) in [
        ("shopmesh-user", "shopmesh.user.v1.UserService/GetUser"),
        ("shopmesh-catalog", "shopmesh.catalog.v1.CatalogService/BatchGetProducts"),
        ("shopmesh-payment", "shopmesh.payment.v1.PaymentService/Charge"),
    ] {
        let client = one(&traced, "shopmesh-order", name, SpanKind::Client);
        assert_eq!(client.parent, order_server.span_id, "{name} client span's parent");
        let server = one(&traced, callee, name, SpanKind::Server);
        assert_eq!(server.parent, client.span_id, "{name} server span's parent");
        // The callee's SQL statements sit under its server span.
        let db: Vec<_> = traced
            .iter()
            .filter(|s| s.service == callee && s.attributes.contains_key("db.query.text"))
            .collect();
        assert!(!db.is_empty(), "{callee} has no database spans");
        for span in db {
            assert_eq!(span.parent, server.span_id, "{}: {span:#?}", span.name);
            assert_eq!(span.attributes.get("db.system.name").map(String::as_str), Some(system));
        }
    }
    let order_db: Vec<_> = traced
        .iter()
        .filter(|s| s.service == "shopmesh-order" && s.name.starts_with("INSERT orders"))
        .collect();
    assert_eq!(order_db.len(), 1, "{traced:#?}");
    assert_eq!(order_db[0].parent, order_server.span_id);

    // The failed call: its client span has error status and the gRPC code.
    let failed: Vec<_> =
        find(&spans, "shopmesh-order", "shopmesh.user.v1.UserService/GetUser", SpanKind::Client)
            .into_iter()
            .filter(|s| s.trace_id != trace_id)
            .collect();
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_eq!(failed[0].status, StatusCode::Error as i32);
    assert_eq!(failed[0].attributes.get("rpc.grpc.status_code").map(String::as_str), Some("5"));

    // A log line written inside the handler carries the trace id.
    let logs = logs.lock().expect("lock").clone();
    let stored: Vec<_> = logs.iter().filter(|l| l.contains("order stored")).collect();
    assert!(
        stored.iter().any(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\""))),
        "no 'order stored' line with trace id {trace_id}: {stored:#?}"
    );
    for (_, db) in dbs {
        db.drop_database().await;
    }
    ledger.drop_database().await;
}

/// The `traceparent` and `baggage` of a call, as received.
type TraceMetadata = (Option<String>, Option<String>);

/// A user service that only records the trace metadata of each GetUser it receives.
#[derive(Debug, Clone, Default)]
struct RecordingUser(Arc<Mutex<Vec<TraceMetadata>>>);

#[tonic::async_trait]
impl shopmesh::api::user::v1::user_service_server::UserService for RecordingUser {
    async fn create_user(
        &self,
        _: tonic::Request<CreateUserRequest>,
    ) -> Result<tonic::Response<shopmesh::api::user::v1::User>, tonic::Status> {
        Err(tonic::Status::unimplemented("recording only"))
    }

    async fn get_user(
        &self,
        request: tonic::Request<shopmesh::api::user::v1::GetUserRequest>,
    ) -> Result<tonic::Response<shopmesh::api::user::v1::User>, tonic::Status> {
        let header =
            |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        self.0.lock().expect("lock").push((header("traceparent"), header("baggage")));
        Err(tonic::Status::unavailable("recording only"))
    }

    async fn list_users(
        &self,
        _: tonic::Request<shopmesh::api::user::v1::ListUsersRequest>,
    ) -> Result<tonic::Response<shopmesh::api::user::v1::ListUsersResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("recording only"))
    }

    async fn update_user(
        &self,
        _: tonic::Request<shopmesh::api::user::v1::UpdateUserRequest>,
    ) -> Result<tonic::Response<shopmesh::api::user::v1::User>, tonic::Status> {
        Err(tonic::Status::unimplemented("recording only"))
    }
}

/// Runs the order service as its own process with `extra` flags, calls CreateOrder on it as
/// a caller with no mesh identity sending `traceparent` (sampled) and `baggage`, and returns the
/// trace metadata the order service sent on to the user service.
async fn propagated_to_the_user_service(
    extra: &[&str],
    caller_trace: &str,
) -> (String, Option<String>, Vec<Received>) {
    let (receiver, otlp) = otlp_receiver().await;
    let upstream = RecordingUser::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let user_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(shopmesh::api::user::v1::user_service_server::UserServiceServer::new(
                upstream.clone(),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let order_addr = free_addr();
    let dead = free_addr();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "order".into(),
        format!("--order-listen={order_addr}"),
        format!("--order-database-url=sqlite://{}/order.db", dir.path().display()),
        format!("--user-url=http://{user_addr}"),
        format!("--catalog-url=http://{dead}"),
        format!("--payment-url=http://{dead}"),
        "--retry-max-attempts=1".into(),
        // No broker: this test follows the synchronous calls.
        "--events-url=none".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned())];
    let process = Process::start_with(&args, &env, Stdio::null());
    testing::wait_serving(order_addr, "shopmesh.order.v1.OrderService").await;

    let mut orders = OrderServiceClient::connect(format!("http://{order_addr}")).await.expect("connect");
    let mut request = tonic::Request::new(CreateOrderRequest {
        user_id: shopmesh::mesh::ids::new_id(),
        request_id: "traced".into(),
        line_items: vec![LineItem { sku: "BOOK-42".into(), quantity: 1, unit_price: None }],
    });
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    request.metadata_mut().insert("baggage", "tenant=evil,plan=gold".parse().expect("ascii"));
    let _ = orders.create_order(request).await;
    let seen = upstream.0.lock().expect("lock").first().cloned();
    let status = process.terminate().await;
    assert!(status.success(), "{status}");
    let (sent, baggage) = seen.expect("the order service called GetUser");
    let sent = sent.expect("the order service sent a traceparent");
    let trace = sent.split('-').nth(1).expect("a W3C traceparent").to_owned();
    // Spans are flushed on exit.
    (trace, baggage, receiver.spans())
}

#[tokio::test]
async fn callers_without_a_mesh_identity_cannot_steer_traces_when_the_mesh_authenticates() {
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    // Local development (no authentication): a caller's trace is continued, baggage and all,
    // so grpcurl with a traceparent joins the caller's trace.
    let (trace, baggage, _) = propagated_to_the_user_service(&[], caller_trace).await;
    assert_eq!(trace, caller_trace, "continued without authentication");
    assert!(baggage.as_deref().is_some_and(|b| b.contains("tenant=evil")), "{baggage:?}");

    // Bearer tokens on (checked only when present, so this caller gets through to what is public:
    // a service with tokens and no mTLS calls no one, see docs/security.md): the caller has no mesh
    // identity, so its call is a new root.
    let jwks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/jwks.json");
    let jwks = jwks.to_string_lossy().into_owned();
    let tokens = [
        "--jwt-jwks",
        &jwks,
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "shopmesh",
        "--jwt-require",
        "never",
    ];
    let spans = served_by_the_catalog(&tokens, caller_trace).await;
    let server =
        one(&spans, "shopmesh-catalog", "shopmesh.catalog.v1.CatalogService/ListProducts", SpanKind::Server);
    assert_ne!(server.trace_id, caller_trace, "an unidentified caller's trace was continued");
    assert_eq!(server.trace_id.len(), 32, "{server:#?}");
    assert!(server.parent.is_empty(), "a root span: {server:#?}");
    // The caller's context survives as a link on the new root, for whoever wants to follow it.
    assert_eq!(server.links, [caller_trace.to_owned()], "{server:#?}");
}

/// The spans of `serve catalog` with `extra` flags, called once (ListProducts, public) by a
/// caller with trace context `caller_trace` and baggage.
async fn served_by_the_catalog(extra: &[&str], caller_trace: &str) -> Vec<Received> {
    let (receiver, otlp) = otlp_receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog_addr = free_addr();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "catalog".into(),
        format!("--catalog-listen={catalog_addr}"),
        format!("--catalog-database-url=sqlite://{}/catalog.db", dir.path().display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp), ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned())];
    let process = Process::start_with(&args, &env, Stdio::null());
    testing::wait_serving(catalog_addr, "shopmesh.catalog.v1.CatalogService").await;
    let mut catalog = shopmesh::api::catalog::v1::catalog_service_client::CatalogServiceClient::connect(
        format!("http://{catalog_addr}"),
    )
    .await
    .expect("connect");
    let mut request = tonic::Request::new(shopmesh::api::catalog::v1::ListProductsRequest::default());
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    request.metadata_mut().insert("baggage", "tenant=evil,plan=gold".parse().expect("ascii"));
    catalog.list_products(request).await.expect("the catalog is public to read");
    let status = process.terminate().await;
    assert!(status.success(), "{status}");
    // Spans are flushed on exit.
    receiver.spans()
}
