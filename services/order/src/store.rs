//! Every SQL statement of the order service, portable across SQLite and PostgreSQL.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::ids;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row as _};

use crate::domain::{LineItem, NewOrder, Order, State};

/// Order columns and their lines', joined so an order and its lines come back in one query.
const SELECT: &str = "SELECT o.id, o.request_id, o.user_id, o.currency_code, o.total_minor, o.state, \
     o.payment_id, o.decline_reason, o.cancel_request_id, o.create_time_ms, o.update_time_ms, \
     i.sku, i.quantity, i.unit_price_minor \
     FROM orders o JOIN order_items i ON i.order_id = o.id";

/// The order service's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// A store over a migrated pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Stores `new` as PENDING_PAYMENT with its lines, in one transaction. `None` when its
    /// request id is already taken (a concurrent or earlier identical request).
    pub async fn insert(&self, new: &NewOrder) -> Result<Option<Order>, sqlx::Error> {
        let now = ids::now_ms();
        let order = Order {
            id: ids::new_id(),
            request_id: new.request_id.clone(),
            user_id: new.user_id.clone(),
            items: new.items.clone(),
            currency_code: new.currency_code.clone(),
            total_minor: new.total_minor,
            state: State::PendingPayment,
            payment_id: None,
            decline_reason: None,
            cancel_request_id: None,
            create_time_ms: now,
            update_time_ms: now,
        };
        let mut tx = db::begin(&self.pool).await?;
        // The insert comes first so SQLite takes its write lock at once rather than upgrading a
        // read transaction, which could fail with SQLITE_BUSY instead of waiting.
        let inserted = sqlx::query(
            "INSERT INTO orders (id, request_id, user_id, currency_code, total_minor, state, \
             create_time_ms, update_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&order.id)
        .bind(&order.request_id)
        .bind(&order.user_id)
        .bind(&order.currency_code)
        .bind(order.total_minor)
        .bind(order.state.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        for (line_no, item) in (0_i64..).zip(&order.items) {
            sqlx::query(
                "INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&order.id)
            .bind(line_no)
            .bind(&item.sku)
            .bind(item.quantity)
            .bind(item.unit_price_minor)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(order))
    }

    /// Records the charge's outcome on a PENDING_PAYMENT order (PAID or PAYMENT_DECLINED) and
    /// returns the order as stored; an order another call already settled is left alone.
    pub async fn settle(
        &self,
        id: &str,
        state: State,
        payment_id: &str,
        decline_reason: Option<&str>,
    ) -> Result<Option<Order>, sqlx::Error> {
        sqlx::query(
            "UPDATE orders SET state = $1, payment_id = $2, decline_reason = $3, update_time_ms = $4 \
             WHERE id = $5 AND state = 'PENDING_PAYMENT'",
        )
        .bind(state.as_str())
        .bind(payment_id)
        .bind(decline_reason)
        .bind(ids::now_ms())
        .bind(id)
        .execute(&mut db::acquire(&self.pool).await?)
        .await?;
        self.get(id).await
    }

    /// Cancels a PAID or PAYMENT_DECLINED order under `request_id`; `false` if it was in
    /// another state by then.
    pub async fn cancel(&self, id: &str, request_id: Option<&str>) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE orders SET state = 'CANCELLED', cancel_request_id = $1, update_time_ms = $2 \
             WHERE id = $3 AND state IN ('PAID', 'PAYMENT_DECLINED')",
        )
        .bind(request_id)
        .bind(ids::now_ms())
        .bind(id)
        .execute(&mut db::acquire(&self.pool).await?)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// The order with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, sqlx::Error> {
        let sql = AssertSqlSafe(format!("{SELECT} WHERE o.id = $1 ORDER BY i.line_no"));
        let rows = sqlx::query(sql).bind(id).fetch_all(&mut db::acquire(&self.pool).await?).await?;
        Ok(group(&rows)?.pop())
    }

    /// The order created with `request_id`.
    pub async fn by_request_id(&self, request_id: &str) -> Result<Option<Order>, sqlx::Error> {
        let sql = AssertSqlSafe(format!("{SELECT} WHERE o.request_id = $1 ORDER BY i.line_no"));
        let rows = sqlx::query(sql).bind(request_id).fetch_all(&mut db::acquire(&self.pool).await?).await?;
        Ok(group(&rows)?.pop())
    }

    /// Up to `limit` orders of `user_id` after id `after`, oldest first.
    pub async fn list_by_user(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Order>, sqlx::Error> {
        let sql = AssertSqlSafe(format!(
            "{SELECT} WHERE o.id IN (SELECT id FROM orders WHERE user_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3) ORDER BY o.id, i.line_no"
        ));
        let rows = sqlx::query(sql)
            .bind(user_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&mut db::acquire(&self.pool).await?)
            .await?;
        group(&rows)
    }
}

/// Folds joined rows (one per line, ordered by order then line) into orders.
fn group(rows: &[AnyRow]) -> Result<Vec<Order>, sqlx::Error> {
    let mut orders: Vec<Order> = Vec::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let item = LineItem {
            sku: row.try_get("sku")?,
            quantity: row.try_get("quantity")?,
            unit_price_minor: row.try_get("unit_price_minor")?,
        };
        match orders.last_mut() {
            Some(last) if last.id == id => last.items.push(item),
            _ => {
                let state: String = row.try_get("state")?;
                orders.push(Order {
                    id,
                    request_id: row.try_get("request_id")?,
                    user_id: row.try_get("user_id")?,
                    items: vec![item],
                    currency_code: row.try_get("currency_code")?,
                    total_minor: row.try_get("total_minor")?,
                    state: State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
                        index: "state".into(),
                        source: format!("unknown order state {state:?}").into(),
                    })?,
                    payment_id: row.try_get("payment_id")?,
                    decline_reason: row.try_get("decline_reason")?,
                    cancel_request_id: row.try_get("cancel_request_id")?,
                    create_time_ms: row.try_get("create_time_ms")?,
                    update_time_ms: row.try_get("update_time_ms")?,
                });
            }
        }
    }
    Ok(orders)
}
