//! Mutual TLS between services: each service proves who it is with a certificate whose URI SAN
//! is its SPIFFE ID, and accepts only peers whose certificates chain to the mesh's CA and name
//! a SPIFFE ID of the configured trust domain.
//!
//! The certificate, key and CA bundle are files (what a Kubernetes Secret or cert-manager
//! mounts: `tls.crt`, `tls.key`, `ca.crt`). They are read again every
//! `--tls-reload-interval`; when their contents change, the server and client configurations
//! are rebuilt and new handshakes use them (connections already open keep theirs). Reading the
//! contents, not watching inodes, is what survives Kubernetes' atomic symlink swap of a
//! mounted Secret. A change that does not load (a half-written file, a key that does not match)
//! is logged and the previous configuration kept.
//!
//! Peers are checked during the handshake, not per call: a peer without a valid identity never
//! gets an HTTP/2 connection, so it can reach nothing (not reflection, not error details), and
//! a call costs no certificate parsing. Its TLS alert says why: `certificate_required` (no
//! certificate), `unknown_ca` (foreign CA), `certificate_expired`, `access_denied` (no SPIFFE
//! URI SAN, or one outside the trust domain).
//!
//! Calls to another service of the mesh go further than the trust domain: the client pins the
//! server's exact SPIFFE ID ([`MeshTls::client_config_expecting`]), so another workload with a
//! valid certificate of the mesh (a pod that gets the traffic through a reused IP or matching
//! labels) cannot pose as the service called. The check runs in the handshake, before this
//! service's own certificate is sent.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::mesh::Error;
use crate::mesh::config::SecurityConfig;
use crate::mesh::identity::SpiffeId;

/// The protocol both sides speak inside TLS; gRPC clients (grpc-go, grpcurl) require it.
const ALPN_H2: &[u8] = b"h2";

/// The mesh's TLS state: the current server and client configurations, rebuilt when the files
/// change. Cheap to clone; the reload task ends when the last clone is dropped.
#[derive(Clone)]
pub struct MeshTls {
    inner: Arc<Inner>,
}

struct Inner {
    current: RwLock<Current>,
    trust_domain: Arc<str>,
}

/// One loaded set of files and what was built from them.
struct Current {
    files: Files,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// This service's own identity, from its certificate.
    identity: SpiffeId,
    /// The CA bundle, for verifiers that pin a server's identity.
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls").field("trust_domain", &self.inner.trust_domain).finish_non_exhaustive()
    }
}

/// Where the files are, and their contents as last read.
#[derive(Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// The three paths of a TLS configuration.
#[derive(Debug, Clone)]
struct Paths {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl Paths {
    fn read(&self) -> Result<Files, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))
        };
        Ok(Files { cert: read(&self.cert)?, key: read(&self.key)?, ca: read(&self.ca)? })
    }
}

impl MeshTls {
    /// Loads the files `config` names and starts watching them; `None` when TLS is not
    /// configured (no `--tls-cert`).
    ///
    /// # Errors
    /// [`Error::Config`] when only some files are named, or they do not load: a service must
    /// not start without the identity it was told to have.
    pub fn load(config: &SecurityConfig) -> Result<Option<Self>, Error> {
        let paths = match (&config.tls_cert, &config.tls_key, &config.tls_ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                Paths { cert: cert.clone(), key: key.clone(), ca: ca.clone() }
            }
            _ => return Err(Error::Config("--tls-cert, --tls-key and --tls-ca go together".into())),
        };
        if SpiffeId::parse(&format!("spiffe://{}/ns/x/sa/x", config.trust_domain)).is_err() {
            return Err(Error::Config(format!("{:?} is not a SPIFFE trust domain", config.trust_domain)));
        }
        let trust_domain: Arc<str> = config.trust_domain.as_str().into();
        let files = paths.read()?;
        let current = build(files, &trust_domain)?;
        let inner = Arc::new(Inner { current: RwLock::new(current), trust_domain });
        tokio::spawn(watch(Arc::downgrade(&inner), paths, config.tls_reload_interval));
        Ok(Some(Self { inner }))
    }

    /// The configuration new server-side handshakes use.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.inner.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).server.clone()
    }

    /// The configuration new outgoing connections use: any server of the mesh's CA and trust
    /// domain is accepted.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.inner.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).client.clone()
    }

    /// The configuration of a new connection to a server that must present exactly `expected`
    /// (its chain and trust domain checked as well). Built per connection, not per call.
    pub fn client_config_expecting(&self, expected: &SpiffeId) -> Arc<rustls::ClientConfig> {
        let current = self.inner.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut config = (*current.client).clone();
        config.dangerous().set_certificate_verifier(Arc::new(SpiffeServerVerifier {
            roots: current.roots.clone(),
            provider: provider(),
            trust_domain: self.inner.trust_domain.clone(),
            expected: Some(expected.clone()),
        }));
        Arc::new(config)
    }

    /// This service's own identity, as its certificate names it now.
    pub fn identity(&self) -> SpiffeId {
        self.inner.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).identity.clone()
    }

    /// The trust domain peers must belong to.
    pub fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }
}

