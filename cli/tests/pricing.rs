//! Prices come from the server (issue 13): the user, payment, catalog and order services, each
//! on its own 127.0.0.1 port and database, over real gRPC, on SQLite and (when configured)
//! PostgreSQL. The order service prices every line from the catalog; these tests are the
//! issue's "Done when".

use std::time::Duration;

use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CreateOrderRequest, GetOrderRequest, LineItem, ListOrdersRequest, Order, OrderState,
    order_service_client::OrderServiceClient,
};
use shopmesh::api::payment::v1::{
    ListPaymentsRequest, Payment, PaymentState, payment_service_client::PaymentServiceClient,
};
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::testing::{self, Backend, Refusing, Spawned, TestDb, field_violations, precondition};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_order::{OrderConfig, ReconcileConfig};
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use sqlx::Row as _;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

#[path = "common/catalog.rs"]
mod catalog;
use catalog::Catalog;

/// What the catalog sells at first: (SKU, unit price in minor units, currency).
const PRODUCTS: &[(&str, i64, &str)] =
    &[("BOOK", 1_999, "USD"), ("PEN", 250, "USD"), ("MUG", 1_200, "USD"), ("BIER", 450, "EUR")];

/// Where the order service finds the catalog.
enum CatalogAt {
    /// A real catalog holding [`PRODUCTS`].
    Running,
    /// An address where nothing listens.
    Nowhere,
}

