//! Server bootstrap: the service's routes plus health and reflection, served on a listener the
//! caller bound, until a shutdown signal, then drained within a hard timeout.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::mesh::deadline::ServerDeadlineLayer;
use crate::mesh::load_shed::LoadShedLayer;
use crate::mesh::message_size::MessageSizeLayer;
use crate::mesh::{Error, config::MeshConfig};

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
/// status, and reflection advertises only them. On shutdown every status turns NOT_SERVING
/// first (so balancers stop sending), then the server stops accepting and in-flight calls get
/// `shutdown_timeout` to finish before it stops anyway.
pub async fn serve<F>(
    mesh: &MeshConfig,
    services: &[&'static str],
    routes: Routes,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();

    let routes = routes
        .add_service(health)
        .add_service(reflection(services).build_v1().map_err(|e| Error::Config(e.to_string()))?)
        .add_service(reflection(services).build_v1alpha().map_err(|e| Error::Config(e.to_string()))?);

    // The routes are complete and the caller has opened its database, so the service can serve.
    for name in services {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    tracing::info!(%addr, services = ?services, "serving");

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = {
        let reporter = reporter.clone();
        let services = services.to_vec();
        async move {
            shutdown.await;
            for name in services.iter().chain(&[""]) {
                reporter.set_service_status(*name, ServingStatus::NotServing).await;
            }
            tracing::info!(%addr, "draining in-flight calls");
            let _ = draining_tx.send(());
        }
    };

    let limits = &mesh.server;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        // Closing old connections makes clients reconnect, and so spread over new replicas.
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(limits.max_connection_age_grace)
        // Outermost: refusing an excess call must cost nothing else.
        .layer(LoadShedLayer::new(limits.max_concurrent_requests))
        // The deadline covers everything the handler does, and the oversize answer below it.
        .layer(ServerDeadlineLayer)
        // Innermost: sees the decoder's answer for an oversized request.
        .layer(MessageSizeLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop);
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
    tracing::info!(%addr, "stopped");
    Ok(())
}
