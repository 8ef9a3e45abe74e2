//! Each service's own database: SQLite (a file under `./data`, created on start) or PostgreSQL,
//! through sqlx `Any` so one store's SQL serves both; embedded migrations applied on start.
//!
//! Here: the [`Pool`] (with its metrics), connecting, migrating, and the deadline-bounded
//! [`acquire`] and [`begin`] every store uses. Beside it: `traced.rs` (the span of each
//! statement), `url.rs` (engines, SQLite files, redaction) and `inline/` (SQLite point reads and
//! single-statement writes without sqlx's thread hop: [`Pool::read_row_now`],
//! [`Pool::execute`], [`Pool::write_row_now`]) and `replicas/` (reads from replicas:
//! [`Pool::with_replicas`], [`read_optional`], [`read_found`], [`read_all`]) and `values.rs`
//! (placeholders of multi-row statements: [`values`], [`list`], [`rows_per_statement`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{Any, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Executor as _, Transaction};

#[cfg(test)]
mod cancelled;
mod inline;
mod pooler;
mod replicas;
mod traced;
mod url;
mod values;

#[cfg(test)]
pub(crate) use replicas::route::read_only as read_only_call;
pub use replicas::route::{
    WRITTEN_AT, now_ms as written_now_ms, scope as read_route_scope, token as written_at,
};
pub use replicas::{LAG_INTERVAL, on as replicas_on, read_all, read_found, read_optional};
/// The SQLite API of [`Pool::read_row_now`]'s and [`Pool::write_row_now`]'s closures (rows,
/// parameters), at sqlx's version.
pub use rusqlite;
pub use traced::Traced;
use url::prepare_sqlite;
pub use url::{Backend, redact};
pub use values::{MAX_PARAMS, list, rows_per_statement, values};

use crate::mesh::{Error, config::MeshConfig};

/// A service's database pool: sqlx's (which it derefs to), and its metrics, labelled with the
/// pool's name (`pool="user"`, `pool="processor"`), so the pools of the all-in-one run are
/// told apart. The metric handles are registered once, not looked up on every acquire; a pool
/// not named (a test's, `shopmesh migrate`'s) records none, so no unlabelled series appears.
#[derive(Clone)]
pub struct Pool {
    inner: sqlx::Pool<Any>,
    metrics: Option<Arc<PoolMetrics>>,
    /// A SQLite file's read-only connections for [`Pool::read_row_now`].
    readers: Option<Arc<inline::Readers>>,
    /// A SQLite file's write connection for [`Pool::execute`] and [`Pool::write_row_now`].
    writer: Option<Arc<inline::Writer>>,
    /// Through a transaction pooler (`pooler=transaction` in the URL; `pooler.rs`).
    pooled: bool,
    /// Where read-only calls' reads may go (`--<svc>-database-read-url`; `replicas/`).
    replicas: Option<Arc<replicas::Replicas>>,
}

/// The pool's label (`db.client.connection.pool.name`): the service's name.
pub(in crate::mesh::db) const POOL: &str = "db_client_connection_pool_name";
/// A connection's state label (`db.client.connection.state`): `idle` or `used`.
const STATE: &str = "db_client_connection_state";

struct PoolMetrics {
    pending: metrics::Gauge,
    wait: metrics::Histogram,
    idle: metrics::Gauge,
    used: metrics::Gauge,
}

impl PoolMetrics {
    fn new(name: &'static str, max: u32) -> Self {
        // OpenTelemetry's database client conventions (db.client.connection.*), Prometheus form.
        metrics::gauge!("db_client_connection_max", POOL => name).set(f64::from(max));
        Self {
            pending: metrics::gauge!("db_client_connection_pending_requests", POOL => name),
            wait: metrics::histogram!("db_client_connection_wait_time_seconds", POOL => name),
            idle: metrics::gauge!("db_client_connection_count", POOL => name, STATE => "idle"),
            used: metrics::gauge!("db_client_connection_count", POOL => name, STATE => "used"),
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.inner.size())
            .field("idle", &self.inner.num_idle())
            .finish()
    }
}