/// The four services and a client for each but the catalog (the test drives it directly).
struct World {
    user: Spawned,
    payment: Spawned,
    order: Spawned,
    catalog: Option<Catalog>,
    /// With the catalog [`CatalogAt::Nowhere`], its port, held so no other test's service is
    /// given it.
    _catalog_port: Option<Refusing>,
    dbs: Vec<TestDb>,
    users: UserServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

async fn start(backend: Backend, ttl: Duration, at: CatalogAt) -> World {
    let user_db = testing::database(backend, "user").await;
    let payment_db = testing::database(backend, "payment").await;
    let order_db = testing::database(backend, "order").await;
    let mesh = || testing::mesh(testing::mesh_config());

    let config = UserConfig::new(testing::ANY_PORT, user_db.url.clone());
    let user = testing::spawn_service::<shopmesh_user::User>(&mesh(), config).await;
    let config = PaymentConfig {
        listen: testing::ANY_PORT,
        database_url: payment_db.url.clone(),
        database_read_url: None,
        payment_limit_minor: 1_000_000,
        payment_currencies: vec!["USD".into(), "EUR".into()],
        payment_latency: Duration::ZERO,
        // The simulated processor's ledger beside payment's tables: this test does not read it.
        processor_ledger_url: payment_db.url.clone(),
        payment_processing_lease: Duration::from_secs(10),
    };
    let payment = testing::spawn_service::<shopmesh_payment::Payment>(&mesh(), config).await;
    let (catalog, catalog_url, catalog_port) = match at {
        CatalogAt::Running => {
            let catalog = Catalog::with(backend, PRODUCTS).await;
            let url = catalog.url();
            (Some(catalog), url, None)
        }
        CatalogAt::Nowhere => {
            let port = Refusing::bind();
            (None, port.url(), Some(port))
        }
    };
    let config = OrderConfig {
        listen: testing::ANY_PORT,
        database_url: order_db.url.clone(),
        database_read_url: None,
        catalog_cache_ttl: ttl,
        user_check_ttl: Duration::from_secs(1),
        reconcile: ReconcileConfig::default(),
    };
    let order = testing::spawn_service::<shopmesh_order::Order>(
        &mesh().with_upstreams(
            Upstreams::new().at("user", user.url()).at("catalog", catalog_url).at("payment", payment.url()),
        ),
        config,
    )
    .await;
    let users = UserServiceClient::connect(user.url()).await.expect("connect user");
    let payments = PaymentServiceClient::connect(payment.url()).await.expect("connect payment");
    let orders = OrderServiceClient::connect(order.url()).await.expect("connect order");
    World {
        user,
        payment,
        order,
        catalog,
        _catalog_port: catalog_port,
        dbs: vec![user_db, payment_db, order_db],
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

/// The `subject` of a status's first `google.rpc.PreconditionFailure` violation.
fn precondition_subject(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .precondition_failure()
        .and_then(|p| p.violations.first().map(|v| v.subject.clone()))
}

impl World {
    fn catalog(&self) -> &Catalog {
        self.catalog.as_ref().expect("a running catalog")
    }

    async fn stop(self) {
        self.order.stop().await.expect("order stops cleanly");
        self.payment.stop().await.expect("payment stops cleanly");
        self.user.stop().await.expect("user stops cleanly");
        if let Some(catalog) = self.catalog {
            catalog.stop().await;
        }
        for db in self.dbs {
            db.drop_database().await;
        }
    }

    async fn new_user(&mut self, email: &str) -> String {
        let req = CreateUserRequest {
            email: email.into(),
            display_name: "Test User".into(),
            request_id: String::new(),
        };
        self.users.create_user(req).await.expect("create user").into_inner().id
    }

    async fn create(&mut self, req: CreateOrderRequest) -> Result<Order, tonic::Status> {
        self.orders.create_order(req).await.map(tonic::Response::into_inner)
    }

    async fn get(&mut self, id: &str) -> Order {
        self.orders.get_order(GetOrderRequest { id: id.into() }).await.expect("get order").into_inner()
    }

    async fn orders_of(&mut self, user_id: &str) -> Vec<Order> {
        let req = ListOrdersRequest { user_id: user_id.into(), page_size: 1000, page_token: String::new() };
        self.orders.list_orders(req).await.expect("list orders").into_inner().orders
    }

    async fn payments_of(&mut self, order_id: &str) -> Vec<Payment> {
        let req = ListPaymentsRequest { order_id: order_id.into(), page_size: 0, page_token: String::new() };
        self.payments.list_payments(req).await.expect("list payments").into_inner().payments
    }

    /// Payments charged for `user_id`, counted in the payment service's own database: the API
    /// lists payments by order, and a refused order has none to name.
    async fn payments_for_user(&self, user_id: &str) -> i64 {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.dbs[1].url).await.expect("open the payment database");
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM payments WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&pool)
            .await
            .expect("count payments")
            .try_get("n")
            .expect("n");
        pool.close().await;
        n
    }

    /// Nothing was written for `user_id`: no order, no payment.
    async fn assert_nothing_written(&mut self, user_id: &str, what: &str) {
        assert!(self.orders_of(user_id).await.is_empty(), "{what}: an order was written");
        assert_eq!(self.payments_for_user(user_id).await, 0, "{what}: a payment was made");
    }
}

#[tokio::test]
async fn a_missing_price_is_filled_from_the_catalog_and_the_total_is_what_is_charged() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::from_secs(5), CatalogAt::Running).await;
        let user = w.new_user("ada@example.com").await;
        // One line without a price, one stating the catalog's.
        let lines = vec![line("BOOK", 2, None), line("PEN", 3, usd(250)), line("MUG", 1, None)];
        let order = w.create(order_of(&user, lines, "")).await.expect("create");
        assert_eq!(order.state(), OrderState::Paid, "{backend:?}");
        let prices: Vec<_> = order.line_items.iter().map(|l| l.unit_price.clone()).collect();
        assert_eq!(
            prices,
            [usd(1_999), usd(250), usd(1_200)],
            "{backend:?}: every line at the catalog's price"
        );
        assert_eq!(order.total, usd(2 * 1_999 + 3 * 250 + 1_200), "{backend:?}: Σ catalog price × quantity");
        assert_eq!(w.get(&order.id).await, order, "{backend:?}: stored as answered");

        let payments = w.payments_of(&order.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Succeeded, "{backend:?}");
        assert_eq!(payments[0].amount, order.total, "{backend:?}: the payment charges the total");
        assert_eq!(payments[0].id, order.payment_id, "{backend:?}");
        w.stop().await;
    }
}

#[tokio::test]
async fn a_mismatching_client_price_is_refused_and_writes_nothing() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::from_secs(5), CatalogAt::Running).await;
        let user = w.new_user("stale@example.com").await;
        for (what, lines) in [
            ("lower", vec![line("BOOK", 1, usd(1_500))]),
            ("higher", vec![line("PEN", 1, usd(250)), line("BOOK", 1, usd(2_000))]),
            (
                "other currency",
                vec![line("BOOK", 1, Some(Money { currency_code: "EUR".into(), amount_minor: 1_999 }))],
            ),
        ] {
            let err = w.create(order_of(&user, lines, "stale-1")).await.expect_err(what);
            assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?} {what}: {err:?}");
            assert_eq!(precondition(&err).as_deref(), Some("PRICE_CHANGED"), "{backend:?} {what}");
            assert_eq!(precondition_subject(&err).as_deref(), Some("products/BOOK"), "{backend:?} {what}");
            w.assert_nothing_written(&user, &format!("{backend:?} {what}")).await;
        }
        // The same request id, now with the right price, creates the order: nothing was kept.
        let order = w.create(order_of(&user, vec![line("BOOK", 1, usd(1_999))], "stale-1")).await;
        assert_eq!(order.expect("the right price").total, usd(1_999), "{backend:?}");
        w.stop().await;
    }
}