/// Reads the files every `interval` and swaps in a new configuration when they changed and
/// load; ends when the [`MeshTls`] is gone.
async fn watch(inner: Weak<Inner>, paths: Paths, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    // The contents that last failed to load, so a bad file is reported once, not every tick.
    let mut rejected: Option<Files> = None;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let files = match paths.read() {
            Ok(files) => files,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the TLS files; keeping the loaded ones");
                continue;
            }
        };
        let unchanged = inner.current.read().map(|c| c.files == files).unwrap_or(false);
        if unchanged || rejected.as_ref() == Some(&files) {
            continue;
        }
        match build(files.clone(), &inner.trust_domain) {
            Ok(current) => {
                *inner.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = current;
                rejected = None;
                tracing::info!(cert = %paths.cert.display(), "TLS files changed; new handshakes use them");
            }
            Err(err) => {
                tracing::warn!(error = %err, "changed TLS files do not load; keeping the previous ones");
                rejected = Some(files);
            }
        }
    }
}

/// The ring provider: chosen explicitly, so nothing depends on a process-wide default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS {what}: {err}"))
}

/// Builds both configurations from `files`, checking that this service's own certificate
/// carries a SPIFFE ID of the trust domain (peers would refuse it otherwise).
fn build(files: Files, trust_domain: &Arc<str>) -> Result<Current, Error> {
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("certificate", e))?;
    let Some(leaf) = chain.first() else {
        return Err(config_error("certificate", "no certificate in the file"));
    };
    let own = spiffe_id(leaf, trust_domain).map_err(|e| config_error("certificate", e))?;
    let expires = not_after(leaf);
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| config_error("key", e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&files.ca) {
        roots.add(ca.map_err(|e| config_error("CA bundle", e))?).map_err(|e| config_error("CA bundle", e))?;
    }
    if roots.is_empty() {
        return Err(config_error("CA bundle", "no certificate in the file"));
    }
    let roots = Arc::new(roots);
    let provider = provider();

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| config_error("client verifier", e))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("server", e))?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            inner: client_verifier,
            trust_domain: trust_domain.clone(),
        }))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| config_error("certificate and key", e))?;
    server.alpn_protocols = vec![ALPN_H2.to_vec()];

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("client", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            roots: roots.clone(),
            provider,
            trust_domain: trust_domain.clone(),
            expected: None,
        }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| config_error("certificate and key", e))?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    tracing::info!(identity = %own, expires = expires.unwrap_or_default(), "TLS identity loaded");
    if let Some(expires) = expires {
        // What ShopmeshCertificateExpiresSoon watches: a certificate nobody renews (the
        // chart's own CA renews only at a pod's start) is refused by its peers once it expires.
        // Described here, where it is recorded, so telemetry need not know the security wing.
        metrics::describe_gauge!(
            EXPIRY_GAUGE,
            metrics::Unit::Seconds,
            "When this service's mTLS certificate expires, seconds since 1970, by SPIFFE ID (with mTLS on)."
        );
        #[allow(clippy::cast_precision_loss)] // seconds since 1970 fit a double exactly
        metrics::gauge!(EXPIRY_GAUGE, "identity" => own.to_string()).set(expires as f64);
    }
    Ok(Current { files, server: Arc::new(server), client: Arc::new(client), identity: own, roots })
}

