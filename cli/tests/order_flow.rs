//! End to end: the user, payment, catalog and order services, each on its own 127.0.0.1 port and
//! its own database, calling each other over real gRPC, on SQLite and (when configured) PostgreSQL.

use std::time::Duration;

use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CancelOrderRequest, CreateOrderRequest, GetOrderRequest, LineItem, ListOrdersRequest, Order, OrderState,
    order_service_client::OrderServiceClient,
};
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, Payment, PaymentState, RefundRequest,
    payment_service_client::PaymentServiceClient,
};
use shopmesh::api::user::v1::{
    CreateUserRequest, UpdateUserRequest, User, user_service_client::UserServiceClient,
};
use shopmesh::mesh::ids::new_id;
use shopmesh::mesh::testing::{self, Backend, Refusing, Spawned, TestDb, field_violations, precondition};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_order::{OrderConfig, ReconcileConfig};
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

#[path = "common/catalog.rs"]
mod catalog;
use catalog::Catalog;

/// Charges above this many minor units are declined by the simulated processor.
const LIMIT: i64 = 50_000;

/// What the catalog sells in these tests: (SKU, unit price in minor units, currency). Each test
/// sends the catalog's price as the price it expects, so totals are what the tests compute.
const PRODUCTS: &[(&str, i64, &str)] = &[
    ("TEA-EARL-GREY", 450, "USD"),
    ("MUG", 1_200, "USD"),
    ("BOOK", 1_999, "USD"),
    ("PEN", 250, "USD"),
    ("A", 100, "USD"),
    ("B", 100, "USD"),
    ("EURO-B", 100, "EUR"),
    ("YACHT", LIMIT + 1, "USD"),
    ("RAMEN", 500, "JPY"),
    ("LAMP", 4_000, "USD"),
    ("DESK-LAMP", 1_250, "USD"),
    ("CAR", LIMIT * 2, "USD"),
    ("CHAIR", 3_000, "USD"),
    ("DESK", 9_000, "USD"),
];

/// The three services and a client for each.
struct Mesh {
    user: Option<Spawned>,
    payment: Option<Spawned>,
    order: Spawned,
    catalog: Catalog,
    dbs: Vec<TestDb>,
    /// The user service's port, held once it is stopped (see [`Mesh::stop_user`]).
    user_port: Option<Refusing>,
    /// The payment port, held while payment is down (see [`Mesh::start_payment`]).
    payment_port: Option<Refusing>,
    users: UserServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

async fn start_payment(listener: TcpListener, db: &TestDb, payment_latency: Duration) -> Spawned {
    let config = PaymentConfig {
        listen: listener.local_addr().expect("addr"),
        database_url: db.url.clone(),
        database_read_url: None,
        payment_limit_minor: LIMIT,
        payment_currencies: vec!["USD".into(), "EUR".into()],
        payment_latency,
        // The simulated processor's ledger beside payment's tables: this test does not read it.
        processor_ledger_url: db.url.clone(),
        payment_processing_lease: Duration::from_secs(10),
    };
    let mesh = testing::mesh(testing::mesh_config());
    testing::spawn_service_on::<shopmesh_payment::Payment>(listener, &mesh, config).await
}

/// Starts the mesh; with `payment_up` false the order service points at an address where
/// nothing listens yet (see [`Mesh::start_payment`]).
async fn start(backend: Backend, payment_up: bool) -> Mesh {
    start_with(backend, payment_up, ReconcileConfig::default()).await
}

/// [`start`] with the order service's reconciler set by `reconcile`.
async fn start_with(backend: Backend, payment_up: bool, reconcile: ReconcileConfig) -> Mesh {
    start_checking_users(backend, payment_up, reconcile, Duration::from_secs(1), PAYMENT_LATENCY).await
}

/// The simulated processor's latency in most tests.
const PAYMENT_LATENCY: Duration = Duration::from_millis(2);

/// [`start_with`], the order service reusing a user found active for `user_check_ttl`.
async fn start_checking_users(
    backend: Backend,
    payment_up: bool,
    reconcile: ReconcileConfig,
    user_check_ttl: Duration,
    payment_latency: Duration,
) -> Mesh {
    let user_db = testing::database(backend, "user").await;
    let payment_db = testing::database(backend, "payment").await;
    let order_db = testing::database(backend, "order").await;

    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), user_db.url.clone());
    let user =
        testing::spawn_service::<shopmesh_user::User>(&testing::mesh(testing::mesh_config()), config).await;

    // Held without listening, so connecting is refused until the payment service starts on it.
    let payment_port = Refusing::bind();
    let payment_addr = payment_port.addr();
    let (payment, payment_port) = if payment_up {
        (Some(start_payment(payment_port.listen(), &payment_db, payment_latency).await), None)
    } else {
        (None, Some(payment_port))
    };

    let catalog = Catalog::with(backend, PRODUCTS).await;
    let config = OrderConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: order_db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: Duration::from_secs(5),
        user_check_ttl,
        reconcile,
    };
    let order = testing::spawn_service::<shopmesh_order::Order>(
        &testing::mesh(testing::mesh_config()).with_upstreams(
            Upstreams::new()
                .at("user", user.url())
                .at("catalog", catalog.url())
                .at("payment", format!("http://{payment_addr}")),
        ),
        config,
    )
    .await;

    let users = UserServiceClient::connect(user.url()).await.expect("connect user");
    let payments = PaymentServiceClient::new(
        Channel::from_shared(format!("http://{payment_addr}")).expect("url").connect_lazy(),
    );
    let orders = OrderServiceClient::connect(order.url()).await.expect("connect order");
    Mesh {
        user: Some(user),
        payment,
        order,
        catalog,
        dbs: vec![user_db, payment_db, order_db],
        user_port: None,
        payment_port,
        users,
        payments,
        orders,
    }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor })
}

