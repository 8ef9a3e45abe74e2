//! Client bootstrap: the stack every call to another service goes through.
//!
//! Layers, outermost first:
//! 1. [`ClientObserve`]: the call's span (sent on as `traceparent`) and its duration metric,
//!    retries included.
//! 2. [`ClientDeadline`]: the call's deadline (the handled request's remaining time minus a
//!    margin, capped per method), sent as `grpc-timeout`; out of time means not sent at all.
//! 3. [`Retry`]: repeats UNAVAILABLE answers of repeatable calls within the deadline and the
//!    retry budget; below the deadline so each attempt is sent the time actually left.
//! 4. [`Balanced`]: power-of-two-choices over every endpoint of the target, ejecting failing
//!    ones; below the retries so a retry can land on another replica.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::mesh::Error;
use crate::mesh::balance::{Balanced, Source};
use crate::mesh::config::ClientConfig;
use crate::mesh::deadline::{ClientDeadline, ClientDeadlineLayer};
use crate::mesh::observe::{ClientObserve, ClientObserveLayer};
use crate::mesh::retry::{Retry, RetryLayer};
use crate::mesh::tls::MeshTls;

/// A channel to one service through the mesh's client stack; hand it to a generated client
/// (`UserServiceClient::new(channel)`). Clones share connections, balancer and retry budget.
pub type Channel = ClientObserve<ClientDeadline<Retry<Balanced>>>;

/// A channel to `target`: `http://host:port`, or several comma-separated; DNS names are
/// re-resolved every `resolve_interval` and calls spread over all addresses.
///
/// Connections are made lazily, so a dependency that is down at start fails calls with
/// UNAVAILABLE instead of stopping this service from starting.
///
/// # Errors
/// [`Error::Config`] for a malformed target or out-of-range retry settings.
pub async fn channel(target: &str, config: &ClientConfig) -> Result<Channel, Error> {
    channel_tls(target, config, None).await
}

/// Like [`channel`], over mutual TLS when `tls` is given: each connection presents this
/// service's certificate and accepts only servers of the mesh's CA and trust domain.
///
/// # Errors
/// [`Error::Config`] for a malformed target or out-of-range retry settings.
pub async fn channel_tls(
    target: &str,
    config: &ClientConfig,
    tls: Option<&MeshTls>,
) -> Result<Channel, Error> {
    let source = Source::parse(target)?;
    build(target, source, config, tls.cloned()).await
}

/// A channel over an address list that the caller updates (its own discovery).
///
/// # Errors
/// [`Error::Config`] for out-of-range retry settings.
pub async fn channel_from_watch(
    name: &str,
    addresses: watch::Receiver<Vec<SocketAddr>>,
    config: &ClientConfig,
) -> Result<Channel, Error> {
    build(name, Source::Watch(addresses), config, None).await
}

async fn build(
    name: &str,
    source: Source,
    config: &ClientConfig,
    tls: Option<MeshTls>,
) -> Result<Channel, Error> {
    let retry = RetryLayer::new(config).map_err(Error::Config)?;
    let balanced = Balanced::new(name, source, config, tls).await;
    let stack = tower::ServiceBuilder::new()
        // Outermost: one span and one duration for the call as its caller sees it.
        .layer(ClientObserveLayer)
        // The whole call, retries included, fits in the deadline.
        .layer(ClientDeadlineLayer::new(Arc::new(config.clone())))
        // Each attempt goes back through the balancer, which may pick another replica.
        .layer(retry)
        .service(balanced);
    Ok(stack)
}
