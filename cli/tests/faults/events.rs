//! The harness's events round: user, catalog, payment, order, inventory and notification as
//! separate `shopmesh serve` processes, the last three on a real NATS server with JetStream
//! (`common/nats.rs`), driven by `shopmesh bench create-order` while the harness cancels PAID
//! orders and injects, one at a time on a seeded schedule:
//!
//! - the broker killed (SIGKILL) or stopped cleanly (SIGTERM), then started on the same store;
//! - inventory and notification SIGKILLed mid-effect (an event handled and not yet acked is
//!   delivered again after the short ack wait set here), then started again;
//! - order SIGKILLed (its relay mid-publish: rows published and not yet marked go again under
//!   the same `Nats-Msg-Id`), then started again;
//! - duplicated deliveries: events already published, read back from the order's and the
//!   inventory's outboxes, published again under new `Nats-Msg-Id`s (a producer re-publishing
//!   after JetStream's dedup window), so only the consumers' inboxes stand between them and a
//!   second effect.
//!
//! After the load it settles (no order pending, both outboxes drained, every durable
//! consumer's pending and unacknowledged counts 0 in JetStream's consumer info), publishes a
//! last burst of duplicates, settles again and checks the invariants of `event_checks.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use base64::Engine as _;
use shopmesh::api::catalog::v1::{
    CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
};
use shopmesh::api::common::v1::Money;
use shopmesh::api::inventory::v1::{SetStockRequest, inventory_service_client::InventoryServiceClient};
use shopmesh::api::order::v1::{CancelOrderRequest, order_service_client::OrderServiceClient};
use shopmesh::mesh::testing::{self, Backend};
use sqlx::{AnyPool, Row as _};

use super::event_checks::{self, Databases};
use super::nats::Nats;
use super::{Process, Settings, free_addr, jitter, pool};

/// The durable consumers, with the stream each reads.
pub const CONSUMERS: [(&str, &str); 4] = [
    ("SHOPMESH_ORDER", "inventory-order"),
    ("SHOPMESH_ORDER", "notification-order"),
    ("SHOPMESH_INVENTORY", "notification-inventory"),
    ("SHOPMESH_INVENTORY", "order-fulfilment"),
];

/// The bench's products (`BENCH-1` to `BENCH-10`) and the stock the harness sets for each:
/// plenty, a little (so they run out and later orders are backordered), or no record at all
/// (backordered as an unknown SKU).
pub fn initial_stock(n: u32) -> Option<i64> {
    match n {
        1..=4 => Some(100_000),
        5..=8 => Some(15),
        _ => None,
    }
}

/// Faults injected in the events round, by kind.
#[derive(Debug, Default)]
struct Faults {
    broker_kills: u32,
    broker_restarts: u32,
    inventory_kills: u32,
    notification_kills: u32,
    order_kills: u32,
    duplicates_published: u32,
    cancels: u32,
}

