//! Every SQL statement of the notification service, portable across SQLite and PostgreSQL.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::events::inbox;
use shopmesh::mesh::ids;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use tracing::Instrument as _;

use crate::domain::{Filter, Kind, Notification};

const COLUMNS: &str = "id, user_id, order_id, kind, body, provider_message_id, send_time_ms";

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

    /// Records the notifications sent for events `(event id, notification, span)` of
    /// `consumer`, with the events' inbox rows, in one transaction, each notification's
    /// statement in its span: how many were recorded now (not an event recorded already, nor
    /// a second notification of an order and kind).
    pub async fn record(
        &self,
        consumer: &str,
        sent: &[(&str, &Notification, tracing::Span)],
    ) -> Result<usize, sqlx::Error> {
        let mut tx = db::begin(&self.pool).await?;
        let ids: Vec<&str> = sent.iter().map(|(event_id, ..)| *event_id).collect();
        let mut fresh = inbox::first_times(&mut tx, consumer, &ids).await?;
        let mut recorded = 0;
        for (event_id, sent, span) in sent {
            if !fresh.remove(*event_id) {
                continue;
            }
            let inserted = sqlx::query(
                "INSERT INTO notifications (id, user_id, order_id, kind, body, provider_message_id, send_time_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id, kind) DO NOTHING",
            )
            .bind(&sent.id)
            .bind(&sent.user_id)
            .bind(&sent.order_id)
            .bind(sent.kind.as_str())
            .bind(&sent.body)
            .bind(&sent.provider_message_id)
            .bind(sent.send_time_ms)
            .execute(&mut tx)
            .instrument(span.clone())
            .await?
            .rows_affected();
            recorded += usize::try_from(inserted).unwrap_or(0);
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
