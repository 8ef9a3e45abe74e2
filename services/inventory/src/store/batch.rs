//! The consumer's batch of order events, acted on in one transaction with a fixed number of
//! statements plus what real allocations need, and the same results as acting on the events
//! one at a time in order.
//!
//! One statement reads the fulfilments of the batch's orders, one the stock of its SKUs; the
//! events then run against that view, which follows what the batch does:
//! - an order the view finds short is backordered with the reason from the view, without
//!   touching `stock`;
//! - an order the view says fits takes its lines as before, with a conditional update each
//!   (`UPDATE … WHERE on_hand >= n`): they stay the authority (another replica, a SetStock may
//!   have changed the stock since it was read), and one that finds a line short after all
//!   puts the taken lines back and reads that order's stock again for the reason;
//! - a cancelled allocated order puts its lines back, one `UPDATE` each.
//!
//! At the end, one statement each writes the orders' final fulfilments (one row per order:
//! PostgreSQL refuses an `ON CONFLICT DO UPDATE` touching a row twice), their allocations and
//! the outbox rows, in event order.

use std::collections::HashMap;

use shopmesh::mesh::db::{self, Traced, Tx};
use shopmesh::mesh::events::Event;
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::ids;
use sqlx::{AssertSqlSafe, Row as _};
use tracing::{Instrument as _, Span};

use super::Act;
use crate::{domain, events};

/// An order's fulfilment as the batch leaves it.
#[derive(Debug)]
struct Fulfilment {
    /// The first event's: a later one moves the state only.
    user_id: String,
    state: String,
    reason: Option<String>,
    /// Whether the batch moved it (its row is written at the end).
    moved: bool,
}

/// What the batch has read and done so far.
struct Batch<'o> {
    outbox: &'o Outbox,
    now: i64,
    /// The batch's orders that have a fulfilment.
    orders: HashMap<String, Fulfilment>,
    /// Units on hand per SKU of the batch's OrderPaid events; a SKU not here has no record.
    on_hand: HashMap<String, i64>,
    /// The orders whose fulfilment moved, in the order they first did.
    moved: Vec<String>,
    /// Allocations made: order, SKU, units.
    allocations: Vec<(String, String, i64)>,
    /// Events caused, in order.
    events: Vec<Event>,
}

/// Acts on `acts` (their events new to the inbox), each in its span, inside `tx`.
pub(super) async fn act(
    tx: &mut Traced<Tx>,
    outbox: &Outbox,
    acts: &[(&Act, &Span)],
) -> Result<(), sqlx::Error> {
    let mut batch = Batch::read(tx, outbox, acts).await?;
    for (act, span) in acts {
        batch.act(tx, act).instrument((*span).clone()).await?;
    }
    batch.write(tx).await
}

impl<'o> Batch<'o> {
    /// The fulfilments and stock `acts` are about.
    async fn read(
        tx: &mut Traced<Tx>,
        outbox: &'o Outbox,
        acts: &[(&Act, &Span)],
    ) -> Result<Self, sqlx::Error> {
        let mut order_ids: Vec<&str> = acts
            .iter()
            .map(|(act, _)| match act {
                Act::Allocate { order_id, .. } | Act::Release { order_id, .. } => order_id.as_str(),
            })
            .collect();
        let mut skus: Vec<&str> = acts
            .iter()
            .flat_map(|(act, _)| match act {
                Act::Allocate { lines, .. } => lines.as_slice(),
                Act::Release { .. } => &[],
            })
            .map(|(sku, _)| sku.as_str())
            .collect();
        order_ids.sort_unstable();
        order_ids.dedup();
        skus.sort_unstable();
        skus.dedup();
        Ok(Self {
            outbox,
            now: ids::now_ms(),
            orders: fulfilments(tx, &order_ids).await?,
            on_hand: on_hand(tx, &skus).await?,
            moved: Vec::new(),
            allocations: Vec::new(),
            events: Vec::new(),
        })
    }

    async fn act(&mut self, tx: &mut Traced<Tx>, act: &Act) -> Result<(), sqlx::Error> {
        match act {
            Act::Allocate { order_id, user_id, lines } => self.allocate(tx, order_id, user_id, lines).await,
            Act::Release { order_id, user_id } => self.release(tx, order_id, user_id).await,
        }
    }

