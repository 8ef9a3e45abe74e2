//! The notification service's own settings: where it listens and its database. Where events go is
//! the mesh's (`--events-url`).

use std::net::SocketAddr;

use clap::Args;
use shopmesh::mesh::config::LISTEN_AND_DATABASES;

/// The notification service.
#[derive(Debug, Clone, Args)]
pub struct NotificationConfig {
    /// Address the notification service listens on.
    #[arg(
        id = "notification_listen",
        long = "notification-listen",
        value_name = "ADDR",
        env = "SHOPMESH_NOTIFICATION_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50056"
    )]
    pub listen: SocketAddr,

    /// The notification service's database: `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        id = "notification_database_url",
        long = "notification-database-url",
        value_name = "URL",
        env = "SHOPMESH_NOTIFICATION_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/notification.db"
    )]
    pub database_url: String,

    /// Replicas of the notification service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --notification-database-url.
    #[arg(
        id = "notification_database_read_url",
        long = "notification-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_NOTIFICATION_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,
}
