//! Every SQL statement of the inventory service, portable across SQLite and PostgreSQL: its
//! stock here, the consumer's batch of order events in `batch.rs`.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::events::{Event, inbox};
use shopmesh::mesh::ids;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tracing::Span;

use crate::domain::Stock;

mod batch;

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
    /// event whose id is there already changes nothing) and the inventory events they cause,
    /// with the same results as acting on them one at a time (see `batch.rs` for how it
    /// needs a fixed number of statements); each event's own statements run in its span. How
    /// many events were new.
    pub async fn act(&self, events: &[(&Event, Act, Span)]) -> Result<usize, sqlx::Error> {
        let mut tx = db::begin(&self.pool).await?;
        let ids: Vec<&str> = events.iter().map(|(event, ..)| event.id.as_str()).collect();
        let mut fresh = inbox::first_times(&mut tx, ORDER_CONSUMER, &ids).await?;
        let acts: Vec<(&Act, &Span)> = events
            .iter()
            .filter(|(event, ..)| fresh.remove(&event.id))
            .map(|(_, act, span)| (act, span))
            .collect();
        if !acts.is_empty() {
            batch::act(&mut tx, &self.outbox, &acts).await?;
        }
        tx.commit().await?;
        if !acts.is_empty() {
            self.outbox.wake();
        }
        Ok(acts.len())
    }
}
