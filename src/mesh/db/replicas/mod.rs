//! Reads from replicas: the read pools beside a service's primary (`--<svc>-database-read-url`),
//! and where each read runs.
//!
//! A read runs on a replica only when all of these hold, else on the primary: the store asked
//! for it ([`read_optional`], [`read_found`], [`read_all`]; everything else, `acquire` and
//! `begin`, is the primary's), the call being handled is read-only (its method is
//! NO_SIDE_EFFECTS: `route.rs`, set by the server's `read_route` layer), the caller has not
//! written within the replicas' staleness bound (its `shopmesh-written-at` token), and a
//! replica is usable (its replay lag, measured by `lag.rs`, within `--max-replica-lag`). A
//! read that fails on a replica, or finds nothing where something was asked for, runs again on
//! the primary: a replica never fails a call nor answers NOT_FOUND for a row that exists.
//! Here too: `urls.rs`, the read URL's several replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::any::AnyRow;

use super::{Backend, Pool, Query, acquire, redact};
use crate::mesh::{Error, config::MeshConfig};

mod lag;
pub(crate) mod route;
mod urls;

/// How often each replica's replay lag is measured.
pub const LAG_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a read waits for a replica's connection before going to the primary (half the
/// call's time left, if less): a connection is normally there at once, and a replica just gone
/// away (sqlx retries its connect until the wait ends) must leave the call time for the primary.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);
/// Added to a written-at token's window for clocks of two pods that disagree.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// Whether any pool in this process reads from replicas: only then do write responses carry a
/// `shopmesh-written-at` token (formatting it is work every write would pay for nothing).
static ON: AtomicBool = AtomicBool::new(false);

/// Whether write responses carry `shopmesh-written-at` (some pool here has replicas).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A service's replicas: read pools, each with its lag watched.
pub(super) struct Replicas {
    members: Box<[Replica]>,
    next: AtomicUsize,
    /// The service's name, for logs.
    name: &'static str,
    /// A read-only call whose caller wrote less than this ago reads from the primary.
    window_ms: u64,
    reads: metrics::Counter,
    unusable: metrics::Counter,
    not_found: metrics::Counter,
    failed: metrics::Counter,
    recent_write: metrics::Counter,
}

/// One replica's pool and whether reads may use it.
struct Replica {
    pool: Pool,
    /// `host:port` (never the credentials), for logs and the metrics' label.
    address: String,
    /// Set by its lag task: answering, and replaying within `--max-replica-lag`.
    usable: AtomicBool,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<_> =
            self.members.iter().map(|r| (&r.address, r.usable.load(Ordering::Relaxed))).collect();
        f.debug_struct("Replicas").field("members", &members).finish()
    }
}

/// The label of the pool (the service) a replica serves, as the pool metrics' own.
const POOL: &str = super::POOL;
/// A replica's `host:port`.
const SERVER: &str = "server_address";
/// Why a read a replica could have served went to the primary.
const REASON: &str = "reason";

impl Pool {
    /// The pool, reading from the replicas `read_url` names (one URL, several comma-separated,
    /// or several hosts in one URL) where a read-only call allows it, each replica's lag
    /// measured every [`LAG_INTERVAL`] by a task that ends when the pool is dropped. `name` is
    /// the service's, as for [`Pool::named`]; `flag` the setting's name, for errors.
    ///
    /// # Errors
    /// [`Error::Config`] when the primary or a replica is not PostgreSQL (a SQLite file has no
    /// replicas), or a replica URL is not one [`super::connect`] takes.
    pub fn with_replicas(
        self,
        read_url: &str,
        mesh: &MeshConfig,
        name: &'static str,
        flag: &str,
    ) -> Result<Self, Error> {
        if Backend::of_pool(&self) != Backend::Postgres {
            return Err(Error::Config(format!(
                "{flag} is set but the database is SQLite: a SQLite file has no replicas; leave {flag} \
                 unset, or use PostgreSQL for both"
            )));
        }
        let urls = urls::split(read_url);
        if urls.is_empty() {
            return Ok(self);
        }
        let mut replica_mesh = mesh.clone();
        replica_mesh.db_acquire_timeout = mesh.db_acquire_timeout.min(REPLICA_ACQUIRE_TIMEOUT);
        let mut members = Vec::with_capacity(urls.len());
        for url in &urls {
            if Backend::of(url)? != Backend::Postgres {
                return Err(Error::Config(format!(
                    "{flag}: {} is not a PostgreSQL URL; replicas are PostgreSQL standbys",
                    redact(url)
                )));
            }
            members.push(Replica {
                pool: super::connect(url, &replica_mesh)?,
                address: urls::address(url),
                usable: AtomicBool::new(false),
            });
        }
        let window = mesh.max_replica_lag + LAG_INTERVAL + CLOCK_MARGIN;
        let counter = |reason: &'static str| metrics::counter!("shopmesh_db_replica_fallback_total", POOL => name, REASON => reason);
        let replicas = Arc::new(Replicas {
            members: members.into(),
            next: AtomicUsize::new(0),
            name,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            reads: metrics::counter!("shopmesh_db_replica_reads_total", POOL => name),
            unusable: counter("unusable"),
            not_found: counter("not_found"),
            failed: counter("error"),
            recent_write: counter("recent_write"),
        });
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("replicas are watched on a Tokio runtime; none is running".into()))?;
        for index in 0..replicas.members.len() {
            runtime.spawn(lag::watch(Arc::downgrade(&replicas), index, mesh.max_replica_lag, name));
        }
        tracing::info!(pool = name, replicas = ?urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
                       max_lag = ?mesh.max_replica_lag, "read-only calls read from replicas");
        ON.store(true, Ordering::Relaxed);
        Ok(Self { replicas: Some(replicas), ..self })
    }

    /// Closes the replicas' pools (the primary's is closed by sqlx's `close`).
    pub async fn close_replicas(&self) {
        if let Some(replicas) = &self.replicas {
            for replica in &replicas.members {
                replica.pool.close().await;
            }
        }
    }
}

