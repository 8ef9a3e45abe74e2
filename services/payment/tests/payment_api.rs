//! The payment service over real gRPC on 127.0.0.1:0, on SQLite and (when configured) PostgreSQL.

use std::time::Duration;

use shopmesh::api::common::v1::Money;
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, Payment, PaymentState, RefundRequest,
    payment_service_client::PaymentServiceClient,
};
use shopmesh::mesh::ids::new_id;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb, field_violations, precondition};
use shopmesh_payment::PaymentConfig;
use tonic::Code;
use tonic::transport::Channel;

struct Running {
    service: Spawned,
    db: TestDb,
    client: PaymentServiceClient<Channel>,
}

async fn start(backend: Backend) -> Running {
    let db = testing::database(backend, "payment").await;
    let config = PaymentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: db.url.clone(),
        payment_limit_minor: 50_000,
        payment_currencies: vec!["USD".into(), "EUR".into()],
        // A little processor latency widens the window in which duplicates race.
        payment_latency: Duration::from_millis(5),
    };
    let mesh = testing::mesh(testing::mesh_config());
    let service = testing::spawn_service::<shopmesh_payment::Payment>(&mesh, config).await;
    let client = PaymentServiceClient::connect(service.url()).await.expect("connect");
    Running { service, db, client }
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

#[tokio::test]
async fn a_reused_request_id_with_other_fields_changes_nothing() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let order = new_id();
        let first =
            t.client.charge(charge(&order, 1_000, "USD", "key-1")).await.expect("charge").into_inner();
        for other in [charge(&order, 1_001, "USD", "key-1"), charge(&order, 1_000, "EUR", "key-1"), {
            let mut c = charge(&new_id(), 1_000, "USD", "key-1");
            c.order_id = new_id();
            c
        }] {
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

        // The same refund key for another payment is a reuse.
        let order2 = new_id();
        let other = t.client.charge(charge(&order2, 900, "USD", &order2)).await.expect("charge").into_inner();
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
