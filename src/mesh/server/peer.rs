//! Who is on the other end of the connection, as request extensions: on a mutual TLS
//! connection tonic stores one [`PeerInfo`] per request; this layer splits it into the
//! [`PeerIdentity`] that authorization reads and the [`TcpConnectInfo`] that tracing and rate
//! limiting read (what a plaintext connection carries already). Plaintext requests pass
//! untouched.

use std::task::{Context, Poll};

use http::Request;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::mesh::identity::PeerIdentity;
use crate::mesh::security::incoming::PeerInfo;

/// Puts the connection's [`PeerIdentity`] and [`TcpConnectInfo`] into each request.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerLayer;

impl<S> Layer<S> for PeerLayer {
    type Service = Peer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Peer { inner }
    }
}

/// See [`PeerLayer`].
#[derive(Debug, Clone)]
pub struct Peer<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Peer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Cloning is two reference counts and two addresses: no allocation beyond the
        // extension slots themselves.
        if let Some(PeerInfo { identity, tcp }) = request.extensions().get::<PeerInfo>().cloned() {
            let extensions = request.extensions_mut();
            extensions.insert::<PeerIdentity>(identity);
            extensions.insert::<TcpConnectInfo>(tcp);
        }
        self.inner.call(request)
    }
}