fn line(sku: &str, quantity: i32, unit_price: Option<Money>) -> LineItem {
    LineItem { sku: sku.into(), quantity, unit_price }
}

fn order_of(user_id: &str, lines: Vec<LineItem>, request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest { user_id: user_id.into(), line_items: lines, request_id: request_id.into() }
}

impl Mesh {
    async fn stop(self) {
        self.order.stop().await.expect("order stops cleanly");
        if let Some(payment) = self.payment {
            payment.stop().await.expect("payment stops cleanly");
        }
        if let Some(user) = self.user {
            user.stop().await.expect("user stops cleanly");
        }
        self.catalog.stop().await;
        for db in self.dbs {
            db.drop_database().await;
        }
    }

    /// Stops the user service; the order service keeps calling its address, which is held so
    /// that no other test's service is given it.
    async fn stop_user(&mut self) {
        let user = self.user.take().expect("user is up");
        let addr = user.addr;
        user.stop().await.expect("user stops cleanly");
        self.user_port = Some(Refusing::at(addr));
    }

    /// Brings the payment service up at the address the order service calls.
    async fn start_payment(&mut self) {
        let port = self.payment_port.take().expect("payment is down, its port held");
        self.payment = Some(start_payment(port.listen(), &self.dbs[1], PAYMENT_LATENCY).await);
    }

    async fn new_user(&mut self, email: &str) -> User {
        let req = CreateUserRequest {
            email: email.into(),
            display_name: "Test User".into(),
            request_id: String::new(),
        };
        self.users.create_user(req).await.expect("create user").into_inner()
    }

    async fn create(&mut self, req: CreateOrderRequest) -> Result<Order, tonic::Status> {
        self.orders.create_order(req).await.map(tonic::Response::into_inner)
    }

    /// `n` copies of `req` sent at once, on clones of one channel.
    async fn race(&self, n: usize, req: &CreateOrderRequest) -> Vec<Result<Order, tonic::Status>> {
        futures::future::join_all((0..n).map(|_| {
            let mut client = self.orders.clone();
            let req = req.clone();
            async move { client.create_order(req).await.map(tonic::Response::into_inner) }
        }))
        .await
    }

    async fn cancel(&mut self, id: &str, request_id: &str) -> Result<Order, tonic::Status> {
        let req = CancelOrderRequest { id: id.into(), request_id: request_id.into() };
        self.orders.cancel_order(req).await.map(tonic::Response::into_inner)
    }

    async fn get(&mut self, id: &str) -> Order {
        self.orders.get_order(GetOrderRequest { id: id.into() }).await.expect("get order").into_inner()
    }

