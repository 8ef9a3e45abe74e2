//! Each service's own database: SQLite (a file under `./data`, created on start) or PostgreSQL,
//! through sqlx `Any` so one store's SQL serves both; embedded migrations applied on start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{Any, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Executor as _, Transaction};

use crate::mesh::{Error, config::MeshConfig};

/// A service's database pool: sqlx's (which it derefs to), and its metrics, labelled with the
/// pool's name (`pool="user"`, `pool="processor"`), so the pools of the all-in-one run are
/// told apart. The metric handles are registered once, not looked up on every acquire; a pool
/// not named (a test's, `shopmesh migrate`'s) records none, so no unlabelled series appears.
#[derive(Clone)]
pub struct Pool {
    inner: sqlx::Pool<Any>,
    metrics: Option<Arc<PoolMetrics>>,
}

struct PoolMetrics {
    pending: metrics::Gauge,
    wait: metrics::Histogram,
    idle: metrics::Gauge,
    used: metrics::Gauge,
}

impl PoolMetrics {
    fn new(name: &'static str, max: u32) -> Self {
        metrics::gauge!("db_client_connections_max", "pool" => name).set(f64::from(max));
        Self {
            pending: metrics::gauge!("db_client_connections_pending_requests", "pool" => name),
            wait: metrics::histogram!("db_client_connections_wait_time_seconds", "pool" => name),
            idle: metrics::gauge!("db_client_connections_usage", "pool" => name, "state" => "idle"),
            used: metrics::gauge!("db_client_connections_usage", "pool" => name, "state" => "used"),
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

impl Pool {
    /// The pool, recording its metrics labelled `pool="<name>"` (the service's name).
    #[must_use]
    pub fn named(self, name: &'static str) -> Self {
        let max = self.inner.options().get_max_connections();
        Self { inner: self.inner, metrics: Some(Arc::new(PoolMetrics::new(name, max))) }
    }
}

/// A transaction on a service's database.
pub type Tx = Transaction<'static, Any>;

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path/to/file.db` (or `sqlite::memory:` for a single-connection test).
    Sqlite,
    /// `postgres://user:pass@host/db` or `postgresql://...`.
    Postgres,
}

impl Backend {
    /// The engine of `url`, or a configuration error naming the URL's scheme.
    pub fn of(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {:?}: use sqlite://<file> or postgres://...",
                redact(url)
            )))
        }
    }
}

impl Backend {
    /// The engine `pool` connects to.
    pub fn of_pool(pool: &Pool) -> Self {
        if pool.connect_options().database_url.scheme() == "sqlite" { Self::Sqlite } else { Self::Postgres }
    }
}

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
    if crate::mesh::deadline::expired() {
        return Err(sqlx::Error::PoolTimedOut);
    }
    let Some(m) = &pool.metrics else {
        return crate::mesh::deadline::within(get).await.map_err(|_| sqlx::Error::PoolTimedOut)?;
    };
    let started = tokio::time::Instant::now();
    m.pending.increment(1.0);
    let got = crate::mesh::deadline::within(get).await;
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
    bounded(pool, pool.acquire()).await.map(Traced)
}

/// A transaction for the request being handled, bounded by its deadline as [`acquire`] is.
pub async fn begin(pool: &Pool) -> Result<Traced<Tx>, sqlx::Error> {
    bounded(pool, pool.begin()).await.map(Traced)
}

/// A connection (or transaction) whose every statement gets a child span following
/// OpenTelemetry's database conventions: named `<operation> <table>`, with the engine and the
/// SQL text (placeholders only, never values). Use `&mut traced` as the executor.
#[derive(Debug)]
pub struct Traced<C>(C);

impl Traced<Tx> {
    /// Commits the transaction.
    ///
    /// # Errors
    /// The database's.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.0.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    /// The database's.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.0.rollback().await
    }
}

/// A statement taken apart so its SQL can be read before it runs.
struct Statement {
    sql: sqlx::SqlStr,
    arguments: Option<Result<Option<sqlx::any::AnyArguments>, sqlx::error::BoxDynError>>,
    persistent: bool,
}

