//! The order service's events: OrderPaid and OrderCancelled as its outbox rows carry them, and
//! the consumer of the inventory service's events, which records each paid order's
//! fulfilment (ALLOCATED, BACKORDERED, RELEASED) once per event.

use futures::future::BoxFuture;
use prost::Message as _;
use shopmesh::api::common::v1::Money;
use shopmesh::api::inventory::v1::{OrderBackordered, StockAllocated, StockReleased};
use shopmesh::api::order::v1::{LineItem as LineItemProto, OrderCancelled, OrderPaid};
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, Handler, Outcome};

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

/// `order`'s OrderPaid, as the JSON its settle statement hands the outbox trigger.
pub fn paid(outbox: &Outbox, order: &Order) -> String {
    let body = OrderPaid {
        order_id: order.id.clone(),
        user_id: order.user_id.clone(),
        line_items: lines(order),
        total: Some(Money { currency_code: order.currency_code.clone(), amount_minor: order.total_minor }),
    };
    Outbox::json(&outbox.event(ORDER_PAID, &order.id, body.encode_to_vec()))
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

    async fn record(&self, event: &Event) -> Outcome {
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
            _ => return Outcome::Unknown,
        };
        let (order_id, fulfilment) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => return Outcome::Poison(format!("{}: undecodable body: {e}", event.event_type)),
        };
        match self.store.record_fulfilment(&event.id, &order_id, fulfilment).await {
            Ok(_) => Outcome::Done,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

impl Handler for Fulfilments {
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
        Box::pin(self.record(event))
    }
}
