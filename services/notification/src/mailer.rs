//! The simulated mail provider: it "sends" a message by writing it to its own ledger, keyed by
//! the caller's idempotency key, and answers a repeated key with the first message's id, as
//! a provider with idempotency keys does. So a notification whose event is delivered again,
//! or whose transaction failed after the send, is never sent twice.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::ids;

/// The provider, over its ledger (the `mail_ledger` table).
#[derive(Debug, Clone)]
pub struct Mailer {
    ledger: Pool,
}

impl Mailer {
    /// A provider keeping its ledger in `ledger`.
    pub fn new(ledger: Pool) -> Self {
        Self { ledger }
    }

    /// Sends messages `(key, recipient, body)` in one request, as providers offer bulk sends:
    /// their message ids, in order, the first one's for a key sent before.
    ///
    /// # Errors
    /// The ledger's.
    pub async fn send(&self, messages: &[(&str, &str, &str)]) -> Result<Vec<String>, sqlx::Error> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // A key given twice is sent once.
        let mut keys: Vec<&str> = Vec::with_capacity(messages.len());
        for (key, _, _) in messages {
            if !keys.contains(key) {
                keys.push(key);
            }
        }
        // $1 is the time; then four per message.
        let rows = (0..keys.len())
            .map(|i| format!("(${}, ${}, ${}, ${}, $1)", 4 * i + 2, 4 * i + 3, 4 * i + 4, 4 * i + 5))
            .collect::<Vec<_>>()
            .join(", ");
        // One statement, its text depending on the batch's size (so not kept prepared): a key
        // sent before keeps its first message (the update changes nothing but lets RETURNING
        // answer with it).
        let insert = format!(
            "INSERT INTO mail_ledger (idempotency_key, message_id, recipient, body, sent_at_ms) VALUES {rows} \
             ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = excluded.idempotency_key \
             RETURNING idempotency_key, message_id"
        );
        let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(insert))
            .persistent(false)
            .bind(ids::now_ms());
        for key in &keys {
            let (_, recipient, body) = messages.iter().find(|(k, ..)| k == key).copied().unwrap_or_default();
            query = query.bind(*key).bind(format!("msg-{}", ids::new_id())).bind(recipient).bind(body);
        }
        let found: std::collections::HashMap<String, String> =
            query.fetch_all(&mut db::acquire(&self.ledger).await?).await?.into_iter().collect();
        messages.iter().map(|(key, ..)| found.get(*key).cloned().ok_or(sqlx::Error::RowNotFound)).collect()
    }
}