    /// Allocates every line of paid order `order_id` (with the StockAllocated event), or, if
    /// any line is short, allocates nothing and backorders it with the reason
    /// (OrderBackordered). An order with a fulfilment already (allocated or backordered once,
    /// or cancelled before its OrderPaid came) changes nothing.
    async fn allocate(
        &mut self,
        tx: &mut Traced<Tx>,
        order_id: &str,
        user_id: &str,
        lines: &[(String, i64)],
    ) -> Result<(), sqlx::Error> {
        if self.orders.contains_key(order_id) {
            return Ok(());
        }
        let fits =
            lines.iter().all(|(sku, quantity)| self.on_hand.get(sku).is_some_and(|have| have >= quantity));
        if fits {
            if self.take(tx, lines).await? {
                self.set(order_id, user_id, "ALLOCATED", None);
                for (sku, quantity) in lines {
                    self.allocations.push((order_id.to_owned(), sku.clone(), *quantity));
                }
                self.events.push(events::allocated(self.outbox, order_id, user_id, lines));
                return Ok(());
            }
            // The view was behind the table: what it says of these SKUs, read again.
            let skus: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
            for sku in &skus {
                self.on_hand.remove(*sku);
            }
            self.on_hand.extend(on_hand(tx, &skus).await?);
        }
        let mut reasons = Vec::new();
        let mut short_lines = Vec::new();
        for (sku, quantity) in lines {
            if let Some(reason) = domain::shortage(sku, *quantity, self.on_hand.get(sku).copied()) {
                reasons.push(reason);
                short_lines.push((sku.clone(), *quantity));
            }
        }
        if reasons.is_empty() {
            // Stock arrived since the update found it short: a backorder names what was short then.
            reasons.push("stock changed while allocating; set it again to retry".to_owned());
        }
        let reason = reasons.join("; ");
        self.events.push(events::backordered(self.outbox, order_id, user_id, &short_lines, &reason));
        self.set(order_id, user_id, "BACKORDERED", Some(reason));
        Ok(())
    }

