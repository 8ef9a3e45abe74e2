//! The catalog service's own settings: where it listens and its database. Settings every
//! service shares (shutdown, pools, TLS, telemetry) are the mesh's (`MeshConfig`); a command
//! line flattens both.

use std::net::SocketAddr;

use clap::Args;
use shopmesh::mesh::config::LISTEN_AND_DATABASES;

/// The catalog service.
#[derive(Debug, Clone, Args)]
pub struct CatalogConfig {
    /// Address the catalog service listens on.
    #[arg(
        id = "catalog_listen",
        long = "catalog-listen",
        value_name = "ADDR",
        env = "SHOPMESH_CATALOG_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50054"
    )]
    pub listen: SocketAddr,

    /// The catalog service's database: `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        id = "catalog_database_url",
        long = "catalog-database-url",
        value_name = "URL",
        env = "SHOPMESH_CATALOG_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/catalog.db"
    )]
    pub database_url: String,

    /// Replicas of the catalog service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --catalog-database-url.
    #[arg(
        id = "catalog_database_read_url",
        long = "catalog-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_CATALOG_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        catalog: CatalogConfig,
    }

    #[test]
    fn defaults_and_flags() {
        // The environment could set either variable; the defaults are what an unset one gives.
        if std::env::var_os("SHOPMESH_CATALOG_LISTEN").is_none()
            && std::env::var_os("SHOPMESH_CATALOG_DATABASE_URL").is_none()
        {
            let cli = Cli::try_parse_from(["x"]).expect("parses");
            assert_eq!(cli.catalog.listen, "127.0.0.1:50054".parse().expect("addr"));
            assert_eq!(cli.catalog.database_url, "sqlite://data/catalog.db");
        }
        let cli = Cli::try_parse_from([
            "x",
            "--catalog-listen",
            "0.0.0.0:9004",
            "--catalog-database-url",
            "postgres://db/catalog",
        ])
        .expect("parses");
        assert_eq!(cli.catalog.listen.port(), 9004);
        assert_eq!(cli.catalog.database_url, "postgres://db/catalog");
    }
}
