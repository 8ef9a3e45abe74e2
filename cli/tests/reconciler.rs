//! The order reconciler against a real payment service, on SQLite and PostgreSQL: crashes at
//! every step of CreateOrder end with the order charged exactly once, unknown outcomes wait
//! their backoff, replicas never work on the same order, and dead replicas' claims run out.
//!
//! It lives here rather than in the order crate so no service crate depends on another.

use std::time::Duration;

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use shopmesh::api::payment::v1::{
    ListPaymentsRequest, Payment, PaymentState, RefundRequest, payment_service_client::PaymentServiceClient,
};
use shopmesh::mesh::config::ClientConfig;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Refusing, Spawned, TestDb};
use shopmesh::mesh::{client, db, ids};
use shopmesh_order::ReconcileConfig;
use shopmesh_order::domain::{CatalogPrice, LineInput, Order, OrderRequest, State};
use shopmesh_order::reconciler::{Audit, Round};
use shopmesh_order::testing::{Due, Harness};
use shopmesh_payment::{Payment as PaymentService, PaymentConfig};

/// The order store and use cases over a real database, calling a real payment service — or,
/// with `payment_up` false, an address where nothing listens.
struct World {
    orders: Harness,
    payment: Option<Spawned>,
    payment_url: String,
    /// With `payment_up` false, the port in `payment_url`, held so no other test's service
    /// is given it.
    _payment_port: Option<Refusing>,
    payment_db: TestDb,
    order_db: TestDb,
}

fn config() -> ReconcileConfig {
    ReconcileConfig {
        reconcile_interval: Duration::from_millis(20),
        reconcile_after: Duration::ZERO,
        reconcile_lease: Duration::from_secs(30),
        reconcile_max_backoff: Duration::from_secs(60),
        reconcile_batch: 100,
        reconcile_audit_interval: Duration::ZERO,
    }
}

async fn world(backend: Backend, payment_up: bool) -> World {
    let order_db = testing::database(backend, "order").await;
    let payment_db = testing::database(backend, "payment").await;
    let pool = db::open(&order_db.url, &testing::mesh_config(), shopmesh_order::Order::MIGRATIONS)
        .await
        .expect("order db");
    let (payment, payment_url, payment_port) = if payment_up {
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
        let mesh = testing::mesh(testing::mesh_config());
        let spawned = testing::spawn_service::<PaymentService>(&mesh, config).await;
        let url = spawned.url();
        (Some(spawned), url, None)
    } else {
        let port = Refusing::bind();
        (None, port.url(), Some(port))
    };
    let client_config = ClientConfig::default();
    // Reconciliation never asks the user service.
    let catalogue = shopmesh::mesh_api().catalogue;
    let users =
        client::channel("http://127.0.0.1:9", &client_config, catalogue, None).await.expect("channel");
    let payments = client::channel(&payment_url, &client_config, catalogue, None).await.expect("channel");
    let orders = Harness::new(pool, users, payments);
    World { orders, payment, payment_url, _payment_port: payment_port, payment_db, order_db }
}

impl World {
    /// A PENDING_PAYMENT order, as CreateOrder leaves it just before charging — the state a
    /// crash after the order insert leaves behind.
    async fn pending_order(&self, total: i64) -> Order {
        let user_id = ids::new_id();
        let line = LineInput { sku: "SKU-1", quantity: 1, unit_price: Some((total, "USD")) };
        let prices = [(
            "SKU-1".to_owned(),
            CatalogPrice { amount_minor: total, currency_code: "USD".into(), active: true },
        )];
        let new = OrderRequest::parse(&user_id, &[line], &ids::new_id())
            .expect("valid")
            .price(&prices.into())
            .expect("priced");
        self.orders.insert_pending(&new).await.expect("insert").expect("new request id")
    }

    async fn payments_of(&self, order_id: &str) -> Vec<Payment> {
        let mut client = PaymentServiceClient::connect(self.payment_url.clone()).await.expect("connect");
        let request = ListPaymentsRequest { order_id: order_id.to_owned(), ..Default::default() };
        client.list_payments(request).await.expect("list").into_inner().payments
    }

    async fn state_of(&self, id: &str) -> State {
        self.orders.state_of(id).await
    }

    async fn stop(self) {
        if let Some(payment) = self.payment {
            payment.stop().await.expect("payment stops");
        }
        self.payment_db.drop_database().await;
        self.order_db.drop_database().await;
    }
}