    /// Every order of `user_id`, following pages of `page_size`.
    async fn orders_of(&mut self, user_id: &str, page_size: i32) -> Vec<Order> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = ListOrdersRequest { user_id: user_id.into(), page_size, page_token };
            let page = self.orders.list_orders(req).await.expect("list orders").into_inner();
            all.extend(page.orders);
            if page.next_page_token.is_empty() {
                return all;
            }
            page_token = page.next_page_token;
        }
    }

    /// How many charges the simulated processor's ledger (beside payment's tables) holds for
    /// `order_id`.
    async fn charges_at_the_processor(&self, order_id: &str) -> i64 {
        let pool = shopmesh::mesh::db::connect(&self.dbs[1].url, &testing::mesh_config()).expect("ledger");
        let n =
            sqlx::query("SELECT COUNT(*) AS n FROM processor_ledger WHERE kind = 'charge' AND order_id = $1")
                .bind(order_id)
                .fetch_one(&*pool)
                .await
                .expect("count");
        pool.close().await;
        sqlx::Row::try_get(&n, "n").expect("n")
    }

    async fn payments_of(&mut self, order_id: &str) -> Vec<Payment> {
        let req = ListPaymentsRequest { order_id: order_id.into(), page_size: 0, page_token: String::new() };
        self.payments.list_payments(req).await.expect("list payments").into_inner().payments
    }
}

#[tokio::test]
async fn an_order_is_charged_and_paid() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("buyer@example.com").await;
        let order = m
            .create(order_of(
                &user.id,
                vec![line("TEA-EARL-GREY", 3, usd(450)), line("MUG", 1, usd(1_200))],
                "",
            ))
            .await
            .expect("create order");
        assert_eq!(order.state(), OrderState::Paid, "{backend:?}");
        assert_eq!(order.total, usd(3 * 450 + 1_200), "{backend:?}");
        assert_eq!(order.user_id, user.id, "{backend:?}");
        assert_eq!(order.line_items.len(), 2, "{backend:?}");
        assert!(order.decline_reason.is_empty(), "{backend:?}");
        assert!(order.create_time.is_some() && order.update_time.is_some(), "{backend:?}");
        assert_eq!(m.get(&order.id).await, order, "{backend:?}: GetOrder returns what CreateOrder did");

        let payment = m
            .payments
            .get_payment(GetPaymentRequest { id: order.payment_id.clone() })
            .await
            .expect("payment");
        let payment = payment.into_inner();
        assert_eq!(payment.state(), PaymentState::Succeeded, "{backend:?}");
        assert_eq!(payment.order_id, order.id, "{backend:?}");
        assert_eq!(payment.request_id, order.id, "{backend:?}: the charge is keyed by the order id");
        assert_eq!(payment.amount, order.total, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn ten_replays_of_create_order_give_one_order_and_one_payment() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("replay@example.com").await;
        let req = order_of(&user.id, vec![line("BOOK", 2, usd(1_999))], "checkout-7f3a");
        let first = m.create(req.clone()).await.expect("create");
        assert_eq!(first.state(), OrderState::Paid, "{backend:?}");
        assert_eq!(first.request_id, "checkout-7f3a", "{backend:?}");
        for _ in 0..10 {
            let again = m.create(req.clone()).await.expect("replay");
            assert_eq!(again, first, "{backend:?}: a replay returns the same order");
        }
        // Replays racing each other land on the same order too.
        let racing = m.race(5, &req).await;
        for r in racing {
            assert_eq!(r.expect("concurrent replay"), first, "{backend:?}");
        }
        assert_eq!(m.orders_of(&user.id, 0).await, vec![first.clone()], "{backend:?}: one order");
        let payments = m.payments_of(&first.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}: one payment");
        assert_eq!(payments[0].id, first.payment_id, "{backend:?}");
        m.stop().await;
    }
}

