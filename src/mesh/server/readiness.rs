//! When a service may take calls. A service listens at once, so probes get an answer, but its
//! health (`""` and its own name) stays NOT_SERVING, and its calls are answered UNAVAILABLE,
//! until its database is migrated (or found migrated) and reachable. After that, readiness
//! follows its own database, checked on an interval (answering, and writable: not a server in
//! recovery), and never its callees: a dependency being down must not take every caller out of
//! its load balancer too (that cascades).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::mesh::Error;
use crate::mesh::config::MeshConfig;
use crate::mesh::db::{self, Backend, Migrations, Pool};
use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;

/// Longest a readiness check of the database may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What makes a service ready: its database, migrated and answering.
#[derive(Debug, Clone)]
pub struct Readiness {
    pool: Pool,
    backend: Backend,
    migrations: Migrations,
    migrate: bool,
    interval: Duration,
    /// True once the schema is up to date: what [`Readiness::prepared`] waits for.
    prepared: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Readiness {
    /// Readiness of the service whose database `url` the `pool` connects to. With
    /// `mesh.db_migrate` the service applies `migrations` itself; without, it waits until
    /// someone else (`shopmesh migrate`) has.
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported URL.
    pub fn new(url: &str, pool: Pool, migrations: Migrations, mesh: &MeshConfig) -> Result<Self, Error> {
        Ok(Self {
            pool,
            backend: Backend::of(url)?,
            migrations,
            migrate: mesh.db_migrate,
            interval: mesh.readiness_interval.max(Duration::from_millis(10)),
            prepared: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// How often the database is checked once ready.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Brings the schema up to date, or checks that it is.
    ///
    /// # Errors
    /// Why the database is not ready yet.
    pub async fn prepare(&self) -> Result<(), Error> {
        if self.migrate {
            db::migrate(&self.pool, self.backend, self.migrations).await?;
        } else {
            db::check_migrated(&self.pool, self.backend, self.migrations).await?;
        }
        self.prepared.send_replace(true);
        Ok(())
    }

    /// Completes once [`Readiness::prepare`] has succeeded. Work beside a service (the order
    /// reconciler) waits for it before touching the database: a SQLite connection that read
    /// the schema while migrations ran keeps that schema in memory, and a statement prepared
    /// on it later fails on what it misses (an `ON CONFLICT` target the next migration
    /// created is "not a UNIQUE constraint") instead of being prepared again.
    pub async fn prepared(&self) {
        let mut prepared = self.prepared.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = prepared.wait_for(|done| *done).await;
    }

    /// Whether the database answers now, and takes writes: a PostgreSQL server in recovery (a
    /// standby, or the old primary the name still points to while a failover settles) answers
    /// every write `25006`, so the service is not ready until the name or proxy leads to a
    /// primary again. One statement on the readiness interval, never on a call's path.
    pub async fn check(&self) -> bool {
        let sql = match self.backend {
            Backend::Sqlite => "SELECT 0",
            Backend::Postgres => "SELECT CAST(pg_is_in_recovery() AS INTEGER)",
        };
        // The simple protocol: one message, no prepared statement, right through any pooler.
        let ping = async {
            let mut conn = self.pool.acquire().await?;
            let row = sqlx::raw_sql(sql).fetch_one(&mut *conn).await?;
            sqlx::Row::try_get::<i64, _>(&row, 0)
        };
        matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(0)))
    }
}

/// Answers the service's calls with UNAVAILABLE until it has become ready once (health and
/// reflection pass). Later database outages are the handlers' to report, call by call.
#[derive(Debug, Clone)]
pub struct ReadyGateLayer {
    open: Arc<AtomicBool>,
}

impl ReadyGateLayer {
    /// A gate that opens when `open` becomes true.
    pub fn new(open: Arc<AtomicBool>) -> Self {
        Self { open }
    }
}

impl<S> Layer<S> for ReadyGateLayer {
    type Service = ReadyGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadyGate { inner, open: self.open.clone() }
    }
}

/// See [`ReadyGateLayer`].
#[derive(Debug, Clone)]
pub struct ReadyGate<S> {
    inner: S,
    open: Arc<AtomicBool>,
}

impl<S, B, ResBody> Service<Request<B>> for ReadyGate<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = GateFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.open.load(Ordering::Acquire) || Method::of(&request).infrastructure {
            return GateFuture::inner(self.inner.call(request));
        }
        GateFuture::refuse(&Refusal::NotReady)
    }
}

/// The response of a [`ReadyGate`] service: handed on, or answered at once.
pub type GateFuture<F, ResBody> = Answer<F, ResBody>;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::migrate::Migrator;

    use super::*;

    static EMPTY: Migrator = Migrator::DEFAULT;

    /// Work beside a service waits on `prepared`: it must not complete before the schema is
    /// up to date, and must complete once it is.
    #[tokio::test]
    async fn prepared_completes_only_once_the_schema_is_up_to_date() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/ready.db", dir.path().display());
        let mesh = MeshConfig::default();
        let pool = db::connect(&url, &mesh).expect("pool");
        let migrations = Migrations { sqlite: &EMPTY, postgres: &EMPTY };
        let readiness = Readiness::new(&url, pool, migrations, &mesh).expect("readiness");
        let waiting = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.prepared().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "completed before the schema was prepared");
        readiness.prepare().await.expect("prepare");
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("completes").expect("task");
        // Later waiters do not wait at all.
        tokio::time::timeout(Duration::from_secs(5), readiness.prepared()).await.expect("at once");
    }
}
