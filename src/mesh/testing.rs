//! Test helpers (feature `testing`): a database per test on each backend, and services spawned
//! on 127.0.0.1:0 over real sockets.
//!
//! Every test runs on SQLite (a file in a fresh temporary directory). When
//! `SHOPMESH_TEST_POSTGRES_URL` names a PostgreSQL server (any database on it; the role needs
//! CREATEDB), every test also runs there, each in a database of its own. With `CI` set, a
//! missing variable is an error rather than a silent skip.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::mesh::server;
use crate::mesh::service::{Listeners, Mesh, MeshService};
use crate::mesh::{Error, config::MeshConfig};

/// The variable naming the PostgreSQL server that tests also run against.
pub const POSTGRES_ENV: &str = "SHOPMESH_TEST_POSTGRES_URL";

/// A database engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the server named by [`POSTGRES_ENV`].
    Postgres,
}

/// The backends this run covers: SQLite always, PostgreSQL when [`POSTGRES_ENV`] is set.
///
/// # Panics
/// Under CI (`CI` set) when [`POSTGRES_ENV`] is not: CI must prove both engines.
pub fn backends() -> Vec<Backend> {
    match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => vec![Backend::Sqlite, Backend::Postgres],
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {POSTGRES_ENV} is not: the PostgreSQL tests would be skipped"
            );
            vec![Backend::Sqlite]
        }
    }
}

/// A database that exists for one test. SQLite files go with the temporary directory; a
/// PostgreSQL database is dropped by [`TestDb::drop_database`], or by the next `.ci/run`.
#[derive(Debug)]
pub struct TestDb {
    /// The URL a service connects with.
    pub url: String,
    /// Which engine it is on.
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

/// Creates an empty database on `backend`, named after `label` for debugging.
///
/// # Panics
/// When the database cannot be created: the test cannot run.
pub async fn database(backend: Backend, label: &str) -> TestDb {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("create temporary directory");
            let url = format!("sqlite://{}/{label}.db", dir.path().display());
            TestDb { url, backend, _dir: Some(dir) }
        }
        Backend::Postgres => {
            let admin = std::env::var(POSTGRES_ENV).expect("PostgreSQL URL for tests");
            let name = format!("shopmesh_t_{label}_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::postgres::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {POSTGRES_ENV}: {e}"));
            conn.execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .await
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
            let _ = conn.close().await;
            TestDb { url: with_database(&admin, &name), backend, _dir: None }
        }
    }
}

impl TestDb {
    /// Drops a PostgreSQL test database (SQLite files go with their directory on drop).
    pub async fn drop_database(self) {
        if self.backend == Backend::Postgres
            && let Ok(admin) = std::env::var(POSTGRES_ENV)
            && let Ok(mut conn) = sqlx::postgres::PgConnection::connect(&admin).await
        {
            let name = self.url.rsplit('/').next().unwrap_or_default().split('?').next();
            if let Some(name) = name {
                let _ = conn
                    .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .await;
            }
            let _ = conn.close().await;
        }
    }
}

/// `url` with its database name replaced by `name`, keeping any query parameters.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Settings for services under test: short shutdown, small pools (five connections each, so
/// the tests running at once stay within PostgreSQL's 100), frequent readiness checks.
pub fn mesh_config() -> MeshConfig {
    MeshConfig {
        shutdown_timeout: Duration::from_secs(2),
        readiness_interval: Duration::from_millis(50),
        db_max_connections: Some(5),
        db_acquire_timeout: Duration::from_secs(5),
        ..MeshConfig::default()
    }
}

/// A service running in this process on a real socket.
#[derive(Debug)]
pub struct Spawned {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Spawned {
    /// `http://addr`, for a client channel.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the service to shut down and returns how its `run` ended.
    ///
    /// # Panics
    /// If the service task panicked.
    pub async fn stop(self) -> Result<(), Error> {
        self.stop.cancel();
        self.task.await.expect("service task panicked")
    }
}

/// Binds 127.0.0.1:0, runs `run(listener, shutdown)` on a task, and returns once the service
/// answers health checks with SERVING for `service` (or panics after 30 s).
pub async fn spawn<R, Fut>(service: &str, run: R) -> Spawned
where
    R: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    spawn_on(listener, service, run).await
}

