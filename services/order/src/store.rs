//! Every SQL statement of the order service, portable across SQLite and PostgreSQL.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use shopmesh::mesh::db::{self, Backend, Param, Pool};
use shopmesh::mesh::events::inbox;
use shopmesh::mesh::events::outbox::Outbox;
use shopmesh::mesh::ids;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row as _};

use crate::domain::{Fulfilment, LineItem, NewOrder, Order, State};
use crate::events;

/// Order columns and their lines', joined so an order and its lines come back in one query.
const SELECT: &str = "SELECT o.id, o.request_id, o.user_id, o.currency_code, o.total_minor, o.state, \
     o.payment_id, o.decline_reason, o.cancel_request_id, o.create_time_ms, o.update_time_ms, \
     o.fulfilment, i.sku, i.quantity, i.unit_price_minor \
     FROM orders o JOIN order_items i ON i.order_id = o.id";

/// The statements that read the database's clock (for leases and schedules the replicas share),
/// for one engine.
#[derive(Debug)]
struct Clocked {
    due: &'static str,
    claim: &'static str,
    defer: &'static str,
}

macro_rules! clocked {
    ($engine:ident) => {
        Clocked {
            due: concat!(
                "SELECT id, reconcile_attempts FROM orders WHERE state = 'PENDING_PAYMENT' \
                 AND next_attempt_ms <= ",
                shopmesh::db_now_ms!($engine),
                " + $1 AND lease_until_ms <= ",
                shopmesh::db_now_ms!($engine),
                " + $1 ORDER BY next_attempt_ms LIMIT $2"
            ),
            claim: concat!(
                "UPDATE orders SET lease_owner = $1, lease_until_ms = ",
                shopmesh::db_now_ms!($engine),
                " + $2 WHERE id = $3 AND (state = 'PENDING_PAYMENT') IS TRUE AND reconcile_attempts = $4 \
                 AND lease_until_ms <= ",
                shopmesh::db_now_ms!($engine)
            ),
            defer: concat!(
                "UPDATE orders SET reconcile_attempts = reconcile_attempts + 1, next_attempt_ms = ",
                shopmesh::db_now_ms!($engine),
                " + $1, lease_owner = NULL, lease_until_ms = 0 \
                 WHERE id = $2 AND lease_owner = $3 AND (state = 'PENDING_PAYMENT') IS TRUE"
            ),
        }
    };
}

static SQLITE: Clocked = clocked!(sqlite);
static POSTGRES: Clocked = clocked!(postgres);

/// PostgreSQL's insert of an order: parameters 1 to 9 (id, request id, user, currency, total,
/// state, create and update time, the delay before the reconciler may take it), skipped when
/// its user already used its request id. [`postgres_insert_sql`] adds the lines.
const POSTGRES_INSERT: &str = concat!(
    "INSERT INTO orders (id, request_id, user_id, currency_code, total_minor, state, \
     create_time_ms, update_time_ms, next_attempt_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
    shopmesh::db_now_ms!(postgres),
    " + $9) ON CONFLICT (user_id, request_id) DO NOTHING"
);

/// SQLite's insert of an order with its lines: [`POSTGRES_INSERT`]'s parameters and a tenth, the
/// lines as JSON, which a trigger writes to `order_items` (migration 0004).
const SQLITE_INSERT: &str = concat!(
    "INSERT INTO orders (id, request_id, user_id, currency_code, total_minor, state, \
     create_time_ms, update_time_ms, next_attempt_ms, new_lines) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ",
    shopmesh::db_now_ms!(sqlite),
    " + $9, $10) ON CONFLICT (user_id, request_id) DO NOTHING"
);

/// PostgreSQL's insert of an order with its `lines` lines in one statement: [`POSTGRES_INSERT`]
/// (parameters 1 to 9) and four parameters per line from 10 (line number, SKU, quantity, unit
/// price), the lines written only if the order was.
fn postgres_insert_sql(lines: usize) -> String {
    use std::fmt::Write as _;
    let mut values = String::with_capacity(lines * 24);
    for line in 0..lines {
        let p = 10 + 4 * line;
        let sep = if line == 0 { "" } else { ", " };
        let _ = write!(values, "{sep}(${}, ${}, ${}, ${})", p, p + 1, p + 2, p + 3);
    }
    let insert = POSTGRES_INSERT;
    format!(
        "WITH o AS ({insert} RETURNING id) \
         INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_minor) \
         SELECT o.id, v.line_no, v.sku, v.quantity, v.unit_price_minor \
         FROM o, (VALUES {values}) AS v (line_no, sku, quantity, unit_price_minor)"
    )
}