/// 40 first attempts of one CreateOrder at once: one order, one charge at the processor, and
/// every caller gets the same answer, the paid order. A replay of a call still in progress
/// waits for it (within its deadline) instead of failing UNAVAILABLE (issue 26).
#[tokio::test]
async fn concurrent_first_attempts_with_one_request_id_get_one_answer() {
    for backend in testing::backends() {
        // The charge takes long enough that every replay arrives while it is in progress.
        let mut m = start_checking_users(
            backend,
            true,
            ReconcileConfig::default(),
            Duration::from_secs(1),
            Duration::from_millis(200),
        )
        .await;
        let user = m.new_user("race@example.com").await;
        let req = order_of(&user.id, vec![line("PEN", 4, usd(250))], "race-1");
        let results = m.race(40, &req).await;
        let orders = m.orders_of(&user.id, 0).await;
        assert_eq!(orders.len(), 1, "{backend:?}: one order for one request id");
        let payments = m.payments_of(&orders[0].id).await;
        assert_eq!(payments.len(), 1, "{backend:?}: one payment");
        assert_eq!(m.charges_at_the_processor(&orders[0].id).await, 1, "{backend:?}: charged once");
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        println!("{backend:?}: 40 concurrent CreateOrder with one request id: {} failed", failed.len());
        assert!(failed.is_empty(), "{backend:?}: {} of 40 failed: {failed:?}", failed.len());
        for r in results {
            assert_eq!(r.expect("checked"), orders[0], "{backend:?}: every caller gets the paid order");
        }
        assert_eq!(orders[0].state(), OrderState::Paid, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn reusing_a_request_id_for_another_order_fails_and_changes_nothing() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("reuse@example.com").await;
        let first =
            m.create(order_of(&user.id, vec![line("A", 1, usd(100))], "key-1")).await.expect("create");
        let err = m
            .create(order_of(&user.id, vec![line("A", 2, usd(100))], "key-1"))
            .await
            .expect_err("same key, other order");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
        assert_eq!(precondition(&err).as_deref(), Some("REQUEST_ID_REUSED"), "{backend:?}");
        assert_eq!(m.orders_of(&user.id, 0).await, vec![first.clone()], "{backend:?}: nothing written");
        assert_eq!(m.payments_of(&first.id).await.len(), 1, "{backend:?}");
        m.stop().await;
    }
}

/// A request id is the caller's key among its own orders: another user's order under the same
/// key neither blocks nor reveals anything (issue 15).
#[tokio::test]
async fn request_ids_are_scoped_to_their_user() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let ada = m.new_user("ada@example.com").await;
        let bob = m.new_user("bob@example.com").await;
        let adas =
            m.create(order_of(&ada.id, vec![line("A", 1, usd(100))], "first-order")).await.expect("ada");
        let bobs = m
            .create(order_of(&bob.id, vec![line("B", 3, usd(100))], "first-order"))
            .await
            .expect("bob's first order under the key ada also used");
        assert_ne!(bobs.id, adas.id, "{backend:?}");
        assert_eq!(bobs.state(), OrderState::Paid, "{backend:?}");
        assert_eq!(bobs.user_id, bob.id, "{backend:?}");
        let again = m.create(order_of(&bob.id, vec![line("B", 3, usd(100))], "first-order")).await;
        assert_eq!(again.expect("bob's replay"), bobs, "{backend:?}: a replay finds bob's own order");
        assert_eq!(m.orders_of(&ada.id, 0).await, vec![adas.clone()], "{backend:?}");
        assert_eq!(m.payments_of(&adas.id).await.len(), 1, "{backend:?}");
        assert_eq!(m.payments_of(&bobs.id).await.len(), 1, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn declined_charges_leave_the_order_payment_declined() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("big-spender@example.com").await;
        let over = m
            .create(order_of(&user.id, vec![line("YACHT", 1, usd(LIMIT + 1))], "over-1"))
            .await
            .expect("a decline is an outcome, not an error");
        assert_eq!(over.state(), OrderState::PaymentDeclined, "{backend:?}");
        assert_eq!(over.decline_reason, "amount_over_limit", "{backend:?}");
        assert!(!over.payment_id.is_empty(), "{backend:?}: the declined payment is recorded");
        let payment = m.payments.get_payment(GetPaymentRequest { id: over.payment_id.clone() }).await;
        assert_eq!(payment.expect("payment").into_inner().state(), PaymentState::Declined, "{backend:?}");

        let yen = Some(Money { currency_code: "JPY".into(), amount_minor: 500 });
        let other = m.create(order_of(&user.id, vec![line("RAMEN", 1, yen)], "")).await.expect("create");
        assert_eq!(other.state(), OrderState::PaymentDeclined, "{backend:?}");
        assert_eq!(other.decline_reason, "currency_not_supported", "{backend:?}");

        // A replay returns the declined order; it does not charge again.
        let again = m.create(order_of(&user.id, vec![line("YACHT", 1, usd(LIMIT + 1))], "over-1")).await;
        assert_eq!(again.expect("replay"), over, "{backend:?}");
        assert_eq!(m.payments_of(&over.id).await.len(), 1, "{backend:?}");
        m.stop().await;
    }
}

