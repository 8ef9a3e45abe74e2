//! Mesh-wide settings, flattened for clap: each wing owns its own (`server/config.rs`,
//! `client/config.rs`, `security/config.rs`, `telemetry/config.rs`) and [`MeshConfig`] gathers
//! them under their help headings (and `events/config.rs`), beside the database pool's and the shutdown's. Each is a
//! clap flag with a `SHOPMESH_*` variable; a service's own settings live in its crate's
//! `config.rs`, and the `shopmesh` binary composes them.

use std::time::Duration;

use clap::Args;

pub use crate::mesh::client::config::{ClientConfig, MAX_ATTEMPTS_CAP, MethodTimeout};
pub use crate::mesh::events::config::EventsConfig;
pub use crate::mesh::security::config::{JwtConfig, SecurityConfig, TokenRequirement};
pub use crate::mesh::server::config::ServerConfig;
pub use crate::mesh::telemetry::config::{LogFormat, MetricsListen, TelemetryConfig};

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
    #[arg(long, env = "SHOPMESH_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration,
          help_heading = LISTEN_AND_DATABASES)]
    pub db_acquire_timeout: Duration,

    /// Largest replay lag of a replica that read-only calls may read from (with
    /// `--<svc>-database-read-url`); a replica further behind, or not answering, is left until
    /// it catches up, and reads go to the other replicas or the primary. Measured every second.
    #[arg(long, env = "SHOPMESH_MAX_REPLICA_LAG", default_value = "5s", value_parser = humantime::parse_duration,
          help_heading = LISTEN_AND_DATABASES, hide_short_help = true)]
    pub max_replica_lag: Duration,

    /// How often a service checks that its database answers; its health follows the answer.
    #[arg(long, env = "SHOPMESH_READINESS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration,
          help_heading = LISTEN_AND_DATABASES, hide_short_help = true)]
    pub readiness_interval: Duration,

    #[command(flatten, next_help_heading = CALLS)]
    #[allow(missing_docs)]
    pub client: ClientConfig,

    /// After a shutdown signal, how long a service keeps serving with its health NOT_SERVING,
    /// so load balancers (Kubernetes endpoints, DNS) stop sending before it stops accepting.
    #[arg(long, env = "SHOPMESH_DRAIN_DELAY", default_value = "0s", value_parser = humantime::parse_duration,
          help_heading = "Server limits and shutdown")]
    pub drain_delay: Duration,

    /// Longest time in-flight calls get to finish once the server stops accepting (after the
    /// drain delay) before it stops anyway.
    #[arg(long, env = "SHOPMESH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration,
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

    // Under the calls heading: events are how a service reaches the services that follow it.
    #[command(flatten, next_help_heading = CALLS)]
    #[allow(missing_docs)]
    pub events: EventsConfig,
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
            max_replica_lag: Duration::from_secs(5),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
            jwt: JwtConfig::default(),
            telemetry: TelemetryConfig::default(),
            security: SecurityConfig::default(),
            events: EventsConfig::default(),
        }
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
