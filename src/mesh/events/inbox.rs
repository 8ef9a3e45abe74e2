//! The event ids a consumer has acted on: recorded in the same transaction as the effect, so a
//! redelivered event (at-least-once delivery) finds its id and changes nothing.
//!
//! Every consuming service's migrations create the table:
//! `inbox (consumer TEXT, event_id TEXT, received_at_ms BIGINT, PRIMARY KEY (consumer, event_id))`.
//! A consumer acting on a batch of events in one transaction records their ids in one
//! statement ([`first_times`]).

use crate::mesh::ids;

/// Records `event_id` for `consumer` inside the caller's transaction: `true` the first time,
/// `false` when it was acted on already (then the caller rolls back and acknowledges).
///
/// # Errors
/// The database's.
pub async fn first_time<'c, E>(executor: E, consumer: &str, event_id: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id, received_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(ids::now_ms())
    .execute(executor)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// [`first_time`] for several events in one statement: of `event_ids`, those recorded now
/// (the others were acted on already). An id given twice is recorded once.
///
/// # Errors
/// The database's.
pub async fn first_times<'c, E>(
    executor: E,
    consumer: &str,
    event_ids: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if event_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let now = ids::now_ms();
    // Its text depends on the batch's size: not kept as a prepared statement (see the relay's
    // `mark`).
    let mut query =
        sqlx::query_scalar(sqlx::AssertSqlSafe(first_times_sql(event_ids.len()))).persistent(false);
    for id in event_ids {
        query = query.bind(consumer).bind(*id).bind(now);
    }
    Ok(query.fetch_all(executor).await?.into_iter().collect())
}

/// [`first_times`] inside a transaction on a SQLite connection of the calling thread
/// ([`crate::mesh::db::Pool::transaction_now`]).
///
/// # Errors
/// SQLite's.
pub fn first_times_now(
    conn: &rusqlite::Connection,
    consumer: &str,
    event_ids: &[&str],
) -> rusqlite::Result<std::collections::HashSet<String>> {
    if event_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let now = ids::now_ms();
    let mut statement = conn.prepare(&first_times_sql(event_ids.len()))?;
    for (i, id) in event_ids.iter().enumerate() {
        statement.raw_bind_parameter(3 * i + 1, consumer)?;
        statement.raw_bind_parameter(3 * i + 2, *id)?;
        statement.raw_bind_parameter(3 * i + 3, now)?;
    }
    let mut rows = statement.raw_query();
    let mut fresh = std::collections::HashSet::with_capacity(event_ids.len());
    while let Some(row) = rows.next()? {
        fresh.insert(row.get(0)?);
    }
    Ok(fresh)
}

/// The statement of [`first_times`] for `events` ids.
fn first_times_sql(events: usize) -> String {
    let rows = crate::mesh::db::values(events, 3);
    format!(
        "INSERT INTO inbox (consumer, event_id, received_at_ms) VALUES {rows} \
         ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
    )
}
