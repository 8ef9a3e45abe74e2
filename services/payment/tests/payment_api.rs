//! The payment service over real gRPC on 127.0.0.1:0, on SQLite and (when configured) PostgreSQL.

use std::time::Duration;

use shopmesh::api::common::v1::Money;
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, Payment, PaymentState, RefundRequest,
    payment_service_client::PaymentServiceClient,
};
use shopmesh::mesh::db;
use shopmesh::mesh::ids::new_id;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb, field_violations, precondition};
use shopmesh_payment::PaymentConfig;
use sqlx::{AssertSqlSafe, Row as _};
use tonic::Code;
use tonic::transport::Channel;

struct Running {
    service: Spawned,
    db: TestDb,
    /// The simulated processor's ledger: a database of its own, as a real processor's is.
    ledger: TestDb,
    client: PaymentServiceClient<Channel>,
}

async fn start(backend: Backend) -> Running {
    // A little processor latency widens the window in which duplicates race.
    start_with(backend, Duration::from_millis(5)).await
}

async fn start_with(backend: Backend, payment_latency: Duration) -> Running {
    let db = testing::database(backend, "payment").await;
    let ledger = testing::database(backend, "processor").await;
    let config = PaymentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: db.url.clone(),
        database_read_url: None,
        payment_limit_minor: 50_000,
        payment_currencies: vec!["USD".into(), "EUR".into()],
        payment_latency,
        processor_ledger_url: ledger.url.clone(),
        payment_processing_lease: Duration::from_secs(10),
    };
    let mesh = testing::mesh(testing::mesh_config());
    let service = testing::spawn_service::<shopmesh_payment::Payment>(&mesh, config).await;
    let client = PaymentServiceClient::connect(service.url()).await.expect("connect");
    Running { service, db, ledger, client }
}

fn charge(order_id: &str, amount: i64, currency: &str, request_id: &str) -> ChargeRequest {
    ChargeRequest {
        order_id: order_id.into(),
        user_id: "0190a0a0-0000-7000-8000-000000000001".into(),
        amount: Some(Money { currency_code: currency.into(), amount_minor: amount }),
        request_id: request_id.into(),
    }
}

impl Running {
    async fn stop(self) {
        self.service.stop().await.expect("clean shutdown");
        self.db.drop_database().await;
        self.ledger.drop_database().await;
    }

    /// Runs `sql` on payment's database, as a restore or a failover would change it.
    async fn lose(&self, sql: &str, id: &str) {
        let pool = db::connect(&self.db.url, &testing::mesh_config()).expect("payment db");
        let mut conn = db::acquire(&pool).await.expect("connection");
        sqlx::query(AssertSqlSafe(sql.to_owned())).bind(id).execute(&mut conn).await.expect("lose a commit");
        drop(conn);
        pool.close().await;
    }

    /// How many entries of `kind` the processor's ledger holds for `order_id`.
    async fn at_the_processor(&self, kind: &str, order_id: &str) -> i64 {
        let pool = db::connect(&self.ledger.url, &testing::mesh_config()).expect("ledger");
        let mut conn = db::acquire(&pool).await.expect("connection");
        let n = sqlx::query("SELECT COUNT(*) AS n FROM processor_ledger WHERE kind = $1 AND order_id = $2")
            .bind(kind)
            .bind(order_id)
            .fetch_one(&mut conn)
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
        drop(conn);
        pool.close().await;
        n
    }

    /// Sends `req` on a task of its own, so the test can act while that Charge runs.
    fn charge_beside(&self, req: ChargeRequest) -> tokio::task::JoinHandle<Result<Payment, tonic::Status>> {
        let mut client = self.client.clone();
        tokio::spawn(async move { client.charge(req).await.map(tonic::Response::into_inner) })
    }

    /// The payment of `order_id` once a Charge running beside the test has written it: its
    /// one payment, which must still be PROCESSING (waits up to 5 s).
    async fn processing_payment_of(&mut self, order_id: &str) -> Payment {
        let mut seen = Vec::new();
        for _ in 0..1_000 {
            seen = self.payments_of(order_id).await;
            if !seen.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen.len(), 1, "the owner's PROCESSING row: {seen:?}");
        let payment = seen.remove(0);
        assert_eq!(payment.state(), PaymentState::Processing, "{payment:?}");
        payment
    }