    /// Takes every line off the stock on hand, a conditional update each (a line short of
    /// stock changes no row, so concurrent replicas cannot take the same units twice); if one
    /// is short, puts the lines taken before it back, in the same transaction, so nobody else
    /// ever sees them taken. Whether all were taken.
    async fn take(&mut self, tx: &mut Traced<Tx>, lines: &[(String, i64)]) -> Result<bool, sqlx::Error> {
        for (taken, (sku, quantity)) in lines.iter().enumerate() {
            let left: Option<i64> = sqlx::query_scalar(
                "UPDATE stock SET on_hand = on_hand - $1, allocated = allocated + $1, update_time_ms = $2 \
                 WHERE sku = $3 AND on_hand >= $1 RETURNING on_hand",
            )
            .bind(quantity)
            .bind(self.now)
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?;
            match left {
                Some(left) => {
                    self.on_hand.insert(sku.clone(), left);
                }
                None => {
                    for (sku, quantity) in &lines[..taken] {
                        self.put_back(tx, sku, *quantity).await?;
                    }
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Returns the stock allocated to cancelled order `order_id` (StockReleased); a
    /// backordered order is just marked cancelled, and one never seen is recorded cancelled,
    /// so that its OrderPaid, if it comes after all (redelivered after a killed consumer's ack
    /// wait), allocates nothing.
    async fn release(
        &mut self,
        tx: &mut Traced<Tx>,
        order_id: &str,
        user_id: &str,
    ) -> Result<(), sqlx::Error> {
        let Some(fulfilment) = self.orders.get(order_id) else {
            self.set(order_id, user_id, "CANCELLED", None);
            return Ok(());
        };
        match fulfilment.state.as_str() {
            "ALLOCATED" => {
                let user_id = fulfilment.user_id.clone();
                let mut lines: Vec<(String, i64)> = self
                    .allocations
                    .iter()
                    .filter(|(order, ..)| order == order_id)
                    .map(|(_, sku, quantity)| (sku.clone(), *quantity))
                    .collect();
                if lines.is_empty() {
                    // Allocated by an earlier batch (or with no lines: then none are read).
                    let rows = sqlx::query("SELECT sku, quantity FROM allocations WHERE order_id = $1")
                        .bind(order_id)
                        .fetch_all(&mut *tx)
                        .await?;
                    for row in &rows {
                        lines.push((row.try_get("sku")?, row.try_get("quantity")?));
                    }
                }
                // SKU byte order, on both engines and whichever batch allocated them.
                lines.sort();
                for (sku, quantity) in &lines {
                    self.put_back(tx, sku, *quantity).await?;
                }
                self.events.push(events::released(self.outbox, order_id, &user_id, &lines));
                self.set(order_id, &user_id, "RELEASED", None);
            }
            "BACKORDERED" => {
                let user_id = fulfilment.user_id.clone();
                self.set(order_id, &user_id, "CANCELLED", None);
            }
            _ => {}
        }
        Ok(())
    }

    /// Returns `quantity` allocated units of `sku` to its stock on hand.
    async fn put_back(&mut self, tx: &mut Traced<Tx>, sku: &str, quantity: i64) -> Result<(), sqlx::Error> {
        let left: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET on_hand = on_hand + $1, allocated = allocated - $1, update_time_ms = $2 \
             WHERE sku = $3 RETURNING on_hand",
        )
        .bind(quantity)
        .bind(self.now)
        .bind(sku)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(left) = left {
            self.on_hand.insert(sku.to_owned(), left);
        }
        Ok(())
    }

    /// Records (or moves) order `order_id`'s fulfilment to `state`; a new record is `user_id`'s.
    fn set(&mut self, order_id: &str, user_id: &str, state: &str, reason: Option<String>) {
        let fulfilment = self.orders.entry(order_id.to_owned()).or_insert_with(|| Fulfilment {
            user_id: user_id.to_owned(),
            state: String::new(),
            reason: None,
            moved: false,
        });
        state.clone_into(&mut fulfilment.state);
        fulfilment.reason = reason;
        if !fulfilment.moved {
            fulfilment.moved = true;
            self.moved.push(order_id.to_owned());
        }
    }

    /// Writes the fulfilments that moved, the allocations made and the events caused.
    async fn write(self, tx: &mut Traced<Tx>) -> Result<(), sqlx::Error> {
        for chunk in self.moved.chunks(db::rows_per_statement(5)) {
            let sql = format!(
                "INSERT INTO fulfilments (order_id, user_id, state, reason, update_time_ms) VALUES {} \
                 ON CONFLICT (order_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
                 update_time_ms = excluded.update_time_ms",
                db::values(chunk.len(), 5)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for order_id in chunk {
                let fulfilment = &self.orders[order_id];
                query = query
                    .bind(order_id)
                    .bind(&fulfilment.user_id)
                    .bind(&fulfilment.state)
                    .bind(fulfilment.reason.as_deref())
                    .bind(self.now);
            }
            query.execute(&mut *tx).await?;
        }
        // After the fulfilments they reference.
        for chunk in self.allocations.chunks(db::rows_per_statement(3)) {
            let sql = format!(
                "INSERT INTO allocations (order_id, sku, quantity) VALUES {}",
                db::values(chunk.len(), 3)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for (order_id, sku, quantity) in chunk {
                query = query.bind(order_id).bind(sku).bind(quantity);
            }
            query.execute(&mut *tx).await?;
        }
        Outbox::append_all(tx, &self.events).await
    }
}

/// The fulfilments of `order_ids` that exist, by order.
async fn fulfilments(
    tx: &mut Traced<Tx>,
    order_ids: &[&str],
) -> Result<HashMap<String, Fulfilment>, sqlx::Error> {
    let mut found = HashMap::with_capacity(order_ids.len());
    for chunk in order_ids.chunks(db::MAX_PARAMS) {
        let sql = format!(
            "SELECT order_id, user_id, state FROM fulfilments WHERE order_id IN ({})",
            db::list(chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for order_id in chunk {
            query = query.bind(*order_id);
        }
        for row in query.fetch_all(&mut *tx).await? {
            let fulfilment = Fulfilment {
                user_id: row.try_get("user_id")?,
                state: row.try_get("state")?,
                reason: None,
                moved: false,
            };
            found.insert(row.try_get("order_id")?, fulfilment);
        }
    }
    Ok(found)
}

/// The units on hand of those of `skus` that have a record.
async fn on_hand(tx: &mut Traced<Tx>, skus: &[&str]) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut found = HashMap::with_capacity(skus.len());
    for chunk in skus.chunks(db::MAX_PARAMS) {
        let sql = format!("SELECT sku, on_hand FROM stock WHERE sku IN ({})", db::list(chunk.len()));
        let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
        for sku in chunk {
            query = query.bind(*sku);
        }
        for row in query.fetch_all(&mut *tx).await? {
            found.insert(row.try_get("sku")?, row.try_get("on_hand")?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
