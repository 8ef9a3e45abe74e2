//! In-process calls: when a caller and its callee run in one process (the all-in-one run), a
//! call goes from the caller's client stack straight into the callee's whole server stack, the
//! same service its TCP listener serves, with no socket and no HTTP/2 framing. The message is
//! still encoded by tonic's codec, `grpc-timeout` and `traceparent` still travel as headers,
//! and the connection facts the server's layers read (the caller's mesh identity, its address)
//! are set here as tonic's transport would set them, so policy, shedding, rate limits, deadlines
//! and traces decide as over the socket. The server's bounds (calls in progress, read buffer,
//! rate) are the same instances its port uses: in-process callers share them with the others.
//!
//! [`LocalServers`] is the process's table of its own services: one slot per service, filled
//! when the service starts serving ([`LocalServers::serve`]) and emptied when it stops.
//! [`Local`] is the bottom of a client stack whose target is such a slot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use http::{Request, Response};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{BoxError, Service, ServiceExt as _};

use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::PeerIdentity;
use crate::mesh::security::incoming::PeerInfo;

/// A service's complete server stack, as its listener serves it, taking what a connection
/// would hand it.
pub type LocalServer = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// One service of this process: where it listens, and its server stack once it serves.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    server: OnceLock<LocalServer>,
    stopped: AtomicBool,
    /// Ticks when the server is set or stopped, for calls made before it serves.
    changed: watch::Sender<()>,
}

/// The services of this process that callers in it reach without a socket: name -> slot.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LocalServers(Arc<BTreeMap<&'static str, Arc<Slot>>>);

impl LocalServers {
    /// A table of `services` (name, listen address), none serving yet.
    pub fn new(services: impl IntoIterator<Item = (&'static str, SocketAddr)>) -> Self {
        let slots = services
            .into_iter()
            .map(|(name, addr)| {
                let slot = Slot {
                    // As a connection over loopback would show it, for a port on every address.
                    addr: loopback_if_unspecified(addr),
                    server: OnceLock::new(),
                    stopped: AtomicBool::new(false),
                    changed: watch::Sender::new(()),
                };
                (name, Arc::new(slot))
            })
            .collect();
        Self(Arc::new(slots))
    }

    /// Whether `name` is a service of this process.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Service `name` serves `server` until the returned guard is dropped; a service not in
    /// the table gets no guard and is reached over its listener only.
    pub fn serve(&self, name: &str, server: LocalServer) -> Option<Serving> {
        let slot = self.0.get(name)?.clone();
        if slot.server.set(server).is_err() {
            tracing::warn!(
                service = name,
                "served twice in one process; later in-process calls reach the first"
            );
        }
        slot.changed.send_replace(());
        Some(Serving(slot))
    }

    /// The bottom of a client stack from `caller` (a service of this process, or `None`) to
    /// service `name` of this process, presenting `identity` (this process's mesh identity
    /// with mutual TLS on); `None` when `name` is not in the table.
    pub fn call(&self, caller: Option<&str>, name: &str, identity: Option<PeerIdentity>) -> Option<Local> {
        let slot = self.0.get(name)?.clone();
        // The caller's listen address stands for its connection: per-connection bounds then
        // apply per calling service, as one HTTP/2 connection per channel would have them. No
        // TCP connection of another process can have it as its remote address.
        let remote = caller.and_then(|c| self.0.get(c)).map_or(slot.addr, |s| s.addr);
        let tcp = TcpConnectInfo { local_addr: Some(slot.addr), remote_addr: Some(remote) };
        let calls = metrics::counter!("shopmesh_client_in_process_calls_total", "target" => name.to_owned());
        Some(Local { slot, tcp, identity, target: name.into(), calls })
    }
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
        }
        _ => addr,
    }
}

/// Keeps a service reachable in-process; dropped when it stops serving, after which calls to
/// it are answered UNAVAILABLE, as a closed port would refuse them.
#[derive(Debug)]
pub struct Serving(Arc<Slot>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.changed.send_replace(());
    }
}

/// A call's way into a service of this process (see the module docs).
#[derive(Clone)]
pub struct Local {
    slot: Arc<Slot>,
    tcp: TcpConnectInfo,
    identity: Option<PeerIdentity>,
    target: Arc<str>,
    /// `shopmesh_client_in_process_calls_total{target}`, its handle made once.
    calls: metrics::Counter,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("target", &self.target).field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

/// The response of a [`Local`] call: the callee's server stack at once, or, called before the
/// callee serves, once it does (as a connection waits in a listener's backlog).
pub type LocalFuture =
    Either<Oneshot<LocalServer, Request<Body>>, BoxFuture<'static, Result<Response<Body>, BoxError>>>;

impl Local {
    /// The request as the callee's server stack gets it from a connection: the head as sent,
    /// the message as one frame, and only the connection's facts as extensions (nothing of
    /// the caller's own extensions crosses, as nothing would over a socket).
    fn server_request(&self, request: Request<Bytes>) -> Request<Body> {
        let (parts, message) = request.into_parts();
        let mut request = Request::new(Body::new(http_body_util::Full::new(message)));
        *request.method_mut() = parts.method;
        *request.uri_mut() = parts.uri;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = parts.headers;
        let extensions = request.extensions_mut();
        match &self.identity {
            // As the mutual TLS accept loop hands it to tonic; the server's peer layer splits it.
            Some(identity) => {
                extensions.insert(PeerInfo { identity: identity.clone(), tcp: self.tcp.clone() });
            }
            None => {
                extensions.insert(self.tcp.clone());
            }
        }
        request
    }
}

impl Service<Request<Bytes>> for Local {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = LocalFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The server stack's own readiness is polled by the call (`Oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.calls.increment(1);
        let request = self.server_request(request);
        if !self.slot.stopped.load(Ordering::Acquire)
            && let Some(server) = self.slot.server.get()
        {
            return Either::Left(server.clone().oneshot(request));
        }
        let slot = self.slot.clone();
        let target = self.target.clone();
        Either::Right(Box::pin(async move {
            let mut changed = slot.changed.subscribe();
            loop {
                if slot.stopped.load(Ordering::Acquire) {
                    return Ok(Refusal::NoEndpoints { target: target.to_string() }.respond());
                }
                if let Some(server) = slot.server.get() {
                    return server.clone().oneshot(request).await;
                }
                // The caller's deadline bounds this wait; the sender lives in the slot.
                if changed.changed().await.is_err() {
                    return Ok(Refusal::NoEndpoints { target: target.to_string() }.respond());
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_on_every_address_is_seen_on_loopback() {
        let seen = |a: &str| loopback_if_unspecified(a.parse().expect("addr")).to_string();
        assert_eq!(seen("0.0.0.0:5"), "127.0.0.1:5");
        assert_eq!(seen("[::]:5"), "[::1]:5");
        assert_eq!(seen("10.1.2.3:5"), "10.1.2.3:5");
    }
}
