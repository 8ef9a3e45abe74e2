//! Mesh-wide settings: what every service shares (the database pool, calls to other services,
//! server limits and shutdown, security, tokens, telemetry). Each is a clap flag with a
//! `SHOPMESH_*` variable, shown in `--help` under its heading; a service's own settings live in
//! its crate's `config.rs`, and the `shopmesh` binary composes them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The help heading of each service's listen address and database URL, shared so they are
/// listed first, beside the database pool.
pub const LISTEN_AND_DATABASES: &str = "Listen and databases";
/// The help heading of where a service finds the services it calls.
pub const CALLS: &str = "Calls to other services";

/// Settings every service shares: the database pool, calls to other services, the server's
/// limits and shutdown, security, tokens and telemetry. Each service's own settings (its
/// address, its database, its dependencies) live in its own crate.
#[derive(Debug, Clone, Args)]
pub struct MeshConfig {
    /// Whether a service applies its migrations on start. With `false` it waits, NOT_SERVING,
    /// until `shopmesh migrate` (a deployment's one-off job) has applied them.
    #[arg(long, env = "SHOPMESH_DB_MIGRATE", default_value_t = true, action = clap::ArgAction::Set,
          help_heading = LISTEN_AND_DATABASES)]
    pub db_migrate: bool,

    /// Largest number of database connections each service's pool opens: unless set, 10 on
    /// PostgreSQL and 2 on SQLite (one writer at a time gets SQLite's lock, and a writer that
    /// finds it taken sleeps in SQLite's busy handler: more connections lengthen the tail, not
    /// the throughput).
    #[arg(long, env = "SHOPMESH_DB_MAX_CONNECTIONS", help_heading = LISTEN_AND_DATABASES)]
    pub db_max_connections: Option<u32>,

    /// Longest a request waits for a free database connection before failing UNAVAILABLE
    /// (less when the request's own deadline is nearer).
    #[arg(long, env = "SHOPMESH_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = duration,
          help_heading = LISTEN_AND_DATABASES)]
    pub db_acquire_timeout: Duration,

    /// How often a service checks that its database answers; its health follows the answer.
    #[arg(long, env = "SHOPMESH_READINESS_INTERVAL", default_value = "5s", value_parser = duration,
          help_heading = LISTEN_AND_DATABASES, hide_short_help = true)]
    pub readiness_interval: Duration,

    #[command(flatten, next_help_heading = CALLS)]
    #[allow(missing_docs)]
    pub client: ClientConfig,

    /// After a shutdown signal, how long a service keeps serving with its health NOT_SERVING,
    /// so load balancers (Kubernetes endpoints, DNS) stop sending before it stops accepting.
    #[arg(long, env = "SHOPMESH_DRAIN_DELAY", default_value = "0s", value_parser = duration,
          help_heading = "Server limits and shutdown")]
    pub drain_delay: Duration,

    /// Longest time in-flight calls get to finish once the server stops accepting (after the
    /// drain delay) before it stops anyway.
    #[arg(long, env = "SHOPMESH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration,
          help_heading = "Server limits and shutdown")]
    pub shutdown_timeout: Duration,

    #[command(flatten, next_help_heading = "Server limits and shutdown")]
    #[allow(missing_docs)]
    pub server: ServerConfig,

    #[command(flatten, next_help_heading = "Security: mutual TLS and authorization")]
    #[allow(missing_docs)]
    pub security: SecurityConfig,

    #[command(flatten, next_help_heading = "Bearer tokens (JWT) for callers outside the mesh")]
    #[allow(missing_docs)]
    pub jwt: JwtConfig,

    #[command(flatten, next_help_heading = "Telemetry")]
    #[allow(missing_docs)]
    pub telemetry: TelemetryConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(10),
            db_migrate: true,
            readiness_interval: Duration::from_secs(5),
            db_max_connections: None,
            db_acquire_timeout: Duration::from_secs(3),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
            jwt: JwtConfig::default(),
            telemetry: TelemetryConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

