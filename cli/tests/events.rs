//! Events end to end: the six services on their own 127.0.0.1 ports and databases, the order
//! and inventory services publishing through their outboxes to a real NATS server with
//! JetStream (`common/nats.rs`), on SQLite and (when configured) PostgreSQL; and the same
//! flow over the all-in-one's in-process bus.
//!
//! Waits for what events cause are bounded polls (the effects are asynchronous by design),
//! never sleeps that a slow machine could outrun.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use prost::Message as _;
use shopmesh::api::common::v1::Money;
use shopmesh::api::inventory::v1::inventory_service_client::InventoryServiceClient;
use shopmesh::api::inventory::v1::{GetStockRequest, ListStockRequest, SetStockRequest};
use shopmesh::api::notification::v1::notification_service_client::NotificationServiceClient;
use shopmesh::api::notification::v1::{ListNotificationsRequest, Notification, NotificationKind};
use shopmesh::api::order::v1::order_service_client::OrderServiceClient;
use shopmesh::api::order::v1::{
    CancelOrderRequest, CreateOrderRequest, Fulfilment, GetOrderRequest, LineItem, Order, OrderPaid,
    OrderState,
};
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::config::EventsConfig;
use shopmesh::mesh::events::{Broker, bus::Bus};
use shopmesh::mesh::ids::new_id;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Refusing, Spawned, TestDb};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh_inventory::{Inventory, InventoryConfig};
use shopmesh_notification::{Notification as NotificationService, NotificationConfig};
use shopmesh_order::{OrderConfig, ReconcileConfig};
use shopmesh_payment::PaymentConfig;
use shopmesh_user::UserConfig;
use tonic::Code;
use tonic::transport::Channel;

#[path = "common/catalog.rs"]
mod catalog;
#[path = "common/nats.rs"]
mod nats;
use catalog::Catalog;
use nats::Nats;

const PRODUCTS: &[(&str, i64, &str)] = &[
    ("TEA", 450, "USD"),
    ("MUG", 1_200, "USD"),
    ("LAMP", 4_000, "USD"),
    // For the inventory's paging test: SetStock takes only SKUs the catalog has.
    ("A", 100, "USD"),
    ("B", 100, "USD"),
    ("C", 100, "USD"),
];

/// The six services, a client of each one a test calls, and their databases.
struct Mesh {
    services: Vec<Spawned>,
    catalog: Catalog,
    dbs: Vec<TestDb>,
    order_db: String,
    user_id: String,
    orders: OrderServiceClient<Channel>,
    inventory: InventoryServiceClient<Channel>,
    notifications: NotificationServiceClient<Channel>,
}

fn events_config(url: Option<String>) -> EventsConfig {
    // Short backoffs: a test's failed deliveries come back quickly.
    EventsConfig { events_url: url, events_backoff: Duration::from_millis(20), ..EventsConfig::default() }
}

/// The broker on NATS at `url` for the three services of events.
async fn nats_broker(url: String) -> Broker {
    let declared = [shopmesh_order::Order::EVENTS, Inventory::EVENTS, NotificationService::EVENTS];
    Broker::for_services(&events_config(Some(url)), &declared, false)
        .await
        .expect("connect to NATS")
        .expect("a broker")
}

/// The in-process bus for the three services of events, as the all-in-one builds it.
fn bus() -> Broker {
    let subscriptions: Vec<_> =
        [shopmesh_order::Order::EVENTS, Inventory::EVENTS, NotificationService::EVENTS]
            .iter()
            .flat_map(|e| e.consumes.iter().copied())
            .collect();
    Broker::InProcess(std::sync::Arc::new(Bus::new(events_config(None), &subscriptions)))
}