/// Like [`spawn`], on a listener the test bound itself (to bring a service up at an address
/// its callers already use).
pub async fn spawn_on<R, Fut>(listener: TcpListener, service: &str, run: R) -> Spawned
where
    R: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let addr = listener.local_addr().expect("local addr");
    let spawned = start_on(listener, run);
    wait_serving(addr, service).await;
    spawned
}

/// Runs `run(listener, shutdown)` on a task without waiting for it to be SERVING (to watch a
/// service that is not ready).
pub fn start_on<R, Fut>(listener: TcpListener, run: R) -> Spawned
where
    R: FnOnce(TcpListener, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let addr = listener.local_addr().expect("local addr");
    let stop = CancellationToken::new();
    let shutdown = Box::pin(stop.clone().cancelled_owned());
    let task = tokio::spawn(run(listener, shutdown));
    Spawned { addr, stop, task }
}

/// A plaintext probe port bound on 127.0.0.1:0, for services whose own port requires mutual
/// TLS: pass it in [`Listeners::with_probe`] and wait for SERVING on `addr`.
#[derive(Debug)]
pub struct Probe {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The bound listener.
    pub listener: TcpListener,
}

/// Binds a [`Probe`] port on 127.0.0.1:0.
///
/// # Panics
/// If 127.0.0.1:0 cannot be bound.
pub async fn probe() -> Probe {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    Probe { addr: listener.local_addr().expect("local addr"), listener }
}

/// Like [`spawn`], but waits for SERVING on the plaintext `probe` port instead of the
/// service's own port, which may require mutual TLS; `run` gets both listeners.
pub async fn spawn_probed<R, Fut>(service: &str, probe: Probe, run: R) -> Spawned
where
    R: FnOnce(Listeners, futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let probe_addr = probe.addr;
    let spawned = start_on(listener, move |listener, shutdown| {
        run(Listeners::new(listener).with_probe(probe.listener), shutdown)
    });
    wait_serving(probe_addr, service).await;
    spawned
}

/// The mesh of a test process: `config` over the shopmesh API, without a broker (events are
/// recorded in outboxes and dropped, `--events-url none`); tests of events give theirs with
/// [`Mesh::with_broker`].
///
/// # Panics
/// If `config` names files that do not load.
pub fn mesh(config: MeshConfig) -> Mesh {
    Mesh::new(config, crate::mesh_api())
        .expect("mesh settings load")
        .with_broker(crate::mesh::events::Broker::Discard)
}

/// The address a service's settings name when a test binds its listener itself.
pub const ANY_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A loopback port where nothing listens yet, held so that no other socket can take it: a
/// dependency that is down, at an address it can come back on ([`Refusing::listen`]).
///
/// Binding 127.0.0.1:0 and dropping the listener leaves the port free, and a service another
/// test starts meanwhile may be given it: calls meant to be refused then reach that service (a
/// test that expects UNAVAILABLE sees INTERNAL). This socket is bound and does not listen, so
/// connecting is refused at once, and the kernel gives its port to no `127.0.0.1:0` bind: when
/// it picks a port, a bound socket counts as taken even with `SO_REUSEADDR` on both, which is set
/// here as on every listener tokio binds, so that [`Refusing::at`] can hold the port again after
/// a service on it stops.
#[derive(Debug)]
pub struct Refusing {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl Refusing {
    /// Binds a fresh loopback port without listening on it.
    ///
    /// # Panics
    /// If no socket can be bound.
    pub fn bind() -> Self {
        Self::at(ANY_PORT)
    }

    /// Holds `addr`, where a service the test stopped was listening, so that connecting there
    /// keeps being refused. `SO_REUSEADDR` lets it bind beside the stopped service's closing
    /// connections (accepted on a listener that had it set too, as tokio's have).
    ///
    /// # Panics
    /// If `addr` cannot be bound (something listens there).
    pub fn at(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).unwrap_or_else(|e| panic!("hold {addr}: {e}"));
        let addr = socket.local_addr().expect("the bound address");
        Self { socket, addr }
    }

    /// The address, where connecting is refused until [`Refusing::listen`].
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts listening on the held port, for a service to come up at the address.
    ///
    /// # Panics
    /// If the socket cannot listen.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listen on the held port")
    }
}