    async fn payments_of(&mut self, order_id: &str) -> Vec<Payment> {
        let req = ListPaymentsRequest { order_id: order_id.into(), page_size: 0, page_token: String::new() };
        self.client.list_payments(req).await.expect("list").into_inner().payments
    }
}

#[tokio::test]
async fn a_replayed_charge_charges_once() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let first = t.client.charge(charge(&order, 2_500, "USD", &order)).await.expect("charge").into_inner();
        assert_eq!(first.state(), PaymentState::Succeeded, "{backend:?}");
        for _ in 0..10 {
            let again =
                t.client.charge(charge(&order, 2_500, "USD", &order)).await.expect("replay").into_inner();
            assert_eq!(again, first, "{backend:?}: a replay returns the same payment");
        }
        assert_eq!(t.payments_of(&order).await.len(), 1, "{backend:?}: one payment");
        let got = t.client.get_payment(GetPaymentRequest { id: first.id.clone() }).await.expect("get");
        assert_eq!(got.into_inner(), first);
        t.stop().await;
    }
}

#[tokio::test]
async fn concurrent_duplicates_share_one_payment() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let calls = (0..10).map(|_| {
            let mut client = t.client.clone();
            let req = charge(&order, 700, "EUR", &order);
            async move { client.charge(req).await.map(tonic::Response::into_inner) }
        });
        let results = futures::future::join_all(calls).await;
        let ids: std::collections::BTreeSet<_> =
            results.into_iter().map(|r| r.expect("every duplicate succeeds").id).collect();
        assert_eq!(ids.len(), 1, "{backend:?}: {ids:?}");
        let payments = t.payments_of(&order).await;
        assert_eq!(payments.len(), 1, "{backend:?}");
        assert_eq!(payments[0].state(), PaymentState::Succeeded);
        t.stop().await;
    }
}

/// While one Charge asks the processor, a duplicate does not ask it too: it gets the payment
/// back PROCESSING at once (the order service treats that as "not known yet") (issue 15).
#[tokio::test]
async fn one_charge_at_a_time_owns_a_processing_payment() {
    for backend in testing::backends() {
        // The owner's processor call takes long enough to be sure to still run below.
        let mut t = start_with(backend, Duration::from_secs(3)).await;
        let order = new_id();
        let owned = t.charge_beside(charge(&order, 1_200, "USD", &order));
        let seen = t.processing_payment_of(&order).await;

        let duplicate = t.client.charge(charge(&order, 1_200, "USD", &order)).await.expect("duplicate");
        let duplicate = duplicate.into_inner();
        assert_eq!(duplicate.id, seen.id, "{backend:?}");
        assert_eq!(
            duplicate.state(),
            PaymentState::Processing,
            "{backend:?}: a duplicate waited for the processor instead of answering PROCESSING"
        );
        let done = owned.await.expect("task").expect("the owner's charge");
        assert_eq!(done.state(), PaymentState::Succeeded, "{backend:?}");
        t.stop().await;
    }
}

/// The processor is keyed by the caller's request id (within its order), so a payment row or a
/// refund lost with payment's last commits (a restore, a failover to a standby that was behind)
/// is not charged or refunded twice when the caller retries (issue 15).
#[tokio::test]
async fn commits_lost_by_payment_do_not_charge_or_refund_twice_at_the_processor() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let first = t.client.charge(charge(&order, 2_000, "USD", &order)).await.expect("charge").into_inner();
        assert_eq!(first.state(), PaymentState::Succeeded, "{backend:?}");
        t.lose("DELETE FROM payments WHERE id = $1", &first.id).await;
        let again = t.client.charge(charge(&order, 2_000, "USD", &order)).await.expect("retry").into_inner();
        assert_eq!(again.state(), PaymentState::Succeeded, "{backend:?}");
        assert_eq!(
            t.at_the_processor("charge", &order).await,
            1,
            "{backend:?}: charged twice at the processor"
        );

        let refund = || RefundRequest { payment_id: again.id.clone(), request_id: "cancel-1".into() };
        t.client.refund(refund()).await.expect("refund");
        t.lose("UPDATE payments SET state = 'SUCCEEDED', refund_request_id = NULL WHERE id = $1", &again.id)
            .await;
        let refunded = t.client.refund(refund()).await.expect("retried refund").into_inner();
        assert_eq!(refunded.state(), PaymentState::Refunded, "{backend:?}");
        assert_eq!(
            t.at_the_processor("refund", &order).await,
            1,
            "{backend:?}: refunded twice at the processor"
        );
        t.stop().await;
    }
}

