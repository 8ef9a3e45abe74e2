//! The telemetry wing's settings: the metrics port and the log format (the `OTEL_*` variables
//! are read by OpenTelemetry itself). [`MeshConfig`](crate::mesh::config::MeshConfig) flattens
//! them under "Telemetry".

use std::net::SocketAddr;

use clap::Args;

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