impl Mesh {
    async fn start(backend: Backend, broker: Broker) -> Self {
        let mesh = testing::mesh(testing::mesh_config()).with_broker(broker);
        let mut dbs = Vec::new();
        for name in ["user", "payment", "order", "inventory", "notification"] {
            dbs.push(testing::database(backend, name).await);
        }
        let url = |i: usize| dbs[i].url.clone();
        let user =
            testing::spawn_service::<shopmesh_user::User>(&mesh, UserConfig::new(testing::ANY_PORT, url(0)))
                .await;
        let payment_config = PaymentConfig {
            listen: testing::ANY_PORT,
            database_url: url(1),
            database_read_url: None,
            payment_limit_minor: 1_000_000,
            payment_currencies: vec!["USD".into()],
            payment_latency: Duration::ZERO,
            processor_ledger_url: url(1),
            payment_processing_lease: Duration::from_secs(10),
        };
        let payment = testing::spawn_service::<shopmesh_payment::Payment>(&mesh, payment_config).await;
        let catalog = Catalog::with(backend, PRODUCTS).await;
        let inventory = testing::spawn_service::<Inventory>(
            &mesh.clone().with_upstreams(Upstreams::new().at("catalog", catalog.url())),
            InventoryConfig { listen: testing::ANY_PORT, database_url: url(3), database_read_url: None },
        )
        .await;
        let notification = testing::spawn_service::<NotificationService>(
            &mesh,
            NotificationConfig { listen: testing::ANY_PORT, database_url: url(4), database_read_url: None },
        )
        .await;
        let order_config = OrderConfig {
            listen: testing::ANY_PORT,
            database_url: url(2),
            database_read_url: None,
            catalog_cache_ttl: Duration::from_secs(5),
            user_check_ttl: Duration::from_secs(1),
            reconcile: ReconcileConfig::default(),
        };
        let upstreams =
            Upstreams::new().at("user", user.url()).at("catalog", catalog.url()).at("payment", payment.url());
        let order =
            testing::spawn_service::<shopmesh_order::Order>(&mesh.with_upstreams(upstreams), order_config)
                .await;

        let mut users = UserServiceClient::connect(user.url()).await.expect("user");
        let user_id = users
            .create_user(CreateUserRequest {
                email: format!("{}@example.com", new_id()),
                display_name: "Events".into(),
                request_id: String::new(),
            })
            .await
            .expect("create user")
            .into_inner()
            .id;
        let orders = OrderServiceClient::connect(order.url()).await.expect("order");
        let inventory_client = InventoryServiceClient::connect(inventory.url()).await.expect("inventory");
        let notifications =
            NotificationServiceClient::connect(notification.url()).await.expect("notification");
        Self {
            services: vec![order, notification, inventory, payment, user],
            catalog,
            order_db: url(2),
            dbs,
            user_id,
            orders,
            inventory: inventory_client,
            notifications,
        }
    }

    async fn stop(self) {
        for service in self.services {
            service.stop().await.expect("service stops cleanly");
        }
        self.catalog.stop().await;
        for db in self.dbs {
            db.drop_database().await;
        }
    }

    async fn set_stock(&mut self, sku: &str, on_hand: i64) {
        self.inventory.set_stock(SetStockRequest { sku: sku.into(), on_hand }).await.expect("set stock");
    }

    async fn on_hand(&mut self, sku: &str) -> (i64, i64) {
        let stock =
            self.inventory.get_stock(GetStockRequest { sku: sku.into() }).await.expect("stock").into_inner();
        (stock.on_hand, stock.allocated)
    }

    async fn order(&mut self, lines: &[(&str, i32)]) -> Order {
        let line_items = lines
            .iter()
            .map(|(sku, quantity)| LineItem { sku: (*sku).into(), quantity: *quantity, unit_price: None })
            .collect();
        let req = CreateOrderRequest { user_id: self.user_id.clone(), line_items, request_id: new_id() };
        let order = self.orders.create_order(req).await.expect("create order").into_inner();
        assert_eq!(order.state(), OrderState::Paid);
        order
    }

    async fn get(&mut self, id: &str) -> Order {
        self.orders.get_order(GetOrderRequest { id: id.into() }).await.expect("get order").into_inner()
    }