/// A user found active is not asked about again for `--user-check-ttl` (one call fewer per
/// order): deactivated meanwhile, the user can still order until it runs out, as documented;
/// with `0s` the next order is refused at once.
#[tokio::test]
async fn a_user_found_active_is_reused_for_the_user_check_ttl() {
    for backend in testing::backends() {
        for (ttl, still_orders) in [(Duration::from_secs(600), true), (Duration::ZERO, false)] {
            let mut m =
                start_checking_users(backend, true, ReconcileConfig::default(), ttl, PAYMENT_LATENCY).await;
            let user = m.new_user("leaving@example.com").await;
            m.create(order_of(&user.id, vec![line("A", 1, usd(100))], "first")).await.expect("first order");
            let deactivate = UpdateUserRequest {
                user: Some(User { id: user.id.clone(), active: false, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["active".into()] }),
            };
            m.users.update_user(deactivate).await.expect("deactivate");
            let second = m.create(order_of(&user.id, vec![line("A", 1, usd(100))], "second")).await;
            if still_orders {
                second.unwrap_or_else(|e| panic!("{backend:?}: within the TTL the check is reused: {e:?}"));
            } else {
                let err = second.expect_err("asked again");
                assert_eq!(precondition(&err).as_deref(), Some("USER_INACTIVE"), "{backend:?}: {err:?}");
            }
            m.stop().await;
        }
    }
}

#[tokio::test]
async fn unknown_and_inactive_users_cannot_order() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let stranger = new_id();
        let err = m.create(order_of(&stranger, vec![line("A", 1, usd(100))], "")).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}: {err:?}");
        assert!(err.message().contains(&stranger), "{backend:?}: {}", err.message());
        assert!(m.orders_of(&stranger, 0).await.is_empty(), "{backend:?}: nothing written");

        let user = m.new_user("gone@example.com").await;
        let deactivate = UpdateUserRequest {
            user: Some(User { id: user.id.clone(), active: false, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["active".into()] }),
        };
        m.users.update_user(deactivate).await.expect("deactivate");
        let err =
            m.create(order_of(&user.id, vec![line("A", 1, usd(100))], "k")).await.expect_err("inactive");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
        assert_eq!(precondition(&err).as_deref(), Some("USER_INACTIVE"), "{backend:?}");
        assert!(m.orders_of(&user.id, 0).await.is_empty(), "{backend:?}: nothing written");
        m.stop().await;
    }
}