#[tokio::test]
async fn crash_after_the_order_insert_is_charged_once() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let order = w.pending_order(1_500).await;
        let reconciler = w.orders.reconciler(config());
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 1, settled: 1 },
            "{backend:?}"
        );
        assert_eq!(w.state_of(&order.id).await, State::Paid, "{backend:?}");
        let payments = w.payments_of(&order.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].request_id, order.id, "{backend:?}: keyed by the order");
        assert_eq!(payments[0].amount.as_ref().map(|m| m.amount_minor), Some(1_500), "{backend:?}");
        assert_eq!(reconciler.round().await.expect("round"), Round::default(), "{backend:?}: nothing left");
        w.stop().await;
    }
}

#[tokio::test]
async fn crash_after_the_charge_records_the_existing_payment() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let order = w.pending_order(2_000).await;
        // The charge went through, then the order service died before recording it.
        let charged = w.orders.settle_charge_only(&order).await;
        let reconciler = w.orders.reconciler(config());
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 1, settled: 1 },
            "{backend:?}"
        );
        let stored = w.orders.get(&order.id).await.expect("get").expect("exists");
        assert_eq!(stored.state, State::Paid, "{backend:?}");
        assert_eq!(stored.payment_id.as_deref(), Some(charged.as_str()), "{backend:?}: the same payment");
        assert_eq!(w.payments_of(&order.id).await.len(), 1, "{backend:?}: charged once");
        w.stop().await;
    }
}

#[tokio::test]
async fn crash_inside_payment_before_its_status_update_is_completed_once() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let order = w.pending_order(700).await;
        // Payment died after writing its PROCESSING row, before asking the processor.
        let pool = db::connect(&w.payment_db.url, &testing::mesh_config()).expect("payment db");
        sqlx::query(
            "INSERT INTO payments (id, request_id, order_id, user_id, amount_minor, currency_code, state, \
             create_time_ms, update_time_ms) VALUES ($1, $2, $3, $4, $5, 'USD', 'PROCESSING', $6, $6)",
        )
        .bind(ids::new_id())
        .bind(&order.id)
        .bind(&order.id)
        .bind(&order.user_id)
        .bind(order.total_minor)
        .bind(ids::now_ms())
        .execute(&*pool)
        .await
        .expect("processing row");
        pool.close().await;

        let reconciler = w.orders.reconciler(config());
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 1, settled: 1 },
            "{backend:?}"
        );
        assert_eq!(w.state_of(&order.id).await, State::Paid, "{backend:?}");
        let payments = w.payments_of(&order.id).await;
        assert_eq!(payments.len(), 1, "{backend:?}: the PROCESSING payment was completed, not repeated");
        assert_eq!(payments[0].state(), PaymentState::Succeeded, "{backend:?}");
        w.stop().await;
    }
}

#[tokio::test]
async fn an_unknown_outcome_waits_its_backoff_and_keeps_the_order() {
    for backend in testing::backends() {
        let w = world(backend, false).await;
        let order = w.pending_order(900).await;
        // A backoff of at least 5 s, far longer than the two rounds take on a busy machine.
        let slow = ReconcileConfig { reconcile_interval: Duration::from_secs(5), ..config() };
        let reconciler = w.orders.reconciler(slow);
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 1, settled: 0 },
            "{backend:?}"
        );
        assert_eq!(w.state_of(&order.id).await, State::PendingPayment, "{backend:?}");
        // Due again only after its backoff.
        assert_eq!(reconciler.round().await.expect("round"), Round::default(), "{backend:?}");
        let due = w.orders.due(Duration::from_secs(10), 10).await.expect("due");
        assert_eq!(due, vec![Due { id: order.id.clone(), attempts: 1 }], "{backend:?}: one attempt counted");
        w.stop().await;
    }
}

#[tokio::test]
async fn replicas_never_work_on_the_same_order() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let mut ids = Vec::new();
        for i in 0..24 {
            ids.push(w.pending_order(100 + i).await.id);
        }
        let a = w.orders.reconciler(config());
        let b = w.orders.reconciler(config());
        let (ra, rb) = tokio::join!(a.round(), b.round());
        let (ra, rb) = (ra.expect("round a"), rb.expect("round b"));
        assert_eq!(ra.attempted + rb.attempted, 24, "{backend:?}: each order claimed once ({ra:?}, {rb:?})");
        assert_eq!(ra.settled + rb.settled, 24, "{backend:?}");
        for id in &ids {
            assert_eq!(w.state_of(id).await, State::Paid, "{backend:?}");
            assert_eq!(w.payments_of(id).await.len(), 1, "{backend:?}");
        }
        w.stop().await;
    }
}

/// The value of metric `name` (with `label`, if given) in `snapshot`.
fn metric(snapshot: &[(CompositeKey, DebugValue)], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    snapshot.iter().find_map(|(key, value)| {
        let key = key.key();
        let labelled = label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v));
        (key.name() == name && labelled).then(|| match value {
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Histogram(_) => f64::NAN,
        })
    })
}

