//! The consumers of the inventory's events (StockAllocated → CONFIRMED, OrderBackordered →
//! BACKORDERED) and the order service's (OrderCancelled → CANCELLED): each sends one message
//! per order and kind through the simulated provider (keyed, so never twice), then records
//! it with the event's inbox row in one transaction (the events a consumer has ready together:
//! their messages in one request, their records in one transaction).

use futures::future::BoxFuture;
use shopmesh::api::inventory::v1::{OrderBackordered, StockAllocated};
use shopmesh::api::order::v1::OrderCancelled;
use shopmesh::mesh::events::consumer::one_at_a_time;
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
        // (event id, the provider's idempotency key, the notification, its span)
        let mut asked = Vec::with_capacity(events.len());
        for (event, span) in events {
            match Self::asked(event) {
                Ok(Some((kind, user_id, order_id, detail))) => {
                    let body = kind.message(&order_id, &detail);
                    let notification =
                        store::new_notification(kind, &user_id, &order_id, body, String::new());
                    asked.push((event.id.as_str(), kind.idempotency_key(&order_id), notification, span));
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
            asked.iter().map(|(_, key, n, _)| (key.as_str(), n.user_id.as_str(), n.body.as_str())).collect();
        let failed = match self.mailer.send(&messages).await {
            Ok(sent) => {
                let now = ids::now_ms();
                let recorded: Vec<_> = asked
                    .iter_mut()
                    .zip(sent)
                    .map(|((event_id, _, notification, span), message_id)| {
                        notification.provider_message_id = message_id;
                        notification.send_time_ms = now;
                        (*event_id, &*notification, (*span).clone())
                    })
                    .collect();
                match self.store.record(self.consumer, &recorded).await {
                    Ok(_) => return outcomes,
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => format!("mail provider: {e}"),
        };
        if events.len() == 1 {
            return vec![Outcome::Retry(failed)];
        }
        tracing::debug!(error = %failed, "a batch of events failed; one at a time");
        one_at_a_time(self, events).await
    }
}

impl Handler for Notifier {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let mut outcomes = self.notify(&[(event, Span::current())]).await;
            outcomes.pop().unwrap_or(Outcome::Retry("no outcome".into()))
        })
    }

    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.notify(events))
    }
}
