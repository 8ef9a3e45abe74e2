//! Calls that survive: deadline propagation, retries within a budget, client-side balancing and
//! overload protection, proven over real gRPC on 127.0.0.1 against real services and against
//! test services that inject faults (delays, UNAVAILABLE, pushback, held calls).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CreateOrderRequest, LineItem, ListOrdersRequest, OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, ListPaymentsResponse, Payment, PaymentState,
    RefundRequest,
    payment_service_client::PaymentServiceClient,
    payment_service_server::{PaymentService, PaymentServiceServer},
};
use shopmesh::api::user::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, ListUsersResponse, UpdateUserRequest, User,
    user_service_client::UserServiceClient,
    user_service_server::{UserService, UserServiceServer},
};
use shopmesh::mesh::config::{ClientConfig, MeshConfig};
use shopmesh::mesh::grpc::timeout::parse_timeout;
use shopmesh::mesh::service::Listeners;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Refusing, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh::mesh::{client, server};
use shopmesh_order::OrderConfig;
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tonic::{Code, Request, Response, Status};

#[path = "common/catalog.rs"]
mod catalog;
use catalog::Catalog;

const USER: &str = "shopmesh.user.v1.UserService";
const PAYMENT: &str = "shopmesh.payment.v1.PaymentService";

/// The metrics this test process records (one recorder per process, shared by its tests), in
/// Prometheus text: the layers' decisions must show up there, not only in behaviour.
fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("install recorder")
    })
}

/// The sum of every series of counter `name` (tests run in parallel, so only lower bounds of
/// counters that one test's scenario alone produces are asserted).
fn counted(name: &str) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// What a test service does with each call, and what it saw.
#[derive(Debug, Default)]
struct Script {
    calls: AtomicU32,
    /// Answer `code` to this many calls, then succeed.
    fail_first: AtomicU32,
    /// Answer `code` to every call.
    always_fail: AtomicBool,
    code: AtomicI32,
    /// `grpc-retry-pushback-ms` sent with failures, if any.
    pushback: std::sync::Mutex<Option<&'static str>>,
    delay_ms: AtomicU64,
    /// Charges answer DECLINED.
    decline: AtomicBool,
    /// Calls wait for a permit (tests hold calls in flight with it).
    gate: Option<Arc<Semaphore>>,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    /// (arrival, grpc-timeout) of every call.
    seen: Mutex<Vec<(Instant, Option<Duration>)>>,
}

impl Script {
    fn failing(code: Code) -> Self {
        let s = Self::default();
        s.always_fail.store(true, Ordering::SeqCst);
        s.code.store(code as i32, Ordering::SeqCst);
        s
    }

    fn failing_first(n: u32, code: Code) -> Self {
        let s = Self::default();
        s.fail_first.store(n, Ordering::SeqCst);
        s.code.store(code as i32, Ordering::SeqCst);
        s
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn behave(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let arrival = Instant::now();
        let timeout = parse_timeout(&metadata.clone().into_headers());
        self.seen.lock().await.push((arrival, timeout));
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.map_err(|_| Status::internal("gate closed"))?;
        }
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.always_fail.load(Ordering::SeqCst) || n < self.fail_first.load(Ordering::SeqCst) {
            let mut status = Status::new(Code::from(self.code.load(Ordering::SeqCst)), "injected fault");
            if let Some(ms) = *self.pushback.lock().expect("lock") {
                status.metadata_mut().insert("grpc-retry-pushback-ms", ms.parse().expect("ascii"));
            }
            return Err(status);
        }
        Ok(())
    }
}

/// A user service that follows a [`Script`]; GetUser answers an active user.
#[derive(Debug, Clone)]
struct FakeUsers(Arc<Script>);