impl std::ops::Deref for Pool {
    type Target = sqlx::Pool<Any>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// The counts of a SQLite file's writes on the calling thread ([`Pool::sqlite_writes`]).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqliteWrites {
    /// Writes and transactions committed there.
    pub committed: u64,
    /// Writes and transactions not done there, left to sqlx.
    pub handed_back: u64,
    /// Tries that found the file locked (each may have been tried again).
    pub busy: u64,
}

impl Pool {
    /// The pool, recording its metrics labelled `pool="<name>"` (the service's name).
    #[must_use]
    pub fn named(self, name: &'static str) -> Self {
        let max = self.inner.options().get_max_connections();
        if let Some(writer) = &self.writer {
            writer.name(name);
        }
        Self { metrics: Some(Arc::new(PoolMetrics::new(name, max))), ..self }
    }

    /// A point read (a few rows by key) answered at once on this thread when the database is a
    /// SQLite file: `map` of the first row of `sql` with positional parameters `params`
    /// (`$1`, `$2`, as the stores write them), `Some(None)` when there is no row. `None` when
    /// it is not answered here (PostgreSQL, an in-memory database, a lock, an error, the
    /// request's deadline passed): the caller then runs the same read through sqlx, which
    /// waits, retries or reports as usual. Each read gets the same span as a sqlx statement.
    /// Why, and the rules that keep it safe: `src/mesh/db/inline/mod.rs`.
    pub fn read_row_now<T, P: rusqlite::Params>(
        &self,
        sql: &'static str,
        params: P,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        let readers = self.readers.as_ref()?;
        if crate::mesh::request_deadline::expired() {
            return None;
        }
        let _span = traced::span("sqlite", sql).entered();
        readers.row(sql, params, map)
    }