    async fn notifications_of(&mut self, order_id: &str) -> Vec<Notification> {
        let req = ListNotificationsRequest { order_id: order_id.into(), ..Default::default() };
        self.notifications
            .list_notifications(req)
            .await
            .expect("list notifications")
            .into_inner()
            .notifications
    }

    /// The order service's outbox rows not yet published.
    async fn unpublished(&self) -> i64 {
        let pool = shopmesh::mesh::db::connect(&self.order_db, &testing::mesh_config()).expect("order db");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL")
            .fetch_one(&*pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

/// Waits until order `id`'s fulfilment is `want`.
async fn fulfilled(mesh: &Mesh, id: &str, want: Fulfilment) -> Order {
    eventually(&format!("order {id} is {want:?}"), || {
        let (mut orders, id) = (mesh.orders.clone(), id.to_owned());
        async move {
            let order = orders.get_order(GetOrderRequest { id }).await.expect("get order").into_inner();
            (order.fulfilment() == want).then_some(order)
        }
    })
    .await
}

/// Waits until order `order_id` has `count` notifications, and returns them.
async fn notified(mesh: &Mesh, order_id: &str, count: usize) -> Vec<Notification> {
    eventually(&format!("{count} notifications of order {order_id}"), || {
        let (mut client, order_id) = (mesh.notifications.clone(), order_id.to_owned());
        async move {
            let req = ListNotificationsRequest { order_id, ..Default::default() };
            let list = client.list_notifications(req).await.expect("list").into_inner().notifications;
            (list.len() >= count).then_some(list)
        }
    })
    .await
}

/// Polls `check` until it gives `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a test checks on one mesh: a paid order allocated and confirmed, one short of stock
/// backordered with the reason, the allocated one cancelled and its stock returned; one
/// notification per order and kind.
async fn paid_orders_are_allocated_backordered_and_released(mesh: &mut Mesh) {
    mesh.set_stock("TEA", 5).await;
    mesh.set_stock("MUG", 1).await;

    let allocated = mesh.order(&[("TEA", 2), ("MUG", 1)]).await;
    let order = fulfilled(mesh, &allocated.id, Fulfilment::Allocated).await;
    assert_eq!(order.state(), OrderState::Paid);
    assert_eq!(mesh.on_hand("TEA").await, (3, 2));
    assert_eq!(mesh.on_hand("MUG").await, (0, 1));
    let sent = notified(mesh, &allocated.id, 1).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].kind(), NotificationKind::Confirmed);
    assert_eq!(sent[0].user_id, mesh.user_id);

    // MUG is out, LAMP has no stock record: backordered, nothing allocated, and says why.
    let short = mesh.order(&[("TEA", 1), ("MUG", 1), ("LAMP", 1)]).await;
    fulfilled(mesh, &short.id, Fulfilment::Backordered).await;
    assert_eq!(mesh.on_hand("TEA").await, (3, 2), "a backordered order takes nothing");
    let sent = notified(mesh, &short.id, 1).await;
    assert_eq!(sent[0].kind(), NotificationKind::Backordered);
    assert!(sent[0].body.contains("MUG: 0 on hand, 1 ordered"), "{}", sent[0].body);
    assert!(sent[0].body.contains("LAMP: unknown SKU"), "{}", sent[0].body);

    // Cancelled: the allocation goes back on hand, and the user hears of it once.
    let req = CancelOrderRequest { id: allocated.id.clone(), request_id: new_id() };
    mesh.orders.cancel_order(req).await.expect("cancel");
    fulfilled(mesh, &allocated.id, Fulfilment::Released).await;
    assert_eq!(mesh.on_hand("TEA").await, (5, 0));
    assert_eq!(mesh.on_hand("MUG").await, (1, 0));
    let kinds: Vec<_> = notified(mesh, &allocated.id, 2).await.iter().map(Notification::kind).collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(kinds.contains(&NotificationKind::Cancelled), "{kinds:?}");
    assert_eq!(mesh.notifications_of(&short.id).await.len(), 1, "still one for the backordered order");
    assert_eq!(mesh.unpublished().await, 0, "the outbox drained");
}

#[tokio::test]
async fn paid_orders_flow_through_nats_to_inventory_and_notification() {
    let Some(nats) = Nats::start() else { return };
    for backend in testing::backends() {
        let mut mesh = Mesh::start(backend, nats_broker(nats.url()).await).await;
        paid_orders_are_allocated_backordered_and_released(&mut mesh).await;
        mesh.stop().await;
    }
}

/// The chart's NATS requires a user and password, which the services take in the URL
/// (`nats://user:password@host:4222`): async-nats sent none of them, and every start failed.
#[tokio::test]
async fn a_broker_requiring_a_password_takes_the_one_in_the_url_and_refuses_a_wrong_one() {
    let Some(nats) = Nats::start_with_user("shopmesh", "s3cret-pw") else { return };
    let addr = nats.url().trim_start_matches("nats://").to_owned();
    nats_broker(format!("nats://shopmesh:s3cret-pw@{addr}")).await;
    let declared = [shopmesh_order::Order::EVENTS];
    for url in [format!("nats://shopmesh:wrong@{addr}"), format!("nats://{addr}")] {
        let refused = Broker::for_services(&events_config(Some(url)), &declared, false).await.err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("authorization violation"), "not refused as unauthorized: {message:?}");
        assert!(!message.contains("wrong"), "the password is in the message: {message}");
    }
}

