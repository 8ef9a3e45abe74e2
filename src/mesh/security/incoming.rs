//! The server's accept loop with mutual TLS: TCP connections are accepted at once and each
//! handshake runs on its own task under a timeout, so a slow or silent peer holds up nobody.
//! Connections whose handshake succeeds (the peer's certificate verified, see [`tls`]) are
//! handed to tonic with the peer's SPIFFE ID and address as their connect info.
//!
//! tonic's own `ServerTlsConfig` cannot change its certificate or CA after start; driving the
//! handshake here lets every new connection use the configuration [`MeshTls`] holds now.
//!
//! [`tls`]: crate::mesh::security::tls

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::mesh::security::identity::PeerIdentity;
use crate::mesh::security::tls::{MeshTls, spiffe_id};

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
/// accepting), handshaking each connection with the configuration `tls` holds at that moment.
pub fn incoming(listener: TcpListener, tls: MeshTls, handshake_timeout: Duration) -> Incoming {
    let (tx, rx) = mpsc::channel(READY);
    tokio::spawn(accept_loop(listener, tls, handshake_timeout, tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: MeshTls,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let local = tcp.local_addr().ok();
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
                let tx = tx.clone();
                let trust_domain: std::sync::Arc<str> = tls.trust_domain().into();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(err)) => {
                            tracing::warn!(peer = %remote, error = %err, "TLS handshake failed; connection refused");
                            metrics::counter!("shopmesh_server_tls_handshake_failures_total").increment(1);
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(peer = %remote, timeout = ?handshake_timeout, "TLS handshake timed out");
                            metrics::counter!("shopmesh_server_tls_handshake_failures_total").increment(1);
                            return;
                        }
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