    /// Runs a single-statement write (an INSERT, UPDATE or DELETE touching a few rows by key,
    /// with positional parameters `params`): the rows it changed. On a SQLite file it is
    /// committed at once on this thread; on PostgreSQL, an in-memory database, a lock, an
    /// error or a deadline already passed it runs through sqlx on a pooled connection instead
    /// (nothing was written the first way then), which waits, retries or reports as usual.
    /// Either way it gets the same span. Why, and the rules that keep it safe (a write is never
    /// done twice, no fsync on this thread): `src/mesh/db/inline/mod.rs`.
    ///
    /// # Errors
    /// sqlx's, from the pooled connection or the statement.
    pub async fn execute(&self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, sqlx::Error> {
        let here = self.on_writer(sql, |writer| {
            writer
                .try_write(sql, rusqlite::params_from_iter(params), |_| Ok(()))
                .map(|written| written.rows_affected)
        });
        if let Some(rows_affected) = here.await {
            return Ok(rows_affected);
        }
        Ok(bind(sqlx::query(sql), params).execute(&mut acquire(self).await?).await?.rows_affected())
    }

    /// Runs `work` as one transaction on this thread when the database is a SQLite file
    /// (`BEGIN IMMEDIATE`, `work`, `COMMIT`, with none of sqlx's thread hops while the file's
    /// write lock is held): `Some` of its value once committed. `None` when it was not done
    /// here (PostgreSQL, an in-memory database, the file locked for [`BUSY_WAITS`], an error
    /// in `work`, the request's deadline passed): nothing of it was written, and the caller
    /// does the same work through sqlx, which waits, retries or reports as usual. A run that
    /// finds the file locked is tried again, as [`Pool::execute`]'s write is, so `work` must
    /// change nothing outside its connection; it gets the span of a statement named `name`.
    /// As for every write here, only a few rows by key belong in it (`src/mesh/db/inline/mod.rs`).
    pub async fn transaction_now<T>(
        &self,
        name: &'static str,
        mut work: impl FnMut(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Option<T> {
        self.on_writer(name, |writer| writer.try_transaction(&mut work)).await
    }

    /// What this pool's writes on the calling thread have come to so far, for tests that prove
    /// a store's writes take that way: `None` when it has none (PostgreSQL, an in-memory
    /// database, a file opened read-only).
    #[cfg(any(test, feature = "testing"))]
    #[must_use]
    pub fn sqlite_writes(&self) -> Option<SqliteWrites> {
        self.writer.as_ref().map(|writer| writer.counts())
    }

    /// `attempt` on this SQLite file's writer, tried again after each of [`BUSY_WAITS`] while
    /// it finds the file locked: its value, or `None` when it was not done (no writer, a lock
    /// that outlasted the waits, any other failure, the request's deadline passed), counted as
    /// handed back when it was tried.
    async fn on_writer<T>(
        &self,
        name: &str,
        mut attempt: impl FnMut(&Arc<inline::Writer>) -> Result<T, inline::NotWritten>,
    ) -> Option<T> {
        let writer = self.writer.as_ref()?;
        let mut waits = BUSY_WAITS.iter();
        while !crate::mesh::request_deadline::expired() {
            let tried = {
                let _span = traced::span("sqlite", name).entered();
                attempt(writer)
            };
            match tried {
                Ok(value) => return Some(value),
                Err(inline::NotWritten::Busy) if let Some(&wait) = waits.next() => {
                    tokio::time::sleep(wait).await;
                }
                Err(not) => {
                    writer.count_hand_back(not);
                    return None;
                }
            }
        }
        None
    }

    /// A write with a `RETURNING` clause committed at once on this thread when the database is
    /// a SQLite file, as [`Pool::execute`] does (tried again while the file is locked, for
    /// [`BUSY_WAITS`]): `map` of its first row, `None` inside when no row was changed. `None`
    /// when it was not done here (nothing was written): the caller runs the same statement
    /// through sqlx, with [`bind`]. A row `map` refuses is an error, though the write stands
    /// (it is not handed back).
    pub async fn write_row_now<T>(
        &self,
        sql: &'static str,
        params: &[Param<'_>],
        mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Result<Option<T>, sqlx::Error>> {
        let written = self
            .on_writer(sql, |writer| writer.try_write(sql, rusqlite::params_from_iter(params), &mut map))
            .await?;
        Some(written.first.transpose().map_err(|err| sqlx::Error::Decode(Box::new(err))))
    }
}

/// How long [`Pool::execute`] waits before each new try of a write that found its SQLite file
/// locked, before it hands the write to sqlx: 27 ms in all.
///
/// The lock is held for a moment: a relay's or consumer's transaction through sqlx (well under
/// a millisecond of writing once it has the lock), or a RESTART checkpoint (`RESTART_WAIT`,
/// 10 ms at most). A write handed to sqlx instead waits for one of the pool's two connections
/// and then sleeps in SQLite's busy handler, 1, 2, 5, 10 ... up to 100 ms between tries, while
/// the calling threads' writes keep taking the lock between its tries: under CreateOrder load
/// 9% of the order database's writes went that way, and they made its p99 100-150 ms. Waiting
/// here holds no connection and no thread, and tries again soon after the lock is let go.
const BUSY_WAITS: [std::time::Duration; 8] = {
    use std::time::Duration;
    [
        Duration::from_millis(1),
        Duration::from_millis(1),
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(2),
        Duration::from_millis(5),
        Duration::from_millis(5),
        Duration::from_millis(10),
    ]
};

/// A parameter of [`Pool::execute`], bound the same way on either path (rusqlite on the calling
/// thread, sqlx's `Any` otherwise): text (`None` is NULL) or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param<'a> {
    /// TEXT, or NULL.
    Text(Option<&'a str>),
    /// INTEGER / BIGINT.
    Int(i64),
}

/// A sqlx statement on a service's pool.
pub type Query<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// `query` with `params` bound in order, as [`Pool::execute`] binds them on its sqlx path.
pub fn bind<'q>(query: Query<'q>, params: &[Param<'q>]) -> Query<'q> {
    params.iter().fold(query, |query, param| match *param {
        Param::Text(text) => query.bind(text),
        Param::Int(int) => query.bind(int),
    })
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(Some(text))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(text: &'a String) -> Self {
        Self::Text(Some(text))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(text: Option<&'a str>) -> Self {
        Self::Text(text)
    }
}

impl From<i64> for Param<'_> {
    fn from(int: i64) -> Self {
        Self::Int(int)
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Self::Text(Some(text)) => ValueRef::Text(text.as_bytes()),
            Self::Text(None) => ValueRef::Null,
            Self::Int(int) => ValueRef::Integer(int),
        }))
    }
}

/// A transaction on a service's database.
pub type Tx = Transaction<'static, Any>;

/// The database's clock in epoch milliseconds, as an SQL expression for `sqlite` or `postgres`
/// (a literal, so a store can `concat!` it into its statements). Leases and schedules that
/// replicas share are computed with it, never with one replica's clock, which may be skewed.
#[macro_export]
macro_rules! db_now_ms {
    (sqlite) => {
        "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
    };
    (postgres) => {
        "CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)"
    };
}

/// A service's embedded migrations, one directory per engine (their SQL differs in types).
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// `migrations/sqlite`, embedded with `sqlx::migrate!`.
    pub sqlite: &'static Migrator,
    /// `migrations/postgres`, embedded with `sqlx::migrate!`.
    pub postgres: &'static Migrator,
}

impl Migrations {
    /// The migrations for `backend`.
    pub fn of(&self, backend: Backend) -> &'static Migrator {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }
}

/// Waits for `get` (a connection or a transaction from `pool`) no longer than the request's
/// deadline, counting the wait in the pool metrics.
async fn bounded<T, F>(pool: &Pool, get: F) -> Result<T, sqlx::Error>
where
    F: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    if crate::mesh::request_deadline::expired() {
        return Err(sqlx::Error::PoolTimedOut);
    }
    let Some(m) = &pool.metrics else {
        return crate::mesh::request_deadline::within(get).await.map_err(|_| sqlx::Error::PoolTimedOut)?;
    };
    let started = tokio::time::Instant::now();
    m.pending.increment(1.0);
    let got = crate::mesh::request_deadline::within(get).await;
    m.pending.decrement(1.0);
    m.wait.record(started.elapsed().as_secs_f64());
    let idle = pool.num_idle() as f64;
    m.idle.set(idle);
    m.used.set(f64::from(pool.size()) - idle);
    got.map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// A pooled connection for the request being handled, each of whose statements gets a span.
/// The wait for it ends at the request's deadline if that is nearer than the pool's acquire
/// timeout, so database work never runs on after the caller has given up. Out of time is
/// reported as [`sqlx::Error::PoolTimedOut`], which [`crate::mesh::status::database`] answers
/// with DEADLINE_EXCEEDED.
pub async fn acquire(pool: &Pool) -> Result<Traced<sqlx::pool::PoolConnection<Any>>, sqlx::Error> {
    bounded(pool, pool.acquire()).await.map(|conn| Traced { conn, pooled: pool.pooled })
}

/// A transaction for the request being handled, bounded by its deadline as [`acquire`] is.
pub async fn begin(pool: &Pool) -> Result<Traced<Tx>, sqlx::Error> {
    bounded(pool, pool.begin()).await.map(|conn| Traced { conn, pooled: pool.pooled })
}

/// A PostgreSQL pool's size unless `--db-max-connections` says otherwise.
pub const POSTGRES_MAX_CONNECTIONS: u32 = 10;
/// A SQLite pool's size unless `--db-max-connections` says otherwise (see [`connect`]).
pub const SQLITE_MAX_CONNECTIONS: u32 = 2;

/// How many times migrating is tried before giving up (see [`migrate`]).
const MIGRATE_ATTEMPTS: u32 = 5;

/// A pool on `url` that connects on first use, so a service can answer health checks (NOT
/// SERVING) while its database is still unreachable. For SQLite the file and its directory are
/// created if missing and each connection is set up for concurrent use (WAL, busy timeout).
///
/// # Errors
/// [`Error::Config`] for an unsupported URL or a SQLite directory that cannot be created.
pub fn connect(url: &str, mesh: &MeshConfig) -> Result<Pool, Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let max = mesh.db_max_connections.unwrap_or(match backend {
        // SQLite lets one writer in at a time; a writer that finds the lock taken sleeps in
        // SQLite's busy handler (1, 2, 5, 10 ... 100 ms) rather than queueing. Ten connections
        // made CreateOrder's p99 100-110 ms and its slowest calls 600-850 ms; two keep p99
        // near 47 ms at the same throughput (docs/benchmarks.md). Point reads and the
        // stores' single-statement writes do not use them: they run on connections of
        // their own (`inline/`), and these two carry what is handed back and the rest.
        Backend::Sqlite => SQLITE_MAX_CONNECTIONS,
        Backend::Postgres => POSTGRES_MAX_CONNECTIONS,
    });
    let mut options = AnyPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(mesh.db_acquire_timeout)
        // sqlx pings every connection before handing it out by default: a round trip to
        // PostgreSQL, and on SQLite a hop to the connection's worker thread and back, on every
        // acquire (a third of GetUser's context switches). A connection the server closed fails
        // its next statement instead, which the caller sees as UNAVAILABLE and the pool
        // replaces; `max_lifetime` and `idle_timeout` (sqlx's defaults, 30 and 10 minutes) retire
        // connections before most servers and proxies would drop them.
        .test_before_acquire(false);
    let url = match backend {
        Backend::Sqlite => {
            options = options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; the busy timeout makes writers
                    // queue instead of failing with SQLITE_BUSY; NORMAL is durable in WAL mode
                    // except on power loss, which the order flow's idempotency keys tolerate.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    // NORMAL syncs only at checkpoints: checkpointing every 4 000 pages (16 MiB
                    // of WAL) rather than SQLite's 1 000 syncs a quarter as often and writes a
                    // page changed by many commits (an index's last leaf) back once.
                    conn.execute("PRAGMA wal_autocheckpoint = 4000").await?;
                    // A WAL a long reader let grow is cut back to 64 MiB (`RESTART_AT_PAGES`)
                    // when it starts over, whichever connection writes first then.
                    conn.execute("PRAGMA journal_size_limit = 67108864").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
            prepare_sqlite(url)?
        }
        Backend::Postgres => url.to_owned(),
    };
    let (url, pooled) = pooler::parse(&url)?;
    let file = url::sqlite_file(&url);
    let readers = file.map(|path| Arc::new(inline::Readers::new(path.into())));
    // A file opened read-only (`mode=ro`) is not written behind sqlx's back either.
    let writer = file.filter(|_| !url.contains("mode=ro")).map(|path| {
        Arc::new(inline::Writer::new(path.into(), inline::CHECKPOINT_EVERY, inline::RESTART_AT_PAGES))
    });
    let inner = options.connect_lazy(&url)?;
    Ok(Pool { inner, metrics: None, readers, writer, pooled, replicas: None })
}

/// Applies `migrations` for `backend` to `pool`, retrying a few times: replicas starting at
/// once on PostgreSQL serialize on sqlx's advisory lock; on SQLite (no such lock) the loser of
/// the race fails on the tables the winner created and succeeds on the next try.
///
/// # Errors
/// The last migration error.
pub async fn migrate(pool: &Pool, backend: Backend, migrations: Migrations) -> Result<(), Error> {
    let migrator = tolerant(migrations.of(backend));
    let mut attempt = 1;
    loop {
        let ran = if pool.pooled {
            match pool.acquire().await {
                Ok(mut conn) => pooler::migrate(&mut conn, &migrator).await,
                Err(err) => Err(err.into()),
            }
        } else {
            migrator.run(&**pool).await.map_err(Error::from)
        };
        match ran {
            Ok(()) => return Ok(()),
            Err(err) if attempt < MIGRATE_ATTEMPTS => {
                tracing::warn!(%err, attempt, "migrating failed, retrying (another replica may be migrating)");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// `embedded` as a migrator that leaves alone applied migrations it does not know: a newer
/// release's, met by this older binary after a rollback. Migrations are additive (expand, then
/// contract a release later: docs/layout.md), so the older code runs on the newer schema;
/// without this sqlx refuses with "migration … was previously applied but is missing" and the
/// service would stay NOT_SERVING. Migrations it does know are still checked against their
/// checksums. Built once per migration run, never on a call's path.
fn tolerant(embedded: &Migrator) -> Migrator {
    let mut migrator = Migrator::with_migrations(embedded.iter().cloned().collect());
    migrator.set_ignore_missing(true);
    migrator
}

/// Checks that every embedded migration is applied (when another process, such as a Helm
/// hook's `shopmesh migrate`, owns migrating).
///
/// # Errors
/// [`Error::Config`] naming the first missing migration, or the database error.
pub async fn check_migrated(pool: &Pool, backend: Backend, migrations: Migrations) -> Result<(), Error> {
    use sqlx::Row as _;
    let migrator = migrations.of(backend);
    // The simple protocol (no parameters, no prepared statement): one message, right through
    // any pooler. Fails while the table does not exist yet: not migrated either.
    let sql = format!("SELECT version FROM {}", migrator.table_name);
    let mut conn = pool.acquire().await?;
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await?;
    let applied = rows.iter().map(|row| row.try_get::<i64, _>(0)).collect::<Result<Vec<_>, _>>()?;
    for migration in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
        if !applied.contains(&migration.version) {
            return Err(Error::Config(format!(
                "migration {} ({}) is not applied; run `shopmesh migrate`",
                migration.version, migration.description
            )));
        }
    }
    Ok(())
}

/// Opens a pool on `url` and applies `migrations`: what `shopmesh migrate` and tests use.
///
/// # Errors
/// As [`connect`] and [`migrate`].
pub async fn open(url: &str, mesh: &MeshConfig, migrations: Migrations) -> Result<Pool, Error> {
    let pool = connect(url, mesh)?;
    migrate(&pool, Backend::of(url)?, migrations).await?;
    tracing::info!(url = %redact(url), "database ready");
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_connections(url: &str, configured: Option<u32>) -> u32 {
        let mesh = MeshConfig { db_max_connections: configured, ..MeshConfig::default() };
        connect(url, &mesh).expect("connects lazily").options().get_max_connections()
    }

    #[tokio::test]
    async fn pools_are_sized_for_their_engine_unless_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite = format!("sqlite://{}", dir.path().join("x.db").display());
        let postgres = "postgres://u:p@127.0.0.1:1/x";
        assert_eq!(max_connections(&sqlite, None), SQLITE_MAX_CONNECTIONS);
        assert_eq!(max_connections(postgres, None), POSTGRES_MAX_CONNECTIONS);
        assert_eq!(max_connections(&sqlite, Some(7)), 7);
        assert_eq!(max_connections(postgres, Some(3)), 3);
        assert_eq!(max_connections(postgres, Some(0)), 1);
    }

    /// A SQLite file with table `t`, its pool, and another connection to it.
    async fn sqlite_file() -> (tempfile::TempDir, Pool, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        let pool = connect(&format!("sqlite://{}", path.display()), &MeshConfig::default()).expect("pool");
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0))")
            .execute(&pool.inner)
            .await
            .expect("creates");
        let other = rusqlite::Connection::open(&path).expect("opens");
        (dir, pool, other)
    }

    const INSERT: &str = "INSERT INTO t VALUES ($1, $2)";

    fn rows(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("counts")
    }

    /// Takes the file's write lock on `other`, then starts a write of row `a` through `pool`:
    /// the pool's writer, and the write.
    fn write_while_locked(
        pool: &Pool,
        other: &rusqlite::Connection,
    ) -> (Arc<inline::Writer>, tokio::task::JoinHandle<Result<u64, sqlx::Error>>) {
        let writer = Arc::clone(pool.writer.as_ref().expect("a file has a writer"));
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('held', 1);").expect("takes the lock");
        let pool = pool.clone();
        let write =
            tokio::spawn(async move { pool.execute(INSERT, &[Param::Text(Some("a")), Param::Int(1)]).await });
        (writer, write)
    }

    /// `writer`'s writes handed back to sqlx, and its tries that found the file locked.
    fn handed_back_and_busy(writer: &inline::Writer) -> (u64, u64) {
        let counts = writer.counts();
        (counts.handed_back, counts.busy)
    }

    /// Yields until `writer`'s (handed back, busy) counts satisfy `until`.
    async fn until(writer: &inline::Writer, until: impl Fn((u64, u64)) -> bool) {
        while !until(handed_back_and_busy(writer)) {
            tokio::task::yield_now().await;
        }
    }

    /// A write that finds the file locked is tried again on the calling thread once the lock is
    /// let go, not handed to sqlx (whose busy handler sleeps up to 100 ms between tries). The
    /// runtime has one thread: the lock is let go the moment the write's first try has failed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_finds_the_file_locked_is_tried_again_here() {
        let (_dir, pool, other) = sqlite_file().await;
        let (writer, write) = write_while_locked(&pool, &other);
        until(&writer, |(_, busy)| busy >= 1).await;
        other.execute_batch("COMMIT").expect("lets go");
        assert_eq!(write.await.expect("joins").expect("written"), 1);
        assert_eq!(rows(&other), 2);
        let (handed_back, busy) = handed_back_and_busy(&writer);
        assert_eq!(handed_back, 0, "tried again here, not handed to sqlx");
        assert!(busy >= 1, "{busy}");
    }

