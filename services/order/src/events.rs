//! The order service's events: OrderPaid and OrderCancelled as its outbox rows carry them, and
//! the consumer of the inventory service's events, which records each paid order's
//! fulfilment (ALLOCATED, BACKORDERED, RELEASED) once per event.

use futures::future::BoxFuture;
use prost::Message as _;
use shopmesh::api::common::v1::Money;
use shopmesh::api::inventory::v1::{OrderBackordered, StockAllocated, StockReleased};
use shopmesh::api::order::v1::{LineItem as LineItemProto, OrderCancelled, OrderPaid};
use shopmesh::mesh::events::consumer;
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, Handler, Outcome};
use tracing::Span;

use crate::domain::{Fulfilment, Order};
use crate::store::Store;

/// `ce-type` of OrderPaid.
pub const ORDER_PAID: &str = "shopmesh.order.v1.OrderPaid";
/// `ce-type` of OrderCancelled.
pub const ORDER_CANCELLED: &str = "shopmesh.order.v1.OrderCancelled";

fn lines(order: &Order) -> Vec<LineItemProto> {
    order
        .items
        .iter()
        .map(|i| LineItemProto {
            sku: i.sku.clone(),
            quantity: i32::try_from(i.quantity).unwrap_or(i32::MAX),
            unit_price: Some(Money {
                currency_code: order.currency_code.clone(),
                amount_minor: i.unit_price_minor,
            }),
        })
        .collect()
}

/// `order`'s OrderPaid.
pub fn paid(outbox: &Outbox, order: &Order) -> Event {
    let body = OrderPaid {
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        line_items: lines(order),
        total: Some(Money { currency_code: order.currency_code.clone(), amount_minor: order.total_minor }),
    };
    outbox.event(ORDER_PAID, &order.id, body.encode_to_vec())
}

/// `order`'s OrderCancelled (refunded when it was PAID), as [`paid`] gives OrderPaid.
pub fn cancelled(outbox: &Outbox, order: &Order) -> String {
    let body = OrderCancelled {
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        refunded: order.state == crate::domain::State::Paid,
        line_items: lines(order),
    };
    Outbox::json(&outbox.event(ORDER_CANCELLED, &order.id, body.encode_to_vec()))
}

/// The consumer of the inventory service's events.
#[derive(Debug)]
pub struct Fulfilments {
    store: Store,
}

impl Fulfilments {
    /// Records fulfilments in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// What `event` records: `(order id, fulfilment)`, or the outcome of an event that records nothing.
    fn decode(event: &Event) -> Result<(String, Fulfilment), Outcome> {
        let decoded = match event.event_type.as_str() {
            "shopmesh.inventory.v1.StockAllocated" => {
                StockAllocated::decode(event.body.as_ref()).map(|e| (e.order_id, Fulfilment::Allocated))
            }
            "shopmesh.inventory.v1.OrderBackordered" => {
                OrderBackordered::decode(event.body.as_ref()).map(|e| (e.order_id, Fulfilment::Backordered))
            }
            "shopmesh.inventory.v1.StockReleased" => {
                StockReleased::decode(event.body.as_ref()).map(|e| (e.order_id, Fulfilment::Released))
            }
            _ => return Err(Outcome::Unknown),
        };
        decoded.map_err(|e| Outcome::Poison(format!("{}: undecodable body: {e}", event.event_type)))
    }

    /// Records the fulfilments of `events` in one transaction; if it fails, of each event alone
    /// (so one event's failure is not the others').
    async fn record(&self, events: &[(&Event, Span)]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut todo = Vec::with_capacity(events.len());
        for (event, _) in events {
            match Self::decode(event) {
                Ok((order_id, fulfilment)) => {
                    todo.push((event.id.as_str(), order_id, fulfilment));
                    outcomes.push(Outcome::Done);
                }
                Err(outcome) => outcomes.push(outcome),
            }
        }
        match self.store.record_fulfilments(&todo).await {
            Ok(_) => outcomes,
            Err(e) => consumer::failed_batch(self, events, e.to_string()).await,
        }
    }
}