impl Replicas {
    /// The next usable replica, round robin, for a read of the call being handled; `None`
    /// (counted) when the call may not read from one or none is usable.
    fn pick(&self) -> Option<&Replica> {
        let written_at = route::read_only()?;
        if written_at.is_some_and(|at| route::now_ms().saturating_sub(at) < self.window_ms) {
            self.recent_write.increment(1);
            return None;
        }
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let found = (0..n).map(|i| &self.members[(start + i) % n]).find(|r| r.usable.load(Ordering::Relaxed));
        if found.is_none() {
            self.unusable.increment(1);
        }
        found
    }

    /// What a read on `replica` gave: the answer, or `None` when it failed and the same read
    /// goes to the primary, the replica left alone until its lag task finds it answering again.
    fn outcome<T>(&self, replica: &Replica, ran: Result<T, sqlx::Error>) -> Option<Result<T, sqlx::Error>> {
        match ran {
            Ok(found) => {
                self.reads.increment(1);
                Some(Ok(found))
            }
            Err(err) if crate::mesh::request_deadline::expired() => Some(Err(err)),
            Err(err) => {
                self.failed.increment(1);
                if replica.usable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(pool = %self.name, replica = %replica.address, %err,
                                   "a read on a replica failed; reading from the primary until it answers again");
                }
                None
            }
        }
    }
}

/// The replica a read of the call being handled may run on, if any.
fn replica(pool: &Pool) -> Option<(&Replicas, &Replica)> {
    let replicas = pool.replicas.as_deref()?;
    replicas.pick().map(|replica| (replicas, replica))
}

/// `query` run by `fetch` on `replica`: `None` when the read must go to the primary instead
/// (counted, and the replica set aside when it failed). A caller's deadline that passes is the
/// caller's answer, not the replica's fault.
macro_rules! on_replica {
    ($replicas:expr, $replica:expr, $query:expr, $fetch:ident) => {{
        let wait = crate::mesh::request_deadline::remaining()
            .map_or(REPLICA_ACQUIRE_TIMEOUT, |left| (left / 2).min(REPLICA_ACQUIRE_TIMEOUT));
        let ran = match tokio::time::timeout(wait, acquire(&$replica.pool)).await {
            Ok(Ok(mut conn)) => $query().$fetch(&mut conn).await,
            Ok(Err(err)) => Err(err),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        $replicas.outcome($replica, ran)
    }};
}

/// A lookup that may run on a replica: the row `query` finds, if any. Nothing found on a
/// replica is looked for again on the primary (the row may be too new for the replica).
///
/// # Errors
/// The primary's, when the read ran there.
pub async fn read_optional<'q>(
    pool: &Pool,
    query: impl Fn() -> Query<'q>,
) -> Result<Option<AnyRow>, sqlx::Error> {
    if let Some((replicas, replica)) = replica(pool) {
        match on_replica!(replicas, replica, query, fetch_optional) {
            Some(Ok(Some(row))) => return Ok(Some(row)),
            Some(Ok(None)) => replicas.not_found.increment(1),
            Some(Err(err)) => return Err(err),
            None => {}
        }
    }
    query().fetch_optional(&mut acquire(pool).await?).await
}

/// A lookup of several rows (a record and its parts; records by key) that may run on a
/// replica: fewer than `expected` rows found there are looked for again on the primary, as
/// [`read_optional`] does.
///
/// # Errors
/// The primary's, when the read ran there.
pub async fn read_found<'q>(
    pool: &Pool,
    expected: usize,
    query: impl Fn() -> Query<'q>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    if let Some((replicas, replica)) = replica(pool) {
        match on_replica!(replicas, replica, query, fetch_all) {
            Some(Ok(rows)) if rows.len() < expected => replicas.not_found.increment(1),
            Some(found) => return found,
            None => {}
        }
    }
    query().fetch_all(&mut acquire(pool).await?).await
}

/// A list that may run on a replica: an empty answer there is the answer (up to
/// `--max-replica-lag` stale; a caller that wrote passes its `shopmesh-written-at` token back).
///
/// # Errors
/// The primary's, when the read ran there.
pub async fn read_all<'q>(pool: &Pool, query: impl Fn() -> Query<'q>) -> Result<Vec<AnyRow>, sqlx::Error> {
    if let Some((replicas, replica)) = replica(pool)
        && let Some(found) = on_replica!(replicas, replica, query, fetch_all)
    {
        return found;
    }
    query().fetch_all(&mut acquire(pool).await?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_has_no_replicas_and_says_which_setting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mesh = MeshConfig::default();
        let sqlite = super::super::connect(&format!("sqlite://{}", dir.path().join("x.db").display()), &mesh)
            .expect("a SQLite pool");
        let refused =
            sqlite.with_replicas("postgres://u:secret@r1/x", &mesh, "user", "--user-database-read-url");
        let Err(Error::Config(message)) = refused else { panic!("a read URL beside SQLite must be refused") };
        assert!(message.contains("--user-database-read-url") && message.contains("SQLite"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