/// Runs the events round on `backend` and asserts its invariants.
pub async fn run(backend: Backend, settings: &Settings) {
    let Some(mut nats) = Nats::start() else { return };
    println!(
        "events fault harness: {backend:?}, {:?} at {} orders/s, seed {}",
        settings.duration, settings.rate, settings.seed
    );
    let round_start = Instant::now();
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut dbs = Vec::new();
    for name in ["ev_user", "ev_catalog", "ev_payment", "ev_order", "ev_inventory", "ev_notification"] {
        dbs.push(testing::database(backend, name).await);
    }
    let url = |i: usize| dbs[i].url.clone();
    let addrs: Vec<SocketAddr> = (0..6).map(|_| free_addr()).collect();
    let events = |mut env: Vec<(&'static str, String)>| {
        env.push(("SHOPMESH_EVENTS_URL", nats.url()));
        // A killed consumer's unacknowledged event comes back soon, and failed ones quickly.
        env.push(("SHOPMESH_EVENTS_ACK_WAIT", "2s".into()));
        env.push(("SHOPMESH_EVENTS_BACKOFF", "50ms".into()));
        env
    };
    let mut user = Process::new(
        "user",
        addrs[0],
        vec![("SHOPMESH_USER_LISTEN", addrs[0].to_string()), ("SHOPMESH_USER_DATABASE_URL", url(0))],
        dir.path(),
    );
    let mut catalog = Process::new(
        "catalog",
        addrs[1],
        vec![("SHOPMESH_CATALOG_LISTEN", addrs[1].to_string()), ("SHOPMESH_CATALOG_DATABASE_URL", url(1))],
        dir.path(),
    );
    let mut payment = Process::new(
        "payment",
        addrs[2],
        vec![
            ("SHOPMESH_PAYMENT_LISTEN", addrs[2].to_string()),
            ("SHOPMESH_PAYMENT_DATABASE_URL", url(2)),
            ("SHOPMESH_PROCESSOR_LEDGER_URL", url(2)),
        ],
        dir.path(),
    );
    let mut order = Process::new(
        "order",
        addrs[3],
        events(vec![
            ("SHOPMESH_ORDER_LISTEN", addrs[3].to_string()),
            ("SHOPMESH_ORDER_DATABASE_URL", url(3)),
            ("SHOPMESH_USER_URL", format!("http://{}", addrs[0])),
            ("SHOPMESH_CATALOG_URL", format!("http://{}", addrs[1])),
            ("SHOPMESH_PAYMENT_URL", format!("http://{}", addrs[2])),
            ("SHOPMESH_CALL_TIMEOUT", "1s".into()),
            ("SHOPMESH_RECONCILE_INTERVAL", "200ms".into()),
            ("SHOPMESH_RECONCILE_AFTER", "2s".into()),
            ("SHOPMESH_RECONCILE_MAX_BACKOFF", "1s".into()),
            ("SHOPMESH_RECONCILE_LEASE", "5s".into()),
        ]),
        dir.path(),
    );
    let mut inventory = Process::new(
        "inventory",
        addrs[4],
        events(vec![
            ("SHOPMESH_INVENTORY_LISTEN", addrs[4].to_string()),
            ("SHOPMESH_INVENTORY_DATABASE_URL", url(4)),
            ("SHOPMESH_CATALOG_URL", format!("http://{}", addrs[1])),
        ]),
        dir.path(),
    );
    let mut notification = Process::new(
        "notification",
        addrs[5],
        events(vec![
            ("SHOPMESH_NOTIFICATION_LISTEN", addrs[5].to_string()),
            ("SHOPMESH_NOTIFICATION_DATABASE_URL", url(5)),
        ]),
        dir.path(),
    );
    for p in [&mut user, &mut catalog, &mut payment, &mut order, &mut inventory, &mut notification] {
        p.start();
    }
    for p in [&user, &catalog, &payment, &order, &inventory, &notification] {
        p.serving().await;
    }
    let initial = stock_up(addrs[1], addrs[4]).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect to NATS"));
    let order_db = pool(&dbs[3]).await;
    let inventory_db = pool(&dbs[4]).await;
    let notification_db = pool(&dbs[5]).await;

    let bench = super::bench(settings, addrs[0], addrs[3], addrs[1]).spawn().expect("start shopmesh bench");
    let bench = tokio::spawn(bench.wait_with_output());
    let started = Instant::now();
    while count(&order_db, "SELECT COUNT(*) FROM orders WHERE state = 'PAID'").await == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no order was PAID in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut faults = Faults::default();
    let orders_client = OrderServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[3])).expect("url").connect_lazy(),
    );
    let load_end = Instant::now() + settings.duration.saturating_sub(started.elapsed());
    let mut next_broker = Instant::now() + jitter(&mut rng, 1_500, 3_000);
    let mut next_inventory = Instant::now() + jitter(&mut rng, 1_000, 2_500);
    let mut next_notification = Instant::now() + jitter(&mut rng, 1_000, 2_500);
    let mut next_order = Instant::now() + jitter(&mut rng, 2_500, 5_000);
    let mut next_duplicates = Instant::now() + jitter(&mut rng, 500, 1_500);
    let mut next_cancel = Instant::now() + jitter(&mut rng, 300, 800);
    while Instant::now() < load_end {
        let now = Instant::now();
        if now >= next_broker {
            // One kill in two is SIGKILL (what JetStream acknowledged is on its file store),
            // the other a clean stop; either way on the same port and store.
            if rng.bool() {
                tokio::task::block_in_place(|| nats.stop());
                faults.broker_kills += 1;
            } else {
                tokio::task::block_in_place(|| nats.terminate());
                faults.broker_restarts += 1;
            }
            tokio::time::sleep(jitter(&mut rng, 300, 1_500)).await;
            tokio::task::block_in_place(|| nats.restart());
            next_broker = Instant::now() + jitter(&mut rng, 3_000, 6_000);
        }
        for (p, next, kills) in [
            (&mut inventory, &mut next_inventory, &mut faults.inventory_kills),
            (&mut notification, &mut next_notification, &mut faults.notification_kills),
            (&mut order, &mut next_order, &mut faults.order_kills),
        ] {
            if now >= *next {
                p.kill().await;
                *kills += 1;
                tokio::time::sleep(jitter(&mut rng, 100, 800)).await;
                p.start();
                p.serving().await;
                *next = Instant::now() + jitter(&mut rng, 2_000, 4_000);
            }
        }
        if now >= next_duplicates {
            faults.duplicates_published += republish(&js, &order_db, &mut rng, 5).await;
            faults.duplicates_published += republish(&js, &inventory_db, &mut rng, 5).await;
            next_duplicates = Instant::now() + jitter(&mut rng, 1_000, 2_500);
        }
        if now >= next_cancel {
            faults.cancels += cancel_one(&orders_client, &order_db, &mut rng).await;
            next_cancel = Instant::now() + jitter(&mut rng, 300, 900);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("events faults injected: {faults:?}");
    let output = bench.await.expect("bench task").expect("bench ran");
    assert!(output.status.success(), "shopmesh bench failed: {:?}", output.status);

    let settle_start = Instant::now();
    let settled = settle(&js, &order_db, &inventory_db, settings.settle).await;
    println!("events settled in {:?} (lag {settled:?})", settle_start.elapsed());
    // A last burst of duplicates, every one after its original was handled.
    let burst =
        republish(&js, &order_db, &mut rng, 50).await + republish(&js, &inventory_db, &mut rng, 50).await;
    let settled = settle(&js, &order_db, &inventory_db, settings.settle).await;
    println!("{burst} duplicates published after the settle; lag {settled:?}");

    let databases =
        Databases { orders: &order_db, inventory: &inventory_db, notifications: &notification_db };
    let mut violations = event_checks::check(&databases, &initial).await;
    violations.extend(event_checks::lag(&js).await);
    for p in [&user, &catalog, &payment, &order, &inventory, &notification] {
        let log = std::fs::read_to_string(&p.log).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("\"level\":\"ERROR\"")).collect();
        println!("{}: {} starts, {} error lines", p.name, p.starts, errors.len());
        for line in errors.iter().take(5) {
            println!("  {line}");
        }
    }
    for p in [&mut user, &mut catalog, &mut payment, &mut order, &mut inventory, &mut notification] {
        p.kill().await;
    }
    for pool in [order_db, inventory_db, notification_db] {
        pool.close().await;
    }
    for db in dbs {
        db.drop_database().await;
    }
    assert!(
        faults.broker_kills + faults.broker_restarts > 0
            && faults.inventory_kills > 0
            && faults.notification_kills > 0
            && faults.order_kills > 0
            && faults.duplicates_published > 0
            && faults.cancels > 0,
        "{backend:?}: not every kind of fault was injected: {faults:?}"
    );
    assert!(
        violations.is_empty(),
        "{backend:?}: {} invariant violations of events:\n{}",
        violations.len(),
        violations.join("\n")
    );
    println!("{backend:?}: events, 0 invariant violations; the round took {:?}", round_start.elapsed());
}