#[tonic::async_trait]
impl UserService for FakeUsers {
    async fn create_user(&self, _: Request<CreateUserRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.0.behave(req.metadata()).await?;
        Ok(Response::new(User { id: req.into_inner().id, active: true, ..User::default() }))
    }
    async fn list_users(&self, _: Request<ListUsersRequest>) -> Result<Response<ListUsersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn update_user(&self, _: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A payment service that follows a [`Script`]; Charge succeeds (or declines) at once.
#[derive(Debug, Clone)]
struct FakePayments(Arc<Script>);

#[tonic::async_trait]
impl PaymentService for FakePayments {
    async fn charge(&self, req: Request<ChargeRequest>) -> Result<Response<Payment>, Status> {
        self.0.behave(req.metadata()).await?;
        let req = req.into_inner();
        let state = if self.0.decline.load(Ordering::SeqCst) {
            PaymentState::Declined
        } else {
            PaymentState::Succeeded
        };
        Ok(Response::new(Payment {
            id: format!("pay-{}", req.request_id),
            order_id: req.order_id,
            user_id: req.user_id,
            amount: req.amount,
            state: state as i32,
            request_id: req.request_id,
            ..Payment::default()
        }))
    }
    async fn get_payment(&self, req: Request<GetPaymentRequest>) -> Result<Response<Payment>, Status> {
        self.0.behave(req.metadata()).await?;
        Ok(Response::new(Payment { id: req.into_inner().id, ..Payment::default() }))
    }
    async fn refund(&self, _: Request<RefundRequest>) -> Result<Response<Payment>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_payments(
        &self,
        _: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `routes` (named `name`) on 127.0.0.1:0 through the mesh's server stack.
async fn serve(name: &'static str, routes: Routes, mesh: MeshConfig) -> Spawned {
    let mesh = testing::mesh(mesh);
    testing::spawn(name, move |listener, shutdown| async move {
        server::serve(None, &mesh, &[name], routes, Listeners::new(listener), None, shutdown).await
    })
    .await
}

async fn fake_users(script: &Arc<Script>) -> Spawned {
    serve(USER, Routes::new(UserServiceServer::new(FakeUsers(script.clone()))), MeshConfig::default()).await
}

async fn fake_payments(script: &Arc<Script>) -> Spawned {
    serve(
        PAYMENT,
        Routes::new(PaymentServiceServer::new(FakePayments(script.clone()))),
        MeshConfig::default(),
    )
    .await
}

/// Client settings for tests: fast backoff, the default attempts and budget.
fn client_config() -> ClientConfig {
    ClientConfig {
        retry_backoff: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(5),
        ..ClientConfig::default()
    }
}

async fn users_client(url: &str, config: &ClientConfig) -> UserServiceClient<client::Channel> {
    UserServiceClient::new(
        client::channel(url, config, shopmesh::mesh_api().catalogue, None).await.expect("channel"),
    )
}

async fn payments_client(url: &str, config: &ClientConfig) -> PaymentServiceClient<client::Channel> {
    PaymentServiceClient::new(
        client::channel(url, config, shopmesh::mesh_api().catalogue, None).await.expect("channel"),
    )
}

fn charge(request_id: &str) -> ChargeRequest {
    ChargeRequest {
        order_id: "order-1".into(),
        user_id: "user-1".into(),
        amount: Some(Money { currency_code: "USD".into(), amount_minor: 1000 }),
        request_id: request_id.into(),
    }
}

fn one_book(user_id: &str, request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        user_id: user_id.into(),
        line_items: vec![LineItem {
            sku: "BOOK-42".into(),
            quantity: 1,
            unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1250 }),
        }],
        request_id: request_id.into(),
    }
}

/// The real order service on `backend`, calling the given user and payment URLs and a real
/// catalog (returned with it) that sells the book of [`one_book`].
async fn order_service(
    backend: Backend,
    user_url: String,
    payment_url: String,
) -> (Spawned, TestDb, Catalog) {
    let db = testing::database(backend, "order").await;
    let catalog = Catalog::with(backend, &[("BOOK-42", 1250, "USD")]).await;
    let config = OrderConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl: Duration::from_secs(1),
        reconcile: Default::default(),
    };
    let mut mesh = testing::mesh_config();
    // A margin well above loopback transit even on a loaded machine, so that "the callee's
    // deadline ends before its caller's" holds when measured from the callee's arrival.
    mesh.client = ClientConfig { deadline_margin: Duration::from_millis(40), ..client_config() };
    let spawned = testing::spawn_service::<shopmesh_order::Order>(
        &testing::mesh(mesh).with_upstreams(
            Upstreams::new().at("user", user_url).at("catalog", catalog.url()).at("payment", payment_url),
        ),
        config,
    )
    .await;
    (spawned, db, catalog)
}