    /// A write with a `RETURNING` clause (the processor's ledger) that finds the file locked
    /// is tried again here too, and answers its row once the lock is let go.
    #[tokio::test(flavor = "current_thread")]
    async fn a_returning_write_that_finds_the_file_locked_is_tried_again_here() {
        let (_dir, pool, other) = sqlite_file().await;
        let writer = Arc::clone(pool.writer.as_ref().expect("a file has a writer"));
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('held', 1);").expect("takes the lock");
        let write = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let params = [Param::Text(Some("a")), Param::Int(4)];
                let written =
                    pool.write_row_now("INSERT INTO t VALUES ($1, $2) RETURNING n", &params, |row| {
                        row.get::<_, i64>(0)
                    });
                written.await.map(|row| row.expect("maps"))
            })
        };
        until(&writer, |(_, busy)| busy >= 1).await;
        other.execute_batch("COMMIT").expect("lets go");
        assert_eq!(write.await.expect("joins"), Some(Some(4)), "written here once the lock was let go");
        assert_eq!(handed_back_and_busy(&writer).0, 0);
        assert_eq!(rows(&other), 2);
    }

    /// A transaction on the calling thread commits all of its statements or, when one fails,
    /// none of them, and is then left to the caller's sqlx path (counted once as handed back);
    /// one that finds the file locked is tried again here once the lock is let go.
    #[tokio::test(flavor = "current_thread")]
    async fn a_transaction_here_writes_all_or_nothing_and_waits_out_a_lock() {
        let (_dir, pool, other) = sqlite_file().await;
        let writer = Arc::clone(pool.writer.as_ref().expect("a file has a writer"));
        let both = pool
            .transaction_now("two rows", |conn| {
                conn.execute("INSERT INTO t VALUES ('a', 1)", [])?;
                conn.execute("INSERT INTO t VALUES ('b', 2)", [])
            })
            .await;
        assert_eq!(both, Some(1));
        assert_eq!(rows(&other), 2);

        let refused = pool
            .transaction_now("a refused row", |conn| {
                conn.execute("INSERT INTO t VALUES ('c', 3)", [])?;
                conn.execute("INSERT INTO t VALUES ('d', -1)", [])
            })
            .await;
        assert_eq!(refused, None, "the CHECK refuses the second row");
        assert_eq!(rows(&other), 2, "and the first is undone with it");
        assert_eq!(handed_back_and_busy(&writer), (1, 0));

        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES ('held', 1);").expect("takes the lock");
        let later = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.transaction_now("after the lock", |conn| {
                    conn.execute("INSERT INTO t VALUES ('e', 5)", [])
                })
                .await
            })
        };
        until(&writer, |(_, busy)| busy >= 1).await;
        other.execute_batch("COMMIT").expect("lets go");
        assert_eq!(later.await.expect("joins"), Some(1));
        assert_eq!(rows(&other), 4);
        assert_eq!(handed_back_and_busy(&writer).0, 1, "tried again here, not handed back");
    }

    /// A lock held longer than [`BUSY_WAITS`] hands the write to sqlx, which waits for it (and
    /// counts it once, as busy); a write that fails for any other reason is handed over at once,
    /// and sqlx reports its error.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_locked_out_for_long_goes_through_sqlx_and_an_error_at_once() {
        let (_dir, pool, other) = sqlite_file().await;
        let (writer, write) = write_while_locked(&pool, &other);
        until(&writer, |(handed_back, _)| handed_back >= 1).await;
        assert_eq!(handed_back_and_busy(&writer), (1, BUSY_WAITS.len() as u64 + 1), "every try, then sqlx");
        other.execute_batch("COMMIT").expect("lets go");
        assert_eq!(write.await.expect("joins").expect("written through sqlx"), 1);
        assert_eq!(rows(&other), 2);

        let err = pool
            .execute(INSERT, &[Param::Text(Some("b")), Param::Int(-1)])
            .await
            .expect_err("the CHECK refuses it");
        assert!(err.to_string().contains("CHECK"), "{err}");
        assert_eq!(handed_back_and_busy(&writer), (2, BUSY_WAITS.len() as u64 + 1), "no try again");
        assert_eq!(rows(&other), 2);
    }
}
