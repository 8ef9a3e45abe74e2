//! Each service's own database: SQLite (a file under `./data`, created on start) or PostgreSQL,
//! through sqlx `Any` so one store's SQL serves both; embedded migrations applied on start.

use std::path::Path;
use std::time::Duration;

use sqlx::any::{Any, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Executor as _, Transaction};

use crate::mesh::{Error, config::MeshConfig};

/// A service's database pool.
pub type Pool = sqlx::Pool<Any>;

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

/// A pooled connection for the request being handled: the wait for it ends at the request's
/// deadline if that is nearer than the pool's acquire timeout, so database work never runs on
/// after the caller has given up. Out of time is reported as [`sqlx::Error::PoolTimedOut`],
/// which [`crate::mesh::status::database`] answers with DEADLINE_EXCEEDED.
pub async fn acquire(pool: &Pool) -> Result<sqlx::pool::PoolConnection<Any>, sqlx::Error> {
    if crate::mesh::deadline::expired() {
        return Err(sqlx::Error::PoolTimedOut);
    }
    crate::mesh::deadline::within(pool.acquire()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// A transaction for the request being handled, bounded by its deadline as [`acquire`] is.
pub async fn begin(pool: &Pool) -> Result<Tx, sqlx::Error> {
    if crate::mesh::deadline::expired() {
        return Err(sqlx::Error::PoolTimedOut);
    }
    crate::mesh::deadline::within(pool.begin()).await.map_err(|_| sqlx::Error::PoolTimedOut)?
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
        .acquire_timeout(mesh.db_acquire_timeout);
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
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
            prepare_sqlite(url)?
        }
        Backend::Postgres => url.to_owned(),
    };
    Ok(options.connect_lazy(&url)?)
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
        match migrator.run(pool).await {
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

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
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
    fn passwords_never_reach_logs() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:***@db:5432/x");
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
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