/// A PROCESSING row lost while its Charge is at the processor (on PostgreSQL that row commits
/// without waiting for the disk, so a crash can take it) fails that Charge UNAVAILABLE, a
/// retryable code (the order service keeps the order PENDING_PAYMENT), never NOT_FOUND or
/// INTERNAL; the retry writes the row again and the processor, asked under the same key,
/// charges once.
#[tokio::test]
async fn a_processing_row_lost_at_the_processor_is_retryable_and_charged_once() {
    for backend in testing::backends() {
        let mut t = start_with(backend, Duration::from_millis(600)).await;
        let order = new_id();
        let owned = t.charge_beside(charge(&order, 1_500, "USD", &order));
        let seen = t.processing_payment_of(&order).await;
        t.lose("DELETE FROM payments WHERE id = $1", &seen.id).await;
        let err = owned.await.expect("task").expect_err("its row was lost");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert!(err.message().contains("retry with the same request_id"), "{}", err.message());

        let again = t.client.charge(charge(&order, 1_500, "USD", &order)).await.expect("retry").into_inner();
        assert_eq!(again.state(), PaymentState::Succeeded, "{backend:?}");
        assert_eq!(t.payments_of(&order).await.len(), 1, "{backend:?}");
        assert_eq!(
            t.at_the_processor("charge", &order).await,
            1,
            "{backend:?}: charged twice at the processor"
        );
        t.stop().await;
    }
}

#[tokio::test]
async fn a_reused_request_id_with_other_fields_changes_nothing() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let first =
            t.client.charge(charge(&order, 1_000, "USD", "key-1")).await.expect("charge").into_inner();
        // (Another order's charge under the same key is a payment of its own: keys are scoped
        // to their order.)
        let mut other_user = charge(&order, 1_000, "USD", "key-1");
        other_user.user_id = new_id();
        for other in
            [charge(&order, 1_001, "USD", "key-1"), charge(&order, 1_000, "EUR", "key-1"), other_user]
        {
            let err = t.client.charge(other).await.expect_err("reused key");
            assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
            assert_eq!(precondition(&err).as_deref(), Some("REQUEST_ID_REUSED"));
        }
        let still = t.client.get_payment(GetPaymentRequest { id: first.id.clone() }).await.expect("get");
        assert_eq!(still.into_inner(), first, "{backend:?}: unchanged");
        assert_eq!(t.payments_of(&order).await.len(), 1);
        t.stop().await;
    }
}

/// Charge and refund keys are the caller's keys within one order: another order's payment under
/// the same keys is a payment of its own (issue 15).
#[tokio::test]
async fn payment_keys_are_scoped_to_their_order() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let (first_order, second_order) = (new_id(), new_id());
        let first =
            t.client.charge(charge(&first_order, 1_000, "USD", "key-1")).await.expect("charge").into_inner();
        let second = t
            .client
            .charge(charge(&second_order, 1_000, "USD", "key-1"))
            .await
            .expect("another order's charge under the same key")
            .into_inner();
        assert_ne!(second.id, first.id, "{backend:?}");
        assert_eq!(second.state(), PaymentState::Succeeded, "{backend:?}");
        for p in [&first, &second] {
            let refunded = t
                .client
                .refund(RefundRequest { payment_id: p.id.clone(), request_id: "refund-1".into() })
                .await
                .expect("each order's refund under the same key")
                .into_inner();
            assert_eq!(refunded.state(), PaymentState::Refunded, "{backend:?}");
        }
        assert_eq!(t.payments_of(&first_order).await.len(), 1, "{backend:?}");
        assert_eq!(t.payments_of(&second_order).await.len(), 1, "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn the_processor_declines_by_its_documented_rules() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let over = new_id();
        let p = t.client.charge(charge(&over, 50_001, "USD", &over)).await.expect("charge").into_inner();
        assert_eq!(p.state(), PaymentState::Declined, "{backend:?}");
        assert_eq!(p.decline_reason, "amount_over_limit");
        let at_limit = new_id();
        let p =
            t.client.charge(charge(&at_limit, 50_000, "USD", &at_limit)).await.expect("charge").into_inner();
        assert_eq!(p.state(), PaymentState::Succeeded, "{backend:?}: the limit itself is allowed");
        let yen = new_id();
        let p = t.client.charge(charge(&yen, 100, "JPY", &yen)).await.expect("charge").into_inner();
        assert_eq!(p.state(), PaymentState::Declined, "{backend:?}");
        assert_eq!(p.decline_reason, "currency_not_supported");
        t.stop().await;
    }
}

