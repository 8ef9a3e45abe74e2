//! Single-statement writes on one connection per SQLite file: [`Writer`]. The rules it keeps
//! are in `mod.rs`.
//!
//! The connection sits behind a mutex held for one statement and never across an `.await`:
//! SQLite lets one writer in at a time anyway, so two runtime threads writing the same file
//! take turns here, for the tens of microseconds a statement takes, instead of one of them
//! meeting `SQLITE_BUSY` and going the long way through sqlx. One connection also keeps its
//! page cache: SQLite empties a connection's cache when another connection has written since
//! its last transaction, which with a pool of two happened on nearly every statement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use rusqlite::OpenFlags;

use crate::mesh::db::POOL;

/// Commits between two passive checkpoints of a file written here. An order's insert appends
/// 5-8 pages to the WAL, so 500 commits are about the 4 000 pages at which sqlx's connections
/// checkpoint (`connect`'s `wal_autocheckpoint`).
pub(in crate::mesh::db) const CHECKPOINT_EVERY: u64 = 500;

/// The WAL's length, in pages, from which a checkpoint makes it start over (`checkpoint`):
/// 64 MiB of 4 KiB pages.
pub(in crate::mesh::db) const RESTART_AT_PAGES: i64 = 16_384;

/// Longest backoff between two RESTART attempts that could not finish, in checkpoints:
/// 64 x 500 commits.
const MAX_RESTART_BACKOFF: u64 = 64;

/// The one write connection to a SQLite file, opened on first use.
pub(in crate::mesh::db) struct Writer {
    path: PathBuf,
    conn: Mutex<Option<rusqlite::Connection>>,
    checkpoint_every: u64,
    restart_at_pages: i64,
    commits: AtomicU64,
    /// A checkpoint is running on the blocking pool; no second one is started meanwhile.
    checkpointing: AtomicBool,
    /// No RESTART is tried before this many commits: set after one that could not finish.
    restart_not_before: AtomicU64,
    /// Checkpoints to wait after the next RESTART that cannot finish (doubling).
    restart_backoff: AtomicU64,
    /// The pool's name, labelling this writer's metrics (none until the pool is named).
    name: OnceLock<&'static str>,
    /// Checkpoints that ran to the end, for tests and debugging.
    checkpoints: AtomicU64,
    /// What the checkpoints did, by [`Outcome`], for tests and debugging (as the metrics).
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Writes handed back to sqlx (busy, or failed here), for tests and debugging.
    handed_back: AtomicU64,
    /// Tries that found the file locked ([`NotWritten::Busy`]), for tests and debugging.
    busy: AtomicU64,
}

/// What one checkpoint did (the `outcome` label of `db_sqlite_checkpoints_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::mesh::db) enum Outcome {
    /// The WAL was copied as far as it could be; it is not yet long enough to start over.
    Passive,
    /// Long enough to start over, but a reader's snapshot holds frames the PASSIVE checkpoint
    /// could not copy: a RESTART would wait for that reader, holding writers off, so none ran.
    ReaderHolds,
    /// Long enough, but the last RESTART could not finish: waiting a while before the next.
    BackingOff,
    /// RESTARTed: the next commit writes the WAL from its start (and cuts it to its limit).
    Restarted,
    /// A RESTART met a writer or reader it could not wait out within [`RESTART_WAIT`].
    Busy,
}

impl Outcome {
    const ALL: [Self; 5] = [Self::Passive, Self::ReaderHolds, Self::BackingOff, Self::Restarted, Self::Busy];

    fn label(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::ReaderHolds => "reader_holds",
            Self::BackingOff => "backing_off",
            Self::Restarted => "restarted",
            Self::Busy => "busy",
        }
    }
}