#[tokio::test]
async fn invalid_orders_are_rejected_field_by_field_and_write_nothing() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("careless@example.com").await;
        let u = user.id.as_str();
        let eur = Some(Money { currency_code: "EUR".into(), amount_minor: 100 });
        let cases: Vec<(&str, CreateOrderRequest, Vec<&str>)> = vec![
            ("empty order", order_of(u, vec![], ""), vec!["line_items"]),
            ("zero quantity", order_of(u, vec![line("A", 0, usd(100))], ""), vec!["line_items[0].quantity"]),
            (
                "negative quantity",
                order_of(u, vec![line("A", 1, usd(100)), line("B", -2, usd(100))], ""),
                vec!["line_items[1].quantity"],
            ),
            (
                "negative price",
                order_of(u, vec![line("A", 1, usd(-1))], ""),
                vec!["line_items[0].unit_price.amount_minor"],
            ),
            ("bad sku", order_of(u, vec![line("no spaces", 1, usd(1))], ""), vec!["line_items[0].sku"]),
            ("lower-case sku", order_of(u, vec![line("a", 1, usd(100))], ""), vec!["line_items[0].sku"]),
            ("bad user id", order_of("not-a-uuid", vec![line("A", 1, usd(1))], ""), vec!["user_id"]),
            ("bad request id", order_of(u, vec![line("A", 1, usd(1))], "has space"), vec!["request_id"]),
            (
                "everything wrong",
                order_of("", vec![line("", 0, None)], &"x".repeat(65)),
                vec!["user_id", "request_id", "line_items[0].sku", "line_items[0].quantity"],
            ),
        ];
        for (what, req, fields) in cases {
            let err = m.create(req).await.expect_err(what);
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {what}: {err:?}");
            assert_eq!(field_violations(&err), fields, "{backend:?} {what}");
        }
        // The catalog prices every line now: a missing price is filled in (see pricing.rs), and
        // since it holds only positive prices of at most 10^12 minor units, a zero or overflowing
        // total cannot be asked for. What the request can still get wrong against the catalog
        // is refused as a failed precondition, and writes nothing either.
        let refused: Vec<(&str, CreateOrderRequest, &str)> = vec![
            (
                "mixed currencies",
                order_of(u, vec![line("A", 1, usd(100)), line("EURO-B", 1, eur)], ""),
                "CURRENCY_MISMATCH",
            ),
            ("zero price", order_of(u, vec![line("A", 1, usd(0))], ""), "PRICE_CHANGED"),
            ("unknown product", order_of(u, vec![line("FREE", 1, usd(0))], ""), "PRODUCT_UNAVAILABLE"),
        ];
        for (what, req, kind) in refused {
            let err = m.create(req).await.expect_err(what);
            assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?} {what}: {err:?}");
            assert_eq!(precondition(&err).as_deref(), Some(kind), "{backend:?} {what}");
        }
        // A small request (100 lines, under 3 KiB) wrong on every line: its 301 violations once
        // made trailers of tens of KB that the client refused, so the caller saw no INVALID_ARGUMENT.
        let bad_price = Some(Money { currency_code: "usd".into(), amount_minor: -1 });
        let lines = (0..100).map(|_| line("no spaces", 0, bad_price.clone())).collect();
        let err = m.create(order_of(u, lines, "")).await.expect_err("every line wrong");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
        let fields = field_violations(&err);
        assert_eq!(fields.len(), shopmesh::mesh::validation::MAX_LISTED_VIOLATIONS, "{backend:?}");
        assert_eq!(
            fields[..3],
            ["line_items[0].sku", "line_items[0].quantity", "line_items[0].unit_price.amount_minor"]
        );
        assert!(m.orders_of(u, 0).await.is_empty(), "{backend:?}: nothing written");

        let err = m.orders.get_order(GetOrderRequest { id: "nope".into() }).await.expect_err("bad id");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(field_violations(&err), ["id"], "{backend:?}");
        let err = m.orders.get_order(GetOrderRequest { id: new_id() }).await.expect_err("unknown id");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        let req = ListOrdersRequest { user_id: u.into(), page_size: -1, page_token: "garbage".into() };
        let err = m.orders.list_orders(req).await.expect_err("bad page");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(field_violations(&err), ["page_size", "page_token"], "{backend:?}");
        let err = m.cancel(&new_id(), "").await.expect_err("unknown order");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn orders_are_listed_per_user_a_page_at_a_time() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let alice = m.new_user("alice@example.com").await;
        let bob = m.new_user("bob@example.com").await;
        let mut created = Vec::new();
        for i in 1..=5 {
            created
                .push(m.create(order_of(&alice.id, vec![line("A", i, usd(100))], "")).await.expect("create"));
        }
        m.create(order_of(&bob.id, vec![line("B", 1, usd(100))], "")).await.expect("bob's order");

        let req = ListOrdersRequest { user_id: alice.id.clone(), page_size: 2, page_token: String::new() };
        let first = m.orders.list_orders(req).await.expect("page 1").into_inner();
        assert_eq!(first.orders, created[..2], "{backend:?}: oldest first");
        assert!(!first.next_page_token.is_empty(), "{backend:?}");
        assert_eq!(m.orders_of(&alice.id, 2).await, created, "{backend:?}: pages cover every order once");
        assert_eq!(m.orders_of(&alice.id, 1000).await, created, "{backend:?}");
        assert_eq!(m.orders_of(&bob.id, 2).await.len(), 1, "{backend:?}: only bob's");
        m.stop().await;
    }
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it_exactly_once() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("regret@example.com").await;
        let order =
            m.create(order_of(&user.id, vec![line("LAMP", 1, usd(4_000))], "")).await.expect("create");
        assert_eq!(order.state(), OrderState::Paid, "{backend:?}");

        let cancelled = m.cancel(&order.id, "cancel-1").await.expect("cancel");
        assert_eq!(cancelled.state(), OrderState::Cancelled, "{backend:?}");
        assert_eq!(cancelled.payment_id, order.payment_id, "{backend:?}");
        let again = m.cancel(&order.id, "cancel-1").await.expect("repeat of the same cancel");
        assert_eq!(again, cancelled, "{backend:?}");
        let err = m.cancel(&order.id, "cancel-2").await.expect_err("cancel a cancelled order");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
        assert_eq!(precondition(&err).as_deref(), Some("ALREADY_CANCELLED"), "{backend:?}");
        let err = m.cancel(&order.id, "").await.expect_err("cancel without a key");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");

        let payments = m.payments_of(&order.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Refunded, "{backend:?}");
        assert_eq!(payments[0].refund_request_id, order.id, "{backend:?}: the refund is keyed by the order");
        assert_eq!(m.get(&order.id).await, cancelled, "{backend:?}");

        // A declined order has nothing to refund; it is simply cancelled.
        let declined =
            m.create(order_of(&user.id, vec![line("CAR", 1, usd(LIMIT * 2))], "")).await.expect("declined");
        let cancelled = m.cancel(&declined.id, "").await.expect("cancel declined");
        assert_eq!(cancelled.state(), OrderState::Cancelled, "{backend:?}");
        let payments = m.payments_of(&declined.id).await;
        assert_eq!(payments[0].state(), PaymentState::Declined, "{backend:?}: nothing refunded");
        m.stop().await;
    }
}