#[tokio::test]
async fn refunds_happen_once() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let paid = t.client.charge(charge(&order, 900, "USD", &order)).await.expect("charge").into_inner();
        let refund = |key: &str| RefundRequest { payment_id: paid.id.clone(), request_id: key.into() };
        let refunded = t.client.refund(refund("cancel-1")).await.expect("refund").into_inner();
        assert_eq!(refunded.state(), PaymentState::Refunded, "{backend:?}");
        assert_eq!(refunded.refund_request_id, "cancel-1");
        let again = t.client.refund(refund("cancel-1")).await.expect("replay").into_inner();
        assert_eq!(again, refunded, "{backend:?}: a replayed refund returns the same payment");
        let err = t.client.refund(refund("cancel-2")).await.expect_err("second refund");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
        assert_eq!(precondition(&err).as_deref(), Some("ALREADY_REFUNDED"));

        // The same refund key for another payment of the same order is a reuse.
        let other =
            t.client.charge(charge(&order, 900, "USD", "second-charge")).await.expect("charge").into_inner();
        let err = t
            .client
            .refund(RefundRequest { payment_id: other.id.clone(), request_id: "cancel-1".into() })
            .await
            .expect_err("reused key");
        assert_eq!(precondition(&err).as_deref(), Some("REQUEST_ID_REUSED"), "{backend:?}");
        let untouched =
            t.client.get_payment(GetPaymentRequest { id: other.id }).await.expect("get").into_inner();
        assert_eq!(untouched.state(), PaymentState::Succeeded, "{backend:?}: nothing changed");

        // A declined payment has nothing to refund.
        let order3 = new_id();
        let declined =
            t.client.charge(charge(&order3, 99_999, "USD", &order3)).await.expect("charge").into_inner();
        let err = t
            .client
            .refund(RefundRequest { payment_id: declined.id, request_id: "cancel-3".into() })
            .await
            .expect_err("declined");
        assert_eq!(precondition(&err).as_deref(), Some("NOT_REFUNDABLE"), "{backend:?}");
        t.stop().await;
    }
}

/// Refunds racing under different request ids (an operator's refund and a customer's
/// CancelOrder) refund the payment once at the processor: one answer REFUNDED, the others
/// ALREADY_REFUNDED (issue 26).
#[tokio::test]
async fn concurrent_refunds_under_different_keys_refund_once_at_the_processor() {
    for backend in testing::backends() {
        // Every Refund is at the processor at the same time unless one claims the payment.
        let mut t = start_with(backend, Duration::from_millis(50)).await;
        let order = new_id();
        let paid = t.client.charge(charge(&order, 4_200, "USD", &order)).await.expect("charge").into_inner();
        let calls = (0..8).map(|i| {
            let mut client = t.client.clone();
            let req = RefundRequest { payment_id: paid.id.clone(), request_id: format!("refund-{i}") };
            async move { client.refund(req).await.map(tonic::Response::into_inner) }
        });
        let answers = futures::future::join_all(calls).await;
        let refunded: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
        let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        let at_the_processor = t.at_the_processor("refund", &order).await;
        println!(
            "{backend:?}: 8 concurrent Refunds: {} refunded, {} refused, {at_the_processor} refund(s) in the processor's ledger",
            refunded.len(),
            refused.len()
        );
        assert_eq!(at_the_processor, 1, "{backend:?}: refunded {at_the_processor} times at the processor");
        assert_eq!(refunded.len(), 1, "{backend:?}: {answers:?}");
        assert_eq!(refunded[0].state(), PaymentState::Refunded, "{backend:?}");
        for err in refused {
            assert_eq!(precondition(err).as_deref(), Some("ALREADY_REFUNDED"), "{backend:?}: {err:?}");
        }
        let stored = t.client.get_payment(GetPaymentRequest { id: paid.id }).await.expect("get").into_inner();
        assert_eq!(&stored, refunded[0], "{backend:?}");
        t.stop().await;
    }
}

