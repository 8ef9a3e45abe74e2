//! Certificates for mutual TLS tests (made with rcgen through `shopmesh::mesh::security::certificates`), and
//! clients that present them over raw rustls, so a test can offer certificates the mesh's own
//! client would refuse to load.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shopmesh::mesh::config::SecurityConfig;
use shopmesh::mesh::security::certificates::{Ca, Issued, Leaf};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// The trust domain of the tests' identities.
pub const TD: &str = "cluster.local";

/// `spiffe://cluster.local/ns/default/sa/<sa>`.
pub fn id(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// A certificate for `sa` that servers can present too (DNS SAN `localhost`).
pub fn workload(ca: &Ca, sa: &str) -> Issued {
    ca.issue(&Leaf { uris: vec![id(sa)], dns: vec!["localhost".into()], ..Leaf::default() }).expect("issue")
}

/// Writes `issued` as `tls.crt`/`tls.key`/`ca.crt` into `dir` and returns settings that use
/// them, reloaded every 50 ms.
pub fn security(dir: &Path, issued: &Issued) -> SecurityConfig {
    issued.write_to(dir).expect("write certificates");
    files(dir)
}

/// Settings naming `dir/{tls.crt,tls.key,ca.crt}`.
pub fn files(dir: &Path) -> SecurityConfig {
    SecurityConfig {
        tls_cert: Some(dir.join("tls.crt")),
        tls_key: Some(dir.join("tls.key")),
        tls_ca: Some(dir.join("ca.crt")),
        trust_domain: TD.into(),
        tls_reload_interval: Duration::from_millis(50),
        ..SecurityConfig::default()
    }
}

/// A raw rustls client config trusting `ca_pem` (checking the server's name `localhost`) and
/// presenting `identity`, if any.
pub fn client_config(ca_pem: &str, identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let mut config = match identity {
        Some(issued) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// How a TLS connection attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server accepted the handshake and spoke HTTP/2.
    Served,
    /// The server refused with this alert.
    Alert(rustls::AlertDescription),
    /// The client refused the server (or something else failed).
    Failed(String),
}

fn outcome(err: &std::io::Error) -> Outcome {
    match err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::AlertReceived(alert)) => Outcome::Alert(*alert),
        _ => Outcome::Failed(err.to_string()),
    }
}

/// Connects to `addr` with `config` and says whether the server serves it. With TLS 1.3 the
/// server judges the client's certificate after the client's side of the handshake is done,
/// so its verdict (an alert, or its HTTP/2 settings) comes with the first read.
pub async fn handshake(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Outcome {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(err) => return outcome(&err),
    };
    // The HTTP/2 client preface and an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    if let Err(err) = tls.write_all(&hello).await {
        return outcome(&err);
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Outcome::Served,
        Ok(Ok(_)) => Outcome::Failed("closed without an alert".into()),
        Ok(Err(err)) => outcome(&err),
        Err(_) => Outcome::Failed("no answer".into()),
    }
}

/// A gRPC channel to `addr` over TLS with `config`.
pub fn channel(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Channel {
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector)
}

/// Calls `path` with an empty request over `channel` and returns the status (OK included), for
/// checks that are about who may call, not what the call does.
pub async fn call(channel: Channel, path: &'static str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return tonic::Code::Unavailable;
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let mut request = tonic::Request::new(());
    request.set_timeout(Duration::from_secs(20));
    match grpc.unary(request, http::uri::PathAndQuery::from_static(path), codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// A directory laid out like a mounted Kubernetes Secret: `tls.crt` etc. are symlinks to
/// `..data/…`, and `..data` is a symlink to a timestamped directory, swapped atomically.
pub struct Mounted {
    pub dir: PathBuf,
    generation: u32,
}

impl Mounted {
    /// A mount holding `issued`.
    pub fn new(dir: PathBuf, issued: &Issued) -> Self {
        let mut mounted = Self { dir, generation: 0 };
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), mounted.dir.join(name)).expect("symlink");
        }
        mounted.swap(&issued.cert_pem, &issued.key_pem, &issued.ca_pem);
        mounted
    }

    /// Replaces the contents the way the kubelet does: a new directory, then a rename of the
    /// `..data` link over the old one.
    pub fn swap(&mut self, cert: &str, key: &str, ca: &str) {
        self.generation += 1;
        let data = format!("..{}", self.generation);
        let target = self.dir.join(&data);
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("tls.crt"), cert).expect("write");
        std::fs::write(target.join("tls.key"), key).expect("write");
        std::fs::write(target.join("ca.crt"), ca).expect("write");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename");
    }
}

/// The metrics this test process records (one recorder per process, shared by its tests), in
/// Prometheus text.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("install recorder")
    })
}

/// The sum of the series of counter `name` whose labels include every `labels` pair (tests run
/// in parallel, so only lower bounds that one test alone produces are asserted).
pub fn counted(name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
