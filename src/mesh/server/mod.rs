//! Server bootstrap: a service's routes plus health and reflection, served on listeners the
//! caller bound, until a shutdown signal, then drained within a hard timeout.
//!
//! The server stack, outermost first (this list and [`serve`]'s `.layer(..)` lines are the
//! one place its order is written; each line there says why its layer sits where it does):
//!
//! 1. tonic's HTTP/2 server: stream limit, keepalive, connection age, header-list hard cap,
//!    reset-stream limits; with mutual TLS, [`incoming`](crate::mesh::security::incoming)
//!    runs each handshake before tonic sees the connection.
//! 2. [`method`]: the called method, looked up once in the catalogue.
//! 3. [`peer`]: the mTLS peer's identity and address as extensions.
//! 4. [`observe`](crate::mesh::telemetry::observe): span continuing the caller's trace (with
//!    authentication on, only a caller with a mesh identity's), RED metrics.
//! 5. [`authz`](crate::mesh::security::authz): per-method policy (UNAUTHENTICATED,
//!    PERMISSION_DENIED).
//! 6. [`metadata_size`]: oversized metadata, RESOURCE_EXHAUSTED.
//! 7. [`bearer`](crate::mesh::security::bearer): bearer tokens → the call's `Principal`
//!    (UNAUTHENTICATED; RESOURCE_EXHAUSTED past a caller's checks of new tokens).
//! 8. [`request_read`]: the request message read within the read timeout, within the caller's,
//!    the connection's and the port's shares of the read buffer, before any slot is taken
//!    (DEADLINE_EXCEEDED when late, RESOURCE_EXHAUSTED when a share is full).
//! 9. [`load_shed`]: bounded concurrency, per server, connection and identity; RESOURCE_EXHAUSTED
//!    at once.
//! 10. [`readiness`]: UNAVAILABLE until the database is ready.
//! 11. [`rate_limit`]: per caller.
//! 12. [`deadline`]: the caller's `grpc-timeout` becomes the handler's deadline.
//! 13. [`read_route`]: a read-only call may read from a replica; a write's answer carries the
//!     token that sends its caller's next reads to the primary.
//! 14. [`message_size`]: oversized messages, RESOURCE_EXHAUSTED.
//! 15. The router: health, reflection, the service.
//!
//! In the all-in-one run the same stack (2. to 15.) also takes in-process calls from the
//! process's other services ([`client::local`](crate::mesh::client::local)): no socket, so no
//! 1., with the caller's identity and address set as the connection would set them, and
//! tonic's recovery of a layer's error into a status, which its server adds per connection.
//!
//! The plaintext probe port serves health alone, with the same HTTP/2 limits (1.) and the
//! same read timeout and bounds (8., 9.); it reads no other message.
//!
//! What each refusal tells the caller is decided in one place,
//! [`respond`](crate::mesh::grpc::respond).

pub mod caller_deadline;
pub mod config;
pub mod load_shed;
pub mod message_size;
pub mod metadata_size;
pub mod method;
pub mod peer;
pub mod per_key;
pub mod rate_limit;
pub mod read_route;
pub mod readiness;
pub mod request_read;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::mesh::Error;
use crate::mesh::client::local::LocalServer;
use crate::mesh::db;
use crate::mesh::grpc::catalogue::INFRASTRUCTURE_SERVICES;
use crate::mesh::security::authz::AuthzLayer;
use crate::mesh::security::bearer::BearerAuthLayer;
use crate::mesh::service::{Listeners, Mesh, MeshService};
use crate::mesh::telemetry::observe::ServerObserveLayer;
use caller_deadline::ServerDeadlineLayer;
use load_shed::LoadShedLayer;
use message_size::MessageSizeLayer;
use metadata_size::MetadataSizeLayer;
use method::MethodLayer;
use peer::PeerLayer;
use rate_limit::RateLimitLayer;
use readiness::{Readiness, ReadyGateLayer};
use request_read::{ReadBudget, RequestReadLayer};