/// Creates the bench's products (so they exist before the bench starts, which then reads them
/// back) and sets their stock; returns the stock set, by SKU.
async fn stock_up(catalog: SocketAddr, inventory: SocketAddr) -> Vec<(String, i64)> {
    let mut products = CatalogServiceClient::connect(format!("http://{catalog}")).await.expect("catalog");
    let mut stock = InventoryServiceClient::connect(format!("http://{inventory}")).await.expect("inventory");
    let mut initial = Vec::new();
    for n in 1..=10_u32 {
        let sku = format!("BENCH-{n}");
        let product = Product {
            sku: sku.clone(),
            display_name: format!("Bench product {n}"),
            unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 100 + i64::from(n) }),
            active: true,
            ..Product::default()
        };
        products.create_product(CreateProductRequest { product: Some(product) }).await.expect("product");
        if let Some(on_hand) = initial_stock(n) {
            stock.set_stock(SetStockRequest { sku: sku.clone(), on_hand }).await.expect("set stock");
            initial.push((sku, on_hand));
        }
    }
    initial
}

/// `SELECT COUNT(*) …`
pub async fn count(db: &AnyPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect(sql)
}

/// Publishes up to `n` already published events of the outbox in `db` again, each under its
/// own `ce-id` and a new `Nats-Msg-Id` (past JetStream's dedup): how many were accepted.
async fn republish(
    js: &async_nats::jetstream::Context,
    db: &AnyPool,
    rng: &mut fastrand::Rng,
    n: usize,
) -> u32 {
    let rows = sqlx::query(
        "SELECT id, event_type, subject, body, created_at_ms FROM outbox WHERE published_at_ms IS NOT NULL",
    )
    .fetch_all(db)
    .await
    .expect("published events");
    let mut published = 0;
    for _ in 0..n.min(rows.len()) {
        let row = &rows[rng.usize(..rows.len())];
        let get = |k: &str| row.try_get::<String, _>(k).expect(k);
        let body = base64::engine::general_purpose::STANDARD.decode(get("body")).expect("base64 body");
        let source = if get("event_type").starts_with("shopmesh.order.") { "order" } else { "inventory" };
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0".to_owned()),
            ("ce-id", get("id")),
            ("ce-source", format!("shopmesh/{source}")),
            ("ce-type", get("event_type")),
            ("ce-subject", get("subject")),
            ("ce-time", "2026-01-01T00:00:00Z".to_owned()),
            ("content-type", "application/protobuf".to_owned()),
            ("Nats-Msg-Id", format!("{}-again-{}", get("id"), rng.u64(..))),
        ] {
            headers.insert(name, value.as_str());
        }
        // The broker may be down or restarting: a duplicate that is not accepted is not counted.
        let sent = tokio::time::timeout(Duration::from_secs(2), async {
            match js.publish_with_headers(get("event_type"), headers, body.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        if sent == Ok(true) {
            published += 1;
        }
    }
    published
}

/// Cancels one PAID order, picked at random (the order service may be down: then none).
async fn cancel_one(
    client: &OrderServiceClient<tonic::transport::Channel>,
    orders: &AnyPool,
    rng: &mut fastrand::Rng,
) -> u32 {
    let paid: Vec<String> = sqlx::query_scalar("SELECT id FROM orders WHERE state = 'PAID'")
        .fetch_all(orders)
        .await
        .expect("paid orders");
    if paid.is_empty() {
        return 0;
    }
    let id = paid[rng.usize(..paid.len())].clone();
    let mut request = tonic::Request::new(CancelOrderRequest { id, request_id: "harness-cancel".into() });
    request.set_timeout(Duration::from_secs(3));
    u32::from(client.clone().cancel_order(request).await.is_ok())
}

/// Waits (at most `limit`) until no order is pending payment, both outboxes are drained and
/// every durable consumer has nothing pending or unacknowledged; the last lag seen.
async fn settle(
    js: &async_nats::jetstream::Context,
    orders: &AnyPool,
    inventory: &AnyPool,
    limit: Duration,
) -> Vec<(&'static str, u64)> {
    let start = Instant::now();
    loop {
        let backlog = count(orders, "SELECT COUNT(*) FROM orders WHERE state = 'PENDING_PAYMENT'").await
            + count(orders, "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL").await
            + count(inventory, "SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL").await;
        let lag = event_checks::consumer_lag(js).await;
        if (backlog == 0 && lag.iter().all(|(_, n)| *n == 0)) || start.elapsed() > limit {
            return lag;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
