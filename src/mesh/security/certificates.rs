//! A CA that issues workload certificates (rcgen), with a SPIFFE ID as URI SAN.
//!
//! Two uses:
//! - [`generate`] (`shopmesh dev-certs`): a development CA and a certificate per service, for
//!   running the mesh with mutual TLS on a laptop, in compose, and in tests. These never expire
//!   in practice and their CA key sits beside them.
//! - [`issue_workload`] (`shopmesh issue-certificate`): the Helm chart's own issuer when the
//!   cluster has no cert-manager. Helm makes the mesh CA (sprig cannot write URI SANs, so it
//!   cannot make the workloads' certificates); each pod's init container signs a certificate
//!   for its own service account with it, the key made in the pod and never stored elsewhere.
//!
//! Both write the layout a Kubernetes TLS Secret mounts: `tls.crt`, `tls.key` and `ca.crt`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;

use crate::mesh::Error;

/// The identities beside the services': `shopmesh-gateway` is the edge (an API gateway or
/// ingress) that calls the public methods on behalf of users, and `shopmesh-admin` the operator
/// identity that may change the catalog. Each service runs as `shopmesh-<service>`.
pub const EDGE_IDENTITIES: [&str; 2] = ["shopmesh-gateway", "shopmesh-admin"];

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Config(format!("certificate generation: {e}"))
}

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// The CA certificate's own end of validity; no leaf outlives it.
    not_after: Option<SystemTime>,
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
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key), not_after: None })
    }

    /// A CA from its certificate and private key (PEM; the key PKCS#8, as `openssl genpkey`,
    /// cert-manager and Helm's `genPrivateKey "ed25519"` write it), e.g. the Secret the Helm
    /// chart makes with `genCAWithKey`.
    ///
    /// # Errors
    /// [`Error::Config`] naming what is wrong: a key that is not PKCS#8 PEM, a certificate that
    /// does not parse, is not a CA, may not sign certificates, has expired, or whose public key
    /// is not the key's (every certificate it signed would then fail verification).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            Error::Config(format!(
                "the CA key: {e} (a PKCS#8 PEM key is needed: \"-----BEGIN PRIVATE KEY-----\")"
            ))
        })?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|d: CertificateDer<'static>| d)
            .map_err(|e| Error::Config(format!("the CA certificate is not a PEM certificate: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| Error::Config(format!("the CA certificate does not parse: {e}")))?;
        if !x509.is_ca() {
            return Err(Error::Config("the CA certificate is not a CA (basicConstraints CA:TRUE)".into()));
        }
        if let Ok(Some(usage)) = x509.key_usage()
            && !usage.value.key_cert_sign()
        {
            return Err(Error::Config(
                "the CA certificate's key usage does not allow signing certificates".into(),
            ));
        }
        if x509.subject_pki.raw != key.subject_public_key_info().as_slice() {
            return Err(Error::Config("the CA key is not the CA certificate's key".into()));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0));
        if not_after <= SystemTime::now() {
            return Err(Error::Config(format!(
                "the CA certificate expired at {}",
                humantime::format_rfc3339_seconds(not_after)
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(rcgen_error)?;
        Ok(Self { issuer, cert_pem: cert_pem.trim_end().to_owned() + "\n", not_after: Some(not_after) })
    }

    /// The CA certificate, PEM (what peers trust: `ca.crt`).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
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
        } else if let Some(validity) = leaf.validity {
            // A few minutes back, for peers whose clocks run behind the issuer's.
            let now = SystemTime::now();
            params.not_before = (now - CLOCK_SKEW).into();
            let until = now + validity;
            params.not_after = self.not_after.map_or(until, |ca| until.min(ca)).into();
        }
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
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
    /// Valid from now for this long (never beyond the CA); `None`: rcgen's default, until 4096.
    pub validity: Option<Duration>,
}

/// How far back a leaf's validity starts, for peers whose clocks run behind the issuer's.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

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
    /// rename so a process reading them never sees half a file. Readable by all (development
    /// certificates, mounted into containers that run as another user).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory or files cannot be written.
    pub fn write_to(&self, dir: &Path) -> Result<(), Error> {
        self.write_with_key_mode(dir, 0o644)
    }

    fn write_with_key_mode(&self, dir: &Path, key_mode: u32) -> Result<(), Error> {
        std::fs::create_dir_all(dir)?;
        write_atomic(&dir.join("tls.crt"), &self.cert_pem)?;
        write_atomic_mode(&dir.join("tls.key"), &self.key_pem, key_mode)?;
        write_atomic(&dir.join("ca.crt"), &self.ca_pem)?;
        Ok(())
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it over `path`.
fn write_atomic(path: &Path, contents: &str) -> Result<(), Error> {
    write_atomic_mode(path, contents, 0o644)
}

/// [`write_atomic`] with the file's permission bits (before the umask).
fn write_atomic_mode(path: &Path, contents: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The SPIFFE ID of service account `sa` in `namespace` of `trust_domain`.
pub fn spiffe_uri(trust_domain: &str, namespace: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

/// Makes a CA and a certificate for each of `services` (as `shopmesh-<service>`) and each of
/// [`EDGE_IDENTITIES`] under `out`, returning the directories written
/// (`<out>/<service-account>/`).
///
/// # Errors
/// [`Error::Config`] for a trust domain or namespace that makes no valid SPIFFE ID, or
/// [`Error::Io`] when writing fails.
pub fn generate(
    out: &Path,
    trust_domain: &str,
    namespace: &str,
    services: &[&str],
) -> Result<Vec<PathBuf>, Error> {
    let ca = Ca::new("shopmesh development CA")?;
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("ca.crt"), &ca.cert_pem())?;
    write_atomic(&out.join("ca.key"), &ca.key_pem())?;
    let mut dirs = Vec::new();
    let accounts = services.iter().map(|s| format!("shopmesh-{s}")).chain(EDGE_IDENTITIES.map(String::from));
    for sa in accounts {
        let sa = sa.as_str();
        let uri = spiffe_uri(trust_domain, namespace, sa);
        crate::mesh::identity::SpiffeId::parse(&uri).map_err(|e| Error::Config(e.to_string()))?;
        // The service's name as a DNS SAN too, so tools that check host names (grpcurl
        // without -authority) can reach it by that name.
        let dns = sa.trim_start_matches("shopmesh-").to_owned();
        let issued = ca.issue(&Leaf {
            uris: vec![uri],
            dns: vec![dns, "localhost".into(), "127.0.0.1".into()],
            ..Leaf::default()
        })?;
        let dir = out.join(sa);
        issued.write_to(&dir)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// What `shopmesh issue-certificate` does: reads the CA's certificate and key from files, signs
/// a new key's certificate for `spiffe_id` (and `dns` names) valid for `validity`, and writes
/// `tls.crt`, `tls.key` (readable by its owner only) and `ca.crt` into `out`. Returns the
/// certificate's end of validity.
///
/// # Errors
/// [`Error::Config`] for an unreadable or unusable CA, an invalid SPIFFE ID or DNS name, or a
/// zero validity; [`Error::Io`] when `out` cannot be written.
pub fn issue_workload(
    ca_cert: &Path,
    ca_key: &Path,
    spiffe_id: &str,
    dns: &[String],
    validity: Duration,
    out: &Path,
) -> Result<SystemTime, Error> {
    if validity.is_zero() {
        return Err(Error::Config("--validity must be above zero".into()));
    }
    crate::mesh::identity::SpiffeId::parse(spiffe_id)
        .map_err(|e| Error::Config(format!("--spiffe-id {spiffe_id}: {e}")))?;
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
    };
    let ca = Ca::from_pem(&read(ca_cert, "the CA certificate")?, &read(ca_key, "the CA key")?)?;
    let issued = ca.issue(&Leaf {
        uris: vec![spiffe_id.to_owned()],
        dns: dns.to_vec(),
        validity: Some(validity),
        ..Leaf::default()
    })?;
    issued.write_with_key_mode(out, 0o600)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&issued.der)
        .map_err(|e| Error::Config(format!("the issued certificate does not parse: {e}")))?;
    Ok(SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA as the Helm chart makes it (`genPrivateKey "ed25519"`, `genCAWithKey`), written to
    /// `dir` as the Secret's files are mounted; `days` of validity.
    fn chart_ca(dir: &Path, days: u64) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.distinguished_name.push(DnType::CommonName, "shopmesh mesh CA (shop/shopmesh)");
        params.not_after = (SystemTime::now() + Duration::from_secs(days * 86_400)).into();
        let cert = params.self_signed(&key).expect("self-signed");
        let (crt, pem_key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&crt, cert.pem()).expect("write");
        std::fs::write(&pem_key, key.serialize_pem()).expect("write");
        (crt, pem_key)
    }

    fn not_after(der: &[u8]) -> SystemTime {
        let (_, x509) = x509_parser::parse_x509_certificate(der).expect("parse");
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(x509.validity().not_after.timestamp().try_into().expect("after 1970"))
    }

    fn message(result: Result<SystemTime, Error>) -> String {
        match result {
            Err(Error::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/shopmesh-order";

    #[test]
    fn a_workload_certificate_from_the_charts_ca_names_its_identity_and_chains_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (crt, key) = chart_ca(dir.path(), 3650);
        let out = dir.path().join("tls");
        let day = Duration::from_secs(86_400);
        let until = issue_workload(
            &crt,
            &key,
            ID,
            &["shopmesh-order-headless.shop.svc.cluster.local".into()],
            day,
            &out,
        )
        .expect("issue");

        let pem = std::fs::read(out.join("tls.crt")).expect("tls.crt");
        let der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(&pem).expect("a PEM certificate");
        assert_eq!(
            crate::mesh::security::tls::spiffe_id(&der, "cluster.local").expect("a SPIFFE ID").to_string(),
            ID
        );
        let (_, x509) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let dns: Vec<String> = x509
            .subject_alternative_name()
            .expect("SAN")
            .expect("SAN present")
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["shopmesh-order-headless.shop.svc.cluster.local"]);
        let ca_der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_file(&crt).expect("ca");
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("parse ca");
        assert_eq!(x509.issuer(), ca.subject(), "not issued by the CA");
        assert_eq!(std::fs::read(out.join("ca.crt")).expect("ca.crt"), std::fs::read(&crt).expect("ca"));
        // Valid for a day from now (less the skew allowance at the start), and said so.
        assert_eq!(not_after(&der), until);
        let left = until.duration_since(SystemTime::now()).expect("in the future");
        assert!(left > day - Duration::from_secs(60) && left <= day, "valid for {left:?}, not a day");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("tls.key")).expect("tls.key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
        }
        // The key on disk is the certificate's.
        let leaf_key =
            KeyPair::from_pem(&std::fs::read_to_string(out.join("tls.key")).expect("key")).expect("pkcs8");
        assert_eq!(x509.subject_pki.raw, leaf_key.subject_public_key_info().as_slice());
    }

    #[test]
    fn no_certificate_outlives_its_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (crt, key) = chart_ca(dir.path(), 2);
        let out = dir.path().join("tls");
        let until =
            issue_workload(&crt, &key, ID, &[], Duration::from_secs(365 * 86_400), &out).expect("issue");
        let ca_der: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_file(&crt).expect("ca");
        assert_eq!(until, not_after(&ca_der));
    }

    #[test]
    fn an_unusable_ca_or_request_is_refused_with_what_is_wrong_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (crt, key) = chart_ca(dir.path(), 30);
        let (other_crt, other_key) = {
            let other = dir.path().join("other");
            std::fs::create_dir(&other).expect("dir");
            chart_ca(&other, 30)
        };
        let out = dir.path().join("tls");
        let year = Duration::from_secs(365 * 86_400);

        let mismatched = message(issue_workload(&crt, &other_key, ID, &[], year, &out));
        assert!(mismatched.contains("not the CA certificate's key"), "{mismatched}");

        // A workload certificate is no CA.
        let leaf_dir = dir.path().join("leaf");
        issue_workload(&other_crt, &other_key, ID, &[], year, &leaf_dir).expect("issue");
        let not_ca = message(issue_workload(
            &leaf_dir.join("tls.crt"),
            &leaf_dir.join("tls.key"),
            ID,
            &[],
            year,
            &out,
        ));
        assert!(not_ca.contains("is not a CA"), "{not_ca}");

        // Helm's default `genPrivateKey "ecdsa"` writes SEC1, which ring cannot load.
        let sec1 = dir.path().join("sec1.key");
        std::fs::write(&sec1, "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAoAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n").expect("write");
        let sec1 = message(issue_workload(&crt, &sec1, ID, &[], year, &out));
        assert!(sec1.contains("PKCS#8"), "{sec1}");

        let bad_id =
            message(issue_workload(&crt, &key, "https://cluster.local/ns/shop/sa/x", &[], year, &out));
        assert!(bad_id.contains("--spiffe-id"), "{bad_id}");
        let zero = message(issue_workload(&crt, &key, ID, &[], Duration::ZERO, &out));
        assert!(zero.contains("--validity"), "{zero}");
        let missing = message(issue_workload(&dir.path().join("nope.crt"), &key, ID, &[], year, &out));
        assert!(missing.contains("nope.crt"), "{missing}");

        assert!(!out.exists(), "a refused request wrote files");
    }
}