/// A server builder with the HTTP/2 limits of `limits`: the service port and the probe port
/// both get them, since either may face hostile peers.
fn builder(limits: &crate::mesh::config::ServerConfig) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        // The hard cap on metadata; the metadata layer answers the configured limit.
        .http2_max_header_list_size(limits.http2_header_list_cap())
        // Set explicitly, so an h2 upgrade cannot loosen the rapid-reset protection unnoticed.
        .http2_max_pending_accept_reset_streams(Some(limits.http2_max_pending_accept_reset_streams))
        .http2_max_local_error_reset_streams(Some(limits.http2_max_local_error_reset_streams))
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // Closing old connections makes clients reconnect, and so spread over new replicas.
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
}

/// The wait for request messages that `limits` sets (one budget of bytes per port).
fn request_read(limits: &crate::mesh::config::ServerConfig) -> RequestReadLayer {
    RequestReadLayer::new(
        limits.request_read_timeout,
        limits.max_message_bytes,
        ReadBudget {
            server: limits.max_buffered_request_bytes,
            per_connection: limits.max_buffered_request_bytes_per_connection,
            per_caller: limits.max_buffered_request_bytes_per_caller,
        },
    )
}

/// The bounds on calls in progress that `limits` sets (one instance per port).
fn load_shed(limits: &crate::mesh::config::ServerConfig) -> LoadShedLayer {
    LoadShedLayer::new(limits.max_concurrent_requests)
        .per_connection(limits.max_concurrent_requests_per_connection)
        .per_identity(limits.max_concurrent_requests_per_identity)
}

/// `stack` as a callee's server for in-process calls: the response as a connection would carry
/// it (a body, no extensions of the server's).
fn local_server<S, B>(stack: S) -> LocalServer
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    use tower::ServiceExt as _;
    LocalServer::new(stack.map_err(Into::into).map_response(|response: http::Response<B>| {
        let (mut parts, body) = response.into_parts();
        parts.extensions.clear();
        http::Response::from_parts(parts, tonic::body::Body::new(body))
    }))
}

/// The health service name that is SERVING for as long as the process runs: for liveness
/// probes, which must not fail (and restart the process) when only the database is down.
pub const LIVENESS: &str = "liveness";

/// A reflection builder over every descriptor a client may need, advertising only `services`
/// and the infrastructure services beside them.
fn reflection(
    descriptors: &'static [u8],
    services: &[&'static str],
) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.BadRequest and friends, so grpcurl can decode error details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    services.iter().chain(&INFRASTRUCTURE_SERVICES).fold(builder, |b, name| b.with_service_name(*name))
}

/// Runs service `S` with `config` on `listeners` until `shutdown` completes: opens its
/// database pool (migrated, or waited for, behind the readiness gate), starts it, serves it,
/// and closes the pool once it has stopped.
///
/// # Errors
/// Why it could not start or stopped with an error.
pub async fn run<S, F>(mesh: &Mesh, config: S::Config, listeners: Listeners, shutdown: F) -> Result<(), Error>
where
    S: MeshService,
    F: Future<Output = ()> + Send + 'static,
{
    S::describe_metrics();
    let url = S::database_url(&config);
    let pool = db::connect(url, mesh.config())?.named(S::NAME);
    let pool = match S::database_read_url(&config).filter(|read| !read.trim().is_empty()) {
        Some(read) => {
            pool.with_replicas(read, mesh.config(), S::NAME, &format!("--{}-database-read-url", S::NAME))?
        }
        None => pool,
    };
    let readiness = Readiness::new(url, pool.clone(), S::MIGRATIONS, mesh.config())?;
    let started = S::start(mesh, &config, pool.clone()).await?;
    // Started once the schema is up to date (see `Readiness::prepared`); stopped with the
    // server, and stopping them at any point must be safe.
    let beside: Vec<_> = started
        .beside
        .into_iter()
        .map(|task| {
            let readiness = readiness.clone();
            tokio::spawn(async move {
                readiness.prepared().await;
                task.await;
            })
        })
        .collect();
    let result =
        serve(Some(S::NAME), mesh, &[S::GRPC_SERVICE], started.routes, listeners, Some(readiness), shutdown)
            .await;
    for task in beside {
        task.abort();
    }
    pool.close().await;
    pool.close_replicas().await;
    result
}