// One thread, so the thread-local recorder sees every metric the round records.
#[tokio::test(flavor = "current_thread")]
async fn rounds_publish_the_pending_gauges_and_count_attempts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let w = world(Backend::Sqlite, false).await;
    w.pending_order(100).await;
    w.pending_order(200).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let reconciler = w.orders.reconciler(config());
    assert_eq!(reconciler.round().await.expect("round"), Round { attempted: 2, settled: 0 });
    let snapshot: Vec<_> = snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
    assert_eq!(metric(&snapshot, "shopmesh_order_pending_orders", None), Some(2.0));
    let age = metric(&snapshot, "shopmesh_order_oldest_pending_age_seconds", None).expect("age gauge");
    assert!((0.05..60.0).contains(&age), "oldest pending age {age}");
    assert_eq!(
        metric(&snapshot, "shopmesh_order_reconcile_attempts_total", Some(("outcome", "unknown"))),
        Some(2.0)
    );
    w.stop().await;
}

#[tokio::test]
async fn a_dead_replicas_claim_runs_out() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let order = w.pending_order(300).await;
        let store = &w.orders;
        let due = Due { id: order.id.clone(), attempts: 0 };
        let lease = Duration::from_millis(300);
        assert!(store.claim(&due, "dead-replica", lease).await.expect("claim"), "{backend:?}");
        assert!(!store.claim(&due, "other", lease).await.expect("claim"), "{backend:?}: held");
        assert!(
            !store.defer(&order.id, "other", Duration::ZERO).await.expect("defer"),
            "{backend:?}: not the holder"
        );
        let reconciler = w.orders.reconciler(config());
        assert_eq!(reconciler.round().await.expect("round"), Round::default(), "{backend:?}: leased");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 1, settled: 1 },
            "{backend:?}"
        );
        assert_eq!(w.state_of(&order.id).await, State::Paid, "{backend:?}");
        w.stop().await;
    }
}

/// A PAID order whose payment was refunded on the payment service itself is found by the audit,
/// counted by the payment's state and logged; orders in step are not (issue 15).
// One thread, so the thread-local recorder sees every metric the audit records.
#[tokio::test(flavor = "current_thread")]
async fn the_audit_finds_paid_orders_whose_payment_was_refunded() {
    for backend in testing::backends() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let w = world(backend, true).await;
        let refunded = w.pending_order(400).await;
        let in_step = w.pending_order(500).await;
        let reconciler = w.orders.reconciler(config());
        assert_eq!(
            reconciler.round().await.expect("round"),
            Round { attempted: 2, settled: 2 },
            "{backend:?}"
        );
        let payment = w.payments_of(&refunded.id).await.remove(0);
        let mut client = PaymentServiceClient::connect(w.payment_url.clone()).await.expect("connect");
        let refund = RefundRequest { payment_id: payment.id.clone(), request_id: "support-1".into() };
        client.refund(refund).await.expect("refund on payment");
        assert_eq!(w.state_of(&refunded.id).await, State::Paid, "{backend:?}: order does not know");
        assert_eq!(w.state_of(&in_step.id).await, State::Paid, "{backend:?}");

        let audit = reconciler.audit().await.expect("audit");
        assert_eq!(audit, Audit { checked: 2, mismatched: 1 }, "{backend:?}");
        let snapshot: Vec<_> =
            snapshotter.snapshot().into_vec().into_iter().map(|(k, _, _, v)| (k, v)).collect();
        assert_eq!(
            metric(&snapshot, "shopmesh_order_payment_mismatches_total", Some(("payment_state", "refunded"))),
            Some(1.0),
            "{backend:?}"
        );
        w.stop().await;
    }
}

/// A lease is the database's clock's, not a replica's: a replica whose clock runs a minute
/// ahead does not take an order another replica holds, because no replica's clock is asked
/// (before, `claim` took the replica's "now", and one a minute fast took the order) (issue 15).
#[tokio::test]
async fn a_replica_with_a_fast_clock_does_not_take_a_live_claim() {
    for backend in testing::backends() {
        let w = world(backend, true).await;
        let order = w.pending_order(300).await;
        let due = Due { id: order.id.clone(), attempts: 0 };
        let lease = Duration::from_secs(30);
        assert!(w.orders.claim(&due, "a", lease).await.expect("claim"), "{backend:?}");
        assert!(!w.orders.claim(&due, "b", lease).await.expect("claim"), "{backend:?}: a live claim taken");
        // Held for the lease by the database's clock: not due a minute early either.
        assert!(w.orders.due(Duration::from_secs(10), 10).await.expect("due").is_empty(), "{backend:?}");
        assert_eq!(w.orders.due(Duration::from_secs(60), 10).await.expect("due").len(), 1, "{backend:?}");
        w.stop().await;
    }
}
