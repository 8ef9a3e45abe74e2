//! The inventory's events: StockAllocated, OrderBackordered and StockReleased as its outbox
//! rows carry them, and the consumer of the order service's OrderPaid and OrderCancelled.

use futures::future::BoxFuture;
use prost::Message as _;
use shopmesh::api::inventory::v1::{OrderBackordered, OrderLine, StockAllocated, StockReleased};
use shopmesh::api::order::v1::{OrderCancelled, OrderPaid};
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, Handler, Outcome};

use crate::domain;
use crate::store::Store;

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

    async fn act(&self, event: &Event) -> Outcome {
        let result = match event.event_type.as_str() {
            "shopmesh.order.v1.OrderPaid" => match OrderPaid::decode(event.body.as_ref()) {
                Ok(paid) => {
                    let lines = domain::lines_per_sku(
                        paid.line_items.into_iter().map(|l| (l.sku, i64::from(l.quantity))),
                    );
                    self.store.allocate(event, &paid.order_id, &paid.user_id, &lines).await
                }
                Err(e) => return Outcome::Poison(format!("OrderPaid: undecodable body: {e}")),
            },
            "shopmesh.order.v1.OrderCancelled" => match OrderCancelled::decode(event.body.as_ref()) {
                Ok(cancelled) => self.store.release(event, &cancelled.order_id, &cancelled.user_id).await,
                Err(e) => return Outcome::Poison(format!("OrderCancelled: undecodable body: {e}")),
            },
            _ => return Outcome::Unknown,
        };
        match result {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

impl Handler for Orders {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        Box::pin(self.act(event))
    }
}
