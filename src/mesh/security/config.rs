//! The security wing's settings: mutual TLS and the authorization policy, and bearer tokens
//! for callers outside the mesh. [`MeshConfig`](crate::mesh::config::MeshConfig) flattens them
//! under their headings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Which calls must carry a bearer token when tokens are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TokenRequirement {
    /// Calls without a mesh identity (an mTLS client certificate): callers from outside the
    /// mesh. Services calling each other are identified by their certificates instead.
    #[default]
    Unidentified,
    /// None: a token is checked when present, calls without one pass as they would with
    /// tokens off. For a service only the mesh can reach when mTLS is off, or while rolling
    /// tokens out.
    Never,
}

/// Bearer tokens (JWTs) for callers outside the mesh; off unless `--jwt-jwks` is set.
#[derive(Debug, Clone, Args)]
pub struct JwtConfig {
    /// JSON Web Key Set file with the token issuer's public keys (each with a `kid`); setting it
    /// turns bearer tokens on. Read once at start.
    #[arg(long, env = "SHOPMESH_JWT_JWKS", value_name = "FILE", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub jwt_jwks: Option<PathBuf>,

    /// The only `iss` accepted.
    #[arg(long, env = "SHOPMESH_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// The `aud` a token must name.
    #[arg(long, env = "SHOPMESH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Signature algorithms accepted, comma-separated. Keys of another type never verify a
    /// token, whatever its header says.
    #[arg(long, env = "SHOPMESH_JWT_ALGORITHMS", hide_short_help = true, value_delimiter = ',', default_value = "RS256,ES256,EdDSA",
          value_parser = algorithm)]
    pub jwt_algorithms: Vec<jsonwebtoken::Algorithm>,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "SHOPMESH_JWT_LEEWAY", hide_short_help = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// Longest lifetime a token may have, `exp` minus `iat` (so a token must carry `iat`);
    /// `0s` turns the check off. A leaked token is then useful for at most this long.
    #[arg(long, env = "SHOPMESH_JWT_MAX_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    pub jwt_max_lifetime: Duration,

    /// Which calls must carry a token: `unidentified` (those without an mTLS identity) or
    /// `never` (tokens checked only when present). Health and reflection never need one.
    #[arg(long, env = "SHOPMESH_JWT_REQUIRE", value_enum, default_value_t = TokenRequirement::Unidentified)]
    pub jwt_require: TokenRequirement,

    /// Signature checks per second, per caller (mesh identity, else IP address), of tokens not
    /// seen lately; twice as many at once. A caller over it is answered RESOURCE_EXHAUSTED with
    /// pushback, so forged tokens cannot buy CPU. Tokens that verified, or failed, lately cost
    /// a lookup. 0 turns the bound off.
    #[arg(long, env = "SHOPMESH_JWT_NEW_TOKENS_PER_SECOND", hide_short_help = true, default_value_t = 100.0)]
    pub jwt_new_tokens_per_second: f64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        use jsonwebtoken::Algorithm;
        Self {
            jwt_jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            jwt_leeway: Duration::from_secs(30),
            jwt_max_lifetime: Duration::from_secs(24 * 3600),
            jwt_require: TokenRequirement::Unidentified,
            jwt_new_tokens_per_second: 100.0,
        }
    }
}

/// Who may connect and call: mutual TLS with SPIFFE identities, the authorization policy, and
/// the plaintext port left for the kubelet's probes.
#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// This service's certificate chain (PEM), e.g. a mounted Secret's `tls.crt`. With
    /// --tls-key and --tls-ca it turns mutual TLS on: plaintext and unidentified peers are
    /// refused, and calls to other services use TLS too.
    #[arg(long, env = "SHOPMESH_TLS_CERT", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// This service's private key (PEM: PKCS#8, PKCS#1 or SEC1), e.g. `tls.key`.
    #[arg(long, env = "SHOPMESH_TLS_KEY", value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,

    /// The CA bundle (PEM) peer certificates must chain to, e.g. `ca.crt`.
    #[arg(long, env = "SHOPMESH_TLS_CA", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,

    /// The SPIFFE trust domain every peer's certificate must name in its URI SAN
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
    #[arg(long, env = "SHOPMESH_TRUST_DOMAIN", hide_short_help = true, default_value = "cluster.local")]
    pub trust_domain: String,

    /// How often the certificate, key and CA files are read again; new handshakes use what
    /// changed (cert-manager renewals, CA rotation).
    #[arg(long, env = "SHOPMESH_TLS_RELOAD_INTERVAL", hide_short_help = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    /// Longest a TLS handshake may take before the connection is dropped.
    #[arg(long, env = "SHOPMESH_TLS_HANDSHAKE_TIMEOUT", hide_short_help = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// TLS handshakes in progress at once; connections accepted beyond it are closed at once
    /// (counted in `shopmesh_server_tls_handshake_failures_total{reason="too_many_handshakes"}`).
    #[arg(long, env = "SHOPMESH_TLS_MAX_PENDING_HANDSHAKES", hide_short_help = true, default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub tls_max_pending_handshakes: u32,

    /// Per-method authorization policy (JSON): which SPIFFE IDs may call which methods. Once
    /// set, every call not allowed is refused (health checks excepted).
    #[arg(long, env = "SHOPMESH_AUTHZ_POLICY", value_name = "FILE")]
    pub authz_policy: Option<PathBuf>,

    /// A plaintext port serving only `grpc.health.v1`, for kubelet probes when the service port
    /// requires mutual TLS (`serve` only: the all-in-one run has several services).
    #[arg(long, env = "SHOPMESH_PROBE_LISTEN", value_name = "ADDR")]
    pub probe_listen: Option<SocketAddr>,

    /// Serve without authentication (neither mutual TLS nor bearer tokens required of every
    /// caller) on an address other hosts can reach. Without it such a start is refused, so a
    /// service is never open to the network by accident; loopback addresses need no flag.
    #[arg(long, env = "SHOPMESH_ALLOW_INSECURE")]
    pub allow_insecure: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            trust_domain: "cluster.local".to_owned(),
            tls_reload_interval: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(10),
            tls_max_pending_handshakes: 256,
            authz_policy: None,
            probe_listen: None,
            allow_insecure: false,
        }
    }
}

fn algorithm(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not a JWS algorithm (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, …)")
    })
}