/// Limits that protect a server from overload and hostile peers.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Calls a service handles at once; more are answered RESOURCE_EXHAUSTED at once instead
    /// of queueing (health checks and reflection are never refused).
    #[arg(long, env = "SHOPMESH_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Calls one connection may have in progress at once, of --max-concurrent-requests; more
    /// are answered RESOURCE_EXHAUSTED, so one connection cannot take every slot.
    #[arg(long, env = "SHOPMESH_MAX_CONCURRENT_REQUESTS_PER_CONNECTION", hide_short_help = true,
          default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests_per_connection: u32,

    /// Calls one mTLS identity (the peer's SPIFFE ID) may have in progress at once, over all its
    /// connections, of --max-concurrent-requests; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHOPMESH_MAX_CONCURRENT_REQUESTS_PER_IDENTITY", hide_short_help = true,
          default_value_t = 384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests_per_identity: u32,

    /// Longest wait for a call's request message once its headers have arrived; a call whose
    /// message is not complete by then is answered DEADLINE_EXCEEDED. The wait takes no slot of
    /// --max-concurrent-requests: a slot is taken only once the handler runs.
    #[arg(long, env = "SHOPMESH_REQUEST_READ_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub request_read_timeout: Duration,

    /// Bytes of request messages being read at once, over all calls (each call's message is
    /// read in full before its handler runs); a call whose message would go over is answered
    /// RESOURCE_EXHAUSTED. Bounds the memory that clients sending large messages slowly hold.
    #[arg(long, env = "SHOPMESH_MAX_BUFFERED_REQUEST_BYTES", hide_short_help = true,
          default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_request_bytes: usize,

    /// Bytes of request messages being read at once over the calls of one connection, within
    /// --max-buffered-request-bytes: one connection cannot take the whole port's buffer.
    #[arg(long, env = "SHOPMESH_MAX_BUFFERED_REQUEST_BYTES_PER_CONNECTION", hide_short_help = true,
          default_value_t = 16 * 1024 * 1024)]
    pub max_buffered_request_bytes_per_connection: usize,

    /// Bytes of request messages being read at once for one caller (its mesh identity and token
    /// subject, else its IP address), over all its connections, within
    /// --max-buffered-request-bytes: one client cannot take the whole port's buffer.
    #[arg(long, env = "SHOPMESH_MAX_BUFFERED_REQUEST_BYTES_PER_CALLER", hide_short_help = true,
          default_value_t = 8 * 1024 * 1024)]
    pub max_buffered_request_bytes_per_caller: usize,

    /// HTTP/2 streams (calls) one connection may have open at once.
    #[arg(long, env = "SHOPMESH_MAX_CONCURRENT_STREAMS", hide_short_help = true, default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Largest request message a service accepts, in bytes; larger ones are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHOPMESH_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Interval of HTTP/2 pings on idle connections, to find peers that vanished.
    #[arg(long, env = "SHOPMESH_HTTP2_KEEPALIVE_INTERVAL", hide_short_help = true, default_value = "30s", value_parser = duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "SHOPMESH_HTTP2_KEEPALIVE_TIMEOUT", hide_short_help = true, default_value = "10s", value_parser = duration)]
    pub http2_keepalive_timeout: Duration,

    /// Age after which a connection is closed gracefully, so clients reconnect and spread
    /// over replicas added since (scale-out).
    #[arg(long, env = "SHOPMESH_MAX_CONNECTION_AGE", default_value = "5m", value_parser = duration)]
    pub max_connection_age: Duration,

    /// Time calls on a connection past its age get to finish before it is closed.
    #[arg(long, env = "SHOPMESH_MAX_CONNECTION_AGE_GRACE", hide_short_help = true, default_value = "30s", value_parser = duration)]
    pub max_connection_age_grace: Duration,

    /// Largest request metadata, counted as HTTP/2 counts a header list (name + value + 32 bytes
    /// per entry); larger ones are refused with RESOURCE_EXHAUSTED. HTTP/2 itself drops header
    /// lists over twice this (at least 16 KiB) before any layer sees them.
    #[arg(long, env = "SHOPMESH_MAX_METADATA_BYTES", default_value_t = 8 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_metadata_bytes: u32,

    /// Calls per second each caller may make on average (its mTLS identity and bearer token's
    /// subject together, else either one, else its IP address); 0 turns the limit off. Over
    /// it: RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`.
    #[arg(long, env = "SHOPMESH_RATE_LIMIT_RPS", default_value_t = 0.0, value_parser = rate)]
    pub rate_limit_rps: f64,

    /// Calls a caller may make at once above its rate (its bucket's size).
    #[arg(long, env = "SHOPMESH_RATE_LIMIT_BURST", hide_short_help = true, default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// Streams a peer may open and reset before the server accepts them, before its connection
    /// is closed (the HTTP/2 "rapid reset" attack, CVE-2023-44487).
    #[arg(
        long,
        env = "SHOPMESH_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        hide_short_help = true,
        default_value_t = 20
    )]
    pub http2_max_pending_accept_reset_streams: usize,

    /// Streams the server may reset for a peer's protocol errors before it closes the
    /// connection, so a misbehaving peer cannot make it do that work without end.
    #[arg(
        long,
        env = "SHOPMESH_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
        hide_short_help = true,
        default_value_t = 256
    )]
    pub http2_max_local_error_reset_streams: usize,
}

fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate: a number of calls per second, 0 or more")),
    }
}

impl ServerConfig {
    /// The HTTP/2 header-list size the server advertises and enforces itself: twice
    /// `max_metadata_bytes`, at least 16 KiB (hyper's default). Between the two, the metadata
    /// layer answers RESOURCE_EXHAUSTED; above it h2 answers HTTP 431, which clients see as a
    /// less helpful status, so it is only the backstop against header floods.
    pub fn http2_header_list_cap(&self) -> u32 {
        self.max_metadata_bytes.saturating_mul(2).max(16 * 1024)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 512,
            max_concurrent_requests_per_connection: 128,
            max_concurrent_requests_per_identity: 384,
            request_read_timeout: Duration::from_secs(5),
            max_buffered_request_bytes: 64 * 1024 * 1024,
            max_buffered_request_bytes_per_connection: 16 * 1024 * 1024,
            max_buffered_request_bytes_per_caller: 8 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_message_bytes: 4 * 1024 * 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
            max_connection_age_grace: Duration::from_secs(30),
            max_metadata_bytes: 8 * 1024,
            rate_limit_rps: 0.0,
            rate_limit_burst: 50,
            http2_max_pending_accept_reset_streams: 20,
            http2_max_local_error_reset_streams: 256,
        }
    }
}

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
    #[arg(long, env = "SHOPMESH_JWT_LEEWAY", hide_short_help = true, default_value = "30s", value_parser = duration)]
    pub jwt_leeway: Duration,

    /// Longest lifetime a token may have, `exp` minus `iat` (so a token must carry `iat`);
    /// `0s` turns the check off. A leaked token is then useful for at most this long.
    #[arg(long, env = "SHOPMESH_JWT_MAX_LIFETIME", default_value = "24h", value_parser = duration)]
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
    #[arg(long, env = "SHOPMESH_TLS_RELOAD_INTERVAL", hide_short_help = true, default_value = "5s", value_parser = duration)]
    pub tls_reload_interval: Duration,

    /// Longest a TLS handshake may take before the connection is dropped.
    #[arg(long, env = "SHOPMESH_TLS_HANDSHAKE_TIMEOUT", hide_short_help = true, default_value = "10s", value_parser = duration)]
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

/// A per-method deadline: `/package.Service/Method=duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodTimeout {
    /// The gRPC path, `/shopmesh.payment.v1.PaymentService/Charge`.
    pub path: String,
    /// Its default deadline.
    pub timeout: Duration,
}

fn method_timeout(s: &str) -> Result<MethodTimeout, String> {
    let (path, timeout) = s.split_once('=').ok_or("expected /package.Service/Method=duration")?;
    if !path.starts_with('/') || path.matches('/').count() != 2 {
        return Err(format!("{path:?} is not a gRPC path like /package.Service/Method"));
    }
    let timeout = duration(timeout).map_err(|e| format!("{timeout:?}: {e}"))?;
    Ok(MethodTimeout { path: path.to_owned(), timeout })
}

