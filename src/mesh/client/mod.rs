//! Client bootstrap: the stack every call to another service goes through.
//!
//! Layers, outermost first (this list is the one place the client stack's order is written):
//! 1. [`ClientObserve`]: the call's span (sent on as `traceparent`) and its duration metric,
//!    retries included.
//! 2. [`ClientDeadline`](call_deadline::ClientDeadline): the call's deadline (the handled request's
//!    remaining time minus a margin, capped per method), sent as `grpc-timeout`; out of time
//!    means not sent at all.
//! 3. [`Retry`](retry::Retry): repeats UNAVAILABLE answers of repeatable calls within the
//!    deadline and the retry budget; below the deadline so each attempt is sent the time
//!    actually left.
//! 4. [`Route`]: where the attempt goes. Over the network, [`Balanced`](balance::Balanced):
//!    power-of-two-choices over every endpoint of the target, ejecting failing ones; below the
//!    retries so a retry can land on another replica. In-process, [`Local`](local::Local): the
//!    callee's own server stack in this process, without a socket (the all-in-one run).
//!
//! Most services get their channels from [`Mesh::channel`](crate::mesh::service::Mesh::channel).

pub mod balance;
pub mod call_deadline;
pub mod config;
pub mod local;
pub mod retry;
pub mod service_config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::Either;
use http::{Request, Response};
use tower::{BoxError, Service};

use tokio::sync::watch;

use crate::mesh::Error;
use crate::mesh::config::ClientConfig;
use crate::mesh::grpc::catalogue::Catalogue;
use crate::mesh::identity::SpiffeId;
use crate::mesh::security::connect::TlsConnector;
use crate::mesh::security::tls::MeshTls;
use crate::mesh::telemetry::observe::{ClientObserve, ClientObserveLayer};
use balance::{Balanced, BalancedFuture, Source};
use call_deadline::{ClientDeadline, ClientDeadlineLayer};
use local::{Local, LocalFuture};
use retry::{Retry, RetryLayer};

/// A channel to one service through the mesh's client stack; hand it to a generated client
/// (`UserServiceClient::new(channel)`). Clones share connections, balancer and retry budget.
pub type Channel = ClientObserve<ClientDeadline<Retry<Route>>>;

/// Where a channel's calls go: over the network to the target's endpoints, or into a service
/// of this process. One type, so a service's code is the same whichever way its calls go.
#[derive(Debug, Clone)]
pub enum Route {
    /// Balanced over the target's endpoints, over HTTP/2.
    Network(Balanced),
    /// The callee's server stack in this process.
    Local(Local),
}

impl Service<Request<Bytes>> for Route {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Either<BalancedFuture, LocalFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::Network(balanced) => balanced.poll_ready(cx),
            Self::Local(local) => local.poll_ready(cx),
        }
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        match self {
            Self::Network(balanced) => Either::Left(balanced.call(request)),
            Self::Local(local) => Either::Right(local.call(request)),
        }
    }
}

/// A channel to `target`: `http://host:port`, or several comma-separated; DNS names are
/// re-resolved every `resolve_interval` and calls spread over all addresses. Calls are retried
/// as `catalogue` allows; with `tls`, each connection presents this service's certificate and
/// accepts any server of the mesh's CA and trust domain (a service calling another of the mesh
/// pins that one's identity with [`pinned_channel`]).
///
/// Connections are made lazily, so a dependency that is down at start fails calls with
/// UNAVAILABLE instead of stopping this service from starting.
///
/// # Errors
/// [`Error::Config`] for a malformed target or out-of-range retry settings.
pub async fn channel(
    target: &str,
    config: &ClientConfig,
    catalogue: Catalogue,
    tls: Option<&MeshTls>,
) -> Result<Channel, Error> {
    let source = Source::parse(target)?;
    build(target, source, config, catalogue, tls.cloned().map(TlsConnector::new)).await
}

/// As [`channel`], over mutual TLS, accepting only servers that present `server`: another
/// workload with a valid certificate of the mesh cannot answer in the place of the service
/// called.
///
/// # Errors
/// As [`channel`].
pub async fn pinned_channel(
    target: &str,
    config: &ClientConfig,
    catalogue: Catalogue,
    tls: &MeshTls,
    server: SpiffeId,
) -> Result<Channel, Error> {
    let source = Source::parse(target)?;
    build(target, source, config, catalogue, Some(TlsConnector::expecting(tls.clone(), server))).await
}

/// A channel over an address list that the caller updates (its own discovery).
///
/// # Errors
/// [`Error::Config`] for out-of-range retry settings.
pub async fn channel_from_watch(
    name: &str,
    addresses: watch::Receiver<Vec<SocketAddr>>,
    config: &ClientConfig,
    catalogue: Catalogue,
) -> Result<Channel, Error> {
    build(name, Source::Watch(addresses), config, catalogue, None).await
}

/// A channel whose calls go into `local`, a service of this process, through the same client
/// layers as a network channel's.
///
/// # Errors
/// [`Error::Config`] for out-of-range retry settings.
pub fn local_channel(local: Local, config: &ClientConfig, catalogue: Catalogue) -> Result<Channel, Error> {
    stack(Route::Local(local), config, catalogue)
}

async fn build(
    name: &str,
    source: Source,
    config: &ClientConfig,
    catalogue: Catalogue,
    tls: Option<TlsConnector>,
) -> Result<Channel, Error> {
    let balanced = Balanced::new(name, source, config, tls).await;
    stack(Route::Network(balanced), config, catalogue)
}

/// The client layers over `route`.
fn stack(route: Route, config: &ClientConfig, catalogue: Catalogue) -> Result<Channel, Error> {
    let retry = RetryLayer::new(config, catalogue).map_err(Error::Config)?;
    let stack = tower::ServiceBuilder::new()
        // Outermost: one span and one duration for the call as its caller sees it.
        .layer(ClientObserveLayer::new(catalogue))
        // The whole call, retries included, fits in the deadline.
        .layer(ClientDeadlineLayer::new(Arc::new(config.clone())))
        // Each attempt goes back through the balancer, which may pick another replica.
        .layer(retry)
        .service(route);
    Ok(stack)
}
