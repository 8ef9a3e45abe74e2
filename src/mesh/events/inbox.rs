//! The event ids a consumer has acted on: recorded in the same transaction as the effect, so a
//! redelivered event (at-least-once delivery) finds its id and changes nothing.
//!
//! Every consuming service's migrations create the table:
//! `inbox (consumer TEXT, event_id TEXT, received_at_ms BIGINT, PRIMARY KEY (consumer, event_id))`.

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
