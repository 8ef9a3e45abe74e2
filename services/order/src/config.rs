//! The order service's own settings; the `shopmesh` binary composes them with the mesh's.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shopmesh::mesh::config::{CALLS, LISTEN_AND_DATABASES};

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The order service. Where its dependencies are is the mesh's upstream table (see `upstream.rs`).
#[derive(Debug, Clone, Args)]
pub struct OrderConfig {
    /// Address the order service listens on.
    #[arg(
        id = "order_listen",
        long = "order-listen",
        value_name = "ADDR",
        env = "SHOPMESH_ORDER_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50052"
    )]
    pub listen: SocketAddr,

    /// The order service's database: `sqlite://<file>` or `postgres://...`.
    #[arg(
        id = "order_database_url",
        long = "order-database-url",
        value_name = "URL",
        env = "SHOPMESH_ORDER_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/order.db"
    )]
    pub database_url: String,

    /// Replicas of the order service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --order-database-url.
    #[arg(
        id = "order_database_read_url",
        long = "order-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_ORDER_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,

    /// How long a user found active may order again without the user service being asked:
    /// a user deactivated meanwhile can still order for up to this time; `0s` asks on every
    /// order. Users found inactive or missing are asked again every time.
    #[arg(long, env = "SHOPMESH_USER_CHECK_TTL", help_heading = CALLS, default_value = "1s",
          value_parser = duration)]
    pub user_check_ttl: Duration,

    /// How long a product's catalog price is reused before the catalog is asked again: a price
    /// change reaches new orders within this time; `0s` asks the catalog on every order.
    #[arg(long, env = "SHOPMESH_CATALOG_CACHE_TTL", help_heading = CALLS, default_value = "5s",
          value_parser = duration)]
    pub catalog_cache_ttl: Duration,

    #[command(flatten, next_help_heading = "Reconciler")]
    #[allow(missing_docs)]
    pub reconcile: ReconcileConfig,
}

/// The order service's reconciler, which settles orders whose charge outcome is unknown.
#[derive(Debug, Clone, Args)]
pub struct ReconcileConfig {
    /// How often the reconciler looks for PENDING_PAYMENT orders that are due; `0s` turns it
    /// off (then such orders wait for a retried CreateOrder or CancelOrder).
    #[arg(long, env = "SHOPMESH_RECONCILE_INTERVAL", default_value = "1s", value_parser = duration)]
    pub reconcile_interval: Duration,

    /// How long a new order is left to its own CreateOrder call before the reconciler may
    /// charge it (charging both ways is safe, only wasteful).
    #[arg(long, env = "SHOPMESH_RECONCILE_AFTER", default_value = "10s", value_parser = duration)]
    pub reconcile_after: Duration,

    /// How long a replica holds its claim on an order; another may take the order after it
    /// runs out (the holder died). Longer than a Charge's deadline.
    #[arg(long, env = "SHOPMESH_RECONCILE_LEASE", default_value = "30s", value_parser = duration)]
    pub reconcile_lease: Duration,

    /// Longest wait between two attempts on one order (the wait doubles from the interval).
    #[arg(long, env = "SHOPMESH_RECONCILE_MAX_BACKOFF", default_value = "1m", value_parser = duration)]
    pub reconcile_max_backoff: Duration,

    /// Orders one replica claims per round; they are charged concurrently. Also how many PAID
    /// orders one audit checks.
    #[arg(long, env = "SHOPMESH_RECONCILE_BATCH", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub reconcile_batch: u32,

    /// How often the reconciler checks the next batch of PAID orders against the payment
    /// service, counting and logging each whose payment is not SUCCEEDED (refunded on payment,
    /// lost); `0s` turns the audit off.
    #[arg(long, env = "SHOPMESH_RECONCILE_AUDIT_INTERVAL", default_value = "1m", value_parser = duration)]
    pub reconcile_audit_interval: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(1),
            reconcile_after: Duration::from_secs(10),
            reconcile_lease: Duration::from_secs(30),
            reconcile_max_backoff: Duration::from_secs(60),
            reconcile_batch: 32,
            reconcile_audit_interval: Duration::from_secs(60),
        }
    }
}
