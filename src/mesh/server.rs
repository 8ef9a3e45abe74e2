//! Server bootstrap: the service's routes plus health and reflection, served on a listener the
//! caller bound, until a shutdown signal, then drained within a hard timeout.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic_health::server::HealthReporter;

use crate::mesh::authz::{AuthzLayer, Policy};
use crate::mesh::bearer::{BearerAuthLayer, Verifier};
use crate::mesh::deadline::ServerDeadlineLayer;
use crate::mesh::load_shed::LoadShedLayer;
use crate::mesh::message_size::MessageSizeLayer;
use crate::mesh::metadata_size::MetadataSizeLayer;
use crate::mesh::observe::ServerObserveLayer;
use crate::mesh::peer::PeerLayer;
use crate::mesh::rate_limit::RateLimitLayer;
use crate::mesh::readiness::{Readiness, ReadyGateLayer};
use crate::mesh::tls::MeshTls;
use crate::mesh::{Error, config::MeshConfig};

/// The health service name that is SERVING for as long as the process runs: for liveness
/// probes, which must not fail (and restart the process) when only the database is down.
pub const LIVENESS: &str = "liveness";

/// Whether `path` is an infrastructure call (health, reflection), which overload shedding and
/// the readiness gate always let through.
pub fn is_infrastructure(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// Names under which reflection advertises the infrastructure services served beside each
/// service, so `grpcurl list` shows exactly what this port answers.
const INFRA_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// A reflection builder over every descriptor a client may need, advertising only `services`
/// and the infrastructure services beside them.
fn reflection(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest and friends, so grpcurl can decode error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    services.iter().chain(&INFRA_SERVICES).fold(builder, |b, name| b.with_service_name(*name))
}

/// Serves `routes` on `listener` with `grpc.health.v1` and server reflection (v1 and v1alpha)
/// beside them, until `shutdown` completes.
///
/// `services` are the fully-qualified names of the services in `routes`: each gets a health
/// status, and reflection advertises only them. They and `""` are NOT_SERVING until
/// `readiness` (the service's database; `None` for none) is ready, then follow it;
/// [`LIVENESS`] is SERVING throughout. On shutdown every status but liveness turns NOT_SERVING
/// at once (so balancers stop sending), the server keeps serving for the drain delay, then
/// stops accepting and gives in-flight calls `shutdown_timeout` to finish.
pub async fn serve<F>(
    mesh: &MeshConfig,
    services: &[&'static str],
    routes: Routes,
    listener: TcpListener,
    readiness: Option<Readiness>,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    // Before anything is served: a bad key set must stop the start, not fail every call.
    let verifier = Verifier::from_config(&mesh.jwt)?;
    let security = &mesh.security;
    let tls = MeshTls::load(security)?;
    let policy = security
        .authz_policy
        .as_deref()
        .map(Policy::load)
        .transpose()
        .map_err(|e| Error::Config(e.to_string()))?;
    let probe = probe_listener(security).await?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let probe_health = health.clone();
    // tonic-health reports "" SERVING from the start; nothing is ready until the database is.
    for name in services.iter().chain(&[""]) {
        reporter.set_service_status(*name, ServingStatus::NotServing).await;
    }
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let routes = routes
        .add_service(health)
        .add_service(reflection(services).build_v1().map_err(|e| Error::Config(e.to_string()))?)
        .add_service(reflection(services).build_v1alpha().map_err(|e| Error::Config(e.to_string()))?);

    let gate = Arc::new(AtomicBool::new(false));
    let tracker = tokio::spawn(track_readiness(readiness, reporter.clone(), services.to_vec(), gate.clone()));
    let tracker_handle = tracker.abort_handle();
    tracing::info!(%addr, services = ?services, mtls = tls.is_some(), authz = policy.is_some(), "listening");
    let probe_stop = tokio_util::sync::CancellationToken::new();
    if let Some(probe) = probe {
        tracing::info!(addr = ?probe.local_addr().ok(), "probe port: plaintext grpc.health.v1 only");
        // Nothing but health: probes carry no certificate, so this port must expose nothing else.
        let probe_server = Server::builder()
            .add_service(probe_health)
            .serve_with_incoming_shutdown(TcpIncoming::from(probe), probe_stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(err) = probe_server.await {
                tracing::error!(error = %err, "probe port failed");
            }
        });
    }

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_delay = mesh.drain_delay;
    let stop = {
        let reporter = reporter.clone();
        let services = services.to_vec();
        async move {
            shutdown.await;
            // Stopped first, so it cannot turn a status back to SERVING.
            tracker.abort();
            let _ = tracker.await;
            for name in services.iter().chain(&[""]) {
                reporter.set_service_status(*name, ServingStatus::NotServing).await;
            }
            if !drain_delay.is_zero() {
                tracing::info!(%addr, ?drain_delay, "NOT_SERVING; still serving while balancers let go");
                tokio::time::sleep(drain_delay).await;
            }
            tracing::info!(%addr, "no longer accepting; finishing in-flight calls");
            let _ = draining_tx.send(());
        }
    };
    let limits = &mesh.server;
    let rate_limit = RateLimitLayer::new(limits.rate_limit_rps, limits.rate_limit_burst);
    let housekeeping = rate_limit.housekeeping().map(tokio::spawn);
    let router = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // The hard cap on metadata; the metadata layer below answers the configured limit.
        .http2_max_header_list_size(limits.http2_header_list_cap())
        // Set explicitly, so an h2 upgrade cannot loosen the rapid-reset protection unnoticed.
        .http2_max_pending_accept_reset_streams(Some(limits.http2_max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.http2_max_local_error_reset_streams))
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // Closing old connections makes clients reconnect, and so spread over new replicas.
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
        // Outermost: the mTLS peer's identity and address, which every layer below may read.
        .layer(PeerLayer)
        // Every call, shed or refused or not, is traced and counted.
        .layer(ServerObserveLayer)
        // Before shedding: a refused caller must not take a slot from allowed ones.
        .layer(AuthzLayer::new(policy))
        // Refusing an excess call must cost nothing beyond being counted.
        .layer(LoadShedLayer::new(limits.max_concurrent_requests))
        // Cheap, and before any layer reads metadata (a huge token is refused unparsed).
        .layer(MetadataSizeLayer::new(limits.max_metadata_bytes as usize))
        // Before the database is ready, calls get UNAVAILABLE rather than "no such table".
        .layer(ReadyGateLayer::new(gate))
        // Needs the mesh identity (mTLS, outside this stack); gives the rate limiter a subject.
        .layer(BearerAuthLayer::new(verifier))
        // After authentication, so a caller is its verified identity or subject, not an
        // address a gateway shares among many users; refusals are still cheap.
        .layer(rate_limit)
        // The deadline covers everything the handler does, and the oversize answer below it.
        .layer(ServerDeadlineLayer)
        // Innermost: sees the decoder's answer for an oversized request.
        .layer(MessageSizeLayer)
        .add_routes(routes);
    let server = match tls {
        Some(tls) => futures::future::Either::Left(router.serve_with_incoming_shutdown(
            crate::mesh::tls_incoming::incoming(listener, tls, security.tls_handshake_timeout),
            stop,
        )),
        None => futures::future::Either::Right(
            router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stop),
        ),
    };
    tokio::pin!(server);
    let hard_stop = async {
        // Only a shutdown that has begun starts the clock; if the server ends on its own the
        // sender is dropped and this waits forever, leaving the server's result to win.
        if draining_rx.await.is_ok() {
            tokio::time::sleep(mesh.shutdown_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        res = &mut server => res?,
        () = hard_stop => tracing::warn!(
            %addr,
            timeout = ?mesh.shutdown_timeout,
            "in-flight calls did not finish within the shutdown timeout; stopping anyway"
        ),
    }
    tracker_handle.abort();
    if let Some(task) = housekeeping {
        task.abort();
    }
    probe_stop.cancel();
    tracing::info!(%addr, "stopped");
    Ok(())
}

/// The plaintext probe port's listener: the one a test bound in advance, or `--probe-listen`.
async fn probe_listener(
    security: &crate::mesh::config::SecurityConfig,
) -> Result<Option<TcpListener>, Error> {
    if let Some(listener) = security.probe_listener.take() {
        listener.set_nonblocking(true)?;
        return Ok(Some(TcpListener::from_std(listener)?));
    }
    match security.probe_listen {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| Error::Config(format!("cannot listen on the probe address {addr}: {e}"))),
        None => Ok(None),
    }
}

/// Sets the health of `services` and `""` from `readiness`: NOT_SERVING until the database is
/// prepared (retrying with backoff), then whatever the periodic check says. Opens `gate` once.
async fn track_readiness(
    readiness: Option<Readiness>,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    gate: Arc<AtomicBool>,
) {
    let set = |status: ServingStatus| {
        let reporter = reporter.clone();
        let services = services.clone();
        async move {
            for name in services.iter().chain(&[""]) {
                reporter.set_service_status(*name, status).await;
            }
        }
    };
    let Some(readiness) = readiness else {
        gate.store(true, Ordering::Release);
        set(ServingStatus::Serving).await;
        return;
    };
    let mut backoff = Duration::from_millis(50);
    while let Err(err) = readiness.prepare().await {
        tracing::warn!(error = %err, retry_in = ?backoff, "database not ready; NOT_SERVING");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    gate.store(true, Ordering::Release);
    set(ServingStatus::Serving).await;
    tracing::info!(services = ?services, "ready: SERVING");
    let mut ready = true;
    loop {
        tokio::time::sleep(readiness.interval()).await;
        let now = readiness.check().await;
        if now != ready {
            ready = now;
            if ready {
                tracing::info!(services = ?services, "database answers again: SERVING");
                set(ServingStatus::Serving).await;
            } else {
                tracing::warn!(services = ?services, "database does not answer: NOT_SERVING");
                set(ServingStatus::NotServing).await;
            }
        }
    }
}
