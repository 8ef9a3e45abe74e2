//! `shopmesh`: with no subcommand, runs the user, payment and order services in one process,
//! each on its own port and calling the others over gRPC exactly as separate processes would.
//! `shopmesh serve <service>` runs one service, which is what a container runs;
//! `shopmesh migrate <service>` applies a service's migrations (a deployment's one-off job);
//! `shopmesh healthcheck <addr> [service]` asks a server's health (for images without a shell);
//! `shopmesh bench <scenario>` applies load to a running mesh and reports what it measured;
//! `shopmesh dev-certs --out DIR` makes a development CA and a certificate per service for
//! mutual TLS.

mod bench;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use shopmesh::mesh::config::{MeshConfig, OrderConfig, PaymentConfig, UserConfig};
use shopmesh::mesh::telemetry::Telemetry;
use shopmesh::mesh::{health, shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A gRPC mesh of small services: user accounts, idempotent payments, and orders.
///
/// Every flag can also be set with the environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(name = "shopmesh", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    all: AllArgs,
}

/// Settings of the all-in-one run.
#[derive(Debug, clap::Args)]
struct AllArgs {
    #[command(flatten)]
    mesh: MeshConfig,
    #[command(flatten)]
    user: UserConfig,
    #[command(flatten)]
    payment: PaymentConfig,
    #[command(flatten)]
    order: OrderConfig,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one service (what a container runs).
    Serve {
        #[command(subcommand)]
        service: Service,
    },
    /// Apply one service's database migrations and exit (a deployment's one-off job, before
    /// replicas that run with `--db-migrate false` start).
    Migrate {
        #[command(subcommand)]
        service: Service,
    },
    /// Ask a server's gRPC health; exit 0 if SERVING, 1 otherwise (for probes in images without
    /// a shell).
    Healthcheck {
        /// The server: `host:port` or `http://host:port`.
        addr: String,
        /// The service to ask about; the whole server (`""`) when left out.
        #[arg(default_value = "")]
        service: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Apply load to a running mesh through its public gRPC API and report throughput,
    /// latency percentiles and status codes (see docs/benchmarks.md).
    Bench(Box<bench::BenchArgs>),
    /// Make a development CA and a certificate for each service and the gateway, for running
    /// with mutual TLS locally: `DIR/<service-account>/{tls.crt,tls.key,ca.crt}`.
    DevCerts {
        /// Directory to write to (created if missing; existing files are replaced).
        #[arg(long, default_value = "dev-certs")]
        out: std::path::PathBuf,
        /// The SPIFFE trust domain of the identities.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The namespace in the identities (`spiffe://<td>/ns/<namespace>/sa/<account>`).
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The user service (accounts).
    User {
        #[command(flatten)]
        mesh: MeshConfig,
        #[command(flatten)]
        config: UserConfig,
    },
    /// The order service (orders; calls user and payment).
    Order {
        #[command(flatten)]
        mesh: MeshConfig,
        #[command(flatten)]
        config: OrderConfig,
    },
    /// The payment service (charges and refunds over a simulated processor).
    Payment {
        #[command(flatten)]
        mesh: MeshConfig,
        #[command(flatten)]
        config: PaymentConfig,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Bench(args)) = &cli.command
        && let Err(message) = args.validate()
    {
        use clap::CommandFactory as _;
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Healthcheck { addr, service, timeout }) = &cli.command {
        return runtime.block_on(healthcheck(addr, service, *timeout));
    }
    if let Some(Command::DevCerts { out, trust_domain, namespace }) = &cli.command {
        return match shopmesh::mesh::dev_certs::generate(out, trust_domain, namespace) {
            Ok(dirs) => {
                for dir in dirs {
                    println!("{}", dir.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        };
    }
    // The bench is a client: no telemetry, and no metrics port that a local mesh already uses.
    if let Some(Command::Bench(args)) = cli.command {
        return runtime.block_on(bench::run(*args));
    }
    runtime.block_on(async {
        // The resource's service.name when OTEL_SERVICE_NAME does not say otherwise.
        let (name, mut telemetry) = match &cli.command {
            None => ("shopmesh", cli.all.mesh.telemetry.clone()),
            Some(Command::Serve { service } | Command::Migrate { service }) => {
                let (name, mesh) = service.parts();
                (name, mesh.telemetry.clone())
            }
            Some(Command::Healthcheck { .. } | Command::Bench(_) | Command::DevCerts { .. }) => {
                ("shopmesh", Default::default())
            }
        };
        if matches!(cli.command, Some(Command::Migrate { .. })) {
            // A one-off job: nothing would scrape it, and it must not take a service's port.
            telemetry.metrics_listen = shopmesh::mesh::telemetry::MetricsListen(None);
        }
        let telemetry = match Telemetry::init(name, &telemetry) {
            Ok(t) => t,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        };
        let result = match cli.command {
            None => run_all(cli.all).await,
            Some(Command::Serve { service }) => serve_one(service).await,
            Some(Command::Migrate { service }) => migrate(service).await,
            Some(Command::Healthcheck { .. } | Command::Bench(_) | Command::DevCerts { .. }) => Ok(()),
        };
        if let Err(err) = &result {
            tracing::error!("{err:#}");
        }
        // The last spans (the shutdown's) are exported before the process exits.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

impl Service {
    /// The default service name for telemetry, and the shared settings.
    fn parts(&self) -> (&'static str, &MeshConfig) {
        match self {
            Service::User { mesh, .. } => ("shopmesh-user", mesh),
            Service::Order { mesh, .. } => ("shopmesh-order", mesh),
            Service::Payment { mesh, .. } => ("shopmesh-payment", mesh),
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what} service: {e}"))
}

async fn serve_one(service: Service) -> anyhow::Result<()> {
    match service {
        Service::User { mesh, config } => {
            let listener = bind(config.listen, "user").await?;
            shopmesh_user::run(mesh, config, listener, shutdown::signal()).await?;
        }
        Service::Order { mesh, config } => {
            let listener = bind(config.listen, "order").await?;
            shopmesh_order::run(mesh, config, listener, shutdown::signal()).await?;
        }
        Service::Payment { mesh, config } => {
            let listener = bind(config.listen, "payment").await?;
            shopmesh_payment::run(mesh, config, listener, shutdown::signal()).await?;
        }
    }
    Ok(())
}

async fn migrate(service: Service) -> anyhow::Result<()> {
    let (name, url, mesh, migrations) = match &service {
        Service::User { mesh, config } => ("user", &config.database_url, mesh, shopmesh_user::MIGRATIONS),
        Service::Order { mesh, config } => ("order", &config.database_url, mesh, shopmesh_order::MIGRATIONS),
        Service::Payment { mesh, config } => {
            ("payment", &config.database_url, mesh, shopmesh_payment::MIGRATIONS)
        }
    };
    let pool = shopmesh::mesh::db::open(url, mesh, migrations)
        .await
        .map_err(|e| anyhow::anyhow!("migrating the {name} database: {e}"))?;
    pool.close().await;
    tracing::info!(service = name, "migrations applied");
    Ok(())
}

/// Exit 0 when `service` at `addr` is SERVING; otherwise say what it is and exit 1.
async fn healthcheck(addr: &str, service: &str, timeout: Duration) -> ExitCode {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    match health::check(&url, service, timeout).await {
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{addr} {service:?}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(status) => {
            eprintln!("{addr} {service:?}: {:?}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

/// The address a local client reaches a listener on: its own, with an unspecified IP (0.0.0.0,
/// ::) replaced by loopback.
fn local_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        }
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let AllArgs { mesh, user, payment, mut order } = args;
    if let Some(addr) = mesh.security.probe_listen {
        anyhow::bail!("--probe-listen {addr}: the all-in-one run has three services; use it with `serve`");
    }
    // Bind all three first: a port in use fails the start before anything runs, and the order
    // service learns the real addresses of its dependencies.
    let user_listener = bind(user.listen, "user").await?;
    let payment_listener = bind(payment.listen, "payment").await?;
    let order_listener = bind(order.listen, "order").await?;
    let user_addr = user_listener.local_addr()?;
    let payment_addr = payment_listener.local_addr()?;
    let order_addr = order_listener.local_addr()?;
    order.user_url = local_url(user_addr);
    order.payment_url = local_url(payment_addr);

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(named(
        "user",
        shopmesh_user::run(mesh.clone(), user, user_listener, stop.clone().cancelled_owned()),
    ));
    tasks.spawn(named(
        "payment",
        shopmesh_payment::run(mesh.clone(), payment, payment_listener, stop.clone().cancelled_owned()),
    ));
    tasks.spawn(named(
        "order",
        shopmesh_order::run(mesh.clone(), order, order_listener, stop.clone().cancelled_owned()),
    ));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown::signal().await;
            stop.cancel();
        });
    }

    let ready = async {
        for (addr, name) in [
            (user_addr, shopmesh_user::SERVICE_NAME),
            (payment_addr, shopmesh_payment::SERVICE_NAME),
            (order_addr, shopmesh_order::SERVICE_NAME),
        ] {
            if !health::wait_serving(&local_url(addr), name, Duration::from_secs(60)).await {
                return false;
            }
        }
        true
    };
    let mut failure: Option<anyhow::Error> = None;
    tokio::select! {
        ok = ready => {
            if ok {
                print_banner(user_addr, order_addr, payment_addr, started.elapsed());
            } else {
                failure = Some(anyhow::anyhow!("the services did not become SERVING within 60s"));
                stop.cancel();
            }
        }
        Some(joined) = tasks.join_next() => {
            failure = Some(task_error(joined).unwrap_or_else(|| anyhow::anyhow!("a service stopped during start")));
            stop.cancel();
        }
    }
    // Any service stopping takes the others down with it: a partial mesh is not useful locally.
    while let Some(joined) = tasks.join_next().await {
        if let Some(err) = task_error(joined) {
            failure.get_or_insert(err);
        }
        stop.cancel();
    }
    failure.map_or(Ok(()), Err)
}

async fn named<F>(name: &'static str, fut: F) -> (&'static str, Result<(), shopmesh::mesh::Error>)
where
    F: std::future::Future<Output = Result<(), shopmesh::mesh::Error>>,
{
    (name, fut.await)
}

fn task_error(
    joined: Result<(&'static str, Result<(), shopmesh::mesh::Error>), tokio::task::JoinError>,
) -> Option<anyhow::Error> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(err))) => Some(anyhow::anyhow!("{name} service: {err}")),
        Err(err) => Some(anyhow::anyhow!("a service task failed: {err}")),
    }
}

fn print_banner(user: SocketAddr, order: SocketAddr, payment: SocketAddr, took: Duration) {
    let (u, o) = (user, order);
    println!(
        "\nshopmesh is up in {took:.0?}: three services, each on its own port.\n\n  \
         user     {user}   shopmesh.user.v1.UserService\n  \
         order    {order}   shopmesh.order.v1.OrderService\n  \
         payment  {payment}   shopmesh.payment.v1.PaymentService\n\n\
         Try it (grpcurl and jq):\n\n  \
         grpcurl -plaintext {o} list\n  \
         USER_ID=$(grpcurl -plaintext -d '{{\"email\":\"ada@example.com\",\"display_name\":\"Ada\"}}' \\\n      \
         {u} shopmesh.user.v1.UserService/CreateUser | jq -r .id)\n  \
         grpcurl -plaintext -d \"{{\\\"user_id\\\":\\\"$USER_ID\\\",\\\"request_id\\\":\\\"first-order\\\",\\\"line_items\\\":[{{\\\"sku\\\":\\\"BOOK-42\\\",\\\"quantity\\\":2,\\\"unit_price\\\":{{\\\"currency_code\\\":\\\"USD\\\",\\\"amount_minor\\\":1250}}}}]}}\" \\\n      \
         {o} shopmesh.order.v1.OrderService/CreateOrder\n\n\
         Ctrl-C stops all three.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["shopmesh", "serve", "order", "--order-listen", "0.0.0.0:1"])
            .expect("parses");
        assert!(matches!(cli.command, Some(Command::Serve { service: Service::Order { .. } })));
        assert!(Cli::try_parse_from(["shopmesh", "serve", "order", "--user-listen", "x"]).is_err());
    }

    #[test]
    fn local_urls_replace_unspecified_ips() {
        assert_eq!(local_url("0.0.0.0:5".parse().expect("addr")), "http://127.0.0.1:5");
        assert_eq!(local_url("[::]:5".parse().expect("addr")), "http://[::1]:5");
        assert_eq!(local_url("10.1.2.3:5".parse().expect("addr")), "http://10.1.2.3:5");
    }
}