/// Serves `routes` on `listeners` with `grpc.health.v1` and server reflection (v1 and v1alpha)
/// beside them, until `shutdown` completes.
///
/// `services` are the fully-qualified names of the services in `routes`: each gets a health
/// status, and reflection advertises only them. They and `""` are NOT_SERVING until
/// `readiness` (the service's database; `None` for none) is ready, then follow it;
/// [`LIVENESS`] is SERVING throughout. On shutdown every status but liveness turns NOT_SERVING
/// at once (so balancers stop sending), the server keeps serving for the drain delay, then
/// stops accepting and gives in-flight calls `shutdown_timeout` to finish.
///
/// `name` is the service's short name, when it is one of the mesh's: while it serves, callers
/// in this process reach it without a socket, when the mesh has it among its local servers
/// ([`Mesh::with_local_servers`]).
///
/// # Errors
/// Why it could not serve.
pub async fn serve<F>(
    name: Option<&str>,
    mesh: &Mesh,
    services: &[&'static str],
    routes: Routes,
    listeners: Listeners,
    readiness: Option<Readiness>,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let Listeners { service: listener, probe } = listeners;
    let addr = listener.local_addr()?;
    let config = mesh.config();
    let security = &config.security;
    // Refused before anything is served: a port other hosts reach, open to every caller.
    if !addr.ip().to_canonical().is_loopback() && !mesh.authenticates_every_call() && !security.allow_insecure
    {
        return Err(Error::Config(format!(
            "refusing to serve {addr} without authentication: other hosts can reach it, and any \
             caller could call every method in plaintext. Turn on mutual TLS (--tls-cert, --tls-key, \
             --tls-ca) or bearer tokens required of every caller (--jwt-jwks, --jwt-issuer, \
             --jwt-audience, --jwt-require unidentified), listen on a loopback address, or accept \
             the risk with --allow-insecure (SHOPMESH_ALLOW_INSECURE=true)"
        )));
    }
    let tls = mesh.tls().cloned();
    let (reporter, health) = tonic_health::server::health_reporter();
    let probe_health = health.clone();
    // tonic-health reports "" SERVING from the start; nothing is ready until the database is.
    for name in services.iter().chain(&[""]) {
        reporter.set_service_status(*name, ServingStatus::NotServing).await;
    }
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;

    let descriptors = mesh.api().file_descriptor_set;
    let routes = routes
        .add_service(health)
        .add_service(reflection(descriptors, services).build_v1().map_err(|e| Error::Config(e.to_string()))?)
        .add_service(
            reflection(descriptors, services).build_v1alpha().map_err(|e| Error::Config(e.to_string()))?,
        );

    let gate = Arc::new(AtomicBool::new(false));
    let tracker = tokio::spawn(track_readiness(readiness, reporter.clone(), services.to_vec(), gate.clone()));
    let tracker_handle = tracker.abort_handle();
    tracing::info!(%addr, services = ?services, mtls = tls.is_some(), authz = mesh.policy().is_some(), "listening");
    let probe_stop = tokio_util::sync::CancellationToken::new();
    let limits = &config.server;
    if let Some(probe) = probe {
        tracing::info!(addr = ?probe.local_addr().ok(), "probe port: plaintext grpc.health.v1 only");
        // Nothing but health: probes carry no certificate, so this port must expose nothing else.
        let probe_server = builder(limits)
            .layer(MethodLayer::new(mesh.api().catalogue))
            // A health request, too, must arrive in time, and hold a slot only while answered;
            // nothing else is read here (the router answers it UNIMPLEMENTED).
            .layer(request_read(limits).health_only())
            .layer(load_shed(limits))
            .add_service(probe_health)
            .serve_with_incoming_shutdown(TcpIncoming::from(probe), probe_stop.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(err) = probe_server.await {
                tracing::error!(error = %err, "probe port failed");
            }
        });
    }

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_delay = config.drain_delay;
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
    let rate_limit = RateLimitLayer::new(limits.rate_limit_rps, limits.rate_limit_burst);
    let housekeeping = rate_limit.housekeeping().map(tokio::spawn);
    let layers = tower::ServiceBuilder::new()
        // Outermost: the method, looked up once, which every layer below reads.
        .layer(MethodLayer::new(mesh.api().catalogue))
        // The mTLS peer's identity and address, which every layer below may read.
        .layer(PeerLayer)
        // Every call, shed or refused or not, is traced and counted.
        .layer(ServerObserveLayer::new(mesh.authenticates(), mesh.api().catalogue))
        // Before shedding: a refused caller must not take a slot from allowed ones.
        .layer(AuthzLayer::new(mesh.policy().cloned()))
        // Cheap, and before any layer reads metadata (a huge token is refused unparsed).
        .layer(MetadataSizeLayer::new(limits.max_metadata_bytes as usize))
        // Before the message is read: a caller that has not proved who it is holds no buffer.
        // Needs the mesh identity (mTLS, outside this stack); gives the layers below and the
        // handler the call's principal. Cheap for known tokens, bounded per caller for new ones.
        .layer(BearerAuthLayer::new(mesh.verifier().cloned(), mesh.policy().cloned()))
        // Before shedding: a call waiting for its message holds no slot, so clients that send
        // HEADERS and never DATA cannot lock others out; within per-caller and per-connection
        // shares, so one client cannot take the port's buffer either.
        .layer(request_read(limits))
        // Refusing an excess call must cost nothing beyond being counted.
        .layer(load_shed(limits))
        // Before the database is ready, calls get UNAVAILABLE rather than "no such table".
        .layer(ReadyGateLayer::new(gate))
        // After authentication, so a caller is its verified identity or subject, not an
        // address a gateway shares among many users; refusals are still cheap.
        .layer(rate_limit)
        // The deadline covers everything the handler does, and the oversize answer below it.
        .layer(ServerDeadlineLayer::new(config.client.call_timeout))
        // Around the handler alone: its reads see whether the call is read-only, and a write's
        // token is stamped once the handler has answered (committed).
        .layer(read_route::ReadRouteLayer::default())
        // Innermost: sees the decoder's answer for an oversized or undecodable request.
        .layer(MessageSizeLayer);
    // The same stack, for callers in this process (the all-in-one run): what the listener's
    // connections get, with tonic's recovery of layer errors into statuses, which its server
    // adds per connection.
    let _serving_locally = match (name, mesh.local_servers()) {
        (Some(name), Some(local)) => {
            let stack = tower::ServiceBuilder::new()
                .layer(tonic::service::RecoverErrorLayer::new())
                .service(layers.service(routes.clone().prepare()));
            local.serve(name, local_server(stack))
        }
        _ => None,
    };
    let router = builder(limits).layer(layers).add_routes(routes);
    let server = match tls {
        Some(tls) => futures::future::Either::Left(router.serve_with_incoming_shutdown(
            crate::mesh::security::incoming::incoming(
                listener,
                tls,
                security.tls_handshake_timeout,
                security.tls_max_pending_handshakes as usize,
            ),
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
            tokio::time::sleep(config.shutdown_timeout).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        res = &mut server => res?,
        () = hard_stop => tracing::warn!(
            %addr,
            timeout = ?config.shutdown_timeout,
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
                tracing::info!(services = ?services, "database answers again and takes writes: SERVING");
                set(ServingStatus::Serving).await;
            } else {
                tracing::warn!(services = ?services, "database does not answer, or is in recovery (read-only): NOT_SERVING");
                set(ServingStatus::NotServing).await;
            }
        }
    }
}