/// What a write committed: the rows it changed (`sqlite3_changes`, as sqlx's `rows_affected`)
/// and its first `RETURNING` row, mapped; a mapping error comes back with the commit, which
/// stands.
#[derive(Debug)]
pub(in crate::mesh::db) struct Written<T> {
    pub rows_affected: u64,
    pub first: Option<rusqlite::Result<T>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("commits", &self.commits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a file is not written here.
type OpenError = Box<dyn std::error::Error + Send + Sync>;

impl Writer {
    /// A writer to `path` that checkpoints every `checkpoint_every` commits and makes the WAL
    /// start over once it is `restart_at_pages` long.
    pub(in crate::mesh::db) fn new(path: PathBuf, checkpoint_every: u64, restart_at_pages: i64) -> Self {
        Self {
            path,
            conn: Mutex::new(None),
            checkpoint_every: checkpoint_every.max(1),
            restart_at_pages,
            commits: AtomicU64::new(0),
            checkpointing: AtomicBool::new(false),
            restart_not_before: AtomicU64::new(0),
            restart_backoff: AtomicU64::new(1),
            name: OnceLock::new(),
            checkpoints: AtomicU64::new(0),
            outcomes: Default::default(),
            handed_back: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Labels this writer's metrics with the pool's name.
    pub(in crate::mesh::db) fn name(&self, name: &'static str) {
        let _ = self.name.set(name);
    }

    /// Counts a write handed back to sqlx: `busy` when the file was locked (a writer through
    /// sqlx, a checkpoint), otherwise anything else (see the module docs).
    pub(in crate::mesh::db) fn count_hand_back(&self, not: NotWritten) {
        self.handed_back.fetch_add(1, Ordering::Relaxed);
        if let Some(pool) = self.name.get() {
            let reason = match not {
                NotWritten::Busy => "busy",
                NotWritten::Other => "other",
            };
            metrics::counter!("db_sqlite_writes_handed_back_total", POOL => *pool, "reason" => reason)
                .increment(1);
        }
    }

    /// Counts a try that found the file locked (it may be tried again).
    fn count_busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        if let Some(pool) = self.name.get() {
            metrics::counter!("db_sqlite_writes_busy_total", POOL => *pool).increment(1);
        }
    }

    /// What this writer has done so far.
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::mesh::db) fn counts(&self) -> crate::mesh::db::SqliteWrites {
        crate::mesh::db::SqliteWrites {
            committed: self.commits.load(Ordering::Relaxed),
            handed_back: self.handed_back.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
        }
    }

    /// How many checkpoints ended with `outcome`.
    #[cfg(test)]
    fn outcomes(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    fn open(&self) -> Result<rusqlite::Connection, OpenError> {
        // Read-write, never create: a file that is not there yet is sqlx's to create.
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::ZERO)?;
        // A rollback-journal commit syncs and shuts readers out: only WAL files are written
        // here (sqlx's connections put every file of the mesh in WAL mode; the mode is kept
        // in the file).
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("journal mode is {mode}, not wal").into());
        }
        // As sqlx's connections (`connect`), except that this one never checkpoints itself.
        // The size limit cuts a WAL that a long reader let grow back to it when the WAL
        // starts over.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
        )?;
        conn.pragma_update(None, "journal_size_limit", self.restart_at_pages.saturating_mul(PAGE_BYTES))?;
        Ok(conn)
    }

    /// Runs `sql` (one INSERT, UPDATE or DELETE, with positional parameters `params`) to its
    /// end and commits it; or says why it was not done here, in which case nothing was written
    /// (see the module docs). Counts nothing but a busy try: the caller may try again
    /// ([`NotWritten::Busy`]) before it hands the write to sqlx and counts it
    /// ([`Writer::count_hand_back`]).
    pub(in crate::mesh::db) fn try_write<T, P: rusqlite::Params>(
        self: &Arc<Self>,
        sql: &str,
        params: P,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Written<T>, NotWritten> {
        self.on_connection(sql, |conn| {
            let first = run(conn, sql, params, map)?;
            Ok(Written { rows_affected: conn.changes(), first })
        })
    }

    /// Runs `work` in one transaction on this thread (`BEGIN IMMEDIATE`, which takes the write
    /// lock or answers busy at once, then `work`, then `COMMIT`): its value once committed, or
    /// why nothing was written (an error in `work` rolls the whole transaction back). Counted as
    /// [`Writer::try_write`] is.
    pub(in crate::mesh::db) fn try_transaction<T>(
        self: &Arc<Self>,
        work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, NotWritten> {
        self.on_connection("a transaction", |conn| {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let value = work(conn)?;
            conn.execute_batch("COMMIT")?;
            Ok(value)
        })
    }

    /// `work` (`what`, for the log) on this file's connection, opened on first use, which it
    /// leaves committed: a transaction `work` leaves open, having failed, is rolled back (and
    /// the connection dropped if that fails too), so nothing of a failed `work` is written.
    fn on_connection<T>(
        self: &Arc<Self>,
        what: &str,
        work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, NotWritten> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            match self.open() {
                Ok(conn) => *slot = Some(conn),
                Err(err) => {
                    tracing::debug!(%err, path = %self.path.display(), "no inline SQLite writer; writing through sqlx");
                    return Err(NotWritten::Other);
                }
            }
        }
        let Some(conn) = slot.as_ref() else { return Err(NotWritten::Other) };
        let outcome = work(conn);
        let committed = conn.is_autocommit();
        if !committed {
            // Not committed (a statement that began a transaction, or a failure that left one
            // open): undo it, and keep the connection only if that worked.
            if let Err(err) = conn.execute_batch("ROLLBACK") {
                tracing::debug!(%err, "inline SQLite writer dropped after a failed rollback");
                *slot = None;
            }
        }
        drop(slot);
        match outcome {
            Ok(value) if committed => {
                self.committed();
                Ok(value)
            }
            Ok(_) => Err(NotWritten::Other),
            Err(err) => {
                let not = NotWritten::of(Some(&err));
                match not {
                    NotWritten::Busy => self.count_busy(),
                    NotWritten::Other => tracing::debug!(%err, what, "inline SQLite write handed to sqlx"),
                }
                Err(not)
            }
        }
    }

    /// Counts a commit, and every `checkpoint_every` commits starts a checkpoint on the
    /// blocking pool (none without a tokio runtime: sqlx's connections then checkpoint at their
    /// next commit).
    fn committed(self: &Arc<Self>) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(self.checkpoint_every) || self.checkpointing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.checkpointing.store(false, Ordering::Release);
            return;
        };
        let writer = Arc::clone(self);
        runtime.spawn_blocking(move || {
            let restart = n >= writer.restart_not_before.load(Ordering::Relaxed);
            match checkpoint(&writer.path, writer.restart_at_pages, restart) {
                Ok(Checkpointed { wal_pages, outcome, held }) => {
                    writer.checkpoints.fetch_add(1, Ordering::Relaxed);
                    writer.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
                    writer.after_restart(n, outcome);
                    if let Some(pool) = writer.name.get() {
                        let label = outcome.label();
                        metrics::counter!("db_sqlite_checkpoints_total", POOL => *pool, "outcome" => label)
                            .increment(1);
                        if let Some(held) = held {
                            metrics::histogram!("db_sqlite_checkpoint_hold_seconds", POOL => *pool, "outcome" => label)
                                .record(held.as_secs_f64());
                        }
                    }
                    tracing::debug!(wal_pages, outcome = outcome.label(), ?held, path = %writer.path.display(), "checkpoint");
                }
                Err(err) => tracing::debug!(%err, path = %writer.path.display(), "checkpoint failed; the next one retries"),
            }
            writer.checkpointing.store(false, Ordering::Release);
        });
    }

    /// After a RESTART attempt at commit `n`: one that finished resets the backoff; one that
    /// could not puts the next attempt off by the backoff (in checkpoints), then doubles it.
    fn after_restart(&self, n: u64, outcome: Outcome) {
        match outcome {
            Outcome::Restarted => self.restart_backoff.store(1, Ordering::Relaxed),
            Outcome::Busy => {
                let backoff = self.restart_backoff.load(Ordering::Relaxed);
                self.restart_not_before.store(n + backoff * self.checkpoint_every, Ordering::Relaxed);
                self.restart_backoff.store((backoff * 2).min(MAX_RESTART_BACKOFF), Ordering::Relaxed);
            }
            Outcome::Passive | Outcome::ReaderHolds | Outcome::BackingOff => {}
        }
    }
}