/// A service started while its broker is not up yet used to exit (a crash loop in Kubernetes
/// until NATS was ready): it now serves (SERVING: its calls need no broker), takes orders into
/// its outbox, and once the broker listens, connects, ensures its streams and starts its
/// consumers, without a restart.
#[tokio::test]
async fn services_started_before_their_broker_serve_and_their_events_flow_once_it_is_up() {
    for backend in testing::backends() {
        let Some(mut nats) = Nats::reserve() else { return };
        // Nothing listens there yet: the broker is waited for, not an error.
        let broker = nats_broker(nats.url()).await;
        // Every service SERVING (`spawn_service` waits for it) with the broker unreachable.
        let mut mesh = Mesh::start(backend, broker).await;
        mesh.set_stock("TEA", 10).await;
        let taken = mesh.order(&[("TEA", 2)]).await.id;
        assert_eq!(mesh.unpublished().await, 1, "{backend:?}: its OrderPaid waits in the outbox");
        assert_eq!(mesh.on_hand("TEA").await, (10, 0), "{backend:?}: no consumer ran yet");
        nats.restart();
        fulfilled(&mesh, &taken, Fulfilment::Allocated).await;
        assert_eq!(mesh.on_hand("TEA").await, (8, 2), "{backend:?}");
        let sent = notified(&mesh, &taken, 1).await;
        assert_eq!(sent[0].kind(), NotificationKind::Confirmed);
        eventually("the outbox drains", || {
            let mesh = &mesh;
            async move { (mesh.unpublished().await == 0).then_some(()) }
        })
        .await;
        mesh.stop().await;
    }
}

/// A broker waited for that comes up refusing the credentials stops the service with the
/// reason, as it would have at start (waiting cannot fix it).
#[tokio::test]
async fn a_broker_waited_for_that_refuses_the_credentials_stops_the_service() {
    let Some(mut nats) = Nats::reserve_with_user("shopmesh", "s3cret-pw") else { return };
    let addr = nats.url().trim_start_matches("nats://").to_owned();
    let declared = [shopmesh_order::Order::EVENTS];
    let config = events_config(Some(format!("nats://shopmesh:wrong@{addr}")));
    let broker = Broker::for_services(&config, &declared, false).await.expect("waits").expect("a broker");
    nats.restart();
    let refused = tokio::time::timeout(Duration::from_secs(60), broker.failed()).await;
    let message = refused.map(|e| e.to_string()).expect("refused once the broker is up");
    assert!(message.contains("authorization violation"), "not refused as unauthorized: {message:?}");
    assert!(!message.contains("wrong"), "the password is in the message: {message}");
}

