//! The batch against one event at a time, its statements counted, and a view behind the table.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::events::Event;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing;
use tracing::Span;
use tracing_subscriber::layer::SubscriberExt as _;

use super::super::{Act, Store};

async fn open(backend: testing::Backend, label: &str) -> (testing::TestDb, Pool, Store) {
    let test_db = testing::database(backend, label).await;
    let pool =
        db::open(&test_db.url, &testing::mesh_config(), crate::Inventory::MIGRATIONS).await.expect("open");
    let store = Store::new(pool.clone());
    (test_db, pool, store)
}

fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: "shopmesh/order".into(),
        event_type: String::new(),
        subject: String::new(),
        time_ms: 0,
        traceparent: None,
        body: Vec::new().into(),
    }
}

fn pay(order_id: &str, user_id: &str, lines: &[(&str, i64)]) -> Act {
    Act::Allocate {
        order_id: order_id.into(),
        user_id: user_id.into(),
        lines: lines.iter().map(|(sku, quantity)| ((*sku).to_owned(), *quantity)).collect(),
    }
}

fn cancel(order_id: &str, user_id: &str) -> Act {
    Act::Release { order_id: order_id.into(), user_id: user_id.into() }
}

/// Everything the consumer leaves behind that anyone can see, but times and event ids.
async fn state(pool: &Pool) -> Vec<String> {
    let stock: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT sku, on_hand, allocated FROM stock ORDER BY sku")
            .fetch_all(&**pool)
            .await
            .expect("stock");
    let fulfilments: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT order_id, user_id, state, reason FROM fulfilments ORDER BY order_id")
            .fetch_all(&**pool)
            .await
            .expect("fulfilments");
    let allocations: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT order_id, sku, quantity FROM allocations ORDER BY order_id, sku")
            .fetch_all(&**pool)
            .await
            .expect("allocations");
    let outbox: Vec<(String, String, String)> =
        sqlx::query_as("SELECT event_type, subject, body FROM outbox ORDER BY seq")
            .fetch_all(&**pool)
            .await
            .expect("outbox");
    let mut state: Vec<String> = stock.iter().map(|row| format!("stock {row:?}")).collect();
    state.extend(fulfilments.iter().map(|row| format!("fulfilment {row:?}")));
    state.extend(allocations.iter().map(|row| format!("allocation {row:?}")));
    state.extend(outbox.iter().map(|row| format!("outbox {row:?}")));
    state
}

/// Two batches of every case the consumer knows (allocated, short on a later line, unknown
/// SKU, cancelled before paid, released in the batch that allocated it and in a later one,
/// cancelled after a backorder, events repeated) leave exactly what the same events leave
/// acted on one at a time: stock, fulfilments with user and reason, allocations, and the
/// outbox rows in order.
#[tokio::test]
async fn a_batch_leaves_what_one_event_at_a_time_leaves() {
    let first = [
        pay("o1", "u1", &[("A", 2), ("B", 1)]),
        pay("o2", "u2", &[("A", 2), ("B", 2)]),
        cancel("o3", "u3"),
        pay("o3", "x3", &[("A", 1)]),
        cancel("o1", "x1"),
        pay("o4", "u4", &[("A", 3), ("B", 1)]),
        pay("o5", "u5", &[("A", 1), ("D", 1)]),
        cancel("o2", "x2"),
        pay("o6", "u6", &[("C", 1)]),
        pay("o7", "u7", &[("B", 1)]),
        cancel("o7", "u7"),
        cancel("o7", "u7"),
        pay("o8", "u8", &[("B", 1)]),
        pay("o9", "u9", &[]),
    ];
    let second = [
        cancel("o4", "u4"),
        pay("o1", "u1", &[("A", 1)]),
        cancel("o5", "u5"),
        pay("o10", "u10", &[("A", 3), ("B", 1)]),
        cancel("o8", "u8"),
        cancel("o9", "u9"),
        pay("o11", "u11", &[("B", 2)]),
    ];
    for backend in testing::backends() {
        let mut states = Vec::new();
        for (label, batched) in [("inventory_batched", true), ("inventory_alone", false)] {
            let (test_db, pool, store) = open(backend, label).await;
            for (sku, on_hand) in [("A", 5), ("B", 2), ("C", 0)] {
                store.set(sku, on_hand).await.expect("set");
            }
            for (round, acts) in [first.as_slice(), second.as_slice()].into_iter().enumerate() {
                let events: Vec<Event> = (0..acts.len()).map(|i| event(&format!("e{round}-{i}"))).collect();
                let batch: Vec<(&Event, Act, Span)> =
                    events.iter().zip(acts).map(|(e, act)| (e, act.clone(), Span::none())).collect();
                if batched {
                    assert_eq!(store.act(&batch).await.expect("act"), acts.len());
                } else {
                    for one in &batch {
                        assert_eq!(store.act(std::slice::from_ref(one)).await.expect("act"), 1);
                    }
                }
            }
            states.push(state(&pool).await);
            pool.close().await;
            test_db.drop_database().await;
        }
        assert_eq!(states[0], states[1], "{backend:?}: batched, then one at a time");
        let fulfilments: Vec<&String> =
            states[0].iter().filter(|row| row.starts_with("fulfilment")).collect();
        assert_eq!(fulfilments.len(), 11, "{backend:?}: {fulfilments:#?}");
        for row in [
            r#"stock ("A", 2, 3)"#,
            r#"stock ("B", 1, 1)"#,
            r#"fulfilment ("o3", "u3", "CANCELLED", None)"#,
            r#"fulfilment ("o5", "u5", "CANCELLED", None)"#,
            r#"fulfilment ("o7", "u7", "RELEASED", None)"#,
            r#"fulfilment ("o8", "u8", "RELEASED", None)"#,
            r#"fulfilment ("o11", "u11", "BACKORDERED", Some("B: 1 on hand, 2 ordered"))"#,
        ] {
            assert!(states[0].contains(&row.to_owned()), "{backend:?}: {row} in {:#?}", states[0]);
        }
    }
}

