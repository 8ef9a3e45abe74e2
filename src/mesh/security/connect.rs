//! The client side of mutual TLS: a connector for tonic's `Endpoint` that opens TCP, then TLS
//! with the configuration [`MeshTls`] holds at that moment, so reconnections after a
//! certificate or CA rotation use the new files. The server is checked by its chain and SPIFFE
//! ID, not its host name (endpoints are pod IPs); a connector for a call to one service pins
//! that service's exact ID ([`TlsConnector::expecting`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::{BoxError, Service};

use crate::mesh::identity::SpiffeId;
use crate::mesh::security::tls::MeshTls;

/// Connects to `http://host:port` URIs over mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    tls: MeshTls,
    expected: Option<SpiffeId>,
}

impl TlsConnector {
    /// A connector presenting this service's certificate from `tls`, accepting any server of
    /// the mesh's CA and trust domain (a client that calls whoever answers, like a tool).
    pub fn new(tls: MeshTls) -> Self {
        Self { tls, expected: None }
    }

    /// As [`new`](Self::new), accepting only a server that presents `server`.
    pub fn expecting(tls: MeshTls, server: SpiffeId) -> Self {
        Self { tls, expected: Some(server) }
    }
}

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    // Once per connection, not per call: boxing costs nothing that matters here.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = match &self.expected {
            Some(server) => self.tls.client_config_expecting(server),
            None => self.tls.client_config(),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        Box::pin(async move {
            let host = uri.host().ok_or("no host in the endpoint URI")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or("no port in the endpoint URI")?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            // Only sent as SNI for DNS names; the verifier checks the SPIFFE ID instead.
            let name = ServerName::try_from(host)?;
            let stream = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
