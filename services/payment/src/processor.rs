//! The simulated card processor. Its decline rules are fixed and documented in the proto:
//! a charge above the limit is declined "amount_over_limit", one in a currency it does not
//! accept "currency_not_supported", anything else succeeds.
//!
//! Like a real processor it is keyed by an idempotency key and keeps its own [`Ledger`] of what
//! it did under each key, in a store of its own outside the payment service's database: asking
//! again under a key answers what was done the first time, and moves no money. The payment
//! service sends the caller's request id (scoped to its order) as the key, never an id it
//! generated itself, so a payment row lost with the last commits of payment's database (a
//! restore, a failover to an asynchronous standby) cannot lead to a second charge.

use std::sync::Arc;
use std::time::Duration;

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::ids;
use sqlx::Row as _;
use tokio::sync::OnceCell;

/// What the processor answered to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The money was captured.
    Approved,
    /// Refused, with a machine-readable reason.
    Declined(&'static str),
}

/// The reasons the processor declines for, as stored in its ledger.
const REASONS: [&str; 2] = ["amount_over_limit", "currency_not_supported"];

/// The ledger's one table: what was done under each idempotency key. `order_id` is the
/// merchant's reference, as a real processor keeps one, so charges can be counted per order.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS processor_ledger (
    kind            TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    order_id        TEXT    NOT NULL,
    amount_minor    BIGINT  NOT NULL,
    currency_code   TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    decline_reason  TEXT,
    create_time_ms  BIGINT  NOT NULL,
    PRIMARY KEY (kind, idempotency_key)
)";

/// The processor's own record of charges and refunds, by idempotency key.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: Pool,
    /// Set once its table exists (created on first use, so an unreachable ledger fails calls,
    /// not the start).
    ready: Arc<OnceCell<()>>,
}

/// One entry of the ledger.
struct Entry<'a> {
    kind: &'static str,
    key: &'a str,
    order_id: &'a str,
    amount_minor: i64,
    currency_code: &'a str,
    outcome: &'static str,
    decline_reason: Option<&'static str>,
}

impl Ledger {
    /// A ledger over `pool` (SQLite or PostgreSQL; its table is created on first use).
    pub fn new(pool: Pool) -> Self {
        Self { pool, ready: Arc::new(OnceCell::new()) }
    }

    async fn ready(&self) -> Result<(), sqlx::Error> {
        self.ready
            // Through `db::acquire`, as every statement here, so it works through a pooler too.
            .get_or_try_init(|| async {
                sqlx::query(SCHEMA).execute(&mut db::acquire(&self.pool).await?).await.map(drop)
            })
            .await
            .map(drop)
    }

    /// What was recorded under `kind` and `key`: the outcome and decline reason.
    async fn get(&self, kind: &str, key: &str) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
        self.ready().await?;
        let row = sqlx::query(
            "SELECT outcome, decline_reason FROM processor_ledger WHERE kind = $1 AND idempotency_key = $2",
        )
        .bind(kind)
        .bind(key)
        .fetch_optional(&mut db::acquire(&self.pool).await?)
        .await?;
        row.map(|r| Ok((r.try_get("outcome")?, r.try_get("decline_reason")?))).transpose()
    }

    /// Records `entry` unless its key has an entry already; either way, what is recorded.
    async fn record(&self, entry: &Entry<'_>) -> Result<(String, Option<String>), sqlx::Error> {
        self.ready().await?;
        let now = ids::now_ms();
        let params = [
            entry.kind.into(),
            entry.key.into(),
            entry.order_id.into(),
            entry.amount_minor.into(),
            entry.currency_code.into(),
            entry.outcome.into(),
            entry.decline_reason.into(),
            now.into(),
        ];
        // On SQLite committed on this thread unless it cannot be (`Pool::write_row_now`).
        let recorded =
            match self.pool.write_row_now(RECORD, &params, |row| Ok((row.get(0)?, row.get(1)?))).await {
                Some(recorded) => recorded?,
                None => db::bind(sqlx::query(RECORD), &params)
                    .fetch_optional(&mut db::acquire(&self.pool).await?)
                    .await?
                    .map(|r| Ok::<_, sqlx::Error>((r.try_get("outcome")?, r.try_get("decline_reason")?)))
                    .transpose()?,
            };
        match recorded {
            Some(recorded) => Ok(recorded),
            // An earlier or concurrent call under the same key recorded first: its entry is
            // the answer.
            None => self.get(entry.kind, entry.key).await?.ok_or(sqlx::Error::RowNotFound),
        }
    }
}

/// Records an entry unless its key has one; the entry when it was recorded.
const RECORD: &str = "INSERT INTO processor_ledger (kind, idempotency_key, order_id, amount_minor, currency_code, \
     outcome, decline_reason, create_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (kind, idempotency_key) DO NOTHING RETURNING outcome, decline_reason";