/// Why a write was not done on the calling thread; nothing was written either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::mesh::db) enum NotWritten {
    /// SQLite's "locked": another connection (a writer through sqlx, a checkpoint) holds what
    /// the write needed, and trying again once it lets go may succeed.
    Busy,
    /// Anything else: no file yet, a statement that does not fit the schema, a constraint.
    /// sqlx reports it.
    Other,
}

impl NotWritten {
    fn of(err: Option<&rusqlite::Error>) -> Self {
        match err.and_then(rusqlite::Error::sqlite_error_code) {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => Self::Busy,
            _ => Self::Other,
        }
    }
}

/// The page size the WAL's length limit is computed with (SQLite's default).
const PAGE_BYTES: i64 = 4096;

/// Longest a RESTART checkpoint waits for the write lock and for readers of the WAL: writers
/// are held off meanwhile, so only a moment. One that cannot finish in it is tried again later
/// (`after_restart`).
const RESTART_WAIT: Duration = Duration::from_millis(10);

/// What a checkpoint did: how long the WAL was (in pages), what came of it, and how long a
/// RESTART held writers off, when one was tried.
struct Checkpointed {
    wal_pages: i64,
    outcome: Outcome,
    held: Option<Duration>,
}

/// Checkpoints `path` on a connection of its own: a PASSIVE checkpoint, then, when the WAL has
/// grown to `restart_at_pages`, `restart` allows it and the PASSIVE one copied every frame, a
/// RESTART one.
///
/// A PASSIVE checkpoint copies the WAL into the database file beside the writers, never
/// stopping them, but they append behind it as fast as it copies: the WAL comes back to its
/// start only when a commit finds it copied whole, which under steady load it never is (a
/// gigabyte of WAL in a ten-second benchmark). A RESTART checkpoint takes the write lock, so
/// it finishes, and waits until no reader uses the WAL, so the next commit writes it from its
/// start; meanwhile the writer here meets `SQLITE_BUSY` and hands its statements to sqlx,
/// whose worker threads wait for the lock (the runtime's threads never do). RESTARTing at
/// every checkpoint held the writers off 13 ms (median) eight times a second per file under
/// CreateOrder load, and cost a third of its throughput; after a PASSIVE one, a RESTART has
/// only the frames of the last milliseconds left to copy.
///
/// A reader's open transaction keeps the frames after its snapshot from being copied, and a
/// RESTART waits for it: with a 1 s wait, retried every 500 commits while such a reader lasted,
/// writers were held off most of the time (CreateOrder fell from 1 392/s to 317/s). So a
/// RESTART is tried only when the PASSIVE checkpoint copied every frame (no reader holds an
/// older snapshot; a reader that began after that reads the database file, not the WAL), waits
/// [`RESTART_WAIT`] at most, and after one that could not finish the next waits longer.
fn checkpoint(
    path: &std::path::Path,
    restart_at_pages: i64,
    restart: bool,
) -> rusqlite::Result<Checkpointed> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // (finished, frames in the WAL, frames copied into the database file)
    let run = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get::<_, i64>(0)? == 0, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
        })
    };
    let (_, wal_pages, copied) = run("PASSIVE")?;
    let outcome = |outcome| Ok(Checkpointed { wal_pages, outcome, held: None });
    if wal_pages < restart_at_pages {
        return outcome(Outcome::Passive);
    }
    if copied < wal_pages {
        return outcome(Outcome::ReaderHolds);
    }
    if !restart {
        return outcome(Outcome::BackingOff);
    }
    conn.busy_timeout(RESTART_WAIT)?;
    let started = std::time::Instant::now();
    let (restarted, _, _) = run("RESTART")?;
    let held = Some(started.elapsed());
    let outcome = if restarted { Outcome::Restarted } else { Outcome::Busy };
    Ok(Checkpointed { wal_pages, outcome, held })
}

