//! The inventory's events: StockAllocated, OrderBackordered and StockReleased as its outbox
//! rows carry them, and the consumer of the order service's OrderPaid and OrderCancelled.

use futures::future::BoxFuture;
use prost::Message as _;
use shopmesh::api::inventory::v1::{OrderBackordered, OrderLine, StockAllocated, StockReleased};
use shopmesh::api::order::v1::{OrderCancelled, OrderPaid};
use shopmesh::mesh::events::consumer;
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, Handler, Outcome};
use tracing::Span;

use crate::domain;
use crate::store::{Act, Store};

fn order_lines(lines: &[(String, i64)]) -> Vec<OrderLine> {
    lines.iter().map(|(sku, quantity)| OrderLine { sku: sku.clone(), quantity: *quantity }).collect()
}

/// StockAllocated for `order_id`.
pub fn allocated(outbox: &Outbox, order_id: &str, user_id: &str, lines: &[(String, i64)]) -> Event {
    let body = StockAllocated {
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        lines: order_lines(lines),
    };
    outbox.event("shopmesh.inventory.v1.StockAllocated", order_id, body.encode_to_vec())
}

/// OrderBackordered for `order_id`, short of `short`, because of `reason`.
pub fn backordered(
    outbox: &Outbox,
    order_id: &str,
    user_id: &str,
    short: &[(String, i64)],
    reason: &str,
) -> Event {
    let body = OrderBackordered {
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        short_lines: order_lines(short),
        reason: reason.to_owned(),
    };
    outbox.event("shopmesh.inventory.v1.OrderBackordered", order_id, body.encode_to_vec())
}

/// StockReleased for `order_id`.
pub fn released(outbox: &Outbox, order_id: &str, user_id: &str, lines: &[(String, i64)]) -> Event {
    let body = StockReleased {
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        lines: order_lines(lines),
    };
    outbox.event("shopmesh.inventory.v1.StockReleased", order_id, body.encode_to_vec())
}

/// The consumer of the order service's events.
#[derive(Debug)]
pub struct Orders {
    store: Store,
}

impl Orders {
    /// Allocates and releases in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// What `event` asks of the inventory, or the outcome of one that asks nothing.
    fn decode(event: &Event) -> Result<Act, Outcome> {
        match event.event_type.as_str() {
            "shopmesh.order.v1.OrderPaid" => match OrderPaid::decode(event.body.as_ref()) {
                Ok(paid) => Ok(Act::Allocate {
                    lines: domain::lines_per_sku(
                        paid.line_items.into_iter().map(|l| (l.sku, i64::from(l.quantity))),
                    ),
                    order_id: paid.order_id,
                    user_id: paid.user_id,
                }),
                Err(e) => Err(Outcome::Poison(format!("OrderPaid: undecodable body: {e}"))),
            },
            "shopmesh.order.v1.OrderCancelled" => match OrderCancelled::decode(event.body.as_ref()) {
                Ok(cancelled) => {
                    Ok(Act::Release { order_id: cancelled.order_id, user_id: cancelled.user_id })
                }
                Err(e) => Err(Outcome::Poison(format!("OrderCancelled: undecodable body: {e}"))),
            },
            _ => Err(Outcome::Unknown),
        }
    }

    /// Acts on `events` in one transaction; if it fails, on each alone (so one event's failure
    /// is not the others').
    async fn act(&self, events: &[(&Event, Span)]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut acts = Vec::with_capacity(events.len());
        for (event, span) in events {
            match Self::decode(event) {
                Ok(act) => {
                    acts.push((*event, act, span.clone()));
                    outcomes.push(Outcome::Done);
                }
                Err(outcome) => outcomes.push(outcome),
            }
        }
        match self.store.act(&acts).await {
            Ok(_) => outcomes,
            Err(e) => consumer::failed_batch(self, events, e.to_string()).await,
        }
    }
}

impl Handler for Orders {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        consumer::alone(self, event)
    }

    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(self.act(events))
    }
}

#[cfg(test)]
mod tests {
    use shopmesh::api::order::v1::LineItem;
    use shopmesh::mesh::db;
    use shopmesh::mesh::service::MeshService as _;
    use shopmesh::mesh::testing;