/// The simulated processor's settings and its ledger.
#[derive(Debug, Clone)]
pub struct Processor {
    limit_minor: i64,
    currencies: Vec<String>,
    latency: Duration,
    ledger: Ledger,
}

impl Processor {
    /// A processor declining amounts above `limit_minor` and currencies not in `currencies`,
    /// taking `latency` per call, recording what it does in `ledger`.
    pub fn new(limit_minor: i64, currencies: Vec<String>, latency: Duration, ledger: Ledger) -> Self {
        let currencies = currencies.into_iter().map(|c| c.trim().to_uppercase()).collect();
        Self { limit_minor, currencies, latency, ledger }
    }

    /// Charges `amount_minor` in `currency` for `order_id` under idempotency key `key`, once:
    /// asked again under `key`, it answers what it decided the first time.
    ///
    /// # Errors
    /// The ledger cannot be reached: nothing is known to have happened.
    pub async fn charge(
        &self,
        key: &str,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<Outcome, sqlx::Error> {
        self.wait().await;
        // The decision is a function of the charge, so deciding before looking at the ledger
        // changes nothing; recording it is a no-op under a key that has an entry, whose
        // decision is then the answer. One statement for a new key instead of three.
        let decided = if !self.currencies.iter().any(|c| c == currency) {
            Outcome::Declined("currency_not_supported")
        } else if amount_minor > self.limit_minor {
            Outcome::Declined("amount_over_limit")
        } else {
            Outcome::Approved
        };
        let (recorded, reason) = match decided {
            Outcome::Approved => ("approved", None),
            Outcome::Declined(reason) => ("declined", Some(reason)),
        };
        let entry = Entry {
            kind: "charge",
            key,
            order_id,
            amount_minor,
            currency_code: currency,
            outcome: recorded,
            decline_reason: reason,
        };
        Ok(outcome(&self.ledger.record(&entry).await?))
    }

    /// Returns a captured payment's `amount_minor` in `currency` for `order_id` under
    /// idempotency key `key`, once; the simulation always succeeds.
    ///
    /// # Errors
    /// The ledger cannot be reached: nothing is known to have happened.
    pub async fn refund(
        &self,
        key: &str,
        order_id: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<(), sqlx::Error> {
        self.wait().await;
        // Recorded once: a key with an entry keeps it.
        let entry = Entry {
            kind: "refund",
            key,
            order_id,
            amount_minor,
            currency_code: currency,
            outcome: "refunded",
            decline_reason: None,
        };
        self.ledger.record(&entry).await?;
        Ok(())
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

/// The outcome a ledger entry records.
fn outcome((recorded, reason): &(String, Option<String>)) -> Outcome {
    if recorded == "approved" {
        Outcome::Approved
    } else {
        let reason = reason.as_deref().unwrap_or_default();
        Outcome::Declined(REASONS.into_iter().find(|r| *r == reason).unwrap_or("declined"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A processor over a ledger in a private in-memory SQLite database (one connection, so
    /// every query sees the same database).
    fn processor(limit: i64, currencies: Vec<String>, latency: Duration) -> Processor {
        let mesh = shopmesh::mesh::config::MeshConfig { db_max_connections: Some(1), ..Default::default() };
        let pool = shopmesh::mesh::db::connect("sqlite::memory:", &mesh).expect("in-memory ledger");
        Processor::new(limit, currencies, latency, Ledger::new(pool))
    }

    #[tokio::test]
    async fn decline_rules() {
        let p = processor(1000, vec!["usd".into(), "EUR".into()], Duration::ZERO);
        assert_eq!(p.charge("k1", "o", 1000, "USD").await.expect("charge"), Outcome::Approved);
        assert_eq!(
            p.charge("k2", "o", 1001, "USD").await.expect("charge"),
            Outcome::Declined("amount_over_limit")
        );
        assert_eq!(
            p.charge("k3", "o", 5, "JPY").await.expect("charge"),
            Outcome::Declined("currency_not_supported")
        );
        assert_eq!(p.charge("k4", "o", 5, "EUR").await.expect("charge"), Outcome::Approved);
    }

    #[tokio::test]
    async fn a_key_is_answered_as_the_first_time() {
        let p = processor(1000, vec!["USD".into()], Duration::ZERO);
        assert_eq!(
            p.charge("k", "o", 1001, "USD").await.expect("charge"),
            Outcome::Declined("amount_over_limit")
        );
        assert_eq!(
            p.charge("k", "o", 10, "USD").await.expect("again"),
            Outcome::Declined("amount_over_limit"),
            "the key's first answer"
        );
    }

    // Real time: a paused clock would run out the ledger's pool timeouts while SQLite works.
    #[tokio::test]
    async fn latency_is_applied() {
        let p = processor(1000, vec!["USD".into()], Duration::from_millis(50));
        let start = tokio::time::Instant::now();
        p.charge("k", "o", 1, "USD").await.expect("charge");
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