/// Settles a PENDING_PAYMENT order on SQLite, releasing any claim on it; `new_event` ($6),
/// when set, is written to the outbox by a trigger in the same statement (migration 0005).
///
/// The state is tested as `(state = 'PENDING_PAYMENT') IS TRUE`, which no index can serve,
/// here and in the reconciler's updates of one order. As `state = 'PENDING_PAYMENT'`,
/// PostgreSQL's generic plan found the reconciler's index `orders_due (state, …)` cheaper than
/// the primary key once statistics said few orders are pending (6.06 against 8.43), and
/// walked every pending entry of that index, those of orders settled since the last vacuum
/// too, to find the one order: 126 buffers a settle under load instead of about 25.
const SETTLE: &str = "UPDATE orders SET state = $1, payment_id = $2, decline_reason = $3, update_time_ms = $4, \
     cancel_request_id = $5, lease_owner = NULL, lease_until_ms = 0, new_event = $6 \
     WHERE id = $7 AND (state = 'PENDING_PAYMENT') IS TRUE";

/// Of `events` (event id, order id, fulfilment), those whose ids are `fresh` (recorded in the
/// inbox now): per order, in the order first seen, the fulfilment they leave it; and how many
/// there were.
fn fulfilments_left<'a>(
    events: &'a [(&str, String, Fulfilment)],
    mut fresh: std::collections::HashSet<String>,
) -> (Vec<(&'a str, Fulfilment)>, usize) {
    let mut orders: Vec<(&str, Fulfilment)> = Vec::with_capacity(events.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let mut recorded = 0;
    for (event_id, id, fulfilment) in events {
        // An id given twice is recorded (and counted) once.
        if !fresh.remove(*event_id) {
            continue;
        }
        recorded += 1;
        match seen.entry(id.as_str()) {
            Entry::Occupied(at) => {
                let left = &mut orders[*at.get()].1;
                *left = left.then(*fulfilment);
            }
            Entry::Vacant(at) => {
                at.insert(orders.len());
                orders.push((id, *fulfilment));
            }
        }
    }
    (orders, recorded)
}

/// The update of `orders` orders' fulfilments in one statement, the same on both engines:
/// parameters `(order id, fulfilment)` in pairs, `$1, $2` for the first order. An order
/// RELEASED already keeps it (see [`Fulfilment::then`]).
fn fulfilments_sql(orders: usize) -> String {
    use std::fmt::Write as _;
    let mut cases = String::with_capacity(orders * 20);
    let mut ids = String::with_capacity(orders * 5);
    for order in 0..orders {
        let (id, fulfilment) = (2 * order + 1, 2 * order + 2);
        let _ = write!(cases, " WHEN ${id} THEN ${fulfilment}");
        let _ = write!(ids, "{}${id}", if order == 0 { "" } else { ", " });
    }
    // Parameters appear first in number order (SQLite numbers them as they appear).
    format!(
        "UPDATE orders SET fulfilment = CASE id{cases} END \
         WHERE id IN ({ids}) AND (fulfilment IS NULL OR fulfilment <> 'RELEASED')"
    )
}

/// [`SETTLE`] on PostgreSQL: the same update (parameters 1 to 5, the order 6), and the event's
/// outbox row (parameters 7 to 11: id, type, body, traceparent, time; id NULL for none)
/// written by a data-modifying CTE in the same statement. The trigger's way (JSON parsed by
/// PL/pgSQL) was 7% of PostgreSQL's CPU under load. It answers how many orders it settled.
const POSTGRES_SETTLE: &str = "WITH settled AS (UPDATE orders SET state = $1, payment_id = $2, \
     decline_reason = $3, update_time_ms = $4, cancel_request_id = $5, lease_owner = NULL, \
     lease_until_ms = 0 WHERE id = $6 AND (state = 'PENDING_PAYMENT') IS TRUE RETURNING id), \
     event AS (INSERT INTO outbox (id, event_type, subject, body, traceparent, created_at_ms) \
     SELECT $7, $8, id, $9, $10, $11 FROM settled WHERE $7 IS NOT NULL) \
     SELECT COUNT(*) FROM settled";

/// The inbox name of the order service's consumer of inventory events.
pub const FULFILMENT_CONSUMER: &str = "order-fulfilment";

/// The order service's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Its engine, whose SQL differs where one statement does the work of several.
    backend: Backend,
    /// Its engine's statements that read the database's clock.
    clocked: &'static Clocked,
    /// How long after its insert a PENDING_PAYMENT order becomes due for the reconciler.
    reconcile_after_ms: i64,
    /// The events a state change writes, and the relay's wake-up.
    outbox: Outbox,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A PENDING_PAYMENT order the reconciler may take now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The order.
    pub id: String,
    /// Attempts the reconciler has made on it so far.
    pub attempts: i64,
}

/// The PENDING_PAYMENT orders, for the reconciler's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// How many.
    pub count: i64,
    /// Creation time of the oldest, epoch milliseconds.
    pub oldest_create_time_ms: Option<i64>,
}

