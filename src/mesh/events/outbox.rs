//! The transactional outbox: a producer writes each event as a row of its `outbox` table in
//! the same transaction as the state change it reports, and [`Relay`] publishes the rows.
//!
//! The relay publishes the rows of one subject (one order) in the order they were written: a
//! pass takes, of each subject, only its oldest unpublished row. On PostgreSQL the rows are
//! claimed `FOR UPDATE SKIP LOCKED` for the pass, so several replicas share the work and a row
//! claimed by one is never published out of turn by another (its successors wait, as they are
//! not the oldest unpublished row of their subject). A row is marked published after the
//! broker acknowledged it; a relay that dies in between publishes it again, with the same
//! event id, which JetStream drops within its dedup window and inboxes drop after it.
//!
//! Every producing service's migrations create the table (see the order service's
//! `0005_events.sql`): `outbox (seq, id, event_type, subject, body, traceparent,
//! created_at_ms, published_at_ms)`, the body being the protobuf in base64 (the stores bind
//! text and integers, the same on both engines).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row as _};
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::mesh::db::{self, Backend, Pool};
use crate::mesh::events::{Broker, Event, Stream, trace};
use crate::mesh::ids;

/// Rows published per pass.
const BATCH: i64 = 100;
/// How often the relay looks for rows nobody woke it for (another replica's, a lost wake-up).
const POLL: Duration = Duration::from_millis(500);
/// How often the backlog gauges are refreshed and old published rows deleted.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How long published rows are kept (for inspection) before they are deleted.
const KEEP_PUBLISHED_MS: i64 = 24 * 3600 * 1000;
/// Rows one delete of the housekeeping looks at: the oldest by `seq`, so it costs the same
/// however many rows the table keeps.
const SWEEP: i64 = 5_000;
/// Deletes per housekeeping at most: up to 20 000 rows a second at one housekeeping each
/// [`HOUSEKEEPING`], more than a relay publishes.
const SWEEPS: usize = 20;

const COLUMNS: &str = "seq, id, event_type, subject, body, traceparent, created_at_ms";
/// The oldest unpublished row of each subject: a subject whose older row is unpublished waits.
///
/// The subject's oldest row is looked up with `ORDER BY p.subject, p.seq`, the order of the
/// `(subject, seq)` index of unpublished rows, so that only that index serves it without a
/// sort. Written as `NOT EXISTS (… p.seq < o.seq)`, PostgreSQL's generic plan costed that
/// index and the one of unpublished rows by `seq` alone the same (both "1 row" once analyzed
/// with a small backlog) and took the latter: a scan of every unpublished row for each row
/// claimed, 14 ms a pass of 100 under load.
const NEXT: &str = "FROM outbox o WHERE o.published_at_ms IS NULL AND o.seq = \
     (SELECT p.seq FROM outbox p WHERE p.subject = o.subject AND p.published_at_ms IS NULL \
     ORDER BY p.subject, p.seq LIMIT 1) \
     ORDER BY o.seq LIMIT $1";

/// A producer's outbox: new events for its store to write, and the wake-up of its relay.
#[derive(Debug, Clone)]
pub struct Outbox {
    source: Arc<str>,
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox of service `service` (`ce-source` `shopmesh/<service>`).
    pub fn new(service: &str) -> Self {
        Self { source: format!("shopmesh/{service}").into(), wake: Arc::new(Notify::new()) }
    }

    /// A new event of type `event_type` about `subject`, caused by the current span's work.
    pub fn event(&self, event_type: &str, subject: &str, body: Vec<u8>) -> Event {
        Event {
            id: ids::new_id(),
            source: self.source.to_string(),
            event_type: event_type.to_owned(),
            subject: subject.to_owned(),
            time_ms: ids::now_ms(),
            traceparent: trace::current_traceparent(),
            body: body.into(),
        }
    }