async fn orders_client(order: &Spawned) -> OrderServiceClient<tonic::transport::Channel> {
    OrderServiceClient::connect(order.url()).await.expect("connect order")
}

/// The real order service calling fake user and payment services; the user service answers
/// after `user_delay_ms`.
struct FakedOrder {
    users: Arc<Script>,
    payments: Arc<Script>,
    user: Spawned,
    payment: Spawned,
    order: Spawned,
    db: TestDb,
    catalog: Catalog,
    orders: OrderServiceClient<tonic::transport::Channel>,
    user_id: String,
}

impl FakedOrder {
    async fn start(backend: Backend, user_delay_ms: u64) -> Self {
        let users = Arc::new(Script::default());
        users.delay_ms.store(user_delay_ms, Ordering::SeqCst);
        let payments = Arc::new(Script::default());
        let user = fake_users(&users).await;
        let payment = fake_payments(&payments).await;
        let (order, db, catalog) = order_service(backend, user.url(), payment.url()).await;
        let orders = orders_client(&order).await;
        let user_id = shopmesh::mesh::ids::new_id();
        Self { users, payments, user, payment, order, db, catalog, orders, user_id }
    }

    async fn stop(self) {
        self.order.stop().await.expect("stops");
        self.user.stop().await.expect("stops");
        self.payment.stop().await.expect("stops");
        self.catalog.stop().await;
        self.db.drop_database().await;
    }
}

/// The orders of `user_id` as the order service has them stored.
async fn stored_orders(
    orders: &mut OrderServiceClient<tonic::transport::Channel>,
    user_id: &str,
) -> Vec<shopmesh::api::order::v1::Order> {
    let req = ListOrdersRequest { user_id: user_id.into(), page_size: 10, page_token: String::new() };
    orders.list_orders(req).await.expect("list").into_inner().orders
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn every_hop_gets_less_time_than_its_caller_has_left() {
    for backend in testing::backends() {
        let mut m = FakedOrder::start(backend, 50).await;
        let (users, payments, user_id) = (m.users.clone(), m.payments.clone(), m.user_id.clone());

        let sent = Instant::now();
        let budget = Duration::from_millis(300);
        let paid =
            m.orders.create_order(with_timeout(one_book(&user_id, "r-1"), budget)).await.expect("paid");
        assert_eq!(paid.get_ref().state(), OrderState::Paid, "{backend:?}");

        // Each callee's deadline (arrival + its grpc-timeout) ends before the client's did.
        let client_deadline = sent + budget;
        for (name, script) in [("user", &users), ("payment", &payments)] {
            let seen = script.seen.lock().await.clone();
            assert_eq!(seen.len(), 1, "{name} called once");
            let (arrival, timeout) = seen[0];
            let timeout = timeout.unwrap_or_else(|| panic!("{name} got no grpc-timeout"));
            assert!(arrival + timeout < client_deadline, "{name}: {timeout:?} outlives the caller's budget");
        }
        // Payment is called after the 50 ms user call, so it is sent less than the user was.
        let user_timeout = users.seen.lock().await[0].1.expect("timeout");
        let payment_timeout = payments.seen.lock().await[0].1.expect("timeout");
        assert!(
            payment_timeout + Duration::from_millis(50) <= user_timeout,
            "{payment_timeout:?} vs {user_timeout:?}"
        );

        m.stop().await;
    }
}

#[tokio::test]
async fn nothing_starts_after_the_deadline() {
    for backend in testing::backends() {
        // The user service answers after the caller's deadline: the order service must give up,
        // answer DEADLINE_EXCEEDED itself, and neither charge nor store anything.
        let mut m = FakedOrder::start(backend, 600).await;
        let (users, payments, user_id) = (m.users.clone(), m.payments.clone(), m.user_id.clone());

        let late = m
            .orders
            .create_order(with_timeout(one_book(&user_id, "r-late"), Duration::from_millis(300)))
            .await;
        let err = late.expect_err("out of time");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{backend:?}: {err:?}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(payments.calls(), 0, "payment must not be called after the deadline");
        let stored = stored_orders(&mut m.orders, &user_id).await;
        assert!(stored.is_empty(), "{backend:?}: an order was written: {stored:?}");

        // Now payment is slow: the order is stored before the charge (inside the deadline), and
        // the late charge answer must not settle it afterwards.
        users.delay_ms.store(0, Ordering::SeqCst);
        payments.delay_ms.store(600, Ordering::SeqCst);
        let late = m
            .orders
            .create_order(with_timeout(one_book(&user_id, "r-slow-pay"), Duration::from_millis(300)))
            .await;
        let err = late.expect_err("out of time");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{backend:?}: {err:?}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(payments.calls(), 1, "one charge attempt: no retry past the deadline");
        let stored = stored_orders(&mut m.orders, &user_id).await;
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].state(), OrderState::PendingPayment, "settled after the deadline");

        m.stop().await;
    }
}

