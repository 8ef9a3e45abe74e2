//! `shopmesh serve <service>` and `shopmesh migrate <service>`: one service of the list, with
//! the mesh's settings, its own, and where its upstreams are.

use std::net::SocketAddr;
use std::process::ExitCode;

use shopmesh::mesh::config::{MeshConfig, MetricsListen, TelemetryConfig};
use shopmesh::mesh::events::Broker;
use shopmesh::mesh::service::{Listeners, Mesh, MeshService};
use shopmesh::mesh::{db, server, shutdown};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use crate::services::{Job, One};
use crate::with_telemetry;

/// Binds `addr`, saying what for when it cannot.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what}: {e}"))
}

/// The mesh of `config` over the shopmesh API.
pub fn mesh_of(config: MeshConfig) -> anyhow::Result<Mesh> {
    Ok(Mesh::new(config, shopmesh::mesh_api())?)
}

/// `serve`: runs the service until a signal.
pub struct Serve<'a>(pub &'a Runtime);

impl Job for Serve<'_> {
    type Output = ExitCode;

    fn run<S: MeshService>(self, one: One<S>) -> ExitCode {
        let name = format!("shopmesh-{}", S::NAME);
        let telemetry = one.mesh.telemetry.clone();
        self.0.block_on(with_telemetry(&name, telemetry, serve_one(one)))
    }
}

async fn serve_one<S: MeshService>(one: One<S>) -> anyhow::Result<()> {
    let One { mesh: config, config: own, upstreams } = one;
    let probe = match config.security.probe_listen {
        Some(addr) => Some(bind(addr, "probe port").await?),
        None => None,
    };
    let mut listeners = Listeners::new(bind(S::listen(&own), &format!("{} service", S::NAME)).await?);
    if let Some(probe) = probe {
        listeners = listeners.with_probe(probe);
    }
    let broker = Broker::for_services(&config.events, &[S::EVENTS], false).await?;
    let mut mesh = mesh_of(config)?.with_upstreams(upstreams.table);
    if let Some(broker) = &broker {
        mesh = mesh.with_broker(broker.clone());
    }
    // A broker not reachable at start is waited for while the service serves; one that then
    // refuses it for good (credentials, no JetStream) stops it, as it would have at start, but
    // as a signal does: NOT_SERVING, the calls in flight finished, then the exit with the reason.
    let (refusal, refused) = tokio::sync::oneshot::channel();
    let stop = async move {
        let failed = async {
            match broker {
                Some(broker) => broker.failed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown::signal() => {}
            why = failed => {
                tracing::error!(error = %why, "the events broker refused the service; draining, then stopping");
                let _ = refusal.send(why);
            }
        }
    };
    server::run::<S, _>(&mesh, own, listeners, stop).await?;
    match refused.await {
        Ok(why) => Err(why.into()),
        Err(_) => Ok(()),
    }
}

/// `migrate`: applies the service's migrations and exits.
pub struct Migrate<'a>(pub &'a Runtime);

impl Job for Migrate<'_> {
    type Output = ExitCode;

    fn run<S: MeshService>(self, one: One<S>) -> ExitCode {
        let name = format!("shopmesh-{}", S::NAME);
        // A one-off job: nothing would scrape it, and it must not take a service's port.
        let telemetry = TelemetryConfig { metrics_listen: MetricsListen(None), ..one.mesh.telemetry.clone() };
        self.0.block_on(with_telemetry(&name, telemetry, migrate(one)))
    }
}

async fn migrate<S: MeshService>(one: One<S>) -> anyhow::Result<()> {
    let pool = db::open(S::database_url(&one.config), &one.mesh, S::MIGRATIONS)
        .await
        .map_err(|e| anyhow::anyhow!("migrating the {} database: {e}", S::NAME))?;
    pool.close().await;
    tracing::info!(service = S::NAME, "migrations applied");
    Ok(())
}