/// A Refund that claimed its payment and died before finishing is finished by the next Refund,
/// whatever its key, once the claim's lease has run out; while the lease runs, a Refund waits
/// for it and answers UNAVAILABLE only when its own deadline would pass.
#[tokio::test]
async fn a_refund_cut_short_is_finished_by_the_next_under_any_key() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let paid = t.client.charge(charge(&order, 1_500, "EUR", &order)).await.expect("charge").into_inner();
        // Claimed by a Refund whose owner is still alive: the next one waits, within its deadline.
        t.lose(
            "UPDATE payments SET state = 'REFUNDING', refund_request_id = 'operator-1', \
             lease_until_ms = 9000000000000 WHERE id = $1",
            &paid.id,
        )
        .await;
        let mut held =
            tonic::Request::new(RefundRequest { payment_id: paid.id.clone(), request_id: "cancel-1".into() });
        held.set_timeout(Duration::from_millis(300));
        let err = t.client.refund(held).await.expect_err("the claim is held");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert_eq!(t.at_the_processor("refund", &order).await, 0, "{backend:?}");

        // Its owner died: once the lease is over, any key finishes it, under the claim's key.
        t.lose("UPDATE payments SET lease_until_ms = 0 WHERE id = $1", &paid.id).await;
        let err = t
            .client
            .refund(RefundRequest { payment_id: paid.id.clone(), request_id: "cancel-1".into() })
            .await
            .expect_err("refunded under the claim's key");
        assert_eq!(precondition(&err).as_deref(), Some("ALREADY_REFUNDED"), "{backend:?}: {err:?}");
        let stored =
            t.client.get_payment(GetPaymentRequest { id: paid.id.clone() }).await.expect("get").into_inner();
        assert_eq!(stored.state(), PaymentState::Refunded, "{backend:?}");
        assert_eq!(stored.refund_request_id, "operator-1", "{backend:?}");
        assert_eq!(t.at_the_processor("refund", &order).await, 1, "{backend:?}");
        // The claim's own key gets the refunded payment back.
        let replay = t
            .client
            .refund(RefundRequest { payment_id: paid.id.clone(), request_id: "operator-1".into() })
            .await
            .expect("the claim's key")
            .into_inner();
        assert_eq!(replay, stored, "{backend:?}");
        assert_eq!(t.at_the_processor("refund", &order).await, 1, "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_or_not_found() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let err = t.client.charge(charge("", -5, "usd", "")).await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(
            field_violations(&err),
            ["order_id", "amount.amount_minor", "amount.currency_code", "request_id"],
            "{backend:?}"
        );
        let mut no_amount = charge(&new_id(), 1, "USD", "k");
        no_amount.amount = None;
        assert_eq!(field_violations(&t.client.charge(no_amount).await.expect_err("no amount")), ["amount"]);

        let err = t
            .client
            .refund(RefundRequest { payment_id: new_id(), request_id: "k".into() })
            .await
            .expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        let err = t.client.get_payment(GetPaymentRequest { id: new_id() }).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        let err = t
            .client
            .list_payments(ListPaymentsRequest {
                order_id: "x".into(),
                page_size: -1,
                page_token: "y".into(),
            })
            .await
            .expect_err("invalid list");
        assert_eq!(field_violations(&err), ["order_id", "page_size", "page_token"]);
        t.stop().await;
    }
}