#[tokio::test]
async fn unavailable_twice_then_ok_takes_exactly_three_attempts() {
    let script = Arc::new(Script::failing_first(2, Code::Unavailable));
    let user = fake_users(&script).await;
    let mut users = users_client(&user.url(), &client_config()).await;
    let reply = users.get_user(GetUserRequest { id: "u-1".into() }).await.expect("third attempt succeeds");
    assert_eq!(reply.get_ref().id, "u-1");
    assert_eq!(script.calls(), 3);
    user.stop().await.expect("stops");
}

#[tokio::test]
async fn only_unavailable_is_retried() {
    let script = Arc::new(Script::failing_first(1, Code::InvalidArgument));
    let user = fake_users(&script).await;
    let mut users = users_client(&user.url(), &client_config()).await;
    let err = users.get_user(GetUserRequest { id: "u-1".into() }).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(script.calls(), 1);
    user.stop().await.expect("stops");

    let script = Arc::new(Script::default());
    script.decline.store(true, Ordering::SeqCst);
    let payment = fake_payments(&script).await;
    let mut payments = payments_client(&payment.url(), &client_config()).await;
    let declined = payments.charge(charge("key-1")).await.expect("answered").into_inner();
    assert_eq!(declined.state(), PaymentState::Declined);
    assert_eq!(script.calls(), 1, "a decline is an answer, not a failure");
    payment.stop().await.expect("stops");
}

#[tokio::test]
async fn side_effects_are_retried_only_with_a_request_id() {
    let script = Arc::new(Script::failing(Code::Unavailable));
    let payment = fake_payments(&script).await;
    let mut payments = payments_client(&payment.url(), &client_config()).await;

    let err = payments.charge(charge("")).await.expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(script.calls(), 1, "a Charge without request_id is never sent twice");

    let err = payments.charge(charge("key-7")).await.expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(script.calls(), 1 + 3, "with a request_id: the default 3 attempts");
    payment.stop().await.expect("stops");
}

#[tokio::test]
async fn pushback_is_honoured() {
    let script = Arc::new(Script::failing(Code::Unavailable));
    *script.pushback.lock().expect("lock") = Some("-1");
    let payment = fake_payments(&script).await;
    let mut payments = payments_client(&payment.url(), &client_config()).await;
    payments.get_payment(GetPaymentRequest { id: "p".into() }).await.expect_err("unavailable");
    assert_eq!(script.calls(), 1, "negative pushback means do not retry");

    *script.pushback.lock().expect("lock") = Some("150");
    payments.get_payment(GetPaymentRequest { id: "p".into() }).await.expect_err("unavailable");
    let seen = script.seen.lock().await.clone();
    assert_eq!(seen.len(), 1 + 3);
    for pair in seen[1..].windows(2) {
        assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(150), "retried before the pushback");
    }

    // With 300 ms to go and 200 ms pushback, the third attempt would start after the deadline.
    *script.pushback.lock().expect("lock") = Some("200");
    let before = script.calls();
    let err = payments
        .get_payment(with_timeout(GetPaymentRequest { id: "p".into() }, Duration::from_millis(300)))
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(script.calls() - before, 2, "no attempt may start after the deadline");
    payment.stop().await.expect("stops");
}