impl<'q> sqlx::Execute<'q, Any> for Statement {
    fn sql(self) -> sqlx::SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&sqlx::any::AnyStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<sqlx::any::AnyArguments>, sqlx::error::BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// `INSERT INTO orders …` → ("INSERT", "orders"): the operation and the first table named.
fn operation_and_table(sql: &str) -> (&str, &str) {
    // A statement led by a data-modifying WITH (`WITH o AS (INSERT INTO orders ...) INSERT INTO
    // order_items ...`) is named after the first statement in it, the one the rest hangs on.
    let sql = match sql.split_once('(') {
        Some((head, rest))
            if head.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("WITH")) =>
        {
            rest
        }
        _ => sql,
    };
    let mut words = sql.split_whitespace();
    let operation = words.next().unwrap_or("SQL");
    let mut table = "";
    let mut prev = operation;
    for word in words {
        if ["FROM", "INTO", "UPDATE"].iter().any(|k| prev.eq_ignore_ascii_case(k)) {
            table = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            break;
        }
        prev = word;
    }
    if operation.eq_ignore_ascii_case("UPDATE") {
        table = sql.split_whitespace().nth(1).unwrap_or("");
    }
    (operation, table)
}

fn statement_span<'q, E: sqlx::Execute<'q, Any>>(
    mut query: E,
    conn: &sqlx::AnyConnection,
) -> (Statement, tracing::Span) {
    let arguments = Some(query.take_arguments());
    let persistent = query.persistent();
    let sql = query.sql();
    let text = sql.as_str();
    let (operation, table) = operation_and_table(text);
    let system = match conn.backend_name() {
        "PostgreSQL" => "postgresql",
        "SQLite" => "sqlite",
        other => other,
    };
    let span = tracing::info_span!(
        "db",
        otel.name = %format_args!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = table,
        db.query.text = text,
    );
    (Statement { sql, arguments, persistent }, span)
}

impl<'c, C> sqlx::Executor<'c> for &'c mut Traced<C>
where
    C: std::ops::DerefMut<Target = sqlx::AnyConnection> + Send + std::fmt::Debug,
{
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.0;
        let (statement, span) = statement_span(query, conn);
        Box::pin(tracing_futures::Instrument::instrument(conn.fetch_many(statement), span))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::future::BoxFuture<'e, Result<Option<sqlx::any::AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.0;
        let (statement, span) = statement_span(query, conn);
        Box::pin(tracing::Instrument::instrument(conn.fetch_optional(statement), span))
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::any::AnyTypeInfo],
    ) -> futures::future::BoxFuture<'e, Result<sqlx::any::AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.0;
        conn.prepare_with(sql, parameters)
    }

    // Required because sqlx's `macros` feature turns on its `offline` feature.
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures::future::BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.0;
        conn.describe(sql)
    }
}

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
    let mut options = AnyPoolOptions::new()
        .max_connections(mesh.db_max_connections.max(1))
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
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
            prepare_sqlite(url)?
        }
        Backend::Postgres => url.to_owned(),
    };
    let inner = options.connect_lazy(&url)?;
    Ok(Pool { inner, metrics: None })
}

