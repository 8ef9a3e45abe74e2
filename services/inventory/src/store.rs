//! Every SQL statement of the inventory service, portable across SQLite and PostgreSQL.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, inbox};
use shopmesh::mesh::ids;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tracing::{Instrument as _, Span};

use crate::domain::{self, Stock};
use crate::events;

/// The inbox name of the inventory's consumer of order events.
pub const ORDER_CONSUMER: &str = "inventory-order";

const COLUMNS: &str = "sku, on_hand, allocated, update_time_ms";

/// The inventory service's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    outbox: Outbox,
}

fn stock(row: &AnyRow) -> Result<Stock, sqlx::Error> {
    Ok(Stock {
        sku: row.try_get("sku")?,
        on_hand: row.try_get("on_hand")?,
        allocated: row.try_get("allocated")?,
        update_time_ms: row.try_get("update_time_ms")?,
    })
}

/// What an order event asks of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// OrderPaid: allocate `lines` (per SKU) to the order, or backorder it.
    Allocate { order_id: String, user_id: String, lines: Vec<(String, i64)> },
    /// OrderCancelled: return what the order was allocated.
    Release { order_id: String, user_id: String },
}

impl Store {
    /// A store over a migrated pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool, outbox: Outbox::new("inventory") }
    }

    /// The outbox's relay to `broker`.
    pub fn relay(&self, broker: shopmesh::mesh::events::Broker) -> shopmesh::mesh::events::outbox::Relay {
        self.outbox.relay(self.pool.clone(), broker, shopmesh::mesh::events::INVENTORY)
    }

    /// Sets the units on hand of `sku`, creating its record.
    pub async fn set(&self, sku: &str, on_hand: i64) -> Result<Stock, sqlx::Error> {
        let sql = "INSERT INTO stock (sku, on_hand, allocated, update_time_ms) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, update_time_ms = excluded.update_time_ms \
             RETURNING sku, on_hand, allocated, update_time_ms";
        let row = sqlx::query(sql)
            .bind(sku)
            .bind(on_hand)
            .bind(ids::now_ms())
            .fetch_one(&mut db::acquire(&self.pool).await?)
            .await?;
        stock(&row)
    }

    /// The stock of `sku`.
    pub async fn get(&self, sku: &str) -> Result<Option<Stock>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM stock WHERE sku = $1");
        let row = db::read_optional(&self.pool, || sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(sku))
            .await?;
        row.as_ref().map(stock).transpose()
    }

    /// Up to `limit` records after SKU `after`, in SKU order.
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<Stock>, sqlx::Error> {
        // COLLATE "C" / BINARY: byte order on both engines, as the token's keyset assumes.
        let order = match db::Backend::of_pool(&self.pool) {
            db::Backend::Postgres => "sku COLLATE \"C\"",
            db::Backend::Sqlite => "sku",
        };
        let sql = format!("SELECT {COLUMNS} FROM stock WHERE {order} > $1 ORDER BY {order} LIMIT $2");
        let rows = db::read_all(&self.pool, || {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(after.unwrap_or("")).bind(i64::from(limit))
        })
        .await?;
        rows.iter().map(stock).collect()
    }

    /// Does what each event asks, in order, in one transaction with the events' inbox rows (an
    /// event whose id is there already changes nothing) and the inventory events they cause;
    /// each event's statements run in its span. How many events were new.
    pub async fn act(&self, events: &[(&Event, Act, Span)]) -> Result<usize, sqlx::Error> {
        let now = ids::now_ms();
        let mut tx = db::begin(&self.pool).await?;
        let ids: Vec<&str> = events.iter().map(|(event, ..)| event.id.as_str()).collect();
        let mut fresh = inbox::first_times(&mut tx, ORDER_CONSUMER, &ids).await?;
        let mut acted = 0;
        for (event, act, span) in events {
            if !fresh.remove(&event.id) {
                continue;
            }
            acted += 1;
            match act {
                Act::Allocate { order_id, user_id, lines } => {
                    self.allocate(&mut tx, order_id, user_id, lines, now).instrument(span.clone()).await?;
                }
                Act::Release { order_id, user_id } => {
                    self.release(&mut tx, order_id, user_id, now).instrument(span.clone()).await?;
                }
            }
        }
        tx.commit().await?;
        if acted > 0 {
            self.outbox.wake();
        }
        Ok(acted)
    }

    /// Allocates every line of paid order `order_id` (with the StockAllocated event), or, if
    /// any line is short, allocates nothing and backorders it with the reason (OrderBackordered).
    async fn allocate(
        &self,
        tx: &mut db::Traced<db::Tx>,
        order_id: &str,
        user_id: &str,
        lines: &[(String, i64)],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        if handled(tx, order_id).await? {
            return Ok(());
        }
        // A conditional update per line: a line short of stock changes no row. Concurrent
        // replicas cannot take the same units twice.
        let mut taken = 0;
        for (sku, quantity) in lines {
            let updated = sqlx::query(
                "UPDATE stock SET on_hand = on_hand - $1, allocated = allocated + $1, update_time_ms = $2 \
                 WHERE sku = $3 AND on_hand >= $1",
            )
            .bind(quantity)
            .bind(now)
            .bind(sku)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                break;
            }
            taken += 1;
        }
        if taken == lines.len() {
            fulfilment(tx, order_id, user_id, "ALLOCATED", None, now).await?;
            for (sku, quantity) in lines {
                sqlx::query("INSERT INTO allocations (order_id, sku, quantity) VALUES ($1, $2, $3)")
                    .bind(order_id)
                    .bind(sku)
                    .bind(quantity)
                    .execute(&mut *tx)
                    .await?;
            }
            Outbox::append(&mut *tx, &events::allocated(&self.outbox, order_id, user_id, lines)).await?;
            return Ok(());
        }
        // Nothing of the order is kept: the lines taken before the short one go back, in the
        // same transaction, so nobody else ever sees them taken.
        for (sku, quantity) in &lines[..taken] {
            put_back(tx, sku, *quantity, now).await?;
        }
        let mut reasons = Vec::new();
        let mut short_lines = Vec::new();
        for (sku, quantity) in lines {
            let on_hand: Option<i64> = sqlx::query_scalar("SELECT on_hand FROM stock WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(reason) = domain::shortage(sku, *quantity, on_hand) {
                reasons.push(reason);
                short_lines.push((sku.clone(), *quantity));
            }
        }
        if reasons.is_empty() {
            // Stock arrived since the update found it short: a backorder names what was short then.
            reasons.push("stock changed while allocating; set it again to retry".to_owned());
        }
        let reason = reasons.join("; ");
        fulfilment(tx, order_id, user_id, "BACKORDERED", Some(&reason), now).await?;
        let event = events::backordered(&self.outbox, order_id, user_id, &short_lines, &reason);
        Outbox::append(&mut *tx, &event).await?;
        Ok(())
    }

    /// Returns the stock allocated to cancelled order `order_id` (StockReleased); a
    /// backordered order is just marked cancelled, and one never seen is recorded cancelled,
    /// so that its OrderPaid, if it comes after all (redelivered after a killed consumer's ack
    /// wait), allocates nothing.
    async fn release(
        &self,
        tx: &mut db::Traced<db::Tx>,
        order_id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let row = sqlx::query("SELECT user_id, state FROM fulfilments WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return fulfilment(tx, order_id, user_id, "CANCELLED", None, now).await;
        };
        let (user_id, state): (String, String) = (row.try_get("user_id")?, row.try_get("state")?);
        if state == "ALLOCATED" {
            let rows = sqlx::query("SELECT sku, quantity FROM allocations WHERE order_id = $1 ORDER BY sku")
                .bind(order_id)
                .fetch_all(&mut *tx)
                .await?;
            let mut lines = Vec::with_capacity(rows.len());
            for row in &rows {
                let (sku, quantity): (String, i64) = (row.try_get("sku")?, row.try_get("quantity")?);
                put_back(tx, &sku, quantity, now).await?;
                lines.push((sku, quantity));
            }
            fulfilment(tx, order_id, &user_id, "RELEASED", None, now).await?;
            Outbox::append(&mut *tx, &events::released(&self.outbox, order_id, &user_id, &lines)).await?;
        } else if state == "BACKORDERED" {
            fulfilment(tx, order_id, &user_id, "CANCELLED", None, now).await?;
        }
        Ok(())
    }
}

/// Returns `quantity` allocated units of `sku` to its stock on hand.
async fn put_back(
    tx: &mut db::Traced<db::Tx>,
    sku: &str,
    quantity: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stock SET on_hand = on_hand + $1, allocated = allocated - $1, update_time_ms = $2 WHERE sku = $3",
    )
    .bind(quantity)
    .bind(now)
    .bind(sku)
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether order `order_id` has a fulfilment already: allocated or backordered once, or
/// cancelled before its OrderPaid came.
async fn handled(tx: &mut db::Traced<db::Tx>, order_id: &str) -> Result<bool, sqlx::Error> {
    let found: Option<String> = sqlx::query_scalar("SELECT state FROM fulfilments WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(tx)
        .await?;
    Ok(found.is_some())
}

/// Records (or moves) order `order_id`'s fulfilment to `state`.
async fn fulfilment(
    tx: &mut db::Traced<db::Tx>,
    order_id: &str,
    user_id: &str,
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO fulfilments (order_id, user_id, state, reason, update_time_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (order_id) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
         update_time_ms = excluded.update_time_ms",
    )
    .bind(order_id)
    .bind(user_id)
    .bind(state)
    .bind(reason)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}