impl Store {
    /// A store over a migrated pool, whose new orders the reconciler may take after
    /// `reconcile_after`.
    pub fn new(pool: Pool, reconcile_after: Duration) -> Self {
        let backend = Backend::of_pool(&pool);
        let clocked = match backend {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        };
        let outbox = Outbox::new("order");
        Self { pool, backend, clocked, reconcile_after_ms: millis(reconcile_after), outbox }
    }

    /// The outbox the order's state changes write their events to.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The pool, for the outbox relay.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stores `new` as PENDING_PAYMENT with its lines, all or nothing, in one statement on
    /// either engine. `None` when its user already used its request id
    /// (a concurrent or earlier identical request).
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
            fulfilment: None,
        };
        let mut params = vec![
            (&order.id).into(),
            order.request_id.as_deref().into(),
            (&order.user_id).into(),
            (&order.currency_code).into(),
            order.total_minor.into(),
            order.state.as_str().into(),
            order.create_time_ms.into(),
            order.update_time_ms.into(),
            self.reconcile_after_ms.into(),
        ];
        let inserted = match self.backend {
            // One statement, atomic on its own: no BEGIN and COMMIT round trips.
            Backend::Postgres => {
                for (line_no, item) in (0_i64..).zip(&order.items) {
                    params.extend::<[Param<'_>; 4]>([
                        line_no.into(),
                        (&item.sku).into(),
                        item.quantity.into(),
                        item.unit_price_minor.into(),
                    ]);
                }
                let sql = AssertSqlSafe(postgres_insert_sql(order.items.len()));
                db::bind(sqlx::query(sql), &params)
                    .execute(&mut db::acquire(&self.pool).await?)
                    .await?
                    .rows_affected()
            }
            // One statement too: the lines ride along as JSON and a trigger writes them
            // (migrations/sqlite/0004_lines_with_the_order.sql), so no BEGIN and COMMIT while the
            // write lock is held; committed on this thread unless it cannot be (`Pool::execute`).
            Backend::Sqlite => {
                let lines: Vec<(&str, i64, i64)> =
                    order.items.iter().map(|i| (i.sku.as_str(), i.quantity, i.unit_price_minor)).collect();
                let lines = serde_json::to_string(&lines).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                params.push((&lines).into());
                self.pool.execute(SQLITE_INSERT, &params).await?
            }
        };
        // Nothing at all was written when the order's insert conflicted: an order has lines.
        Ok((inserted > 0).then_some(order))
    }

    /// Records the charge's outcome on a PENDING_PAYMENT order (PAID or PAYMENT_DECLINED, or
    /// CANCELLED under `cancel_request_id` when the charge was refunded since), releasing any
    /// claim on it, and returns the order as stored; an order another call already settled is
    /// left alone.
    pub async fn settle(
        &self,
        order: &Order,
        state: State,
        payment_id: Option<&str>,
        decline_reason: Option<&str>,
        cancel_request_id: Option<&str>,
    ) -> Result<Option<Order>, sqlx::Error> {
        let now = ids::now_ms();
        // A paid order's OrderPaid goes to the outbox with the state change, in one statement.
        let event = (state == State::Paid).then(|| events::paid(&self.outbox, order));
        // Parameters 1 to 5 of either engine's statement.
        let [p1, p2, p3, p4, p5]: [Param<'_>; 5] = [
            state.as_str().into(),
            payment_id.into(),
            decline_reason.into(),
            now.into(),
            cancel_request_id.into(),
        ];
        let changed = match self.backend {
            Backend::Postgres => {
                let body = event.as_ref().map(Outbox::stored_body);
                let params = [
                    p1,
                    p2,
                    p3,
                    p4,
                    p5,
                    (&order.id).into(),
                    event.as_ref().map(|e| e.id.as_str()).into(),
                    event.as_ref().map(|e| e.event_type.as_str()).into(),
                    body.as_deref().into(),
                    event.as_ref().and_then(|e| e.traceparent.as_deref()).into(),
                    event.as_ref().map_or(0, |e| e.time_ms).into(),
                ];
                let row = db::bind(sqlx::query(POSTGRES_SETTLE), &params)
                    .fetch_one(&mut db::acquire(&self.pool).await?)
                    .await?;
                u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0)
            }
            // Committed on this thread unless it cannot be (`Pool::execute`).
            Backend::Sqlite => {
                let new_event = event.as_ref().map(Outbox::json);
                let params = [p1, p2, p3, p4, p5, new_event.as_deref().into(), (&order.id).into()];
                self.pool.execute(SETTLE, &params).await?
            }
        };
        if changed == 1 && event.is_some() {
            self.outbox.wake();
        }
        // The changed row is `order` with what was just set: nothing else of an order ever
        // changes, its lines included, so it need not be read back.
        let settled = (changed == 1).then(|| Order {
            state,
            payment_id: payment_id.map(str::to_owned),
            decline_reason: decline_reason.map(str::to_owned),
            cancel_request_id: cancel_request_id.map(str::to_owned),
            update_time_ms: now,
            ..order.clone()
        });
        match settled {
            Some(order) => Ok(Some(order)),
            // Settled (or gone) meanwhile: the stored order decides.
            None => self.get(&order.id).await,
        }
    }

    /// Up to `limit` PENDING_PAYMENT orders that are due `ahead` from now by the database's
    /// clock and not claimed by a lease live then, longest-waiting first.
    pub async fn due(&self, ahead: Duration, limit: u32) -> Result<Vec<Due>, sqlx::Error> {
        let rows = sqlx::query(self.clocked.due)
            .bind(millis(ahead))
            .bind(i64::from(limit))
            .fetch_all(&mut db::acquire(&self.pool).await?)
            .await?;
        rows.iter()
            .map(|row| Ok(Due { id: row.try_get("id")?, attempts: row.try_get("reconcile_attempts")? }))
            .collect()
    }

    /// Claims a due order for `owner` for `lease` by the database's clock: a compare-and-set on
    /// the row, so of several replicas racing for it exactly one gets `true` (on SQLite and
    /// PostgreSQL alike, without `SKIP LOCKED`), and a replica's skewed clock neither steals a
    /// live lease nor holds one too long.
    pub async fn claim(&self, due: &Due, owner: &str, lease: Duration) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(self.clocked.claim)
            .bind(owner)
            .bind(millis(lease))
            .bind(&due.id)
            .bind(due.attempts)
            .execute(&mut db::acquire(&self.pool).await?)
            .await?
            .rows_affected();
        Ok(claimed == 1)
    }

    /// Records a failed attempt by `owner` on a still-pending order: one more attempt, due
    /// again `wait` from now by the database's clock, claim released. `false` if `owner` no
    /// longer held it.
    pub async fn defer(&self, id: &str, owner: &str, wait: Duration) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(self.clocked.defer)
            .bind(millis(wait))
            .bind(id)
            .bind(owner)
            .execute(&mut db::acquire(&self.pool).await?)
            .await?
            .rows_affected();
        Ok(updated == 1)
    }

    /// Up to `limit` PAID orders with an id after `after`, in id order, with their payment:
    /// one step of the audit's sweep.
    pub async fn paid_after(&self, after: &str, limit: u32) -> Result<Vec<(String, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, payment_id FROM orders WHERE state = 'PAID' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut db::acquire(&self.pool).await?)
        .await?;
        rows.iter()
            .map(|row| {
                let payment: Option<String> = row.try_get("payment_id")?;
                Ok((row.try_get("id")?, payment.unwrap_or_default()))
            })
            .collect()
    }

    /// How many orders are PENDING_PAYMENT, and since when.
    pub async fn pending(&self) -> Result<Pending, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(create_time_ms) AS oldest FROM orders WHERE state = 'PENDING_PAYMENT'",
        )
        .fetch_one(&mut db::acquire(&self.pool).await?)
        .await?;
        Ok(Pending { count: row.try_get("n")?, oldest_create_time_ms: row.try_get("oldest")? })
    }

    /// Cancels `order`, PAID or PAYMENT_DECLINED, under `request_id`, writing its
    /// OrderCancelled to the outbox in the same statement; `false` if it was in another state
    /// by then.
    pub async fn cancel(&self, order: &Order, request_id: Option<&str>) -> Result<bool, sqlx::Error> {
        if !matches!(order.state, State::Paid | State::PaymentDeclined) {
            return Ok(false);
        }
        let event = events::cancelled(&self.outbox, order);
        let updated = sqlx::query(
            "UPDATE orders SET state = 'CANCELLED', cancel_request_id = $1, update_time_ms = $2, new_event = $3 \
             WHERE id = $4 AND state = $5",
        )
        .bind(request_id)
        .bind(ids::now_ms())
        .bind(&event)
        .bind(&order.id)
        .bind(order.state.as_str())
        .execute(&mut db::acquire(&self.pool).await?)
        .await?
        .rows_affected();
        if updated == 1 {
            self.outbox.wake();
        }
        Ok(updated == 1)
    }

    /// Records what the inventory did with orders, once per inventory event: each `(event id,
    /// order id, fulfilment)`, in order, all in one transaction with the events' inbox rows and
    /// one update for the batch, which leaves each order what recording the events one at a
    /// time would ([`Fulfilment::then`]: RELEASED is final). How many events were new.
    pub async fn record_fulfilments(
        &self,
        events: &[(&str, String, Fulfilment)],
    ) -> Result<usize, sqlx::Error> {
        let ids: Vec<&str> = events.iter().map(|(event_id, ..)| *event_id).collect();
        // On a SQLite file, on this thread: sqlx's four hops (BEGIN, the inbox, the update,
        // COMMIT) held the file's write lock across three thread wake-ups, and every CreateOrder
        // write meanwhile found it locked.
        let here = self.pool.transaction_now("record fulfilments", |conn| {
            let fresh = inbox::first_times_now(conn, FULFILMENT_CONSUMER, &ids)?;
            let (orders, recorded) = fulfilments_left(events, fresh);
            if !orders.is_empty() {
                let mut update = conn.prepare(&fulfilments_sql(orders.len()))?;
                for (i, (id, fulfilment)) in orders.iter().enumerate() {
                    update.raw_bind_parameter(2 * i + 1, *id)?;
                    update.raw_bind_parameter(2 * i + 2, fulfilment.as_str())?;
                }
                update.raw_execute()?;
            }
            Ok(recorded)
        });
        if let Some(recorded) = here.await {
            return Ok(recorded);
        }
        let mut tx = db::begin(&self.pool).await?;
        let fresh = inbox::first_times(&mut tx, FULFILMENT_CONSUMER, &ids).await?;
        let (orders, recorded) = fulfilments_left(events, fresh);
        if !orders.is_empty() {
            let mut query = sqlx::query(AssertSqlSafe(fulfilments_sql(orders.len()))).persistent(false);
            for (id, fulfilment) in &orders {
                query = query.bind(*id).bind(fulfilment.as_str());
            }
            query.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// The order with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, sqlx::Error> {
        let sql = format!("{SELECT} WHERE o.id = $1 ORDER BY i.line_no");
        let rows =
            db::read_found(&self.pool, 1, || sqlx::query(AssertSqlSafe(sql.as_str())).bind(id)).await?;
        Ok(group(&rows)?.pop())
    }

    /// The order `user_id` created with `request_id` (a key is its user's, not global).
    pub async fn by_request_id(&self, user_id: &str, request_id: &str) -> Result<Option<Order>, sqlx::Error> {
        let sql =
            AssertSqlSafe(format!("{SELECT} WHERE o.user_id = $1 AND o.request_id = $2 ORDER BY i.line_no"));
        let rows = sqlx::query(sql)
            .bind(user_id)
            .bind(request_id)
            .fetch_all(&mut db::acquire(&self.pool).await?)
            .await?;
        Ok(group(&rows)?.pop())
    }

    /// Up to `limit` orders of `user_id` after id `after`, oldest first.
    pub async fn list_by_user(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Order>, sqlx::Error> {
        let sql = format!(
            "{SELECT} WHERE o.id IN (SELECT id FROM orders WHERE user_id = $1 AND id > $2 \
             ORDER BY id LIMIT $3) ORDER BY o.id, i.line_no"
        );
        let rows = db::read_all(&self.pool, || {
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(user_id)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
        })
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
            _ => orders.push(order_from_row(row, vec![item])?),
        }
    }
    Ok(orders)
}