/// Applies `migrations` for `backend` to `pool`, retrying a few times: replicas starting at
/// once on PostgreSQL serialize on sqlx's advisory lock; on SQLite (no such lock) the loser of
/// the race fails on the tables the winner created and succeeds on the next try.
///
/// # Errors
/// The last migration error.
pub async fn migrate(pool: &Pool, backend: Backend, migrations: Migrations) -> Result<(), Error> {
    let migrator = migrations.of(backend);
    let mut attempt = 1;
    loop {
        match migrator.run(&**pool).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < MIGRATE_ATTEMPTS => {
                tracing::warn!(%err, attempt, "migrating failed, retrying (another replica may be migrating)");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Checks that every embedded migration is applied (when another process, such as a Helm
/// hook's `shopmesh migrate`, owns migrating).
///
/// # Errors
/// [`Error::Config`] naming the first missing migration, or the database error.
pub async fn check_migrated(pool: &Pool, backend: Backend, migrations: Migrations) -> Result<(), Error> {
    use sqlx::migrate::Migrate as _;
    let migrator = migrations.of(backend);
    let mut conn = pool.acquire().await?;
    // Fails while the table does not exist yet: not migrated either.
    let applied = conn.list_applied_migrations(&migrator.table_name).await?;
    for migration in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
        if !applied.iter().any(|a| a.version == migration.version) {
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

/// Creates the directory of a SQLite file and makes the URL create the file if missing.
fn prepare_sqlite(url: &str) -> Result<String, Error> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_owned());
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create database directory {}: {e}", dir.display())))?;
    }
    Ok(if query.contains("mode=") {
        url.to_owned()
    } else if query.is_empty() {
        format!("{url}?mode=rwc")
    } else {
        format!("{url}&mode=rwc")
    })
}

/// The URL with its secrets hidden, wherever a URL is shown (logs, errors, the banner): the
/// password of its userinfo (`user:***@`) and the value of every query parameter whose name
/// ends in `password` (libpq's `password` and `sslpassword`), whatever its case or encoding.
pub fn redact(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let (base, rest) = url.split_at(end);
    let mut out = String::with_capacity(url.len());
    // The userinfo ends at the last `@` before the query: a password may hold `/` or `@`.
    match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &base[scheme_end + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => {
                    out.push_str(&base[..scheme_end + 3]);
                    out.push_str(user);
                    out.push_str(":***");
                    out.push_str(&base[at..]);
                }
                None => out.push_str(base),
            }
        }
        _ => out.push_str(base),
    }
    let (query, fragment) = match rest.find('#') {
        Some(hash) => rest.split_at(hash),
        None => (rest, ""),
    };
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => {
                    out.push_str(key);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out.push_str(fragment);
    out
}

/// Whether a query parameter's name (percent-decoded, any case) names a password.
fn is_password_key(key: &str) -> bool {
    let mut decoded = Vec::with_capacity(key.len());
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.trim_ascii().to_ascii_lowercase().ends_with(b"password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_from_urls() {
        assert_eq!(Backend::of("sqlite://data/x.db").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://u@h/db").ok(), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://u@h/db").ok(), Some(Backend::Postgres));
        assert!(matches!(Backend::of("mysql://h/db"), Err(Error::Config(_))));
    }

    #[test]
    fn statements_are_named_after_their_operation_and_table() {
        assert_eq!(operation_and_table("SELECT id FROM orders WHERE id = $1"), ("SELECT", "orders"));
        assert_eq!(operation_and_table("INSERT INTO payments (id) VALUES ($1)"), ("INSERT", "payments"));
        assert_eq!(operation_and_table("UPDATE orders SET state = $1"), ("UPDATE", "orders"));
        assert_eq!(
            operation_and_table(
                "WITH o AS (INSERT INTO orders (id) VALUES ($1) RETURNING id) \
                 INSERT INTO order_items (order_id) SELECT o.id FROM o"
            ),
            ("INSERT", "orders")
        );
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:***@db:5432/x");
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    #[test]
    fn password_query_parameters_and_odd_passwords_are_redacted() {
        let cases = [
            ("postgres://db/x?user=me&password=secret", "postgres://db/x?user=me&password=***"),
            ("postgres://db/x?password=secret", "postgres://db/x?password=***"),
            (
                "postgres://me@db/x?sslmode=require&sslpassword=secret&application_name=a",
                "postgres://me@db/x?sslmode=require&sslpassword=***&application_name=a",
            ),
            ("postgres://db/x?PassWord=secret", "postgres://db/x?PassWord=***"),
            ("postgres://db/x?pass%77ord=secret", "postgres://db/x?pass%77ord=***"),
            ("postgres://me:secret@db/x?password=secret#f", "postgres://me:***@db/x?password=***#f"),
            // A password holding `@` or `/` (unencoded) still ends at the last `@`.
            ("postgres://me:se@c/ret@db:5432/x", "postgres://me:***@db:5432/x"),
            ("postgres://db/x?sslmode=require", "postgres://db/x?sslmode=require"),
            ("sqlite://data/x.db?mode=rwc", "sqlite://data/x.db?mode=rwc"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn sqlite_urls_create_their_file_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("nested/deeper/x.db");
        let url = format!("sqlite://{}", file.display());
        let prepared = prepare_sqlite(&url).expect("prepares");
        assert_eq!(prepared, format!("{url}?mode=rwc"));
        assert!(file.parent().is_some_and(Path::is_dir));
        assert_eq!(prepare_sqlite("sqlite::memory:").ok().as_deref(), Some("sqlite::memory:"));
    }
}