impl Handler for Fulfilments {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        consumer::alone(self, event)
    }

    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.record(events))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use shopmesh::mesh::db;
    use shopmesh::mesh::events::bus::Bus;
    use shopmesh::mesh::events::config::EventsConfig;
    use shopmesh::mesh::events::{Broker, ORDER, Subscription};
    use shopmesh::mesh::service::MeshService as _;
    use shopmesh::mesh::testing;

    use super::*;
    use crate::domain::{LineItem, NewOrder, State};

    /// Records what it is given: (order, event type).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    impl Handler for Recorder {
        fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
            if let Ok(mut seen) = self.0.lock() {
                seen.push((event.subject.clone(), event.event_type.clone()));
            }
            Box::pin(async { Outcome::Done })
        }
    }

    /// On PostgreSQL the relay's claim reads the unpublished rows by their index in `seq`
    /// order, not by walking every published row still kept (24 h of them) before them.
    #[tokio::test]
    async fn the_relay_s_claim_skips_the_published_rows_by_index() {
        if !testing::backends().contains(&testing::Backend::Postgres) {
            return;
        }
        let test_db = testing::database(testing::Backend::Postgres, "order_outbox_plan").await;
        let pool =
            db::open(&test_db.url, &testing::mesh_config(), crate::Order::MIGRATIONS).await.expect("open");
        sqlx::query(
            "INSERT INTO outbox (id, event_type, subject, body, created_at_ms, published_at_ms) \
             SELECT 'e' || g, 't', 'o' || g, 'b', g, CASE WHEN g <= 20000 THEN g END \
             FROM generate_series(1, 20100) g",
        )
        .execute(&*pool)
        .await
        .expect("rows");
        sqlx::query("ANALYZE outbox").execute(&*pool).await.expect("analyze");
        // Custom and generic plans alike (sqlx's statements are prepared, and PostgreSQL moves
        // to the generic plan after five executions): the unpublished rows in `seq` order, and
        // each one's subject looked up in the `(subject, seq)` index, not by a scan of every
        // unpublished row.
        let mut conn = pool.acquire().await.expect("connection");
        let claim = shopmesh::mesh::events::outbox::claim_sql();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE claim (bigint) AS {claim}")))
            .execute(&mut *conn)
            .await
            .expect("prepare");
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .expect("plan mode");
            let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE claim (100)")
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
            let plan = plan.join("\n");
            assert!(plan.contains("outbox_unpublished_seq on outbox o"), "{mode}:\n{plan}");
            assert!(plan.contains("outbox_unpublished on outbox p"), "{mode}:\n{plan}");
            assert!(plan.contains("Index Cond: (subject = o.subject)"), "{mode}:\n{plan}");
        }
        drop(conn);
        pool.close().await;
        test_db.drop_database().await;
    }

    /// The relay's claim reads the entries of rows published since the last vacuum once, not
    /// on every pass: on a table without statistics (a new database, before autovacuum's first
    /// ANALYZE), where PostgreSQL's own choice is a bitmap scan that never marks them dead.
    #[tokio::test]
    async fn the_relay_s_claim_reads_the_rows_published_since_the_last_vacuum_once() {
        use shopmesh::mesh::events::outbox;
        if !testing::backends().contains(&testing::Backend::Postgres) {
            return;
        }
        let test_db = testing::database(testing::Backend::Postgres, "order_outbox_dead").await;
        // One connection, so that what its passes read is all the index's counters count.
        let mesh =
            shopmesh::mesh::config::MeshConfig { db_max_connections: Some(1), ..testing::mesh_config() };
        let pool = db::open(&test_db.url, &mesh, crate::Order::MIGRATIONS).await.expect("open");
        // 2 000 rows published as the relay marks them (an UPDATE each leaves a dead version
        // behind), then 10 new ones; no vacuum and no statistics.
        for sql in [
            "ALTER TABLE outbox SET (autovacuum_enabled = false)",
            "INSERT INTO outbox (id, event_type, subject, body, created_at_ms) \
             SELECT 'e' || g, 't', 'o' || g, 'b', g FROM generate_series(1, 2000) g",
            "UPDATE outbox SET published_at_ms = 1",
            "INSERT INTO outbox (id, event_type, subject, body, created_at_ms) \
             SELECT 'f' || g, 't', 'p' || g, 'b', g FROM generate_series(1, 10) g",
            "SET stats_fetch_consistency = none",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&*pool).await.expect(sql);
        }
        // Index entries read so far: those reported, and those the backend has yet to report.
        let entries = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT pg_stat_get_tuples_returned('outbox_unpublished_seq'::regclass) \
                 + pg_stat_get_xact_tuples_returned('outbox_unpublished_seq'::regclass)",
            )
            .fetch_one(&*pool)
            .await
            .expect("entries read")
        };
        // A pass marks the dead entries it meets only once no transaction of the server can
        // still see their rows (others run beside this test): passes are repeated until one
        // reads only the live entries, as the relay's would be, for up to 5 s.
        let mut read = Vec::new();
        for _ in 0..50 {
            let before = entries().await;
            let (tx, rows) = outbox::claim(&pool, 100).await.expect("claim");
            assert_eq!(rows.len(), 10);
            tx.rollback().await.expect("rollback");
            read.push(entries().await - before);
            if read.last() < Some(&100) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // The first pass meets the 2 000 dead entries; a later one reads the 10 live ones.
        assert!(read[0] >= 2000, "entries read by each pass: {read:?}");
        assert!(read.last() < Some(&100), "every pass read the dead entries again: {read:?}");
        pool.close().await;
        test_db.drop_database().await;
    }

    /// The relay's pass commits without waiting for the disk (a lost commit publishes its rows
    /// again, which the broker and the inboxes drop), and the setting ends with the pass: the
    /// connection's next transaction, an order's, waits for the disk again.
    #[tokio::test]
    async fn only_the_relay_s_pass_commits_without_waiting_for_the_disk() {
        use shopmesh::mesh::events::outbox;
        if !testing::backends().contains(&testing::Backend::Postgres) {
            return;
        }
        let test_db = testing::database(testing::Backend::Postgres, "order_outbox_async").await;
        // One connection: the pass's and the next statement's.
        let mesh =
            shopmesh::mesh::config::MeshConfig { db_max_connections: Some(1), ..testing::mesh_config() };
        let pool = db::open(&test_db.url, &mesh, crate::Order::MIGRATIONS).await.expect("open");
        let setting = "SELECT current_setting('synchronous_commit')";
        let (mut tx, rows) = outbox::claim(&pool, 100).await.expect("claim");
        assert!(rows.is_empty());
        let inside: String = sqlx::query_scalar(setting).fetch_one(&mut tx).await.expect("setting");
        tx.commit().await.expect("commit");
        let after: String = sqlx::query_scalar(setting).fetch_one(&*pool).await.expect("setting");
        assert_eq!((inside.as_str(), after.as_str()), ("off", "on"));
        pool.close().await;
        test_db.drop_database().await;
    }

    /// The housekeeping deletes the rows published before its cutoff and no others, sweeping
    /// on past rows it must keep at the head of the table (one unpublished, one published
    /// late), and on PostgreSQL reads the oldest rows by the primary key, not the whole table.
    #[tokio::test]
    async fn housekeeping_deletes_only_what_was_published_before_the_cutoff_oldest_first() {
        use shopmesh::mesh::events::outbox;
        for backend in testing::backends() {
            let test_db = testing::database(backend, "order_outbox_sweep").await;
            let pool = db::open(&test_db.url, &testing::mesh_config(), crate::Order::MIGRATIONS)
                .await
                .expect("open");
            // 12 000 rows, published at `n` ms (before the cutoff) but for row 5 (unpublished),
            // row 6 and the last 1 000 (published after it): more than one sweep's worth.
            sqlx::query(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 12000) \
                 INSERT INTO outbox (id, event_type, subject, body, created_at_ms, published_at_ms) \
                 SELECT 'e' || n, 't', 'o' || n, 'b', n, \
                 CASE WHEN n = 5 THEN NULL WHEN n = 6 OR n > 11000 THEN 1000000 ELSE n END FROM g",
            )
            .execute(&*pool)
            .await
            .expect("rows");
            // The plan of a table more than a sweep long (a table shorter than that is read whole).
            if backend == testing::Backend::Postgres {
                sqlx::query("ANALYZE outbox").execute(&*pool).await.expect("analyze");
                let sql =
                    format!("EXPLAIN {}", outbox::SWEEP_SQL.replace("$1", "5000").replace("$2", "20000"));
                let plan: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&*pool).await.expect("explain");
                let plan = plan.join("\n");
                assert!(!plan.contains("Seq Scan"), "{plan}");
                assert!(plan.contains("Index Scan using outbox_pkey on outbox "), "{plan}");
            }
            let deleted = outbox::delete_published_before(&pool, 20_000).await.expect("sweep");
            assert_eq!(deleted, 10_998, "{backend:?}: rows 1 to 11 000 but 5 and 6");
            let kept: Vec<i64> = sqlx::query_scalar("SELECT seq FROM outbox WHERE seq <= 11000 ORDER BY seq")
                .fetch_all(&*pool)
                .await
                .expect("kept");
            assert_eq!(kept, [5, 6], "{backend:?}");
            let left: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&*pool).await.expect("count");
            assert_eq!(left, 1_002, "{backend:?}");
            pool.close().await;
            test_db.drop_database().await;
        }
    }

    /// The state changes write their events in the same statement (the trigger of migration
    /// 0005), and relays publish each once, an order's in the order they were written: on
    /// PostgreSQL two relays share the outbox (rows claimed FOR UPDATE SKIP LOCKED), on SQLite
    /// one runs (one process per file).
    #[tokio::test]
    async fn every_event_is_published_once_and_an_order_s_in_order_by_racing_relays() {
        for backend in testing::backends() {
            let test_db = testing::database(backend, "order_outbox").await;
            let pool = db::open(&test_db.url, &testing::mesh_config(), crate::Order::MIGRATIONS)
                .await
                .expect("open");
            let store = Store::new(pool.clone(), Duration::from_secs(60));
            let mut cancelled = Vec::new();
            for i in 0..40 {
                let new = NewOrder {
                    user_id: "u1".into(),
                    items: vec![LineItem { sku: "A".into(), quantity: 1, unit_price_minor: 100 }],
                    currency_code: "EUR".into(),
                    total_minor: 100,
                    request_id: Some(format!("r{i}")),
                };
                let order = store.insert(&new).await.expect("insert").expect("new");
                let paid = store.settle(&order, State::Paid, Some("p"), None, None).await.expect("settle");
                let paid = paid.expect("settled");
                if i % 2 == 0 {
                    assert!(store.cancel(&paid, Some("c")).await.expect("cancel"));
                    cancelled.push(paid.id.clone());
                }
            }
            let subscription = Subscription { durable: "test-order", stream: ORDER };
            let bus = Arc::new(Bus::new(EventsConfig::default(), &[subscription]));
            let recorder = Arc::new(Recorder::default());
            let broker = Broker::InProcess(bus);
            let relays = if backend == testing::Backend::Postgres { 2 } else { 1 };
            let mut tasks = vec![tokio::spawn(broker.consuming(subscription, recorder.clone()))];
            for _ in 0..relays {
                tasks.push(tokio::spawn(store.outbox().relay(pool.clone(), broker.clone(), ORDER).run()));
            }
            let before = pool.sqlite_writes();
            let started = Instant::now();
            loop {
                let left: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at_ms IS NULL")
                        .fetch_one(&*pool)
                        .await
                        .expect("count");
                if left == 0 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{backend:?}: {left} rows never published"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for task in tasks {
                task.abort();
            }
            // On a SQLite file the relay marked its rows on its own thread, never through sqlx
            // (nothing else writes meanwhile).
            if let (Some(before), Some(after)) = (before, pool.sqlite_writes()) {
                assert!(after.committed > before.committed, "{before:?} {after:?}");
                assert_eq!(after.handed_back, before.handed_back, "{before:?} {after:?}");
            } else {
                assert_eq!(backend, testing::Backend::Postgres, "a SQLite file has a writer");
            }
            let seen = recorder.0.lock().expect("lock").clone();
            assert_eq!(seen.len(), 60, "{backend:?}: 40 OrderPaid and 20 OrderCancelled, each once");
            for id in &cancelled {
                let of_order: Vec<&str> =
                    seen.iter().filter(|(s, _)| s == id).map(|(_, t)| t.as_str()).collect();
                assert_eq!(of_order, [ORDER_PAID, ORDER_CANCELLED], "{backend:?}: {id}");
            }
            pool.close().await;
            test_db.drop_database().await;
        }
    }
}
