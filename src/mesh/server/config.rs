//! The server wing's settings: the limits that protect a server from overload and hostile
//! peers. [`MeshConfig`](crate::mesh::config::MeshConfig) flattens them under "Server limits
//! and shutdown".

use std::time::Duration;

use clap::Args;

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
    #[arg(long, env = "SHOPMESH_REQUEST_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
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
    #[arg(long, env = "SHOPMESH_HTTP2_KEEPALIVE_INTERVAL", hide_short_help = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "SHOPMESH_HTTP2_KEEPALIVE_TIMEOUT", hide_short_help = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Age after which a connection is closed gracefully, so clients reconnect and spread
    /// over replicas added since (scale-out).
    #[arg(long, env = "SHOPMESH_MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// Time calls on a connection past its age get to finish before it is closed.
    #[arg(long, env = "SHOPMESH_MAX_CONNECTION_AGE_GRACE", hide_short_help = true, default_value = "30s", value_parser = humantime::parse_duration)]
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