/// Runs service `S` with `config` on 127.0.0.1:0 and returns once it is SERVING.
pub async fn spawn_service<S: MeshService>(mesh: &Mesh, config: S::Config) -> Spawned {
    let mesh = mesh.clone();
    spawn(S::GRPC_SERVICE, move |listener, shutdown| async move {
        server::run::<S, _>(&mesh, config, Listeners::new(listener), shutdown).await
    })
    .await
}

/// Like [`spawn_service`], on a listener the test bound itself.
pub async fn spawn_service_on<S: MeshService>(
    listener: TcpListener,
    mesh: &Mesh,
    config: S::Config,
) -> Spawned {
    let mesh = mesh.clone();
    spawn_on(listener, S::GRPC_SERVICE, move |listener, shutdown| async move {
        server::run::<S, _>(&mesh, config, Listeners::new(listener), shutdown).await
    })
    .await
}

/// Like [`spawn_service`], without waiting for it to be SERVING.
pub fn start_service_on<S: MeshService>(listener: TcpListener, mesh: &Mesh, config: S::Config) -> Spawned {
    let mesh = mesh.clone();
    start_on(listener, move |listener, shutdown| async move {
        server::run::<S, _>(&mesh, config, Listeners::new(listener), shutdown).await
    })
}

/// Like [`spawn_service`], with a plaintext probe port; returns it too.
pub async fn spawn_service_probed<S: MeshService>(mesh: &Mesh, config: S::Config) -> (Spawned, SocketAddr) {
    let mesh = mesh.clone();
    let probe = probe().await;
    let addr = probe.addr;
    let spawned = spawn_probed(S::GRPC_SERVICE, probe, move |listeners, shutdown| async move {
        server::run::<S, _>(&mesh, config, listeners, shutdown).await
    })
    .await;
    (spawned, addr)
}

/// Waits until `service` at `addr` is SERVING.
///
/// # Panics
/// If it is not SERVING within 30 seconds.
pub async fn wait_serving(addr: SocketAddr, service: &str) {
    let ok =
        crate::mesh::health::wait_serving(&format!("http://{addr}"), service, Duration::from_secs(30)).await;
    assert!(ok, "{service} at {addr} not SERVING after 30s");
}

/// The fields named by a status's `google.rpc.BadRequest` details, in order.
pub fn field_violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

/// The `type` of a status's first `google.rpc.PreconditionFailure` violation, if any.
pub fn precondition(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .precondition_failure()
        .and_then(|p| p.violations.first().map(|v| v.r#type.clone()))
}

/// The error hyper gives a request it never wrote: a real HTTP/2 connection that its server
/// closes (as a pod that goes away does), then a request on it.
pub async fn request_never_written() -> hyper::Error {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        // The handshake, then the connection dropped: the client reads EOF.
        drop(h2::server::handshake(server_io).await.expect("server handshake"));
    });
    let io = hyper_util::rt::TokioIo::new(client_io);
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .expect("client handshake");
    server.await.expect("server ends");
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .map(drop)
        .expect("the client sees the connection end");
    let request = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    send.send_request(request).await.expect_err("the connection is gone")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }

    /// A held port refuses connections, is given to none of 2 000 `127.0.0.1:0` binds while held
    /// (a dropped listener's port was given to one in 4 of 20 such runs), and serves once listening;
    /// after that listener closes, [`Refusing::at`] holds the port again.
    #[tokio::test]
    async fn a_held_port_refuses_connections_and_no_other_bind_is_given_it() {
        let held = Refusing::bind();
        let addr = held.addr();
        let refused = tokio::net::TcpStream::connect(addr).await.expect_err("nothing listens");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
        let mut others = Vec::new();
        for _ in 0..2_000 {
            let other = TcpListener::bind(ANY_PORT).await.expect("bind");
            assert_ne!(other.local_addr().expect("addr"), addr, "the held port was given away");
            others.push(other);
            if others.len() > 500 {
                others.remove(0);
            }
        }
        let listener = held.listen();
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server_side, _) = accepted.expect("accepted on the held port");
        drop((server_side, listener));
        let again = Refusing::at(addr);
        let refused = tokio::net::TcpStream::connect(again.addr()).await.expect_err("held again");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    }
}
