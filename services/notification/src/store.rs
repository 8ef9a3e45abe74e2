//! Every SQL statement of the notification service, portable across SQLite and PostgreSQL.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::events::inbox;
use shopmesh::mesh::ids;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row as _};

use crate::domain::{Filter, Kind, Notification};

const COLUMNS: &str = "id, user_id, order_id, kind, body, provider_message_id, send_time_ms";

/// The insert of `rows` notifications (7 parameters each, in [`COLUMNS`]'s order) that skips
/// a second one of an order and kind, within the statement too.
fn insert_sql(rows: usize) -> String {
    let values = db::values(rows, 7);
    format!("INSERT INTO notifications ({COLUMNS}) VALUES {values} ON CONFLICT (order_id, kind) DO NOTHING")
}

/// The notification service's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

fn notification(row: &AnyRow) -> Result<Notification, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    Ok(Notification {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        order_id: row.try_get("order_id")?,
        kind: Kind::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "kind".into(),
            source: format!("unknown notification kind {kind:?}").into(),
        })?,
        body: row.try_get("body")?,
        provider_message_id: row.try_get("provider_message_id")?,
        send_time_ms: row.try_get("send_time_ms")?,
    })
}

impl Store {
    /// A store over a migrated pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The pool (the simulated provider keeps its ledger there too).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Records the notifications sent for events `(event id, notification)` of `consumer`,
    /// with the events' inbox rows, in one transaction of two statements: how many were
    /// recorded now (not an event recorded already, nor a second notification of an order and
    /// kind).
    pub async fn record(&self, consumer: &str, sent: &[(&str, &Notification)]) -> Result<usize, sqlx::Error> {
        let mut tx = db::begin(&self.pool).await?;
        let ids: Vec<&str> = sent.iter().map(|(event_id, _)| *event_id).collect();
        let mut fresh = inbox::first_times(&mut tx, consumer, &ids).await?;
        let new: Vec<&Notification> =
            sent.iter().filter(|(event_id, _)| fresh.remove(*event_id)).map(|(_, n)| *n).collect();
        let mut recorded = 0;
        // Chunks keep a statement's parameters within both engines' limits.
        for chunk in new.chunks(db::rows_per_statement(7)) {
            let sql = AssertSqlSafe(insert_sql(chunk.len()));
            // Its text depends on the batch's size: not kept as a prepared statement.
            let mut query = sqlx::query(sql).persistent(false);
            for n in chunk {
                query = query
                    .bind(&n.id)
                    .bind(&n.user_id)
                    .bind(&n.order_id)
                    .bind(n.kind.as_str())
                    .bind(&n.body)
                    .bind(&n.provider_message_id)
                    .bind(n.send_time_ms);
            }
            recorded += usize::try_from(query.execute(&mut tx).await?.rows_affected()).unwrap_or(0);
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// The notification `id`.
    pub async fn get(&self, id: &str) -> Result<Option<Notification>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1");
        let row =
            db::read_optional(&self.pool, || sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id)).await?;
        row.as_ref().map(notification).transpose()
    }

    /// Up to `limit` notifications of `filter` after id `after`, oldest first.
    pub async fn list(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notification>, sqlx::Error> {
        let (column, value) = match filter {
            Filter::User(user) => ("user_id", user),
            Filter::Order(order) => ("order_id", order),
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE {column} = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = db::read_all(&self.pool, || {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(value)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
        })
        .await?;
        rows.iter().map(notification).collect()
    }
}

/// A new notification of `kind` to `user_id` about `order_id`, sent as `provider_message_id`.
pub fn new_notification(
    kind: Kind,
    user_id: &str,
    order_id: &str,
    body: String,
    provider_message_id: String,
) -> Notification {
    Notification {
        id: ids::new_id(),
        user_id: user_id.to_owned(),
        order_id: order_id.to_owned(),
        kind,
        body,
        provider_message_id,
        send_time_ms: ids::now_ms(),
    }
}