/// A Refund made on the payment service itself (support, an operator) and a later CancelOrder
/// converge: the order ends CANCELLED and the payment is not refunded a second time (issue 15).
#[tokio::test]
async fn cancelling_an_order_refunded_on_payment_converges() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user = m.new_user("support@example.com").await;
        let order =
            m.create(order_of(&user.id, vec![line("LAMP", 1, usd(4_000))], "")).await.expect("create");
        assert_eq!(order.state(), OrderState::Paid, "{backend:?}");
        let refund = RefundRequest { payment_id: order.payment_id.clone(), request_id: "support-1".into() };
        m.payments.refund(refund).await.expect("refund on payment");

        let cancelled = m.cancel(&order.id, "cancel-1").await.expect("cancel converges");
        assert_eq!(cancelled.state(), OrderState::Cancelled, "{backend:?}");
        assert_eq!(m.cancel(&order.id, "cancel-1").await.expect("replay"), cancelled, "{backend:?}");
        let payments = m.payments_of(&order.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Refunded, "{backend:?}");
        assert_eq!(payments[0].refund_request_id, "support-1", "{backend:?}: refunded once, by support");
        m.stop().await;
    }
}

/// A pending order whose payment was charged and then refunded is not PAID: the money went back
/// (issue 15).
#[tokio::test]
async fn a_refunded_payment_does_not_pay_a_pending_order() {
    for backend in testing::backends() {
        let reconcile = ReconcileConfig { reconcile_interval: Duration::ZERO, ..ReconcileConfig::default() };
        let mut m = start_with(backend, false, reconcile).await;
        let user = m.new_user("late@example.com").await;
        let req = order_of(&user.id, vec![line("CHAIR", 1, usd(3_000))], "late-1");
        let err = m.create(req.clone()).await.expect_err("payment is down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        let pending = m.orders_of(&user.id, 0).await.remove(0);
        m.start_payment().await;
        // The order's own Charge reached payment (its reply was lost), then it was refunded there.
        let charge = ChargeRequest {
            order_id: pending.id.clone(),
            user_id: user.id.clone(),
            amount: pending.total.clone(),
            request_id: pending.id.clone(),
        };
        let paid = m.payments.charge(charge).await.expect("charge").into_inner();
        assert_eq!(paid.state(), PaymentState::Succeeded, "{backend:?}");
        let refund = RefundRequest { payment_id: paid.id.clone(), request_id: "support-2".into() };
        m.payments.refund(refund).await.expect("refund on payment");

        let settled = m.create(req).await.expect("the retry settles the order");
        assert_ne!(settled.state(), OrderState::Paid, "{backend:?}: a refunded payment paid the order");
        assert_eq!(settled.state(), OrderState::Cancelled, "{backend:?}");
        assert_eq!(settled.payment_id, paid.id, "{backend:?}");
        let payments = m.payments_of(&pending.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Refunded, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn an_order_survives_the_payment_service_being_down() {
    for backend in testing::backends() {
        let mut m = start(backend, false).await;
        let user = m.new_user("patient@example.com").await;
        let req = order_of(&user.id, vec![line("CHAIR", 2, usd(3_000))], "while-down");
        let err = m.create(req.clone()).await.expect_err("payment is down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert!(err.message().contains("retry with the same request_id"), "{backend:?}: {}", err.message());
        assert_says_only_dependency_unavailable(&err, "payment");

        let kept = m.orders_of(&user.id, 0).await;
        assert_eq!(kept.len(), 1, "{backend:?}: the order is kept");
        assert_eq!(kept[0].state(), OrderState::PendingPayment, "{backend:?}");
        // Cancelling must first learn whether the charge happened; payment cannot say.
        let err = m.cancel(&kept[0].id, "").await.expect_err("cancel while the payment is unknown");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert_eq!(m.get(&kept[0].id).await.state(), OrderState::PendingPayment, "{backend:?}: unchanged");

        m.start_payment().await;
        let paid = m.create(req).await.expect("the retry completes the order");
        assert_eq!(paid.id, kept[0].id, "{backend:?}: the same order");
        assert_eq!(paid.state(), OrderState::Paid, "{backend:?}");
        assert_eq!(m.payments_of(&paid.id).await.len(), 1, "{backend:?}: charged once");
        m.stop().await;
    }
}

#[tokio::test]
async fn the_reconciler_settles_an_order_nobody_retries() {
    for backend in testing::backends() {
        let reconcile = ReconcileConfig {
            reconcile_interval: Duration::from_millis(50),
            reconcile_after: Duration::from_millis(100),
            reconcile_max_backoff: Duration::from_millis(200),
            ..ReconcileConfig::default()
        };
        let mut m = start_with(backend, false, reconcile).await;
        let user = m.new_user("abandoned@example.com").await;
        let err = m
            .create(order_of(&user.id, vec![line("DESK", 1, usd(9_000))], "gave-up"))
            .await
            .expect_err("down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        let id = m.orders_of(&user.id, 0).await[0].id.clone();

        // The client never comes back; payment does.
        m.start_payment().await;
        let mut state = OrderState::PendingPayment;
        for _ in 0..200 {
            state = m.get(&id).await.state();
            if state != OrderState::PendingPayment {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(state, OrderState::Paid, "{backend:?}: settled within 10 s");
        let payments = m.payments_of(&id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Succeeded, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn cancelling_a_pending_order_settles_its_payment_then_refunds_it() {
    for backend in testing::backends() {
        // The reconciler is off, so only CancelOrder can settle the payment.
        let reconcile = ReconcileConfig { reconcile_interval: Duration::ZERO, ..ReconcileConfig::default() };
        let mut m = start_with(backend, false, reconcile).await;
        let user = m.new_user("regret@example.com").await;
        let err = m
            .create(order_of(&user.id, vec![line("DESK-LAMP", 2, usd(1_250))], "k1"))
            .await
            .expect_err("down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        let id = m.orders_of(&user.id, 0).await[0].id.clone();
        m.start_payment().await;

        let cancelled = m.cancel(&id, "cancel-1").await.expect("cancel a pending order");
        assert_eq!(cancelled.state(), OrderState::Cancelled, "{backend:?}");
        assert!(!cancelled.payment_id.is_empty(), "{backend:?}: the settled payment is recorded");
        let payments = m.payments_of(&id).await;
        assert_eq!(payments.len(), 1, "{backend:?}: charged once");
        assert_eq!(payments[0].state(), PaymentState::Refunded, "{backend:?}: and refunded");
        assert_eq!(m.cancel(&id, "cancel-1").await.expect("replay"), cancelled, "{backend:?}");
        m.stop().await;
    }
}

#[tokio::test]
async fn the_user_service_being_down_is_unavailable_and_writes_nothing() {
    for backend in testing::backends() {
        let mut m = start(backend, true).await;
        let user_id = new_id();
        m.stop_user().await;
        let err =
            m.create(order_of(&user_id, vec![line("A", 1, usd(100))], "k")).await.expect_err("user down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert_says_only_dependency_unavailable(&err, "user");
        assert!(m.orders_of(&user_id, 0).await.is_empty(), "{backend:?}: nothing written");
        m.stop().await;
    }
}

/// A dependency's failure reaches an outside caller as which dependency and that it is
/// unavailable, never the transport's own words (addresses, OS errors), which stay in the log.
fn assert_says_only_dependency_unavailable(err: &tonic::Status, dependency: &str) {
    let message = err.message();
    assert!(message.starts_with(&format!("{dependency}: dependency unavailable")), "{err:?}");
    for leaked in ["tcp", "connect", "refused", "os error", "127.0.0.1", "transport", "endpoint"] {
        assert!(!message.to_ascii_lowercase().contains(leaked), "the answer shows {leaked:?}: {err:?}");
    }
}