#[tokio::test]
async fn a_price_change_reaches_new_orders_within_the_ttl_and_leaves_stored_orders_alone() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::from_millis(300), CatalogAt::Running).await;
        let user = w.new_user("watcher@example.com").await;
        let before = w.create(order_of(&user, vec![line("BOOK", 2, None)], "")).await.expect("create");
        assert_eq!(before.line_items[0].unit_price, usd(1_999), "{backend:?}");
        w.catalog().set_price("BOOK", 2_499, "USD").await;

        // New orders carry the new price once the cached one expires (300 ms); bounded at 5 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut after = None;
        while tokio::time::Instant::now() < deadline {
            let order = w.create(order_of(&user, vec![line("BOOK", 2, None)], "")).await.expect("create");
            assert_eq!(order.state(), OrderState::Paid, "{backend:?}");
            let price = order.line_items[0].unit_price.clone();
            assert!(price == usd(1_999) || price == usd(2_499), "{backend:?}: {price:?}");
            if price == usd(2_499) {
                after = Some(order);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = after.unwrap_or_else(|| panic!("{backend:?}: the new price never reached an order"));
        assert_eq!(after.total, usd(2 * 2_499), "{backend:?}");
        assert_eq!(w.payments_of(&after.id).await[0].amount, after.total, "{backend:?}");
        // Stored orders keep the price they were made at.
        let stored = w.get(&before.id).await;
        assert_eq!(stored, before, "{backend:?}: the earlier order is unchanged");
        assert_eq!(stored.line_items[0].unit_price, usd(1_999), "{backend:?}");
        assert_eq!(stored.total, usd(2 * 1_999), "{backend:?}");
        // The stale price is now refused.
        let err = w.create(order_of(&user, vec![line("BOOK", 1, usd(1_999))], "")).await.expect_err("stale");
        assert_eq!(precondition(&err).as_deref(), Some("PRICE_CHANGED"), "{backend:?}: {err:?}");
        w.stop().await;
    }
}

#[tokio::test]
async fn without_a_cache_a_price_change_reaches_the_next_order() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::ZERO, CatalogAt::Running).await;
        let user = w.new_user("eager@example.com").await;
        let before = w.create(order_of(&user, vec![line("PEN", 4, None)], "")).await.expect("create");
        assert_eq!(before.total, usd(4 * 250), "{backend:?}");
        w.catalog().set_price("PEN", 300, "USD").await;
        let after = w.create(order_of(&user, vec![line("PEN", 4, None)], "")).await.expect("create");
        assert_eq!(after.line_items[0].unit_price, usd(300), "{backend:?}: at once");
        assert_eq!(after.total, usd(4 * 300), "{backend:?}");
        assert_eq!(w.payments_of(&after.id).await[0].amount, after.total, "{backend:?}");
        assert_eq!(w.get(&before.id).await, before, "{backend:?}: the earlier order is unchanged");
        w.stop().await;
    }
}

#[tokio::test]
async fn the_catalog_being_down_is_unavailable_and_writes_nothing() {
    for backend in testing::backends() {
        // Nothing ever listened where the catalog should be.
        let mut w = start(backend, Duration::from_secs(5), CatalogAt::Nowhere).await;
        let user = w.new_user("early@example.com").await;
        let err =
            w.create(order_of(&user, vec![line("BOOK", 1, None)], "k-1")).await.expect_err("no catalog");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        w.assert_nothing_written(&user, &format!("{backend:?} never up")).await;
        w.stop().await;

        // The catalog goes away after serving (no cache, so the next order must ask it).
        let mut w = start(backend, Duration::ZERO, CatalogAt::Running).await;
        let user = w.new_user("late@example.com").await;
        let first = w.create(order_of(&user, vec![line("BOOK", 1, None)], "")).await.expect("catalog up");
        w.catalog.take().expect("catalog").stop().await;
        let err = w.create(order_of(&user, vec![line("BOOK", 1, None)], "k-2")).await.expect_err("stopped");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert_eq!(w.orders_of(&user).await, vec![first.clone()], "{backend:?}: nothing more written");
        assert_eq!(w.payments_for_user(&user).await, 1, "{backend:?}: only the first order's payment");
        w.stop().await;
    }
}