/// The order in `row` (the order columns of [`SELECT`]), with `items`.
fn order_from_row(row: &AnyRow, items: Vec<LineItem>) -> Result<Order, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(Order {
        id: row.try_get("id")?,
        request_id: row.try_get("request_id")?,
        user_id: row.try_get("user_id")?,
        items,
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
        fulfilment: row.try_get::<Option<String>, _>("fulfilment")?.as_deref().and_then(Fulfilment::parse),
    })
}

#[cfg(test)]
mod tests {
    use shopmesh::mesh::service::MeshService as _;
    use shopmesh::mesh::testing;

    use super::*;
    use crate::domain::{LineItem, NewOrder};

    fn new_order(request_id: &str, quantities: &[i64]) -> NewOrder {
        let items: Vec<LineItem> = (0..)
            .zip(quantities)
            .map(|(i, &quantity)| LineItem { sku: format!("SKU-{i}"), quantity, unit_price_minor: 100 + i })
            .collect();
        let total_minor = items.iter().map(|i| i.quantity * i.unit_price_minor).sum::<i64>().max(1);
        NewOrder {
            user_id: "u1".into(),
            items,
            currency_code: "EUR".into(),
            total_minor,
            request_id: Some(request_id.into()),
        }
    }

    async fn count(pool: &Pool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&**pool).await.expect("count")
    }

    /// One statement stores the order and its lines on either engine (a trigger writes the
    /// lines on SQLite): all of them, in line order, or nothing at all.
    #[tokio::test]
    async fn an_order_and_its_lines_are_stored_together_or_not_at_all() {
        for backend in testing::backends() {
            let db = testing::database(backend, "order_store").await;
            let pool =
                db::open(&db.url, &testing::mesh_config(), crate::Order::MIGRATIONS).await.expect("open");
            let store = Store::new(pool.clone(), Duration::from_secs(60));

            let order = store.insert(&new_order("r1", &[2, 1, 5])).await.expect("insert").expect("new");
            let stored = store.get(&order.id).await.expect("get").expect("stored");
            assert_eq!(stored.items, order.items, "{backend:?}");
            assert_eq!(stored.items.len(), 3, "{backend:?}");

            // The request id again: skipped by ON CONFLICT, and no lines either.
            assert!(store.insert(&new_order("r1", &[7])).await.expect("insert").is_none(), "{backend:?}");
            // A line the schema refuses (quantity 0) undoes its order as well.
            assert!(store.insert(&new_order("r2", &[1, 0])).await.is_err(), "{backend:?}");

            assert_eq!(count(&pool, "SELECT COUNT(*) FROM orders").await, 1, "{backend:?}");
            assert_eq!(count(&pool, "SELECT COUNT(*) FROM order_items").await, 3, "{backend:?}");
            if backend == testing::Backend::Sqlite {
                let left = count(&pool, "SELECT COUNT(*) FROM orders WHERE new_lines IS NOT NULL").await;
                assert_eq!(left, 0, "the trigger clears the lines it wrote");
            }
            pool.close().await;
            db.drop_database().await;
        }
    }

    /// Settling answers the order exactly as stored, whichever way the write went: on SQLite
    /// on the calling thread, or through sqlx when the write lock is taken (held here by
    /// another connection for a moment), and on PostgreSQL. An order settled already is left
    /// alone and answered as stored.
    #[tokio::test]
    async fn settling_answers_the_order_as_stored_whichever_way_it_is_written() {
        for backend in testing::backends() {
            let db = testing::database(backend, "order_settle").await;
            let pool =
                db::open(&db.url, &testing::mesh_config(), crate::Order::MIGRATIONS).await.expect("open");
            let store = Store::new(pool.clone(), Duration::from_secs(60));

            let paid = store.insert(&new_order("r1", &[2])).await.expect("insert").expect("new");
            let settled = store.settle(&paid, State::Paid, Some("pay-1"), None, None).await.expect("settle");
            let settled = settled.expect("settled");
            assert_eq!(settled.state, State::Paid, "{backend:?}");
            assert_eq!(Some(&settled), store.get(&paid.id).await.expect("get").as_ref(), "{backend:?}");

            // Settled already: left alone, and the stored order is the answer.
            let again = store.settle(&paid, State::PaymentDeclined, None, Some("declined"), None).await;
            assert_eq!(again.expect("settle").as_ref(), Some(&settled), "{backend:?}");

            if backend == testing::Backend::Sqlite {
                let declined = store.insert(&new_order("r2", &[1])).await.expect("insert").expect("new");
                let path = db.url.trim_start_matches("sqlite://").to_owned();
                let holder = db::rusqlite::Connection::open(&path).expect("opens");
                holder.execute_batch("BEGIN IMMEDIATE").expect("takes the write lock");
                let release = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    holder.execute_batch("COMMIT").expect("releases the write lock");
                });
                // Handed to sqlx, which waits out the lock.
                let started = std::time::Instant::now();
                let settled = store
                    .settle(&declined, State::PaymentDeclined, None, Some("amount_over_limit"), None)
                    .await
                    .expect("settle")
                    .expect("settled");
                release.join().expect("holder");
                assert!(started.elapsed() >= Duration::from_millis(150), "written while the lock was held");
                assert_eq!(settled.decline_reason.as_deref(), Some("amount_over_limit"));
                assert_eq!(Some(&settled), store.get(&declined.id).await.expect("get").as_ref());
            }
            pool.close().await;
            db.drop_database().await;
        }
    }

    /// One batch of inventory events leaves each order the fulfilment that recording them one
    /// at a time would (RELEASED final, the newer otherwise), once per event id, and nothing
    /// for an order that does not exist.
    #[tokio::test]
    async fn a_batch_of_fulfilments_leaves_each_order_what_one_at_a_time_would() {
        use Fulfilment::{Allocated, Backordered, Released};
        for backend in testing::backends() {
            let db = testing::database(backend, "order_fulfilments").await;
            let pool =
                db::open(&db.url, &testing::mesh_config(), crate::Order::MIGRATIONS).await.expect("open");
            let store = Store::new(pool.clone(), Duration::from_secs(60));
            let mut ids = Vec::new();
            for request in ["r1", "r2", "r3", "r4"] {
                ids.push(store.insert(&new_order(request, &[1])).await.expect("insert").expect("new").id);
            }
            let [o1, o2, o3, o4] = [0, 1, 2, 3].map(|i| ids[i].clone());
            let batch = [
                ("e1", o1.clone(), Allocated),
                ("e2", o1.clone(), Released),
                ("e3", o2.clone(), Released),
                ("e4", o2.clone(), Allocated),
                ("e5", o3.clone(), Backordered),
                ("e5", o3.clone(), Allocated),
                ("e6", "no-such-order".to_owned(), Allocated),
                ("e7", o4.clone(), Allocated),
            ];
            let before = pool.sqlite_writes();
            assert_eq!(store.record_fulfilments(&batch).await.expect("record"), 7, "{backend:?}");
            // Delivered again, with a late allocation of o1 and o4's release: the repeats change nothing.
            let mut again = batch.to_vec();
            again.extend([("e8", o1.clone(), Allocated), ("e9", o4.clone(), Released)]);
            assert_eq!(store.record_fulfilments(&again).await.expect("again"), 2, "{backend:?}");
            // On a SQLite file both batches were committed on this thread, none left to sqlx.
            if let (Some(before), Some(after)) = (before, pool.sqlite_writes()) {
                assert_eq!(after.committed - before.committed, 2, "{before:?} {after:?}");
                assert_eq!(after.handed_back, before.handed_back, "{before:?} {after:?}");
            } else {
                assert_eq!(backend, testing::Backend::Postgres, "a SQLite file has a writer");
            }
            let left: Vec<Option<Fulfilment>> = {
                let mut left = Vec::new();
                for id in [&o1, &o2, &o3, &o4] {
                    left.push(store.get(id).await.expect("get").expect("order").fulfilment);
                }
                left
            };
            assert_eq!(
                left,
                [Some(Released), Some(Released), Some(Backordered), Some(Released)],
                "{backend:?}"
            );
            pool.close().await;
            db.drop_database().await;
        }
    }

    /// A new order database on `backend` holding 20 000 orders, analyzed: PAID, but every
    /// `pending_every`-th PENDING_PAYMENT (above 20 000: none).
    async fn twenty_thousand_orders(
        backend: testing::Backend,
        label: &str,
        pending_every: i64,
    ) -> (testing::TestDb, Pool) {
        let db = testing::database(backend, label).await;
        let pool = db::open(&db.url, &testing::mesh_config(), crate::Order::MIGRATIONS).await.expect("open");
        sqlx::query(
            "WITH RECURSIVE g (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) \
             INSERT INTO orders (id, user_id, currency_code, total_minor, state, create_time_ms, update_time_ms) \
             SELECT 'o' || n, 'u' || (n % 100), 'EUR', 100, \
                    CASE WHEN n % $1 = 0 THEN 'PENDING_PAYMENT' ELSE 'PAID' END, n, n \
             FROM g",
        )
        .bind(pending_every)
        .execute(&*pool)
        .await
        .expect("orders");
        sqlx::query("ANALYZE orders").execute(&*pool).await.expect("analyze");
        (db, pool)
    }

    /// PostgreSQL's generic plan of the settle (sqlx's statements are prepared) finds the order
    /// by its primary key, not by walking the reconciler's index of pending orders, when
    /// statistics say none is pending (as ANALYZE finds them under load, where an order is
    /// pending for milliseconds); so do the reconciler's updates of one order.
    #[tokio::test]
    async fn one_order_s_updates_find_it_by_its_primary_key() {
        if !testing::backends().contains(&testing::Backend::Postgres) {
            return;
        }
        let (db, pool) =
            twenty_thousand_orders(testing::Backend::Postgres, "order_settle_plan", 20_001).await;
        let mut conn = pool.acquire().await.expect("connection");
        sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await.expect("generic");
        let statements = [
            (
                "settle",
                "text, text, text, bigint, text, text, text, text, text, text, bigint",
                POSTGRES_SETTLE,
                "'PAID', 'p', NULL, 1, NULL, 'o1000', 'e1', 't', 'b', NULL, 1",
            ),
            ("claim", "text, bigint, text, bigint", POSTGRES.claim, "'me', 1000, 'o1000', 0"),
            ("defer", "bigint, text, text", POSTGRES.defer, "1000, 'o1000', 'me'"),
        ];
        for (name, types, sql, args) in statements {
            let prepare = format!("PREPARE {name} ({types}) AS {sql}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.expect("prepare");
            let explain = format!("EXPLAIN EXECUTE {name} ({args})");
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
            let plan = plan.join("\n");
            assert!(plan.contains("Index Scan using orders_pkey"), "{name}:\n{plan}");
        }
        drop(conn);
        pool.close().await;
        db.drop_database().await;
    }

    /// The reconciler's index holds the pending orders only (migration 0008), on both engines:
    /// twenty thousand orders of which ten are pending leave it a page or two, where the index
    /// of every order's state was a third of the table on SQLite and a fourteenth on
    /// PostgreSQL; and the reconciler's query finds the ten, on PostgreSQL through the index
    /// even when planned generically.
    #[tokio::test]
    async fn the_reconciler_s_index_holds_only_pending_orders() {
        for backend in testing::backends() {
            let (db, pool) = twenty_thousand_orders(backend, "order_due_index", 2000).await;
            let sizes = match backend {
                testing::Backend::Sqlite => {
                    "SELECT (SELECT SUM(pgsize) FROM dbstat WHERE name = 'orders_due'), \
                     (SELECT SUM(pgsize) FROM dbstat WHERE name = 'orders')"
                }
                testing::Backend::Postgres => {
                    "SELECT pg_relation_size('orders_due'), pg_relation_size('orders')"
                }
            };
            let (due, table): (i64, i64) = sqlx::query_as(sizes).fetch_one(&*pool).await.expect("sizes");
            assert!(due * 40 < table, "{backend:?}: orders_due is {due} bytes, the table {table}");

            let clocked = match backend {
                testing::Backend::Sqlite => &SQLITE,
                testing::Backend::Postgres => &POSTGRES,
            };
            let due: Vec<(String, i64)> = sqlx::query_as(clocked.due)
                .bind(1_000_000_i64)
                .bind(100_i64)
                .fetch_all(&*pool)
                .await
                .expect("due");
            assert_eq!(due.len(), 10, "{backend:?}: the ten pending orders, and no PAID one: {due:?}");

            if backend == testing::Backend::Postgres {
                let mut conn = pool.acquire().await.expect("connection");
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(&mut *conn)
                    .await
                    .expect("generic");
                let prepare = format!("PREPARE due (bigint, bigint) AS {}", POSTGRES.due);
                sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.expect("prepare");
                let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE due (0, 100)")
                    .fetch_all(&mut *conn)
                    .await
                    .expect("explain");
                let plan = plan.join("\n");
                assert!(plan.contains("Index Scan using orders_due"), "{plan}");
            }
            pool.close().await;
            db.drop_database().await;
        }
    }
}
