//! The consumers of the inventory's events (StockAllocated → CONFIRMED, OrderBackordered →
//! BACKORDERED) and the order service's (OrderCancelled → CANCELLED): each sends one message
//! per order and kind through the simulated provider (keyed, so never twice), then records
//! it with the event's inbox row in one transaction (the events a consumer has ready together:
//! their messages in one request, their records in one transaction).

use futures::future::BoxFuture;
use shopmesh::api::inventory::v1::{OrderBackordered, StockAllocated};
use shopmesh::api::order::v1::OrderCancelled;
use shopmesh::mesh::events::consumer;
use shopmesh::mesh::events::{Event, Handler, Outcome};
use shopmesh::mesh::ids;
use tracing::Span;

use crate::domain::Kind;
use crate::mailer::Mailer;
use crate::store::{self, Store};

/// The inbox name of the consumer of inventory events.
pub const INVENTORY_CONSUMER: &str = "notification-inventory";
/// The inbox name of the consumer of order events.
pub const ORDER_CONSUMER: &str = "notification-order";

/// One consumer (of either stream).
#[derive(Debug)]
pub struct Notifier {
    consumer: &'static str,
    store: Store,
    mailer: Mailer,
}

/// The notification an event asks for: its kind, recipient, order and detail.
type Asked = (Kind, String, String, String);

fn decoded<M: prost::Message + Default>(event: &Event) -> Result<M, Outcome> {
    M::decode(event.body.as_ref())
        .map_err(|e| Outcome::Poison(format!("{}: undecodable body: {e}", event.event_type)))
}

impl Notifier {
    /// The consumer `consumer`, recording in `store` and sending through `mailer`.
    pub fn new(consumer: &'static str, store: Store, mailer: Mailer) -> Self {
        Self { consumer, store, mailer }
    }

    /// What `event` asks for: `Ok(None)` for an event of a type known and not acted on.
    fn asked(event: &Event) -> Result<Option<Asked>, Outcome> {
        Ok(Some(match event.event_type.as_str() {
            "shopmesh.inventory.v1.StockAllocated" => {
                let e: StockAllocated = decoded(event)?;
                (Kind::Confirmed, e.user_id, e.order_id, String::new())
            }
            "shopmesh.inventory.v1.OrderBackordered" => {
                let e: OrderBackordered = decoded(event)?;
                (Kind::Backordered, e.user_id, e.order_id, e.reason)
            }
            "shopmesh.order.v1.OrderCancelled" => {
                let e: OrderCancelled = decoded(event)?;
                (Kind::Cancelled, e.user_id, e.order_id, String::new())
            }
            "shopmesh.inventory.v1.StockReleased" | "shopmesh.order.v1.OrderPaid" => return Ok(None),
            _ => return Err(Outcome::Unknown),
        }))
    }

    /// Sends and records what `events` ask: their messages in one request to the provider,
    /// then their notifications and inbox rows in one transaction; if either fails, each
    /// event alone (so one event's failure is not the others').
    async fn notify(&self, events: &[(&Event, Span)]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        // (event id, the provider's idempotency key, the notification)
        let mut asked = Vec::with_capacity(events.len());
        for (event, _) in events {
            match Self::asked(event) {
                Ok(Some((kind, user_id, order_id, detail))) => {
                    let body = kind.message(&order_id, &detail);
                    let notification =
                        store::new_notification(kind, &user_id, &order_id, body, String::new());
                    asked.push((event.id.as_str(), kind.idempotency_key(&order_id), notification));
                    outcomes.push(Outcome::Done);
                }
                Ok(None) => outcomes.push(Outcome::Done),
                Err(outcome) => outcomes.push(outcome),
            }
        }
        if asked.is_empty() {
            return outcomes;
        }
        let messages: Vec<(&str, &str, &str)> =
            asked.iter().map(|(_, key, n)| (key.as_str(), n.user_id.as_str(), n.body.as_str())).collect();
        let failed = match self.mailer.send(&messages).await {
            Ok(sent) => {
                let now = ids::now_ms();
                let recorded: Vec<_> = asked
                    .iter_mut()
                    .zip(sent)
                    .map(|((event_id, _, notification), message_id)| {
                        notification.provider_message_id = message_id;
                        notification.send_time_ms = now;
                        (*event_id, &*notification)
                    })
                    .collect();
                match self.store.record(self.consumer, &recorded).await {
                    Ok(_) => return outcomes,
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => format!("mail provider: {e}"),
        };
        consumer::failed_batch(self, events, failed).await
    }
}

impl Handler for Notifier {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        consumer::alone(self, event)
    }

    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.notify(events))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use shopmesh::mesh::db;
    use shopmesh::mesh::service::MeshService as _;
    use shopmesh::mesh::testing;