/// `sql` stepped to its end: its first row mapped, if it returns rows.
fn run<T, P: rusqlite::Params>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: P,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<rusqlite::Result<T>>> {
    let mut statement = conn.prepare_cached(sql)?;
    debug_assert!(super::positional(&statement), "{sql}: parameters must appear as $1, $2 ... in order");
    let mut rows = statement.query(params)?;
    let first = rows.next()?.map(map);
    // A RETURNING statement commits on the step that ends it: an error there is a write that
    // did not happen.
    while rows.next()?.is_some() {}
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        let setup = rusqlite::Connection::open(&path).expect("opens");
        setup
            .execute_batch(
                "PRAGMA journal_mode = WAL; \
                 CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0));",
            )
            .expect("creates");
        (dir, path, setup)
    }

    fn writer(path: &std::path::Path) -> Arc<Writer> {
        Arc::new(Writer::new(path.to_owned(), CHECKPOINT_EVERY, RESTART_AT_PAGES))
    }

    const INSERT: &str = "INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
    const SET: &str = "UPDATE t SET n = $1 WHERE id = $2 RETURNING n";

    fn count(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("counts")
    }

    fn no_row(_: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        Ok(())
    }

    #[test]
    fn writes_commit_and_count_the_rows_they_changed() {
        let (_dir, path, other) = database();
        let writer = writer(&path);
        let written = writer.try_write(INSERT, rusqlite::params!["a", 1], no_row).expect("written here");
        assert_eq!(written.rows_affected, 1);
        assert!(written.first.is_none());
        // Another connection sees the commit.
        assert_eq!(count(&other), 1);
        // A conflict changes nothing, and says so.
        let again = writer.try_write(INSERT, rusqlite::params!["a", 5], no_row).expect("written here");
        assert_eq!(again.rows_affected, 0);
        let n: i64 = other.query_row("SELECT n FROM t WHERE id = 'a'", [], |r| r.get(0)).expect("reads");
        assert_eq!(n, 1);
    }

    #[test]
    fn returning_rows_come_back_with_the_commit() {
        let (_dir, path, other) = database();
        let writer = writer(&path);
        writer.try_write(INSERT, rusqlite::params!["a", 1], no_row).expect("written here");
        let written =
            writer.try_write(SET, rusqlite::params![7, "a"], |r| r.get::<_, i64>(0)).expect("written here");
        assert_eq!(written.rows_affected, 1);
        assert_eq!(written.first.expect("a row").expect("maps"), 7);
        let n: i64 = other.query_row("SELECT n FROM t WHERE id = 'a'", [], |r| r.get(0)).expect("reads");
        assert_eq!(n, 7);
        // No row matched: no row back, nothing changed.
        let none =
            writer.try_write(SET, rusqlite::params![8, "zz"], |r| r.get::<_, i64>(0)).expect("written here");
        assert_eq!((none.rows_affected, none.first.is_none()), (0, true));
        // A row that does not map still committed: the error comes back with it.
        let bad = writer
            .try_write(SET, rusqlite::params![9, "a"], |r| r.get::<_, String>(5))
            .expect("written here");
        assert!(bad.first.expect("a row").is_err());
        let n: i64 = other.query_row("SELECT n FROM t WHERE id = 'a'", [], |r| r.get(0)).expect("reads");
        assert_eq!(n, 9);
    }

    #[test]
    fn a_failed_write_changes_nothing_and_is_not_done_here() {
        let (_dir, path, other) = database();
        let writer = writer(&path);
        writer.try_write(INSERT, rusqlite::params!["a", 5], no_row).expect("written here");
        // A constraint fails on the second of two rows the statement changes: the first is
        // undone too.
        writer.try_write(INSERT, rusqlite::params!["b", 1], no_row).expect("written here");
        let both = "UPDATE t SET n = n - 2 WHERE id IN ('a', 'b') RETURNING n";
        assert!(writer.try_write(both, [], |r| r.get::<_, i64>(0)).is_err());
        let values: Vec<i64> = other
            .prepare("SELECT n FROM t ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("reads");
        assert_eq!(values, [5, 1]);
        // A statement the schema does not match.
        assert!(writer.try_write("INSERT INTO nowhere VALUES ($1)", ["x"], no_row).is_err());
        // A statement that would leave a transaction open is undone, and the connection is
        // fine afterwards.
        assert!(writer.try_write("BEGIN", [], no_row).is_err());
        let written = writer.try_write(INSERT, rusqlite::params!["c", 3], no_row).expect("written here");
        assert_eq!(written.rows_affected, 1);
        assert_eq!(count(&other), 3);
    }

    #[test]
    fn a_held_write_lock_is_handed_back_at_once() {
        let (_dir, path, other) = database();
        let writer = writer(&path);
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('held', 1);").expect("locks");
        let started = std::time::Instant::now();
        assert!(writer.try_write(INSERT, rusqlite::params!["a", 1], no_row).is_err());
        // rusqlite's own default would wait 5 s for the lock.
        assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
        other.execute_batch("COMMIT;").expect("unlocks");
        // Nothing of the refused write got in; the next one does.
        assert_eq!(count(&other), 1);
        let written = writer.try_write(INSERT, rusqlite::params!["a", 1], no_row).expect("written here");
        assert_eq!(written.rows_affected, 1);
    }

    #[test]
    fn only_wal_files_that_exist_are_written_here() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.db");
        assert!(writer(&missing).try_write(INSERT, rusqlite::params!["a", 1], no_row).is_err());
        assert!(!missing.exists(), "the writer created the file");
        let path = dir.path().join("journal.db");
        let setup = rusqlite::Connection::open(&path).expect("opens");
        setup.execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER);").expect("creates");
        assert!(writer(&path).try_write(INSERT, rusqlite::params!["a", 1], no_row).is_err());
        assert_eq!(count(&setup), 0);
    }

    #[tokio::test]
    async fn checkpoints_run_every_so_many_commits_and_the_wal_starts_over() {
        let (_dir, path, _other) = database();
        let size = |file: &std::path::Path| std::fs::metadata(file).expect("stat").len();
        let wal = path.with_extension("db-wal");
        // Any WAL is long enough to start over.
        let writer = Arc::new(Writer::new(path.clone(), 50, 1));
        let before = size(&path);
        for i in 0..49 {
            writer.try_write(INSERT, rusqlite::params![format!("k{i}"), i], no_row).expect("written here");
        }
        // Everything is still in the WAL: the writer does not checkpoint on its own.
        assert_eq!(size(&path), before);
        assert_eq!(writer.checkpoints.load(Ordering::Relaxed), 0);
        writer.try_write(INSERT, rusqlite::params!["k49", 49], no_row).expect("written here");
        let started = std::time::Instant::now();
        while writer.checkpoints.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "no checkpoint ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(size(&path) > before, "the checkpoint copied nothing into the database file");
        // The next commits write the WAL from its start: it does not grow.
        let wal_size = size(&wal);
        for i in 50..75 {
            writer.try_write(INSERT, rusqlite::params![format!("k{i}"), i], no_row).expect("written here");
        }
        assert!(size(&wal) <= wal_size, "the WAL grew after a checkpoint");
    }

    /// Waits until no checkpoint is running (bounded: a checkpoint of a small file takes
    /// milliseconds).
    async fn no_checkpoint_running(writer: &Writer) {
        for _ in 0..10_000 {
            if !writer.checkpointing.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("a checkpoint never ended");
    }

    /// A reader's open transaction keeps the WAL from starting over. Writers must not wait on
    /// checkpoints that cannot finish meanwhile (issue 26: a RESTART held them off 1 s in
    /// every 500 commits): every write is still committed here, none is handed back to sqlx
    /// for a lock, and no RESTART is tried. Once the reader ends the WAL starts over and is
    /// cut back to its limit.
    #[tokio::test]
    async fn a_long_reader_never_holds_writers_off_and_the_wal_is_cut_once_it_ends() {
        let (_dir, path, reader) = database();
        let size = |file: &std::path::Path| std::fs::metadata(file).expect("stat").len();
        let wal = path.with_extension("db-wal");
        // A checkpoint every 10 commits; the WAL should start over from 8 pages.
        let writer = Arc::new(Writer::new(path.clone(), 10, 8));
        let mut key = 0_u64;
        let mut write = || {
            key += 1;
            writer.try_write(INSERT, rusqlite::params![format!("k{key}"), 1], no_row).is_ok()
        };
        assert!(write());
        // The reader's snapshot: the frames committed after it cannot be copied while it lasts.
        reader.execute_batch("BEGIN").expect("begins");
        let seen: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("reads");
        assert_eq!(seen, 1);
        let mut writes = 0;
        // Until five checkpoints found the reader holding frames (an early one may find the WAL
        // still short of its limit: checkpoints run on the blocking pool, as the machine allows).
        while writer.outcomes(Outcome::ReaderHolds) < 5 {
            assert!(
                writes < 200_000,
                "no checkpoint found the reader holding frames: {:?}",
                outcomes(&writer)
            );
            assert!(write(), "write {writes} was handed back while a reader held the WAL");
            writes += 1;
            if writes % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        no_checkpoint_running(&writer).await;
        assert_eq!(writer.handed_back.load(Ordering::Relaxed), 0, "writes handed back to sqlx");
        assert!(writer.outcomes(Outcome::ReaderHolds) >= 5, "{:?}", outcomes(&writer));
        assert_eq!(
            writer.outcomes(Outcome::Restarted) + writer.outcomes(Outcome::Busy),
            0,
            "a RESTART was tried"
        );
        let grown = size(&wal);
        assert!(
            grown > 8 * 4096,
            "the WAL did not outgrow its limit ({grown} bytes): the test proves nothing"
        );

        // The reader ends: the next checkpoint starts the WAL over, and the commit after it
        // cuts the file back to its limit.
        reader.execute_batch("COMMIT").expect("ends the read");
        for _ in 0..50 {
            if writer.outcomes(Outcome::Restarted) > 0 {
                break;
            }
            for _ in 0..10 {
                write();
            }
            no_checkpoint_running(&writer).await;
        }
        assert!(
            writer.outcomes(Outcome::Restarted) > 0,
            "the WAL never started over: {:?}",
            outcomes(&writer)
        );
        write();
        assert!(size(&wal) <= 8 * 4096, "the WAL is {} bytes after starting over (was {grown})", size(&wal));
    }

    fn outcomes(writer: &Writer) -> Vec<(&'static str, u64)> {
        Outcome::ALL.iter().map(|o| (o.label(), writer.outcomes(*o))).collect()
    }
}
