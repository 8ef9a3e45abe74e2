//! The user service's own settings; the `shopmesh` binary composes them with the mesh's.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shopmesh::mesh::config::LISTEN_AND_DATABASES;

/// The user service.
#[derive(Debug, Clone, Args)]
pub struct UserConfig {
    /// Address the user service listens on.
    #[arg(
        id = "user_listen",
        long = "user-listen",
        value_name = "ADDR",
        env = "SHOPMESH_USER_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// The user service's database: `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        id = "user_database_url",
        long = "user-database-url",
        value_name = "URL",
        env = "SHOPMESH_USER_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/user.db"
    )]
    pub database_url: String,

    /// Replicas of the user service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --user-database-url.
    #[arg(
        id = "user_database_read_url",
        long = "user-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_USER_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,

    /// How long GetUser may answer from this replica's memory. An update through this replica
    /// is seen at once; one through another replica within this time. `0s` reads the database
    /// on every call.
    #[arg(
        id = "user_cache_ttl",
        long = "user-cache-ttl",
        value_name = "DURATION",
        env = "SHOPMESH_USER_CACHE_TTL",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "1s",
        value_parser = humantime::parse_duration
    )]
    pub cache_ttl: Duration,
}

impl UserConfig {
    /// The service on `listen` over `database_url`, every other setting at its default.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            database_read_url: None,
            cache_ttl: Duration::from_secs(1),
        }
    }
}
