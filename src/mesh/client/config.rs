//! The client wing's settings: deadlines, retries and client-side load balancing of calls to
//! other services. [`MeshConfig`](crate::mesh::config::MeshConfig) flattens them under "Calls
//! to other services".

use std::time::Duration;

use clap::Args;

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
    let timeout = humantime::parse_duration(timeout).map_err(|e| format!("{timeout:?}: {e}"))?;
    Ok(MethodTimeout { path: path.to_owned(), timeout })
}

/// The hard cap on attempts of one call, whatever is configured.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// How a service calls others: deadlines, retries, and client-side load balancing.
#[derive(Debug, Clone, Args)]
pub struct ClientConfig {
    /// Deadline of an outgoing call when the request being handled has none, and the most
    /// any call gets.
    #[arg(long, env = "SHOPMESH_CALL_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub call_timeout: Duration,

    /// Per-method deadlines instead of --call-timeout, comma-separated:
    /// `/shopmesh.payment.v1.PaymentService/Charge=10s`.
    #[arg(long, env = "SHOPMESH_METHOD_TIMEOUTS", value_delimiter = ',', value_parser = method_timeout)]
    pub method_timeouts: Vec<MethodTimeout>,

    /// Time kept back from the remaining budget on each hop, for the answer's way back.
    #[arg(long, env = "SHOPMESH_DEADLINE_MARGIN", hide_short_help = true, default_value = "5ms", value_parser = humantime::parse_duration)]
    pub deadline_margin: Duration,

    /// Attempts per call, the first included (1 = no retries; at most 5). Only UNAVAILABLE
    /// and connection failures are retried, and only for methods marked safe in the proto or
    /// calls carrying a request_id.
    #[arg(long, env = "SHOPMESH_RETRY_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_CAP)))]
    pub retry_max_attempts: u32,

    /// First retry backoff; it doubles on each retry, with random jitter.
    #[arg(long, env = "SHOPMESH_RETRY_BACKOFF", hide_short_help = true, default_value = "25ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,

    /// Longest retry backoff.
    #[arg(long, env = "SHOPMESH_RETRY_BACKOFF_MAX", hide_short_help = true, default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff_max: Duration,

    /// Retries allowed per call made, over the budget's window (0.2 = 20% extra load).
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_RATIO", hide_short_help = true, default_value_t = 0.2)]
    pub retry_budget_ratio: f32,

    /// Retries per second allowed whatever the traffic, so a quiet client can still retry.
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_MIN_PER_SEC", hide_short_help = true, default_value_t = 10)]
    pub retry_budget_min_per_sec: u32,

    /// The window over which calls earn retries (1s to 60s).
    #[arg(long, env = "SHOPMESH_RETRY_BUDGET_TTL", hide_short_help = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_budget_ttl: Duration,

    /// How often DNS names of other services are resolved again, to follow replicas.
    #[arg(long, env = "SHOPMESH_RESOLVE_INTERVAL", hide_short_help = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub resolve_interval: Duration,

    /// Consecutive failures (UNAVAILABLE, connection errors) after which an endpoint is taken
    /// out of the balancer for a while (never the last one).
    #[arg(long, env = "SHOPMESH_EJECT_AFTER_FAILURES", hide_short_help = true, default_value_t = 5)]
    pub eject_after_failures: u32,

    /// How long an endpoint stays out the first time; doubled on each later ejection, up to
    /// 5 minutes.
    #[arg(long, env = "SHOPMESH_EJECT_TIME", hide_short_help = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub eject_time: Duration,

    /// Longest wait for a TCP connection to another service.
    #[arg(long, env = "SHOPMESH_CONNECT_TIMEOUT", hide_short_help = true, default_value = "1s", value_parser = humantime::parse_duration)]
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