    use super::*;

    fn event(id: &str, event_type: &str, order_id: &str, body: Vec<u8>) -> Event {
        Event {
            id: id.into(),
            source: "shopmesh/order".into(),
            event_type: event_type.into(),
            subject: order_id.into(),
            time_ms: 0,
            traceparent: None,
            body: body.into(),
        }
    }

    fn paid(id: &str, order_id: &str, lines: &[(&str, i32)]) -> Event {
        let line_items = lines.iter().map(|(sku, quantity)| LineItem {
            sku: (*sku).into(),
            quantity: *quantity,
            unit_price: None,
        });
        let body = OrderPaid {
            order_id: order_id.into(),
            user_id: "u1".into(),
            line_items: line_items.collect(),
            total: None,
        };
        event(id, "shopmesh.order.v1.OrderPaid", order_id, body.encode_to_vec())
    }

    fn cancelled(id: &str, order_id: &str) -> Event {
        let body = OrderCancelled { order_id: order_id.into(), user_id: "u1".into(), ..Default::default() };
        event(id, "shopmesh.order.v1.OrderCancelled", order_id, body.encode_to_vec())
    }

    /// A batch acts on each event once, in order, as the events would one at a time: an event
    /// given twice in it, or delivered again in a later batch, changes nothing; an order short
    /// on its second line keeps nothing of its first; a poison event is its own outcome and
    /// does not stop the others.
    #[tokio::test]
    async fn a_batch_acts_once_per_event_in_order() {
        for backend in testing::backends() {
            let test_db = testing::database(backend, "inventory_batch").await;
            let pool = db::open(&test_db.url, &testing::mesh_config(), crate::Inventory::MIGRATIONS)
                .await
                .expect("open");
            let store = Store::new(pool.clone());
            store.set("MUG", 5).await.expect("set");
            let orders = Orders::new(store.clone());
            let poison = event("e4", "shopmesh.order.v1.OrderPaid", "o4", vec![0xff, 0xff]);
            let batch = [
                paid("e1", "o1", &[("MUG", 3)]),
                paid("e1", "o1", &[("MUG", 3)]),
                paid("e2", "o2", &[("MUG", 3)]),
                cancelled("e3", "o1"),
                paid("e5", "o5", &[("MUG", 1), ("ZEBRA", 1)]),
                poison,
            ];
            let spans: Vec<_> = batch.iter().map(|e| (e, Span::none())).collect();
            for round in 0..2 {
                let outcomes = orders.handle_batch(&spans).await;
                assert_eq!(outcomes[..5], [const { Outcome::Done }; 5], "{backend:?}");
                assert!(matches!(outcomes[5], Outcome::Poison(_)), "{backend:?}: {outcomes:?}");
                let stock = store.get("MUG").await.expect("get").expect("stock");
                // o1 took 3 and gave them back; o2 found 2 and was backordered, o5 took a MUG, found no ZEBRA and put the MUG back.
                assert_eq!((stock.on_hand, stock.allocated), (5, 0), "{backend:?} round {round}");
                let states: Vec<(String, String)> =
                    sqlx::query_as("SELECT order_id, state FROM fulfilments ORDER BY order_id")
                        .fetch_all(&*pool)
                        .await
                        .expect("fulfilments");
                assert_eq!(
                    states,
                    [("o1", "RELEASED"), ("o2", "BACKORDERED"), ("o5", "BACKORDERED")]
                        .map(|(o, s)| (o.to_owned(), s.to_owned())),
                    "{backend:?}"
                );
                let events: Vec<String> = sqlx::query_scalar("SELECT event_type FROM outbox ORDER BY seq")
                    .fetch_all(&*pool)
                    .await
                    .expect("outbox");
                assert_eq!(
                    events,
                    [
                        "shopmesh.inventory.v1.StockAllocated",
                        "shopmesh.inventory.v1.OrderBackordered",
                        "shopmesh.inventory.v1.StockReleased",
                        "shopmesh.inventory.v1.OrderBackordered"
                    ],
                    "{backend:?} round {round}: one event each"
                );
            }
            pool.close().await;
            test_db.drop_database().await;
        }
    }
}