/// Why a certificate's identity is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    /// No URI SAN at all (a certificate for a host name, say).
    #[error("certificate has no URI SAN (SPIFFE ID)")]
    NoUri,
    /// More than one URI SAN; SPIFFE allows exactly one.
    #[error("certificate has more than one URI SAN")]
    SeveralUris,
    /// The URI is not a SPIFFE ID of the mesh's shape.
    #[error("{0}")]
    NotSpiffe(String),
    /// A SPIFFE ID of another trust domain.
    #[error("SPIFFE ID {id} is outside trust domain {expected}")]
    ForeignTrustDomain {
        /// The ID presented.
        id: String,
        /// The configured trust domain.
        expected: String,
    },
    /// A server of the mesh, but not the one called.
    #[error("server presented SPIFFE ID {id}, not the {expected} this call is for")]
    UnexpectedServer {
        /// The ID presented.
        id: String,
        /// The ID the caller pinned.
        expected: String,
    },
}

/// The SPIFFE ID in `cert`'s URI SAN, if it is one of `trust_domain`.
///
/// # Errors
/// [`IdentityError`] saying what is missing or wrong.
pub fn spiffe_id(cert: &CertificateDer<'_>, trust_domain: &str) -> Result<SpiffeId, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let san = parsed.subject_alternative_name().map_err(|e| IdentityError::Malformed(e.to_string()))?;
    let mut uris = san.iter().flat_map(|s| s.value.general_names.iter()).filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let uri = uris.next().ok_or(IdentityError::NoUri)?;
    if uris.next().is_some() {
        return Err(IdentityError::SeveralUris);
    }
    let id = SpiffeId::parse(uri).map_err(|e| IdentityError::NotSpiffe(e.to_string()))?;
    if id.trust_domain() != trust_domain {
        return Err(IdentityError::ForeignTrustDomain {
            id: id.to_string(),
            expected: trust_domain.to_owned(),
        });
    }
    Ok(id)
}

/// The gauge of this service's certificate's end of validity, seconds since 1970, by identity.
pub const EXPIRY_GAUGE: &str = "shopmesh_tls_certificate_expiry_timestamp_seconds";

/// When `cert` stops being valid, seconds since 1970 (`None` if it does not parse).
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// A rejected identity as the handshake error; its alert is `access_denied`.
fn reject(side: &str, err: &IdentityError) -> rustls::Error {
    tracing::warn!(error = %err, "TLS {side} certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// Server side: the WebPKI chain check (CA, validity, client-auth usage), then the SPIFFE ID.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: Arc<str>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id(end_entity, &self.trust_domain).map_err(|e| reject("client", &e))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: the chain must lead to the mesh's CA and the certificate name a SPIFFE ID of
/// the trust domain, and be `expected` when the caller pinned one; the SPIFFE ID replaces the
/// host name check (servers are reached by pod IP, which no certificate names).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: Arc<str>,
    expected: Option<SpiffeId>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let id = spiffe_id(end_entity, &self.trust_domain).map_err(|e| reject("server", &e))?;
        if let Some(expected) = self.expected.as_ref().filter(|expected| **expected != id) {
            let err = IdentityError::UnexpectedServer { id: id.to_string(), expected: expected.to_string() };
            return Err(reject("server", &err));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::security::certificates::{Ca, Leaf};

    #[test]
    fn identities_are_read_from_the_uri_san() {
        let ca = Ca::new("test CA").expect("ca");
        let ok = ca.issue(&Leaf::spiffe("spiffe://cluster.local/ns/shop/sa/shopmesh-order")).expect("cert");
        let id = spiffe_id(&ok.cert_der(), "cluster.local").expect("valid");
        assert_eq!(id.service_account(), "shopmesh-order");
        assert!(matches!(
            spiffe_id(&ok.cert_der(), "example.org"),
            Err(IdentityError::ForeignTrustDomain { .. })
        ));
        let none = ca.issue(&Leaf { uris: vec![], ..Leaf::spiffe("") }).expect("cert");
        assert_eq!(spiffe_id(&none.cert_der(), "cluster.local"), Err(IdentityError::NoUri));
        let https = ca.issue(&Leaf::spiffe("https://cluster.local/ns/shop/sa/x")).expect("cert");
        assert!(matches!(spiffe_id(&https.cert_der(), "cluster.local"), Err(IdentityError::NotSpiffe(_))));
        let two = ca
            .issue(&Leaf {
                uris: vec![
                    "spiffe://cluster.local/ns/a/sa/a".into(),
                    "spiffe://cluster.local/ns/b/sa/b".into(),
                ],
                ..Leaf::spiffe("")
            })
            .expect("cert");
        assert_eq!(spiffe_id(&two.cert_der(), "cluster.local"), Err(IdentityError::SeveralUris));
    }
}
