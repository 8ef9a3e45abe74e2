//! The payment service's own settings; the `shopmesh` binary composes them with the mesh's.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use shopmesh::mesh::config::LISTEN_AND_DATABASES;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// The help heading of the simulated processor's settings.
const PROCESSOR: &str = "Simulated payment processor";

/// The payment service and its simulated card processor.
#[derive(Debug, Clone, Args)]
pub struct PaymentConfig {
    /// Address the payment service listens on.
    #[arg(
        id = "payment_listen",
        long = "payment-listen",
        value_name = "ADDR",
        env = "SHOPMESH_PAYMENT_LISTEN",
        help_heading = LISTEN_AND_DATABASES,
        default_value = "127.0.0.1:50053"
    )]
    pub listen: SocketAddr,

    /// The payment service's database: `sqlite://<file>` or `postgres://...`.
    #[arg(
        id = "payment_database_url",
        long = "payment-database-url",
        value_name = "URL",
        env = "SHOPMESH_PAYMENT_DATABASE_URL",
        // The URL may carry a password: --help never shows the variable's value.
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        default_value = "sqlite://data/payment.db"
    )]
    pub database_url: String,

    /// Replicas of the payment service's database that its read-only calls may read from (lag
    /// bounded by --max-replica-lag): a `postgres://...` URL (a CloudNativePG `-ro` Service),
    /// several comma-separated, or several hosts in one URL. PostgreSQL only; unset: every
    /// call uses --payment-database-url.
    #[arg(
        id = "payment_database_read_url",
        long = "payment-database-read-url",
        value_name = "URL",
        env = "SHOPMESH_PAYMENT_DATABASE_READ_URL",
        hide_env_values = true,
        help_heading = LISTEN_AND_DATABASES,
        // In `--help` only: `-h` of `serve <svc>` fits one screen.
        hide_short_help = true
    )]
    pub database_read_url: Option<String>,

    /// The simulated processor declines charges above this many minor units
    /// ("amount_over_limit").
    #[arg(long, env = "SHOPMESH_PAYMENT_LIMIT_MINOR", help_heading = PROCESSOR, default_value_t = 100_000)]
    pub payment_limit_minor: i64,

    /// Currencies the simulated processor accepts; others are declined
    /// ("currency_not_supported").
    #[arg(long, env = "SHOPMESH_PAYMENT_CURRENCIES", help_heading = PROCESSOR, value_delimiter = ',', default_value = "USD,EUR,GBP")]
    pub payment_currencies: Vec<String>,

    /// How long the simulated processor takes to answer a charge or refund.
    #[arg(long, env = "SHOPMESH_PAYMENT_LATENCY", help_heading = PROCESSOR, default_value = "0ms", value_parser = duration)]
    pub payment_latency: Duration,

    /// The simulated processor's own ledger of charges and refunds by idempotency key
    /// (`sqlite://<file>` or `postgres://...`): outside the payment service's database, as a
    /// real processor's records are, so it survives that database losing commits.
    #[arg(
        long,
        value_name = "URL",
        env = "SHOPMESH_PROCESSOR_LEDGER_URL",
        // It may hold a password: `--help` never shows the variable's value.
        hide_env_values = true,
        help_heading = PROCESSOR,
        default_value = "sqlite://data/processor.db"
    )]
    pub processor_ledger_url: String,

    /// How long one Charge owns a PROCESSING payment while it asks the processor (by the
    /// database's clock): a duplicate meanwhile gets PROCESSING back, and once it runs out (the
    /// owner died) the next Charge takes the payment over. Longer than the processor takes.
    #[arg(long, env = "SHOPMESH_PAYMENT_PROCESSING_LEASE", help_heading = PROCESSOR, default_value = "10s",
          value_parser = duration)]
    pub payment_processing_lease: Duration,
}
