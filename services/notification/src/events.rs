//! The consumers of the inventory's events (StockAllocated → CONFIRMED, OrderBackordered →
//! BACKORDERED) and the order service's (OrderCancelled → CANCELLED): each sends one message
//! per order and kind through the simulated provider (keyed, so never twice), then records
//! it with the event's inbox row in one transaction.

use futures::future::BoxFuture;
use shopmesh::api::inventory::v1::{OrderBackordered, StockAllocated};
use shopmesh::api::order::v1::OrderCancelled;
use shopmesh::mesh::events::consumer::one_at_a_time;
use shopmesh::mesh::events::{Event, Handler, Outcome};
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

    async fn notify(&self, event: &Event) -> Outcome {
        let (kind, user_id, order_id, detail) = match Self::asked(event) {
            Ok(Some(asked)) => asked,
            Ok(None) => return Outcome::Done,
            Err(outcome) => return outcome,
        };
        let body = kind.message(&order_id, &detail);
        let sent = match self.mailer.send(&kind.idempotency_key(&order_id), &user_id, &body).await {
            Ok(message_id) => message_id,
            Err(e) => return Outcome::Retry(format!("mail provider: {e}")),
        };
        let notification = store::new_notification(kind, &user_id, &order_id, body, sent);
        match self.store.record(self.consumer, &event.id, &notification).await {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    /// [`Notifier::notify`] for several events: their messages sent in one request to the
    /// provider, then recorded in one transaction; if either fails, each event alone.
    async fn notify_all(&self, events: &[(&Event, Span)]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut asked = Vec::with_capacity(events.len());
        for (event, span) in events {
            match Self::asked(event) {
                Ok(Some((kind, user_id, order_id, detail))) => {
                    let body = kind.message(&order_id, &detail);
                    asked.push((
                        event.id.as_str(),
                        kind.idempotency_key(&order_id),
                        kind,
                        user_id,
                        order_id,
                        body,
                        span,
                    ));
                    outcomes.push(Outcome::Done);
                }
                Ok(None) => outcomes.push(Outcome::Done),
                Err(outcome) => outcomes.push(outcome),
            }
        }
        if asked.is_empty() {
            return outcomes;
        }
        let messages: Vec<(&str, &str, &str)> = asked
            .iter()
            .map(|(_, key, _, user, _, body, _)| (key.as_str(), user.as_str(), body.as_str()))
            .collect();
        let sent = match self.mailer.send_all(&messages).await {
            Ok(sent) => sent,
            Err(e) => {
                tracing::debug!(error = %e, "a bulk send failed; one event at a time");
                return one_at_a_time(self, events).await;
            }
        };
        let notifications: Vec<_> = asked
            .into_iter()
            .zip(sent)
            .map(|((event_id, _, kind, user, order, body, span), message_id)| {
                (event_id, store::new_notification(kind, &user, &order, body, message_id), span.clone())
            })
            .collect();
        let recorded: Vec<_> = notifications.iter().map(|(id, n, span)| (*id, n, span.clone())).collect();
        match self.store.record_all(self.consumer, &recorded).await {
            Ok(_) => outcomes,
            Err(e) => {
                tracing::debug!(error = %e, "recording a batch of notifications failed; one event at a time");
                one_at_a_time(self, events).await
            }
        }
    }
}

impl Handler for Notifier {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        Box::pin(self.notify(event))
    }

    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.notify_all(events))
    }
}
