//! A development CA and per-service certificates (rcgen), for running the mesh with mutual TLS
//! on a laptop, in compose, and in tests. Production certificates come from cert-manager or
//! another issuer; these never expire in practice and their CA key sits beside them.
//!
//! [`generate`] writes the layout a Kubernetes TLS Secret mounts, one directory per identity:
//! `<out>/<name>/tls.crt`, `tls.key` and `ca.crt`, plus the CA's own `ca.crt` and `ca.key`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use crate::mesh::Error;

/// The identities the mesh's own workloads run as, by service account; `shopmesh-gateway` is
/// the edge (an API gateway or ingress) that calls the public methods on behalf of users, and
/// `shopmesh-admin` the operator identity that may change the catalog.
pub const IDENTITIES: [&str; 6] = [
    "shopmesh-user",
    "shopmesh-order",
    "shopmesh-payment",
    "shopmesh-catalog",
    "shopmesh-gateway",
    "shopmesh-admin",
];

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate generation: {e}"))
}

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA whose subject's common name is `name`.
    ///
    /// # Errors
    /// [`Error::Config`] if the key or certificate cannot be made.
    pub fn new(name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().map_err(rcgen_error)?;
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, key).map_err(rcgen_error)? })
    }

    /// The CA certificate, PEM (what peers trust: `ca.crt`).
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a new key pair's certificate as `leaf` describes.
    ///
    /// # Errors
    /// [`Error::Config`] if a URI is not valid IA5 text or signing fails.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(leaf.dns.clone()).map_err(rcgen_error)?;
        for uri in &leaf.uris {
            let uri = uri.as_str().try_into().map_err(rcgen_error)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.uris.first().map_or("shopmesh", String::as_str));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Every service is both a server and a client of others.
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        if leaf.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &*self.issuer).map_err(rcgen_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem(),
            der: cert.der().clone(),
        })
    }
}

/// What a leaf certificate says.
#[derive(Debug, Clone, Default)]
pub struct Leaf {
    /// URI SANs (a workload has exactly one, its SPIFFE ID).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Valid only in 2000, so long expired.
    pub expired: bool,
}

impl Leaf {
    /// A workload certificate for `uri`.
    pub fn spiffe(uri: &str) -> Self {
        Self { uris: vec![uri.to_owned()], ..Self::default() }
    }
}

/// A signed certificate with its key and the CA that signed it, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `tls.crt`.
    pub cert_pem: String,
    /// `tls.key` (PKCS#8).
    pub key_pem: String,
    /// `ca.crt`: the issuing CA.
    pub ca_pem: String,
    der: CertificateDer<'static>,
}

impl Issued {
    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.der.clone()
    }

    /// Writes `tls.crt`, `tls.key` and `ca.crt` into `dir` (created if missing), each by a
    /// rename so a process reading them never sees half a file.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory or files cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)?;
        write_atomic(&dir.join("tls.crt"), &self.cert_pem)?;
        write_atomic(&dir.join("tls.key"), &self.key_pem)?;
        write_atomic(&dir.join("ca.crt"), &self.ca_pem)?;
        Ok(())
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`.
fn write_atomic(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The SPIFFE ID of service account `sa` in `namespace` of `trust_domain`.
pub fn spiffe_uri(trust_domain: &str, namespace: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

/// Makes a CA and a certificate for each of [`IDENTITIES`] under `out`, returning the
/// directories written (`<out>/<service-account>/`).
///
/// # Errors
/// [`Error::Config`] for a trust domain or namespace that makes no valid SPIFFE ID, or
/// [`Error::Io`] when writing fails.
pub fn generate(out: &Path, trust_domain: &str, namespace: &str) -> Result<Vec<PathBuf>, Error> {
    let ca = Ca::new("shopmesh development CA")?;
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("ca.crt"), &ca.cert_pem())?;
    write_atomic(&out.join("ca.key"), &ca.key_pem())?;
    let mut dirs = Vec::new();
    for sa in IDENTITIES {
        let uri = spiffe_uri(trust_domain, namespace, sa);
        crate::mesh::security::identity::SpiffeId::parse(&uri).map_err(|e| Error::Config(e.to_string()))?;
        // The service's name as a DNS SAN too, so tools that check host names (grpcurl
        // without -authority) can reach it by that name.
        let dns = sa.trim_start_matches("shopmesh-").to_owned();
        let issued = ca.issue(&Leaf {
            uris: vec![uri],
            dns: vec![dns, "localhost".into(), "127.0.0.1".into()],
            expired: false,
        })?;
        let dir = out.join(sa);
        issued.write_to(&dir)?;
        dirs.push(dir);
    }
    Ok(dirs)
}