/// `shopmesh serve` with its broker not up yet serves (SERVING: it used to exit, and crash-loop
/// in Kubernetes) and says once what it waits for; when the broker comes up refusing its
/// credentials, it stops as on a signal (NOT_SERVING, calls in flight finished: it used to
/// exit mid-call) and exits with the reason, as it would have at start.
#[tokio::test]
async fn serve_waits_for_its_broker_and_exits_when_it_comes_up_refusing_the_credentials() {
    let Some(mut nats) = Nats::reserve_with_user("shopmesh", "s3cret-pw") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let broker = nats.url().replace("nats://", "nats://shopmesh:wr0ng-pw@");
    let serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .args(["serve", "notification", &format!("--notification-listen={addr}"), "--events-url", &broker])
        .arg(format!("--notification-database-url=sqlite://{}/notification.db", dir.path().display()))
        .env("SHOPMESH_METRICS_LISTEN", "off")
        .env("SHOPMESH_LOG_FORMAT", "text")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run shopmesh serve");
    testing::wait_serving(addr, "shopmesh.notification.v1.NotificationService").await;
    nats.restart();
    let out = tokio::time::timeout(Duration::from_secs(60), serve.wait_with_output())
        .await
        .expect("exits once the broker refuses it")
        .expect("output");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert_eq!(logs.matches("events broker not reachable").count(), 1, "one WARN: {logs}");
    assert!(!logs.contains("async_nats::connector"), "the client's ERROR per attempt: {logs}");
    assert!(logs.contains("authorization violation"), "exits naming the reason: {logs}");
    assert!(!logs.contains("wr0ng-pw"), "the password is in the logs: {logs}");
    // The server's last line is "stopped" (a consumer's line says it too, earlier).
    let at = |line: &str| logs.find(line).unwrap_or_else(|| panic!("no {line:?} in {logs}"));
    let stopped = logs.rfind("stopped").unwrap_or_default();
    let drained =
        [at("refused the service; draining"), at("no longer accepting; finishing in-flight calls"), stopped];
    assert!(drained.is_sorted(), "drained before stopping: {logs}");
}

#[tokio::test]
async fn the_all_in_one_bus_delivers_with_the_same_effects() {
    for backend in testing::backends() {
        let mut mesh = Mesh::start(backend, bus()).await;
        paid_orders_are_allocated_backordered_and_released(&mut mesh).await;
        mesh.stop().await;
    }
}

#[tokio::test]
async fn orders_are_taken_while_the_broker_is_down_and_their_events_follow() {
    let Some(mut nats) = Nats::start() else { return };
    for backend in testing::backends() {
        let mut mesh = Mesh::start(backend, nats_broker(nats.url()).await).await;
        mesh.set_stock("TEA", 100).await;
        nats.stop();
        let mut taken = Vec::new();
        for _ in 0..5 {
            // CreateOrder answers without the broker: its event waits in the outbox.
            taken.push(mesh.order(&[("TEA", 1)]).await.id);
        }
        assert_eq!(mesh.unpublished().await, 5, "{backend:?}: every OrderPaid waits in the outbox");
        for id in &taken {
            assert_eq!(mesh.get(id).await.fulfilment(), Fulfilment::Unspecified);
        }
        nats.restart();
        for id in &taken {
            fulfilled(&mesh, id, Fulfilment::Allocated).await;
        }
        assert_eq!(mesh.on_hand("TEA").await, (95, 5), "{backend:?}");
        eventually("the outbox drains", || {
            let mesh = &mesh;
            async move { (mesh.unpublished().await == 0).then_some(()) }
        })
        .await;
        mesh.stop().await;
    }
}