    /// `event` as the JSON object an order's one-statement write hands its trigger
    /// (`new_event`: id, type, body in base64, traceparent, time).
    pub fn json(event: &Event) -> String {
        serde_json::json!({
            "id": event.id,
            "type": event.event_type,
            "body": Self::stored_body(event),
            "traceparent": event.traceparent,
            "time": event.time_ms,
        })
        .to_string()
    }

    /// `event`'s body as the outbox's `body` column stores it (base64), for a producer that
    /// writes its row with its own statement.
    pub fn stored_body(event: &Event) -> String {
        STANDARD.encode(&event.body)
    }

    /// Writes `events` to the outbox through `tx` (the caller's transaction), in their order
    /// (`seq` follows the rows of a multi-row `VALUES` on both engines): one statement per
    /// [`db::rows_per_statement`] events, not one each.
    ///
    /// # Errors
    /// The database's.
    pub async fn append_all(tx: &mut db::Traced<db::Tx>, events: &[Event]) -> Result<(), sqlx::Error> {
        for chunk in events.chunks(db::rows_per_statement(6)) {
            let sql = format!(
                "INSERT INTO outbox (id, event_type, subject, body, traceparent, created_at_ms) VALUES {}",
                db::values(chunk.len(), 6)
            );
            // Its text depends on the batch's size: not kept as a prepared statement.
            let mut query = sqlx::query(AssertSqlSafe(sql)).persistent(false);
            for event in chunk {
                query = query
                    .bind(&event.id)
                    .bind(&event.event_type)
                    .bind(&event.subject)
                    .bind(Self::stored_body(event))
                    .bind(event.traceparent.as_deref())
                    .bind(event.time_ms);
            }
            query.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// Tells the relay that a transaction wrote rows (call it after the commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The relay of this outbox over `pool` to `broker`, whose events go to `stream` (the
    /// `messaging_destination_name` of its metrics).
    pub fn relay(&self, pool: Pool, broker: Broker, stream: Stream) -> Relay {
        Relay { outbox: self.clone(), pool, broker, stream: stream.name }
    }
}

/// Publishes an outbox's rows; see the module docs.
#[derive(Debug)]
pub struct Relay {
    outbox: Outbox,
    pool: Pool,
    broker: Broker,
    stream: &'static str,
}

impl Relay {
    /// Runs until dropped: publishes what there is, then waits for a wake-up or the poll.
    pub async fn run(self) {
        let mut failures = 0_u32;
        let mut housekeeping = Instant::now();
        loop {
            if housekeeping.elapsed() >= HOUSEKEEPING {
                housekeeping = Instant::now();
                if let Err(e) = self.housekeeping().await {
                    tracing::debug!(stream = self.stream, error = %e, "outbox housekeeping failed");
                }
            }
            match self.pass().await {
                Ok((published, true)) => {
                    failures = 0;
                    if published < BATCH {
                        let _ = tokio::time::timeout(POLL, self.outbox.wake.notified()).await;
                    }
                }
                Ok((_, false)) | Err(_) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(100)
                        .saturating_mul(1 << failures.min(6))
                        .min(Duration::from_secs(5));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One pass: the rows published, and whether every row taken was.
    async fn pass(&self) -> Result<(i64, bool), sqlx::Error> {
        match Backend::of_pool(&self.pool) {
            Backend::Postgres => {
                let (mut tx, rows) = claim(&self.pool, BATCH).await?;
                let (seqs, all) = self.publish(&rows).await?;
                mark(&mut tx, &seqs).await?;
                tx.commit().await?;
                Ok((i64::try_from(seqs.len()).unwrap_or(0), all))
            }
            // One process per SQLite file: nobody to share the rows with.
            Backend::Sqlite => {
                let sql = AssertSqlSafe(format!("SELECT {COLUMNS} {NEXT}"));
                let rows =
                    sqlx::query(sql).bind(BATCH).fetch_all(&mut db::acquire(&self.pool).await?).await?;
                let (seqs, all) = self.publish(&rows).await?;
                // On the calling thread when it can be (the producer's own writes compete for
                // the file's lock with this one); through sqlx otherwise.
                if !seqs.is_empty() {
                    let here = self.pool.transaction_now("mark published", |conn| {
                        conn.prepare(&mark_sql(&seqs))?.execute([ids::now_ms()])
                    });
                    if here.await.is_none() {
                        mark(&mut db::acquire(&self.pool).await?, &seqs).await?;
                    }
                }
                Ok((i64::try_from(seqs.len()).unwrap_or(0), all))
            }
        }
    }

    /// Publishes `rows` (of distinct subjects, so at once): the seqs the broker acknowledged,
    /// and whether that was all of them.
    async fn publish(&self, rows: &[AnyRow]) -> Result<(Vec<i64>, bool), sqlx::Error> {
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let body: String = row.try_get("body")?;
            let event = Event {
                id: row.try_get("id")?,
                source: self.outbox.source.to_string(),
                event_type: row.try_get("event_type")?,
                subject: row.try_get("subject")?,
                time_ms: row.try_get("created_at_ms")?,
                traceparent: row.try_get("traceparent")?,
                body: STANDARD.decode(body).map_err(|e| sqlx::Error::Decode(Box::new(e)))?.into(),
            };
            events.push((row.try_get::<i64, _>("seq")?, event));
        }
        let broker = &self.broker;
        let results = futures::future::join_all(events.iter().map(|(_, event)| {
            let span = tracing::info_span!(
                "send",
                otel.name = format!("send {}", event.event_type),
                otel.kind = "producer",
                messaging.system = broker.system(),
                messaging.operation.type = "send",
                messaging.destination.name = event.event_type.as_str(),
                messaging.message.id = event.id.as_str(),
            );
            trace::continue_trace(&span, event.traceparent.as_deref());
            // The message names the PRODUCER span, so each consumer's span is its child.
            let sent = Event {
                traceparent: trace::traceparent_of(&span).or_else(|| event.traceparent.clone()),
                ..event.clone()
            };
            async move { broker.publish(&sent).instrument(span).await }
        }))
        .await;
        let mut seqs = Vec::with_capacity(events.len());
        let mut failed = None;
        for ((seq, _), result) in events.iter().zip(results) {
            match result {
                Ok(()) => seqs.push(*seq),
                Err(e) => failed = Some(e),
            }
        }
        metrics::counter!("shopmesh_events_published_total", "messaging_destination_name" => self.stream)
            .increment(seqs.len() as u64);
        if let Some(e) = &failed {
            tracing::warn!(stream = self.stream, error = %e, "events not published; the outbox keeps them");
        }
        Ok((seqs, failed.is_none()))
    }

    /// Refreshes the backlog gauges and deletes rows published long ago.
    async fn housekeeping(&self) -> Result<(), sqlx::Error> {
        let mut conn = db::acquire(&self.pool).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at_ms) AS oldest FROM outbox WHERE published_at_ms IS NULL",
        )
        .fetch_one(&mut conn)
        .await?;
        let backlog: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let age = oldest.map_or(0.0, |t| (ids::now_ms() - t).max(0) as f64 / 1000.0);
        metrics::gauge!("shopmesh_events_outbox_backlog", "messaging_destination_name" => self.stream)
            .set(backlog as f64);
        metrics::gauge!("shopmesh_events_outbox_oldest_age_seconds", "messaging_destination_name" => self.stream).set(age);
        drop(conn);
        delete_published_before(&self.pool, ids::now_ms() - KEEP_PUBLISHED_MS).await?;
        Ok(())
    }
}

/// Deletes the rows published before `cutoff_ms`; how many. Each statement looks at the
/// [`SWEEP`] oldest rows by `seq` only (the primary key): a `published_at_ms` filter over the
/// whole table would read every row kept, 24 h of them, on each housekeeping. Rows are
/// published about in `seq` order, so the oldest are the ones due; one still unpublished, or
/// published late, stays until it is due itself and takes only its own place in each sweep,
/// which moves on past it by what the last one deleted. Stops at a statement that deletes
/// nothing, or after [`SWEEPS`].
///
/// # Errors
/// The database's.
pub async fn delete_published_before(pool: &Pool, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for _ in 0..SWEEPS {
        let n = sqlx::query(SWEEP_SQL)
            .bind(SWEEP)
            .bind(cutoff_ms)
            .execute(&mut db::acquire(pool).await?)
            .await?
            .rows_affected();
        deleted += n;
        if n == 0 {
            break;
        }
    }
    Ok(deleted)
}

/// The housekeeping's delete: of the `$1` oldest rows, those published before `$2` (public so
/// a producer's tests can check its plan reads the primary key, not the table). A range of
/// `seq`, not `seq IN (…)`: PostgreSQL joined an `IN` list to a scan of the whole table.
pub const SWEEP_SQL: &str = "DELETE FROM outbox WHERE seq BETWEEN (SELECT MIN(seq) FROM outbox) \
     AND (SELECT MAX(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT $1) AS oldest) \
     AND published_at_ms < $2";

/// The relay's claim on PostgreSQL: of each subject its oldest unpublished row, up to `$1`
/// rows, locked for the pass (public so a producer's tests can check its plan uses its index).
pub fn claim_sql() -> String {
    format!("SELECT {COLUMNS} {NEXT} FOR UPDATE OF o SKIP LOCKED")
}

/// Set in the claim's transaction, before the claim, in one round trip: no bitmap scan, and a
/// commit that does not wait for the disk.
///
/// The pass's commit only marks rows published, and nothing is answered on it. Lost with a
/// crash before the WAL writer flushed it (within `wal_writer_delay`), its rows are published
/// again with the same event ids, which JetStream drops within its dedup window and the
/// consumers' inboxes drop after it: the relay's rule for a relay that dies between the
/// broker's ack and its commit. Each synchronous commit costs a WAL flush.
///
/// Marking a row published is not a HOT update (the column is in the partial indexes'
/// predicate), so the row's entry stays in the index of unpublished rows, pointing at a dead
/// version, until vacuum removes it. An index scan that meets such an entry marks it dead in the
/// index (`LP_DEAD`), and no later scan reads it again; a bitmap scan never does. PostgreSQL
/// planned the claim as a bitmap scan and a sort while the table had no statistics (a new
/// database's first minute, before autovacuum's first ANALYZE; once analyzed, the plan seen was
/// an index scan), and then every pass read again every row published since the last vacuum:
/// 4 500 index entries and 6 ms a pass seven seconds into a benchmark on a fresh database,
/// 3.8 million entries over its 471 passes. The index scan reads each of them once, whatever
/// the statistics say.
pub const CLAIM_PLAN: &str =
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('synchronous_commit', 'off', true)";

/// A relay's pass on PostgreSQL begins with this: a transaction holding up to `limit` rows
/// claimed (see [`claim_sql`] and [`CLAIM_PLAN`]). Public so a producer's tests can count what
/// a claim reads.
///
/// # Errors
/// The database's.
pub async fn claim(pool: &Pool, limit: i64) -> Result<(db::Traced<db::Tx>, Vec<AnyRow>), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    sqlx::query(CLAIM_PLAN).execute(&mut tx).await?;
    let rows = sqlx::query(AssertSqlSafe(claim_sql())).bind(limit).fetch_all(&mut tx).await?;
    Ok((tx, rows))
}

/// Marks the rows `seqs` published.
async fn mark<'c, E>(executor: E, seqs: &[i64]) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    if seqs.is_empty() {
        return Ok(());
    }
    // A text made for this batch is not kept as a prepared statement: it would push the
    // statements used on every order out of the connection's cache (and cost a round trip to
    // close when evicted).
    sqlx::query(AssertSqlSafe(mark_sql(seqs)))
        .persistent(false)
        .bind(ids::now_ms())
        .execute(executor)
        .await?;
    Ok(())
}

/// The update that marks the rows `seqs` published at `$1`. The seqs are integers read from
/// the table, never input.
fn mark_sql(seqs: &[i64]) -> String {
    let list = seqs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    format!("UPDATE outbox SET published_at_ms = $1 WHERE seq IN ({list})")
}