/// The hard cap on attempts of one call, whatever is configured.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// How a service calls others: deadlines, retries, and client-side load balancing.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// Deadline of an outgoing call when the request being handled has none, and the most
    /// any call gets.
    #[arg(long, env = "SHOPMESH_CALL_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub call_timeout: Duration,

    /// Per-method deadlines instead of --call-timeout, comma-separated:
    /// `/shopmesh.payment.v1.PaymentService/Charge=10s`.
    #[arg(long, env = "SHOPMESH_METHOD_TIMEOUTS", value_delimiter = ',', value_parser = method_timeout)]
    pub method_timeouts: Vec<MethodTimeout>,

    /// Time kept back from the remaining budget on each hop, for the answer's way back.
    #[arg(long, env = "SHOPMESH_DEADLINE_MARGIN", hide_short_help = true, default_value = "5ms", value_parser = duration)]
    pub deadline_margin: Duration,

    /// Attempts per call, the first included (1 = no retries; at most 5). Only UNAVAILABLE
    /// and connection failures are retried, and only for methods marked safe in the proto or
    /// calls carrying a request_id.
    #[arg(long, env = "SHOPMESH_RETRY_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_CAP)))]
    pub retry_max_attempts: u32,

    /// First retry backoff; it doubles on each retry, with random jitter.
    #[arg(long, env = "SHOPMESH_RETRY_BACKOFF", hide_short_help = true, default_value = "25ms", value_parser = duration)]
    pub retry_backoff: Duration,

    /// Longest retry backoff.
    #[arg(long, env = "SHOPMESH_RETRY_BACKOFF_MAX", hide_short_help = true, default_value = "1s", value_parser = duration)]
    pub retry_backoff_max: Duration,

    /// Retries allowed per call made, over the budget's window (0.2 = 20% extra load).
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_RATIO", hide_short_help = true, default_value_t = 0.2)]
    pub retry_budget_ratio: f32,

    /// Retries per second allowed whatever the traffic, so a quiet client can still retry.
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_MIN_PER_SEC", hide_short_help = true, default_value_t = 10)]
    pub retry_budget_min_per_sec: u32,

    /// The window over which calls earn retries (1s to 60s).
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_TTL", hide_short_help = true, default_value = "10s", value_parser = duration)]
    pub retry_budget_ttl: Duration,

    /// How often DNS names of other services are resolved again, to follow replicas.
    #[arg(long, env = "SHOPMESH_RESOLVE_INTERVAL", hide_short_help = true, default_value = "5s", value_parser = duration)]
    pub resolve_interval: Duration,

    /// Consecutive failures (UNAVAILABLE, connection errors) after which an endpoint is taken
    /// out of the balancer for a while (never the last one).
    #[arg(long, env = "SHOPMESH_EJECT_AFTER_FAILURES", hide_short_help = true, default_value_t = 5)]
    pub eject_after_failures: u32,

    /// How long an endpoint stays out the first time; doubled on each later ejection, up to
    /// 5 minutes.
    #[arg(long, env = "SHOPMESH_EJECT_TIME", hide_short_help = true, default_value = "10s", value_parser = duration)]
    pub eject_time: Duration,

    /// Longest wait for a TCP connection to another service.
    #[arg(long, env = "SHOPMESH_CONNECT_TIMEOUT", hide_short_help = true, default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            method_timeouts: Vec::new(),
            deadline_margin: Duration::from_millis(5),
            retry_max_attempts: 3,
            retry_backoff: Duration::from_millis(25),
            retry_backoff_max: Duration::from_secs(1),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            retry_budget_ttl: Duration::from_secs(10),
            resolve_interval: Duration::from_secs(5),
            eject_after_failures: 5,
            eject_time: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

impl ClientConfig {
    /// The default deadline of calls to `path`.
    pub fn timeout_for(&self, path: &str) -> Duration {
        self.method_timeouts.iter().find(|m| m.path == path).map_or(self.call_timeout, |m| m.timeout)
    }
}

/// Where metrics are served: an address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

