//! The server's accept loop with mutual TLS: TCP connections are accepted at once and each
//! handshake runs on its own task under a timeout, so a slow or silent peer holds up nobody.
//! Connections whose handshake succeeds (the peer's certificate verified, see [`tls`]) are
//! handed to tonic with the peer's SPIFFE ID and address as their connect info.
//!
//! tonic's own `ServerTlsConfig` cannot change its certificate or CA after start; driving the
//! handshake here lets every new connection use the configuration [`MeshTls`] holds now.
//!
//! At most `--tls-max-pending-handshakes` handshakes run at once: a connection accepted beyond
//! that is closed at once, so idle or garbage connections cannot pile up tasks and memory until
//! their timeouts. Every refusal is counted in
//! `shopmesh_server_tls_handshake_failures_total{reason}` (`failed`, `timeout`,
//! `too_many_handshakes`); the warning lines, which any peer can cause, are limited to a few a
//! second ([`Throttle`]).
//!
//! [`Throttle`]: crate::mesh::throttle::Throttle
//!
//! [`tls`]: crate::mesh::security::tls

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::mesh::identity::PeerIdentity;
use crate::mesh::security::tls::{MeshTls, spiffe_id};
use crate::mesh::throttle::Throttle;

/// The warning lines of refused handshakes, which any peer can cause: a few a second.
static REFUSALS: LazyLock<Throttle> = LazyLock::new(Throttle::for_refusals);

/// Counts a refused handshake under `reason` and logs it, unless too many lines were written
/// lately.
fn refused(remote: SocketAddr, reason: &'static str, detail: &dyn std::fmt::Display) {
    metrics::counter!("shopmesh_server_tls_handshake_failures_total", "reason" => reason).increment(1);
    if let Some(left_out) = REFUSALS.admit() {
        tracing::warn!(peer = %remote, reason, error = %detail, left_out, "TLS connection refused");
    }
}

/// Connections that finished their handshake and wait for tonic to take them.
const READY: usize = 128;

/// What tonic puts in every request's extensions for a TLS connection; [`PeerLayer`] turns it
/// into the [`PeerIdentity`] and [`TcpConnectInfo`] the other layers read.
///
/// [`PeerLayer`]: crate::mesh::server::peer::PeerLayer
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The verified SPIFFE ID of the client certificate.
    pub identity: PeerIdentity,
    /// The connection's addresses.
    pub tcp: TcpConnectInfo,
}

/// A server-side connection after a successful mutual TLS handshake.
#[derive(Debug)]
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The stream of verified connections to hand to `Server::serve_with_incoming_shutdown`.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>>;

/// Accepts on `listener` until the returned stream is dropped (tonic drops it when it stops
/// accepting), handshaking each connection with the configuration `tls` holds at that moment,
/// at most `max_pending` at once, each within `handshake_timeout`.
pub fn incoming(
    listener: TcpListener,
    tls: MeshTls,
    handshake_timeout: Duration,
    max_pending: usize,
) -> Incoming {
    let (tx, rx) = mpsc::channel(READY);
    let pending = Arc::new(Semaphore::new(max_pending.clamp(1, Semaphore::MAX_PERMITS)));
    tokio::spawn(accept_loop(listener, tls, handshake_timeout, pending, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: MeshTls,
    handshake_timeout: Duration,
    pending: Arc<Semaphore>,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                // Taken here, in accept order, and held until the handshake ends either way.
                let Ok(slot) = pending.clone().try_acquire_owned() else {
                    drop(tcp);
                    refused(remote, "too_many_handshakes", &"too many TLS handshakes in progress");
                    continue;
                };
                let local = tcp.local_addr().ok();
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                let tx = tx.clone();
                let trust_domain: std::sync::Arc<str> = tls.trust_domain().into();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                    drop(slot);
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => return refused(remote, "failed", &err),
                        Err(_) => return refused(remote, "timeout", &"TLS handshake timed out"),
                    };
                    let Some(info) = peer_info(&stream, &trust_domain, local, remote) else {
                        // The verifier accepted the certificate, so this cannot happen; if it
                        // did, an unidentified connection must not be served.
                        tracing::error!(peer = %remote, "verified TLS peer without a SPIFFE ID; dropped");
                        return;
                    };
                    let _ = tx.send(Ok(TlsConn { stream, info })).await;
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The peer's identity from the certificate it presented, and the connection's addresses.
fn peer_info(
    stream: &TlsStream<TcpStream>,
    trust_domain: &str,
    local: Option<SocketAddr>,
    remote: SocketAddr,
) -> Option<PeerInfo> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let id = spiffe_id(cert, trust_domain).ok()?;
    Some(PeerInfo {
        identity: PeerIdentity(id),
        tcp: TcpConnectInfo { local_addr: local, remote_addr: Some(remote) },
    })
}