#[tokio::test]
async fn the_retry_budget_bounds_the_load_on_a_failing_dependency() {
    metrics();
    let script = Arc::new(Script::failing(Code::Unavailable));
    let payment = fake_payments(&script).await;
    let config = ClientConfig {
        retry_budget_ttl: Duration::from_secs(1),
        retry_budget_min_per_sec: 10,
        retry_budget_ratio: 0.2,
        ..client_config()
    };
    let payments = payments_client(&payment.url(), &config).await;
    let calls: u32 = 300;
    let started = Instant::now();
    futures::stream::iter(0..calls)
        .for_each_concurrent(4, |_| {
            let mut payments = payments.clone();
            async move {
                let err =
                    payments.get_payment(GetPaymentRequest { id: "p".into() }).await.expect_err("fails");
                assert_eq!(err.code(), Code::Unavailable);
            }
        })
        .await;
    let seconds = started.elapsed().as_secs_f64().ceil();
    let attempts = f64::from(script.calls());
    // 20% of the calls plus 10 retries per second of the window (1 s) and of the run.
    let bound = f64::from(calls) * 1.2 + 10.0 * (1.0 + seconds) + 1.0;
    assert!(attempts <= bound, "{attempts} attempts for {calls} calls exceeds the budget bound {bound}");
    assert!(attempts > f64::from(calls), "the budget allowed no retry at all");
    assert!(attempts < f64::from(calls) * 2.0, "{attempts}: retries were not limited");
    // Both decisions are visible: the retries made and those the budget refused.
    assert!(counted("shopmesh_client_retries_total") >= attempts - f64::from(calls));
    assert!(counted("shopmesh_client_retries_refused_total") >= 1.0, "{}", metrics().render());
    payment.stop().await.expect("stops");
}

/// Answers UNAVAILABLE instead of the real answer on every other Charge, after the service
/// has done the work: a reply lost on the way back.
#[derive(Clone)]
struct LoseEveryOtherReply<S> {
    inner: S,
    charges: Arc<AtomicU32>,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for LoseEveryOtherReply<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let lose = req.uri().path().ends_with("/Charge")
            && self.charges.fetch_add(1, Ordering::SeqCst).is_multiple_of(2);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            if lose {
                return Ok(Status::unavailable("reply lost").into_http());
            }
            Ok(response)
        })
    }
}

