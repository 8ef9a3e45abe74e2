//! The inventory service's own settings: where it listens and its database. Where events go is
//! the mesh's (`--events-url`).

use std::net::SocketAddr;

use clap::Args;
use shopmesh::mesh::config::LISTEN_AND_DATABASES;

/// The inventory service.
#[derive(Debug, Clone, Args)]
pub struct InventoryConfig {
    /// Address the inventory service listens on.
    #[arg(
        id = "inventory_listen",
        long = "inventory-listen",
        value_name = "ADDR",
        env = "SHOPMESH_INVENTORY_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50055"
    )]
    pub listen: SocketAddr,

    /// The inventory service's database: `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        id = "inventory_database_url",
        long = "inventory-database-url",
        value_name = "URL",
        env = "SHOPMESH_INVENTORY_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/inventory.db"
    )]
    pub database_url: String,

    /// Replicas of the inventory service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --inventory-database-url.
    #[arg(
        id = "inventory_database_read_url",
        long = "inventory-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_INVENTORY_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,
}
