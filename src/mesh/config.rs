//! Typed configuration of every service. Flags and environment variables are read here and
//! nowhere else: each setting is a clap flag with an `SHOPMESH_*` variable, shown in `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Settings every service shares: shutdown and database pool behaviour.
#[derive(Debug, Clone, Args)]
pub struct MeshConfig {
    /// Longest time in-flight calls get to finish after a shutdown signal before the server
    /// stops anyway.
    #[arg(long, env = "SHOPMESH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// Largest number of database connections each service's pool opens.
    #[arg(long, env = "SHOPMESH_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Longest a request waits for a free database connection before failing UNAVAILABLE.
    #[arg(long, env = "SHOPMESH_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub db_acquire_timeout: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(10),
            db_max_connections: 10,
            db_acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// The user service.
#[derive(Debug, Clone, Args)]
pub struct UserConfig {
    /// Address the user service listens on.
    #[arg(
        id = "user_listen",
        long = "user-listen",
        value_name = "ADDR",
        env = "SHOPMESH_USER_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// The user service's database: `sqlite://<file>` (created if missing) or `postgres://...`.
    #[arg(
        id = "user_database_url",
        long = "user-database-url",
        value_name = "URL",
        env = "SHOPMESH_USER_DATABASE_URL",
        default_value = "sqlite://data/user.db"
    )]
    pub database_url: String,
}

/// The payment service and its simulated card processor.
#[derive(Debug, Clone, Args)]
pub struct PaymentConfig {
    /// Address the payment service listens on.
    #[arg(
        id = "payment_listen",
        long = "payment-listen",
        value_name = "ADDR",
        env = "SHOPMESH_PAYMENT_LISTEN",
        default_value = "127.0.0.1:50053"
    )]
    pub listen: SocketAddr,

    /// The payment service's database: `sqlite://<file>` or `postgres://...`.
    #[arg(
        id = "payment_database_url",
        long = "payment-database-url",
        value_name = "URL",
        env = "SHOPMESH_PAYMENT_DATABASE_URL",
        default_value = "sqlite://data/payment.db"
    )]
    pub database_url: String,

    /// The simulated processor declines charges above this many minor units
    /// ("amount_over_limit").
    #[arg(long, env = "SHOPMESH_PAYMENT_LIMIT_MINOR", default_value_t = 100_000)]
    pub payment_limit_minor: i64,

    /// Currencies the simulated processor accepts; others are declined
    /// ("currency_not_supported").
    #[arg(long, env = "SHOPMESH_PAYMENT_CURRENCIES", value_delimiter = ',', default_value = "USD,EUR,GBP")]
    pub payment_currencies: Vec<String>,

    /// How long the simulated processor takes to answer a charge or refund.
    #[arg(long, env = "SHOPMESH_PAYMENT_LATENCY", default_value = "0ms", value_parser = duration)]
    pub payment_latency: Duration,
}

/// The order service and where it finds its dependencies.
#[derive(Debug, Clone, Args)]
pub struct OrderConfig {
    /// Address the order service listens on.
    #[arg(
        id = "order_listen",
        long = "order-listen",
        value_name = "ADDR",
        env = "SHOPMESH_ORDER_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub listen: SocketAddr,

    /// The order service's database: `sqlite://<file>` or `postgres://...`.
    #[arg(
        id = "order_database_url",
        long = "order-database-url",
        value_name = "URL",
        env = "SHOPMESH_ORDER_DATABASE_URL",
        default_value = "sqlite://data/order.db"
    )]
    pub database_url: String,

    /// The user service (when all services run in one process, the local one is used).
    #[arg(long, env = "SHOPMESH_USER_URL", default_value = "http://127.0.0.1:50051")]
    pub user_url: String,

    /// The payment service (when all services run in one process, the local one is used).
    #[arg(long, env = "SHOPMESH_PAYMENT_URL", default_value = "http://127.0.0.1:50053")]
    pub payment_url: String,

    /// Deadline of each call to the user or payment service.
    #[arg(long, env = "SHOPMESH_CALL_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub call_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct All {
        #[command(flatten)]
        mesh: MeshConfig,
        #[command(flatten)]
        user: UserConfig,
        #[command(flatten)]
        order: OrderConfig,
        #[command(flatten)]
        payment: PaymentConfig,
    }

    #[test]
    fn flags_parse_and_do_not_collide() {
        let all = All::try_parse_from([
            "x",
            "--order-listen",
            "0.0.0.0:9000",
            "--payment-currencies",
            "USD,JPY",
            "--shutdown-timeout",
            "250ms",
        ])
        .expect("parses");
        assert_eq!(all.order.listen.port(), 9000);
        assert_eq!(all.payment.payment_currencies, ["USD", "JPY"]);
        assert_eq!(all.mesh.shutdown_timeout, Duration::from_millis(250));
        assert_eq!(all.user.listen.port(), 50051);
        assert_eq!(all.payment.listen.port(), 50053);
    }
}
