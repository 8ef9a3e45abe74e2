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

    /// Sends `body` to `recipient` under `key`: the message id, the first send's for a key
    /// seen before.
    pub async fn send(&self, key: &str, recipient: &str, body: &str) -> Result<String, sqlx::Error> {
        let mut conn = db::acquire(&self.ledger).await?;
        sqlx::query(
            "INSERT INTO mail_ledger (idempotency_key, message_id, recipient, body, sent_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(key)
        .bind(format!("msg-{}", ids::new_id()))
        .bind(recipient)
        .bind(body)
        .bind(ids::now_ms())
        .execute(&mut conn)
        .await?;
        sqlx::query_scalar("SELECT message_id FROM mail_ledger WHERE idempotency_key = $1")
            .bind(key)
            .fetch_one(&mut conn)
            .await
    }
}