#[tokio::test]
async fn lost_charge_replies_are_retried_without_charging_twice() {
    for backend in testing::backends() {
        let user_script = Arc::new(Script::default());
        let user = fake_users(&user_script).await;

        // The real payment service, behind a fault layer on a tonic server of its own.
        let payment_db = testing::database(backend, "payment").await;
        let mesh = testing::mesh_config();
        let pool = shopmesh::mesh::db::open(&payment_db.url, &mesh, shopmesh_payment::Payment::MIGRATIONS)
            .await
            .expect("db");
        let payment_config = PaymentConfig {
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
        let routes = shopmesh_payment::Payment::start(&testing::mesh(mesh), &payment_config, pool.clone())
            .await
            .expect("start")
            .routes;
        let charges = Arc::new(AtomicU32::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let payment_url = format!("http://{}", listener.local_addr().expect("addr"));
        let layer = {
            let charges = charges.clone();
            tower::layer::layer_fn(move |inner| LoseEveryOtherReply { inner, charges: charges.clone() })
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer)
                // What the handlers need of the mesh's stack: whom a call acts for (the mesh).
                .layer(shopmesh::mesh::security::bearer::BearerAuthLayer::new(None, None))
                .add_routes(routes)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        let (order, order_db, catalog) = order_service(backend, user.url(), payment_url.clone()).await;
        let mut orders = orders_client(&order).await;
        let user_id = shopmesh::mesh::ids::new_id();
        let mut ids = Vec::new();
        for i in 0..10 {
            let paid =
                orders.create_order(one_book(&user_id, &format!("r-{i}"))).await.expect("paid").into_inner();
            assert_eq!(paid.state(), OrderState::Paid, "{backend:?}");
            ids.push(paid.id);
        }
        assert_eq!(charges.load(Ordering::SeqCst), 20, "each charge was answered on its second attempt");
        let mut payments = PaymentServiceClient::connect(payment_url).await.expect("connect");
        for id in &ids {
            let list = payments
                .list_payments(ListPaymentsRequest {
                    order_id: id.clone(),
                    page_size: 0,
                    page_token: String::new(),
                })
                .await
                .expect("list")
                .into_inner()
                .payments;
            assert_eq!(list.len(), 1, "{backend:?}: order {id} has {} payments", list.len());
            assert_eq!(list[0].state(), PaymentState::Succeeded);
        }

        order.stop().await.expect("stops");
        user.stop().await.expect("stops");
        catalog.stop().await;
        server.abort();
        pool.close().await;
        order_db.drop_database().await;
        payment_db.drop_database().await;
    }
}

/// Three (or more) fake user replicas and a balanced client over an address list the test
/// controls.
struct Replicas {
    scripts: Vec<Arc<Script>>,
    servers: Vec<Spawned>,
    addresses: tokio::sync::watch::Sender<Vec<std::net::SocketAddr>>,
    client: UserServiceClient<client::Channel>,
}

impl Replicas {
    async fn start(n: usize, config: &ClientConfig) -> Self {
        let mut scripts = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..n {
            let script = Arc::new(Script::default());
            servers.push(fake_users(&script).await);
            scripts.push(script);
        }
        let (addresses, rx) = tokio::sync::watch::channel(servers.iter().map(|s| s.addr).collect());
        let channel = client::channel_from_watch("users", rx, config, shopmesh::mesh_api().catalogue)
            .await
            .expect("channel");
        Self { scripts, servers, addresses, client: UserServiceClient::new(channel) }
    }

    async fn add(&mut self) {
        let script = Arc::new(Script::default());
        let server = fake_users(&script).await;
        self.addresses.send_modify(|list| list.push(server.addr));
        self.scripts.push(script);
        self.servers.push(server);
    }

    fn counts(&self) -> Vec<u32> {
        self.scripts.iter().map(|s| s.calls()).collect()
    }

    /// Sends `n` GetUser calls, `concurrency` at a time; returns how many succeeded.
    async fn send(&self, n: usize, concurrency: usize) -> usize {
        futures::stream::iter(0..n)
            .map(|i| {
                let mut client = self.client.clone();
                async move { client.get_user(GetUserRequest { id: format!("u-{i}") }).await.is_ok() }
            })
            .buffer_unordered(concurrency)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await.expect("stops");
        }
    }
}

#[tokio::test]
async fn calls_spread_evenly_over_replicas() {
    let replicas = Replicas::start(3, &client_config()).await;
    assert_eq!(replicas.send(3000, 30).await, 3000);
    for (i, count) in replicas.counts().into_iter().enumerate() {
        assert!((800..=1200).contains(&count), "replica {i} got {count} of 3000: {:?}", replicas.counts());
    }
    replicas.stop().await;
}

#[tokio::test]
async fn a_failing_replica_is_ejected_and_a_new_one_gets_traffic() {
    metrics();
    // No retries, so every call that reaches the faulty replica shows as a failure.
    let config = ClientConfig {
        retry_max_attempts: 1,
        eject_after_failures: 3,
        eject_time: Duration::from_secs(60),
        ..client_config()
    };
    let mut replicas = Replicas::start(3, &config).await;
    let faulty = &replicas.scripts[0];
    faulty.code.store(Code::Unavailable as i32, Ordering::SeqCst);
    faulty.always_fail.store(true, Ordering::SeqCst);

    let ok = replicas.send(300, 1).await;
    assert!(ok < 300, "the faulty replica was never called");
    let faulty_calls = replicas.scripts[0].calls();
    // Ejected after 3 consecutive failures (a call already on its way may still land).
    assert!((3..=5).contains(&faulty_calls), "the faulty replica got {faulty_calls} calls");
    assert!(counted("shopmesh_client_ejections_total") >= 1.0, "the ejection was not counted");

    // Ejected: the callers' success rate is back to 100% and the replica gets nothing.
    assert_eq!(replicas.send(300, 10).await, 300);
    assert_eq!(replicas.scripts[0].calls(), faulty_calls);

    // A replica added later receives its share.
    replicas.add().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = replicas.counts();
    assert_eq!(replicas.send(600, 10).await, 600);
    let after = replicas.counts();
    let new_calls = after[3] - before[3];
    // A fair share is 200 (three replicas are in use); half of it proves it is balanced onto.
    assert!(new_calls >= 100, "the new replica got {new_calls} of 600 calls: {after:?}");
    replicas.stop().await;
}

#[tokio::test]
async fn the_last_endpoint_is_never_ejected() {
    let config = ClientConfig { retry_max_attempts: 1, eject_after_failures: 2, ..client_config() };
    let replicas = Replicas::start(3, &config).await;
    for script in &replicas.scripts {
        script.code.store(Code::Unavailable as i32, Ordering::SeqCst);
        script.always_fail.store(true, Ordering::SeqCst);
    }
    assert_eq!(replicas.send(100, 1).await, 0);
    // Every call still reached a replica (none was answered "no endpoints" by the client).
    assert_eq!(replicas.counts().iter().sum::<u32>(), 100, "{:?}", replicas.counts());
    replicas.stop().await;
}

/// A channel balanced over `serving` and an address on 127.0.0.1 where nothing listens
/// (connecting is refused at once), with two attempts per call and a failure threshold out of
/// reach, so only a refusal can take the refusing one out. The refusing port is held for as long
/// as the test keeps what this returns.
async fn beside_a_refusing_replica(name: &str, serving: std::net::SocketAddr) -> (client::Channel, Refusing) {
    let refusing = Refusing::bind();
    let config = ClientConfig { retry_max_attempts: 2, eject_after_failures: 1_000, ..client_config() };
    // The balancer keeps the last list when its sender is dropped.
    let (_, rx) = tokio::sync::watch::channel(vec![refusing.addr(), serving]);
    let channel =
        client::channel_from_watch(name, rx, &config, shopmesh::mesh_api().catalogue).await.expect("channel");
    (channel, refusing)
}

/// A replica that refuses connections (restarting in a rolling update) beside one that serves:
/// with two attempts per call, every call succeeds, so no call was sent to the refusing one
/// twice; a refusal does not need the failure threshold (set out of reach here) to take it out
/// of the balancer's choice (issue 26).
#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let script = Arc::new(Script::default());
    let serving = fake_users(&script).await;
    let (channel, _refusing) = beside_a_refusing_replica("users", serving.addr).await;
    let mut users = UserServiceClient::new(channel);
    let mut failed = Vec::new();
    for i in 0..100 {
        if let Err(status) = users.get_user(GetUserRequest { id: format!("u-{i}") }).await {
            failed.push(status);
        }
    }
    assert!(failed.is_empty(), "{} of 100 calls failed: {:?}", failed.len(), failed.first());
    assert_eq!(script.calls(), 100, "every call reached the serving replica once");
    serving.stop().await.expect("stops");
}