#[tokio::test]
async fn a_replay_after_a_price_change_returns_the_original_order() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::ZERO, CatalogAt::Running).await;
        let user = w.new_user("again@example.com").await;
        let req = order_of(&user, vec![line("BOOK", 2, None), line("PEN", 1, usd(250))], "checkout-1");
        let first = w.create(req.clone()).await.expect("create");
        assert_eq!(first.total, usd(2 * 1_999 + 250), "{backend:?}");
        w.catalog().set_price("BOOK", 2_999, "USD").await;
        w.catalog().set_price("PEN", 275, "USD").await;

        let again = w.create(req.clone()).await.expect("replay");
        assert_eq!(again, first, "{backend:?}: same id, same prices, same total");
        // Stating the price that was charged is the same request too.
        let stated =
            order_of(&user, vec![line("BOOK", 2, usd(1_999)), line("PEN", 1, usd(250))], "checkout-1");
        assert_eq!(w.create(stated).await.expect("replay with the stored prices"), first, "{backend:?}");
        // Stating another price is another request under a used key.
        let other =
            order_of(&user, vec![line("BOOK", 2, usd(2_999)), line("PEN", 1, usd(275))], "checkout-1");
        let err = w.create(other).await.expect_err("another price under the same key");
        assert_eq!(precondition(&err).as_deref(), Some("REQUEST_ID_REUSED"), "{backend:?}: {err:?}");

        assert_eq!(w.orders_of(&user).await, vec![first.clone()], "{backend:?}: one order");
        let payments = w.payments_of(&first.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}: one payment");
        assert_eq!(payments[0].amount, first.total, "{backend:?}");
        w.stop().await;
    }
}

#[tokio::test]
async fn unknown_and_inactive_products_cannot_be_ordered() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::ZERO, CatalogAt::Running).await;
        let user = w.new_user("picky@example.com").await;
        let unknown = w.create(order_of(&user, vec![line("NOPE", 1, None)], "")).await.expect_err("unknown");
        assert_eq!(unknown.code(), Code::FailedPrecondition, "{backend:?}: {unknown:?}");
        assert_eq!(precondition(&unknown).as_deref(), Some("PRODUCT_UNAVAILABLE"), "{backend:?}");
        assert_eq!(precondition_subject(&unknown).as_deref(), Some("products/NOPE"), "{backend:?}");
        let mixed = order_of(&user, vec![line("BOOK", 1, None), line("NOPE-2", 1, None)], "");
        let err = w.create(mixed).await.expect_err("one unknown line");
        assert_eq!(precondition(&err).as_deref(), Some("PRODUCT_UNAVAILABLE"), "{backend:?}: {err:?}");

        w.catalog().deactivate("MUG").await;
        let inactive = w.create(order_of(&user, vec![line("MUG", 1, None)], "")).await.expect_err("inactive");
        assert_eq!(inactive.code(), Code::FailedPrecondition, "{backend:?}: {inactive:?}");
        assert_eq!(precondition(&inactive).as_deref(), Some("PRODUCT_UNAVAILABLE"), "{backend:?}");
        assert_eq!(precondition_subject(&inactive).as_deref(), Some("products/MUG"), "{backend:?}");

        // One order has one currency: the catalog prices BIER in euros.
        let euros = order_of(&user, vec![line("BOOK", 1, None), line("BIER", 1, None)], "");
        let err = w.create(euros).await.expect_err("two currencies");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}: {err:?}");
        assert_eq!(precondition(&err).as_deref(), Some("CURRENCY_MISMATCH"), "{backend:?}");
        w.assert_nothing_written(&user, &format!("{backend:?}")).await;
        w.stop().await;
    }
}

#[tokio::test]
async fn a_lower_case_sku_is_invalid() {
    for backend in testing::backends() {
        let mut w = start(backend, Duration::ZERO, CatalogAt::Running).await;
        let user = w.new_user("lower@example.com").await;
        let err = w.create(order_of(&user, vec![line("book", 1, None)], "")).await.expect_err("lower case");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
        assert_eq!(field_violations(&err), ["line_items[0].sku"], "{backend:?}");
        let err = w
            .create(order_of(&user, vec![line("BOOK", 1, None), line("Pen", 1, usd(250))], ""))
            .await
            .expect_err("mixed case");
        assert_eq!(field_violations(&err), ["line_items[1].sku"], "{backend:?}");
        w.assert_nothing_written(&user, &format!("{backend:?}")).await;
        w.stop().await;
    }
}