    use super::*;

    fn event(id: &str, event_type: &str, order_id: &str, body: Vec<u8>) -> Event {
        Event {
            id: id.into(),
            source: "shopmesh/inventory".into(),
            event_type: event_type.into(),
            subject: order_id.into(),
            time_ms: 0,
            traceparent: None,
            body: body.into(),
        }
    }

    fn allocated(id: &str, order_id: &str) -> Event {
        let body = StockAllocated { order_id: order_id.into(), user_id: "u1".into(), lines: vec![] };
        event(id, "shopmesh.inventory.v1.StockAllocated", order_id, body.encode_to_vec())
    }

    /// A batch sends one message per order and kind and records it once: an event given twice
    /// in it, another event asking for the same message, or the batch delivered again, sends
    /// and records nothing more; events not acted on and poison ones get their own outcomes.
    #[tokio::test]
    async fn a_batch_sends_and_records_each_message_once() {
        for backend in testing::backends() {
            let test_db = testing::database(backend, "notification_batch").await;
            let pool = db::open(&test_db.url, &testing::mesh_config(), crate::Notification::MIGRATIONS)
                .await
                .expect("open");
            let store = Store::new(pool.clone());
            let notifier = Notifier::new(INVENTORY_CONSUMER, store, Mailer::new(pool.clone()));
            let backordered =
                OrderBackordered { order_id: "o2".into(), user_id: "u2".into(), ..Default::default() };
            let batch = [
                allocated("e1", "o1"),
                allocated("e1", "o1"),
                allocated("e4", "o1"),
                event("e2", "shopmesh.inventory.v1.OrderBackordered", "o2", backordered.encode_to_vec()),
                event("e3", "shopmesh.inventory.v1.StockReleased", "o1", vec![]),
                event("e5", "shopmesh.inventory.v1.StockAllocated", "o5", vec![0xff, 0xff]),
            ];
            let spans: Vec<_> = batch.iter().map(|e| (e, Span::none())).collect();
            for round in 0..2 {
                let outcomes = notifier.handle_batch(&spans).await;
                assert_eq!(outcomes[..5], [const { Outcome::Done }; 5], "{backend:?} round {round}");
                assert!(matches!(outcomes[5], Outcome::Poison(_)), "{backend:?}: {outcomes:?}");
                let sent: Vec<(String, String)> = sqlx::query_as(
                    "SELECT n.order_id, n.kind FROM notifications n \
                     JOIN mail_ledger m ON m.message_id = n.provider_message_id ORDER BY n.order_id",
                )
                .fetch_all(&*pool)
                .await
                .expect("notifications");
                assert_eq!(
                    sent,
                    [("o1", "CONFIRMED"), ("o2", "BACKORDERED")].map(|(o, k)| (o.to_owned(), k.to_owned())),
                    "{backend:?} round {round}: each recorded once, with the message the provider sent"
                );
                let ledger: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mail_ledger")
                    .fetch_one(&*pool)
                    .await
                    .expect("ledger");
                assert_eq!(ledger, 2, "{backend:?} round {round}: each message sent once");
            }
            pool.close().await;
            test_db.drop_database().await;
        }
    }
}