/// Statements (spans named `db`) run on the counting test's thread.
static STATEMENTS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: OnceLock<std::thread::ThreadId> = OnceLock::new();

/// Counts [`STATEMENTS`]. Process-wide: a subscriber set for one thread only was not asked
/// about statements whose callsite a test on another thread had met first.
struct Statements;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Statements {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() == "db" && COUNTING.get() == Some(&std::thread::current().id()) {
            STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A batch of backordered orders costs five statements however many orders it has (the
/// inbox, fulfilments read, stock read, fulfilments written, outbox written); allocated
/// orders add their conditional updates and one statement for all their allocations.
#[tokio::test]
async fn a_batch_costs_a_fixed_number_of_statements_plus_its_allocations() {
    // The test's runtime runs everything on this thread.
    COUNTING.set(std::thread::current().id()).expect("one counting test");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Statements))
        .expect("no other test sets a subscriber");
    for backend in testing::backends() {
        let (test_db, pool, store) = open(backend, "inventory_statements").await;
        store.set("A", 100).await.expect("set");
        let mut measured = Vec::new();
        for (round, (orders, sku)) in [(2, "NONE"), (50, "NONE"), (10, "A")].into_iter().enumerate() {
            let events: Vec<Event> = (0..orders).map(|i| event(&format!("e{round}-{i}"))).collect();
            let batch: Vec<(&Event, Act, Span)> = events
                .iter()
                .enumerate()
                .map(|(i, e)| (e, pay(&format!("o{round}-{i}"), "u", &[(sku, 1)]), Span::none()))
                .collect();
            STATEMENTS.store(0, Ordering::Relaxed);
            assert_eq!(store.act(&batch).await.expect("act"), orders);
            measured.push(STATEMENTS.load(Ordering::Relaxed));
        }
        // 10 allocated: 5, one UPDATE each, and the allocations' INSERT.
        assert_eq!(measured, [5, 5, 5 + 10 + 1], "{backend:?}");
        pool.close().await;
        test_db.drop_database().await;
    }
}

/// An order the view says fits, but whose line the table finds short (another replica or a
/// SetStock changed it since the batch read it), keeps nothing: the line taken before is put
/// back, and the reason is the table's stock, read again.
#[tokio::test]
async fn a_view_behind_the_table_puts_back_and_reads_the_stock_again() {
    for backend in testing::backends() {
        let (test_db, pool, store) = open(backend, "inventory_stale").await;
        store.set("A", 5).await.expect("set");
        store.set("B", 1).await.expect("set");
        let act = pay("o1", "u1", &[("A", 2), ("B", 2)]);
        let span = Span::none();
        let mut tx = db::begin(&pool).await.expect("begin");
        let mut batch = super::Batch::read(&mut tx, &store.outbox, &[(&act, &span)]).await.expect("read");
        batch.on_hand.insert("B".into(), 9);
        batch.act(&mut tx, &act).await.expect("act");
        batch.write(&mut tx).await.expect("write");
        tx.commit().await.expect("commit");
        let state = state(&pool).await;
        assert_eq!(
            state[..3],
            [
                r#"stock ("A", 5, 0)"#,
                r#"stock ("B", 1, 0)"#,
                r#"fulfilment ("o1", "u1", "BACKORDERED", Some("B: 1 on hand, 2 ordered"))"#
            ],
            "{backend:?}"
        );
        assert!(
            state[3].starts_with(r#"outbox ("shopmesh.inventory.v1.OrderBackordered", "o1""#),
            "{backend:?}: {state:#?}"
        );
        assert_eq!(state.len(), 4, "{backend:?}: {state:#?}");
        pool.close().await;
        test_db.drop_database().await;
    }
}