/// Publishes `body` as an event of `ce_type` with `ce_id`, under a JetStream message id of its
/// own (so JetStream's dedup does not drop a repeat: the inbox must).
async fn publish_raw(url: &str, ce_type: &str, ce_id: &str, subject: &str, body: Vec<u8>) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", ce_id),
        ("ce-source", "shopmesh/test"),
        ("ce-type", ce_type),
        ("ce-subject", subject),
        ("Nats-Msg-Id", &new_id()),
    ] {
        headers.insert(name, value);
    }
    js.publish_with_headers(ce_type.to_owned(), headers, body.into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

fn paid(order_id: &str, user_id: &str, sku: &str, quantity: i32) -> Vec<u8> {
    OrderPaid {
        order_id: order_id.into(),
        user_id: user_id.into(),
        line_items: vec![LineItem { sku: sku.into(), quantity, unit_price: None }],
        total: Some(Money { currency_code: "USD".into(), amount_minor: 1 }),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_redelivered_event_changes_nothing_and_a_poison_one_is_dead_lettered() {
    let Some(nats) = Nats::start() else { return };
    for backend in testing::backends() {
        let mut mesh = Mesh::start(backend, nats_broker(nats.url()).await).await;
        mesh.set_stock("MUG", 10).await;
        let (order_id, event_id) = (new_id(), new_id());
        let user_id = mesh.user_id.clone();
        // The same event delivered twice (a producer that re-published it after the dedup
        // window): allocated once, notified once.
        for _ in 0..2 {
            publish_raw(
                &nats.url(),
                "shopmesh.order.v1.OrderPaid",
                &event_id,
                &order_id,
                paid(&order_id, &user_id, "MUG", 3),
            )
            .await;
        }
        // An undecodable body, then a good event behind it: the first goes to the dead-letter
        // stream, the second is handled all the same.
        let (poison, next) = (new_id(), new_id());
        publish_raw(&nats.url(), "shopmesh.order.v1.OrderPaid", &new_id(), &poison, vec![0xff, 0xff, 0xff])
            .await;
        publish_raw(
            &nats.url(),
            "shopmesh.order.v1.OrderPaid",
            &new_id(),
            &next,
            paid(&next, &user_id, "MUG", 1),
        )
        .await;
        // And a type from a newer producer: acknowledged, nothing done.
        publish_raw(&nats.url(), "shopmesh.order.v1.OrderGiftWrapped", &new_id(), &next, vec![1, 2, 3]).await;

        notified(&mesh, &next, 1).await;
        assert_eq!(mesh.on_hand("MUG").await, (6, 4), "{backend:?}: 3 once, and 1");
        assert_eq!(mesh.notifications_of(&order_id).await.len(), 1, "{backend:?}");
        assert!(mesh.notifications_of(&poison).await.is_empty(), "{backend:?}");

        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let mut dead = js.get_stream("SHOPMESH_DEAD_LETTER").await.expect("dead-letter stream");
        let last = dead
            .get_last_raw_message_by_subject("shopmesh.dead_letter.inventory-order")
            .await
            .expect("dead letter");
        let headers = last.headers;
        let reason =
            headers.get("shopmesh-dead-letter-reason").map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert!(reason.contains("undecodable"), "{reason}");
        assert_eq!(
            headers.get("ce-subject").map(|v| v.as_str().to_owned()).as_deref(),
            Some(poison.as_str())
        );
        assert!(dead.info().await.expect("info").state.messages >= 1);
        mesh.stop().await;
    }
}

#[tokio::test]
async fn inventory_admin_calls_validate_and_page() {
    let mut mesh = Mesh::start(Backend::Sqlite, bus()).await;
    let err = mesh
        .inventory
        .set_stock(SetStockRequest { sku: "tea".into(), on_hand: -1 })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(testing::field_violations(&err), ["sku", "on_hand"]);
    let err = mesh.inventory.get_stock(GetStockRequest { sku: "NONE".into() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);
    // Stock only of what the catalog has: an unknown SKU is refused, and nothing is recorded.
    let err = mesh
        .inventory
        .set_stock(SetStockRequest { sku: "NONE".into(), on_hand: 3 })
        .await
        .expect_err("not in the catalog");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = tonic_types::StatusExt::get_error_details(&err).precondition_failure().cloned();
    let violation = &failure.expect("a PreconditionFailure").violations[0];
    assert_eq!((violation.r#type.as_str(), violation.subject.as_str()), ("PRODUCT_UNKNOWN", "products/NONE"));
    let err = mesh.inventory.get_stock(GetStockRequest { sku: "NONE".into() }).await.expect_err("missing");
    assert_eq!(err.code(), Code::NotFound, "the refused SetStock recorded nothing");
    for sku in ["C", "A", "B"] {
        mesh.set_stock(sku, 1).await;
    }
    let first = mesh
        .inventory
        .list_stock(ListStockRequest { page_size: 2, page_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.stock.iter().map(|s| s.sku.as_str()).collect::<Vec<_>>(), ["A", "B"]);
    let rest = mesh
        .inventory
        .list_stock(ListStockRequest { page_size: 2, page_token: first.next_page_token })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.stock.iter().map(|s| s.sku.as_str()).collect::<Vec<_>>(), ["C"]);
    assert!(rest.next_page_token.is_empty());
    let err = mesh
        .notifications
        .list_notifications(ListNotificationsRequest::default())
        .await
        .expect_err("neither user nor order");
    assert_eq!(err.code(), Code::InvalidArgument);
    mesh.stop().await;
}

/// `shopmesh bench --notification` times every PAID order of its run from CreateOrder's answer
/// to its notification (read back from the record), and refuses the flag without `--record`.
#[tokio::test]
async fn the_bench_times_each_paid_orders_notification() {
    let mesh = Mesh::start(Backend::Sqlite, bus()).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let record = dir.path().join("record.jsonl");
    let (order, notification, user) =
        (mesh.services[0].url(), mesh.services[1].url(), mesh.services[4].url());
    let bench = |with_record: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shopmesh"));
        command
            .args(["bench", "create-order", "--requests", "20", "--concurrency", "4", "--json", "--quiet"])
            .args(["--user", &user, "--order", &order, "--catalog", &mesh.catalog.url()])
            .args(["--notification", &notification])
            .kill_on_drop(true);
        if with_record {
            command.arg("--record").arg(&record);
        }
        command.output()
    };
    let out = bench(true).await.expect("run shopmesh bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let paid = std::fs::read_to_string(&record)
        .expect("record")
        .lines()
        .filter(|l| l.contains("\"ORDER_STATE_PAID\""))
        .count() as u64;
    let timed = &report["notification"];
    assert!(paid > 0, "{report}");
    assert_eq!(timed["paid"].as_u64(), Some(paid), "{report}");
    assert_eq!(timed["notified"].as_u64(), Some(paid), "every PAID order is notified: {report}");
    let (p50, p99) = (timed["latency_ms"]["p50"].as_u64(), timed["latency_ms"]["p99"].as_u64());
    assert!(p50.is_some() && p50 <= p99, "{report}");

    let refused = bench(false).await.expect("run shopmesh bench");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--record"), "{refused:?}");
    mesh.stop().await;
}

/// SetStock while the catalog cannot answer is UNAVAILABLE (retryable) and records nothing.
#[tokio::test]
async fn set_stock_with_the_catalog_down_is_unavailable() {
    let db = testing::database(Backend::Sqlite, "inventory").await;
    // Nothing listens there: the catalog is down.
    let dead = Refusing::bind();
    let mesh = testing::mesh(testing::mesh_config())
        .with_broker(bus())
        .with_upstreams(Upstreams::new().at("catalog", dead.url()));
    let inventory = testing::spawn_service::<Inventory>(
        &mesh,
        InventoryConfig { listen: testing::ANY_PORT, database_url: db.url.clone(), database_read_url: None },
    )
    .await;
    let mut client = InventoryServiceClient::connect(inventory.url()).await.expect("inventory");
    let err = client
        .set_stock(SetStockRequest { sku: "TEA".into(), on_hand: 3 })
        .await
        .expect_err("the catalog is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("catalog"), "{err:?}");
    let err = client.get_stock(GetStockRequest { sku: "TEA".into() }).await.expect_err("nothing recorded");
    assert_eq!(err.code(), Code::NotFound);
    inventory.stop().await.expect("inventory stops");
    db.drop_database().await;
}

/// An allocation delivered after its order's release (a consumer killed before acking it gets it
/// again after the ack wait, by when the release behind it was handled) does not undo the
/// release: the order stays RELEASED. Found by the fault harness's events round.
#[tokio::test]
async fn a_late_allocation_does_not_undo_a_release() {
    use shopmesh::api::inventory::v1::{StockAllocated, StockReleased};
    let Some(nats) = Nats::start() else { return };
    let mut mesh = Mesh::start(Backend::Sqlite, nats_broker(nats.url()).await).await;
    mesh.set_stock("TEA", 5).await;
    let order = mesh.order(&[("TEA", 1)]).await;
    fulfilled(&mesh, &order.id, Fulfilment::Allocated).await;
    let released = StockReleased { order_id: order.id.clone(), user_id: mesh.user_id.clone(), lines: vec![] };
    publish_raw(
        &nats.url(),
        "shopmesh.inventory.v1.StockReleased",
        &new_id(),
        &order.id,
        released.encode_to_vec(),
    )
    .await;
    fulfilled(&mesh, &order.id, Fulfilment::Released).await;
    // The allocation again, under an id of its own (its first delivery was never acknowledged).
    let late = StockAllocated { order_id: order.id.clone(), user_id: mesh.user_id.clone(), lines: vec![] };
    publish_raw(
        &nats.url(),
        "shopmesh.inventory.v1.StockAllocated",
        &new_id(),
        &order.id,
        late.encode_to_vec(),
    )
    .await;
    caught_up(&nats, "SHOPMESH_INVENTORY", "order-fulfilment").await;
    assert_eq!(mesh.get(&order.id).await.fulfilment(), Fulfilment::Released);
    mesh.stop().await;
}

/// Waits until the durable consumer `durable` of `stream` has nothing pending or unacknowledged.
async fn caught_up(nats: &Nats, stream: &'static str, durable: &'static str) {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    eventually(&format!("{durable} handled every event"), || {
        let js = js.clone();
        async move {
            let stream = js.get_stream(stream).await.ok()?;
            let info = stream.consumer_info(durable).await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

/// An OrderPaid delivered after its order's OrderCancelled (redelivered after a killed
/// consumer's ack wait) allocates nothing: the cancel recorded the order as cancelled.
#[tokio::test]
async fn a_late_order_paid_after_its_cancel_allocates_nothing() {
    use shopmesh::api::order::v1::OrderCancelled;
    let Some(nats) = Nats::start() else { return };
    let mut mesh = Mesh::start(Backend::Sqlite, nats_broker(nats.url()).await).await;
    mesh.set_stock("TEA", 5).await;
    let (order_id, user_id) = (new_id(), mesh.user_id.clone());
    let cancelled = OrderCancelled {
        order_id: order_id.clone(),
        user_id: user_id.clone(),
        refunded: true,
        line_items: vec![],
    };
    publish_raw(
        &nats.url(),
        "shopmesh.order.v1.OrderCancelled",
        &new_id(),
        &order_id,
        cancelled.encode_to_vec(),
    )
    .await;
    publish_raw(
        &nats.url(),
        "shopmesh.order.v1.OrderPaid",
        &new_id(),
        &order_id,
        paid(&order_id, &user_id, "TEA", 2),
    )
    .await;
    caught_up(&nats, "SHOPMESH_ORDER", "inventory-order").await;
    assert_eq!(mesh.on_hand("TEA").await, (5, 0), "nothing allocated to a cancelled order");
    mesh.stop().await;
}