/// A call that was never sent (its connection was refused) is safe to send again whatever its
/// method: a Charge without request_id goes to the replica that serves. One that was sent and
/// answered UNAVAILABLE is not sent again.
#[tokio::test]
async fn a_call_never_sent_is_retried_whatever_its_method_and_a_sent_one_is_not() {
    let script = Arc::new(Script::default());
    let serving = fake_payments(&script).await;
    let (channel, _refusing) = beside_a_refusing_replica("payments", serving.addr).await;
    let mut payments = PaymentServiceClient::new(channel);
    let mut failed = Vec::new();
    for _ in 0..50 {
        if let Err(status) = payments.charge(charge("")).await {
            failed.push(status);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 50 Charges without request_id failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(script.calls(), 50, "each Charge reached the serving replica once");

    // Sent, and answered UNAVAILABLE: a Charge without request_id is not sent again.
    script.code.store(Code::Unavailable as i32, Ordering::SeqCst);
    script.always_fail.store(true, Ordering::SeqCst);
    let err = payments.charge(charge("")).await.expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(script.calls(), 51, "a Charge that was sent went once");
    serving.stop().await.expect("stops");
}

#[tokio::test]
async fn overload_is_shed_at_once_and_admitted_calls_complete() {
    metrics();
    let gate = Arc::new(Semaphore::new(0));
    let script = Arc::new(Script { gate: Some(gate.clone()), ..Script::default() });
    let mut mesh = MeshConfig::default();
    mesh.server.max_concurrent_requests = 8;
    let user = serve(USER, Routes::new(UserServiceServer::new(FakeUsers(script.clone()))), mesh).await;
    let client = UserServiceClient::connect(user.url()).await.expect("connect");

    let calls: Vec<_> = (0..40)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { client.get_user(GetUserRequest { id: format!("u-{i}") }).await })
        })
        .collect();
    let mut calls = calls.into_iter();
    // While the admitted calls are held, the 32 excess ones must all come back.
    let mut shed = 0;
    let mut held = Vec::new();
    for call in calls.by_ref() {
        if call.is_finished() {
            let result = call.await.expect("join");
            assert_eq!(result.expect_err("shed").code(), Code::ResourceExhausted);
            shed += 1;
        } else {
            held.push(call);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shed < 32 && Instant::now() < deadline {
        let mut still = Vec::new();
        for call in held {
            if call.is_finished() {
                let result = call.await.expect("join");
                assert_eq!(result.expect_err("shed").code(), Code::ResourceExhausted);
                shed += 1;
            } else {
                still.push(call);
            }
        }
        held = still;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(shed, 32, "excess calls were queued instead of refused");
    assert!(counted("shopmesh_server_shed_total") >= 32.0, "shed calls were not counted");
    while script.in_flight.load(Ordering::SeqCst) < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(script.in_flight.load(Ordering::SeqCst), 8, "the admitted calls are being handled");
    // Health is answered even while the service is saturated.
    testing::wait_serving(user.addr, USER).await;

    gate.add_permits(1000);
    for call in held {
        call.await.expect("join").expect("admitted calls complete");
    }
    assert_eq!(script.max_in_flight.load(Ordering::SeqCst), 8, "never more than the limit at once");
    user.stop().await.expect("stops");
}

#[tokio::test]
async fn oversized_messages_are_refused_with_resource_exhausted() {
    for backend in testing::backends() {
        let db = testing::database(backend, "user").await;
        let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), db.url.clone());
        let mut mesh = testing::mesh_config();
        mesh.server.max_message_bytes = 1024;
        let user = testing::spawn_service::<shopmesh_user::User>(&testing::mesh(mesh), config).await;
        let mut users = UserServiceClient::connect(user.url()).await.expect("connect");
        let big = CreateUserRequest {
            email: "big@example.com".into(),
            display_name: "x".repeat(4096),
            request_id: String::new(),
        };
        let err = users.create_user(big).await.expect_err("too large");
        assert_eq!(err.code(), Code::ResourceExhausted, "{backend:?}: {err:?}");
        let listed = users
            .list_users(ListUsersRequest { page_size: 10, page_token: String::new() })
            .await
            .expect("list")
            .into_inner();
        assert!(listed.users.is_empty(), "nothing is written");
        user.stop().await.expect("stops");
        db.drop_database().await;
    }
}