fn metrics_listen(s: &str) -> Result<MetricsListen, String> {
    match s {
        "off" | "none" | "" => Ok(MetricsListen(None)),
        addr => addr.parse().map(|a| MetricsListen(Some(a))).map_err(|e| format!("{addr:?}: {e} (or `off`)")),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Telemetry settings (the `OTEL_*` variables are read by OpenTelemetry itself).
#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Address of the admin HTTP server with Prometheus metrics at `/metrics`; `off` for none.
    #[arg(long, env = "SHOPMESH_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = metrics_listen)]
    pub metrics_listen: MetricsListen,

    /// Log format.
    #[arg(long, env = "SHOPMESH_LOG_FORMAT", hide_short_help = true, value_enum, default_value = "auto")]
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { metrics_listen: MetricsListen("127.0.0.1:9464".parse().ok()), log_format: LogFormat::Auto }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Mesh {
        #[command(flatten)]
        mesh: MeshConfig,
    }

    #[test]
    fn defaults_of_flags_and_of_default_agree() {
        // Tests build configs with Default; the binary with clap: they must not drift apart.
        let parsed = Mesh::try_parse_from(["x"]).expect("parses").mesh;
        assert_eq!(format!("{parsed:?}"), format!("{:?}", MeshConfig::default()));
    }

    #[test]
    fn bearer_token_and_limit_flags_are_checked() {
        let m = Mesh::try_parse_from([
            "x",
            "--jwt-jwks",
            "/keys.json",
            "--jwt-issuer",
            "https://id.example",
            "--jwt-audience",
            "shopmesh",
            "--jwt-algorithms",
            "ES256,EdDSA",
            "--jwt-require",
            "never",
            "--rate-limit-rps",
            "2.5",
            "--max-metadata-bytes",
            "4096",
        ])
        .expect("parses")
        .mesh;
        assert_eq!(m.jwt.jwt_algorithms, [jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::EdDSA]);
        assert_eq!(m.jwt.jwt_require, TokenRequirement::Never);
        assert!((m.server.rate_limit_rps - 2.5).abs() < f64::EPSILON);
        assert_eq!(m.server.http2_header_list_cap(), 16 * 1024, "at least hyper's default");
        assert_eq!(
            ServerConfig { max_metadata_bytes: 64 * 1024, ..ServerConfig::default() }.http2_header_list_cap(),
            128 * 1024
        );
        // A key set without issuer and audience would accept any issuer's tokens for anything.
        assert!(Mesh::try_parse_from(["x", "--jwt-jwks", "/keys.json", "--jwt-issuer", "i"]).is_err());
        for bad in [
            ["--jwt-algorithms", "none"],
            ["--rate-limit-rps", "-1"],
            ["--rate-limit-rps", "NaN"],
            ["--rate-limit-burst", "0"],
            ["--max-metadata-bytes", "10"],
            ["--jwt-require", "always"],
        ] {
            assert!(Mesh::try_parse_from(["x", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn method_timeouts_and_attempt_cap_are_checked() {
        let m = Mesh::try_parse_from([
            "x",
            "--method-timeouts",
            "/shopmesh.payment.v1.PaymentService/Charge=10s,/a.B/C=1ms",
        ])
        .expect("parses")
        .mesh;
        assert_eq!(
            m.client.timeout_for("/shopmesh.payment.v1.PaymentService/Charge"),
            Duration::from_secs(10)
        );
        assert_eq!(m.client.timeout_for("/a.B/C"), Duration::from_millis(1));
        assert_eq!(m.client.timeout_for("/a.B/D"), Duration::from_secs(5));
        for bad in ["Charge=1s", "/a.B/C", "/a.B/C=soon", "/a/B/C=1s"] {
            assert!(Mesh::try_parse_from(["x", "--method-timeouts", bad]).is_err(), "{bad:?}");
        }
        assert!(Mesh::try_parse_from(["x", "--retry-max-attempts", "5"]).is_ok());
        assert!(Mesh::try_parse_from(["x", "--retry-max-attempts", "6"]).is_err(), "hard cap 5");
        assert!(Mesh::try_parse_from(["x", "--retry-max-attempts", "0"]).is_err());
    }
}
