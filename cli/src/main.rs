//! `shopmesh`: with no subcommand, runs every service (user, payment, catalog, order) in one process,
//! each on its own port and calling the others over gRPC exactly as separate processes would.
//! `shopmesh serve <service>` runs one service, which is what a container runs;
//! `shopmesh migrate <service>` applies a service's migrations (a deployment's one-off job);
//! `shopmesh healthcheck <addr> [service]` asks a server's health (for images without a shell);
//! `shopmesh bench <scenario>` applies load to a running mesh and reports what it measured;
//! `shopmesh dev-certs --out DIR` makes a development CA and a certificate per service for
//! mutual TLS.

mod bench;

/// mimalloc instead of glibc's malloc: allocation was a tenth of a call's CPU in the profile of
/// issue 14; docs/benchmarks.md#against-the-floor has the before and after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use shopmesh::mesh::config::MeshConfig;
use shopmesh::mesh::db::{self, Migrations};
use shopmesh::mesh::service::{Listeners, Mesh, MeshService};
use shopmesh::mesh::telemetry::Telemetry;
use shopmesh::mesh::{health, server, shutdown};
use shopmesh_catalog::{Catalog, CatalogConfig};
use shopmesh_order::{Order, OrderConfig};
use shopmesh_payment::{Payment, PaymentConfig};
use shopmesh_user::{User, UserConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A gRPC mesh of small services: user accounts, idempotent payments, a product catalog, and
/// orders.
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

/// Settings of the all-in-one run: the mesh's, then each service's own.
#[derive(Debug, clap::Args)]
struct AllArgs {
    #[command(flatten)]
    mesh: MeshConfig,
    #[command(flatten)]
    user: UserConfig,
    #[command(flatten)]
    payment: PaymentConfig,
    #[command(flatten)]
    catalog: CatalogConfig,
    #[command(flatten)]
    order: OrderConfig,
}

impl AllArgs {
    /// The mesh settings, and every service in the order they start (callees first).
    fn parts(self) -> (MeshConfig, Vec<Box<dyn Part>>) {
        (
            self.mesh,
            vec![
                Box::new(Configured::<User>(self.user)),
                Box::new(Configured::<Payment>(self.payment)),
                Box::new(Configured::<Catalog>(self.catalog)),
                Box::new(Configured::<Order>(self.order)),
            ],
        )
    }
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
    /// Sign a new workload certificate with a CA's key: `OUT/{tls.crt,tls.key,ca.crt}`, the key
    /// made here and readable by its owner only. The Helm chart's init container runs this
    /// when cert-manager does not issue the mesh's certificates (see docs/security.md).
    IssueCertificate {
        /// The CA's certificate (PEM).
        #[arg(long, env = "SHOPMESH_CA_CERT")]
        ca_cert: std::path::PathBuf,
        /// The CA's private key (PKCS#8 PEM).
        #[arg(long, env = "SHOPMESH_CA_KEY")]
        ca_key: std::path::PathBuf,
        /// The workload's identity, `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
        #[arg(long)]
        spiffe_id: String,
        /// A DNS name for the certificate too (repeatable), for clients that check host names.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// How long the certificate is valid (never beyond the CA's own validity).
        #[arg(long, default_value = "8760h", value_parser = humantime::parse_duration)]
        validity: Duration,
        /// Directory to write to (created if missing; existing files are replaced).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// One service with the mesh's settings and its own.
#[derive(Debug, clap::Args)]
struct One<S: MeshService> {
    #[command(flatten)]
    mesh: MeshConfig,
    #[command(flatten)]
    config: S::Config,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The user service (accounts).
    User(One<User>),
    /// The order service (orders; calls user, catalog and payment).
    Order(One<Order>),
    /// The payment service (charges and refunds over a simulated processor).
    Payment(One<Payment>),
    /// The catalog service (products and their prices).
    Catalog(One<Catalog>),
}

impl Service {
    /// The mesh settings and the service.
    fn split(self) -> (MeshConfig, Box<dyn Part>) {
        fn part<S: MeshService>(one: One<S>) -> (MeshConfig, Box<dyn Part>) {
            (one.mesh, Box::new(Configured::<S>(one.config)))
        }
        match self {
            Service::User(one) => part(one),
            Service::Order(one) => part(one),
            Service::Payment(one) => part(one),
            Service::Catalog(one) => part(one),
        }
    }
}

/// A service with its settings, behind one object-safe face, so every command has one path
/// whatever the service.
trait Part: Send {
    /// The service's short name.
    fn name(&self) -> &'static str;
    /// Its gRPC service's full name.
    fn grpc_service(&self) -> &'static str;
    /// Where it listens.
    fn listen(&self) -> SocketAddr;
    /// Its database and migrations.
    fn database(&self) -> (&str, Migrations);
    /// Points the upstream `name` at `url`, if this service calls it.
    fn point_at(&mut self, name: &str, url: &str);
    /// Requires `id` of every service it calls, unless told another.
    fn expect_upstream_identity(&mut self, id: &str);
    /// Runs it until `shutdown`.
    fn run(
        self: Box<Self>,
        mesh: Mesh,
        listeners: Listeners,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<(), shopmesh::mesh::Error>>;
}

/// Service `S` with its settings.
struct Configured<S: MeshService>(S::Config);

impl<S: MeshService> Part for Configured<S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn grpc_service(&self) -> &'static str {
        S::GRPC_SERVICE
    }

    fn listen(&self) -> SocketAddr {
        S::listen(&self.0)
    }

    fn database(&self) -> (&str, Migrations) {
        (S::database_url(&self.0), S::MIGRATIONS)
    }

    fn point_at(&mut self, name: &str, url: &str) {
        for (upstream, target) in S::upstreams(&mut self.0) {
            if upstream == name {
                url.clone_into(target);
            }
        }
    }

    fn expect_upstream_identity(&mut self, id: &str) {
        for expected in S::upstream_identities(&mut self.0) {
            expected.get_or_insert_with(|| id.to_owned());
        }
    }

    fn run(
        self: Box<Self>,
        mesh: Mesh,
        listeners: Listeners,
        shutdown: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<(), shopmesh::mesh::Error>> {
        Box::pin(async move { server::run::<S, _>(&mesh, self.0, listeners, shutdown).await })
    }
}

/// The command line: [`Cli`] with each flag's short help (`-h`) cut to its first sentence and
/// without its variable and default, so `-h` fits a screen, while `--help` keeps the whole text
/// with both.
fn command() -> clap::Command {
    fn first_sentence(text: &str) -> Option<&str> {
        let end = text.find(". ").or_else(|| text.find("; "))?;
        Some(&text[..end])
    }
    fn shorten(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| {
                if arg.get_long_help().is_some() || arg.get_help().is_none() || arg.is_hide_set() {
                    return arg;
                }
                let full = arg.get_help().map(ToString::to_string).unwrap_or_default();
                let short = first_sentence(&full).unwrap_or(&full).to_owned();
                let mut long = full.clone();
                if let Some(env) = arg.get_env() {
                    long.push_str(&format!(" [env: {}]", env.to_string_lossy()));
                }
                let defaults: Vec<String> =
                    arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
                if !defaults.is_empty() {
                    long.push_str(&format!(" [default: {}]", defaults.join(",")));
                }
                let takes_values = arg.get_action().takes_values();
                let arg = arg.help(short).long_help(long).hide_env(true);
                // clap shows (and allows hiding) a default only for flags that take a value.
                if takes_values { arg.hide_default_value(true) } else { arg }
            })
            .next_line_help(false)
            // No wrapping: one line per flag, so `-h` of a subcommand fits a screen.
            .term_width(0)
            .mut_subcommands(shorten)
    }
    use clap::CommandFactory as _;
    shorten(Cli::command())
}

fn main() -> ExitCode {
    use clap::FromArgMatches as _;
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|err| err.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        None => {
            runtime.block_on(with_telemetry("shopmesh", cli.all.mesh.telemetry.clone(), run_all(cli.all)))
        }
        Some(Command::Serve { service }) => {
            let (mesh, part) = service.split();
            let name = format!("shopmesh-{}", part.name());
            runtime.block_on(with_telemetry(&name, mesh.telemetry.clone(), serve_one(mesh, part)))
        }
        Some(Command::Migrate { service }) => {
            let (mesh, part) = service.split();
            let name = format!("shopmesh-{}", part.name());
            // A one-off job: nothing would scrape it, and it must not take a service's port.
            let telemetry = shopmesh::mesh::config::TelemetryConfig {
                metrics_listen: shopmesh::mesh::config::MetricsListen(None),
                ..mesh.telemetry.clone()
            };
            runtime.block_on(with_telemetry(&name, telemetry, migrate(mesh, part)))
        }
        Some(Command::Healthcheck { addr, service, timeout }) => {
            runtime.block_on(healthcheck(&addr, &service, timeout))
        }
        // The bench is a client: no telemetry, and no metrics port that a local mesh already uses.
        Some(Command::Bench(args)) => {
            if let Err(message) = args.validate() {
                command().error(clap::error::ErrorKind::ArgumentConflict, message).exit();
            }
            runtime.block_on(bench::run(*args))
        }
        Some(Command::DevCerts { out, trust_domain, namespace }) => {
            match shopmesh::mesh::security::certificates::generate(&out, &trust_domain, &namespace) {
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
            }
        }
        Some(Command::IssueCertificate { ca_cert, ca_key, spiffe_id, dns, validity, out }) => {
            use shopmesh::mesh::security::certificates::issue_workload;
            match issue_workload(&ca_cert, &ca_key, &spiffe_id, &dns, validity, &out) {
                Ok(not_after) => {
                    println!(
                        "issued {spiffe_id} into {}, valid until {}",
                        out.display(),
                        humantime::format_rfc3339_seconds(not_after)
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs `work` with the process's telemetry (`name` is the resource's service.name when
/// OTEL_SERVICE_NAME does not say otherwise), logs its error, and flushes telemetry at the end.
async fn with_telemetry(
    name: &str,
    config: shopmesh::mesh::config::TelemetryConfig,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let telemetry = match Telemetry::init(name, &config) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = work.await;
    if let Err(err) = &result {
        tracing::error!("{err:#}");
    }
    // The last spans (the shutdown's) are exported before the process exits.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what}: {e}"))
}

fn mesh_of(config: MeshConfig) -> anyhow::Result<Mesh> {
    Ok(Mesh::new(config, shopmesh::mesh_api())?)
}

async fn serve_one(config: MeshConfig, part: Box<dyn Part>) -> anyhow::Result<()> {
    let probe = match config.security.probe_listen {
        Some(addr) => Some(bind(addr, "probe port").await?),
        None => None,
    };
    let mut listeners = Listeners::new(bind(part.listen(), &format!("{} service", part.name())).await?);
    if let Some(probe) = probe {
        listeners = listeners.with_probe(probe);
    }
    let mesh = mesh_of(config)?;
    part.run(mesh, listeners, Box::pin(shutdown::signal())).await?;
    Ok(())
}

async fn migrate(config: MeshConfig, part: Box<dyn Part>) -> anyhow::Result<()> {
    let (url, migrations) = part.database();
    let pool = db::open(url, &config, migrations)
        .await
        .map_err(|e| anyhow::anyhow!("migrating the {} database: {e}", part.name()))?;
    pool.close().await;
    tracing::info!(service = part.name(), "migrations applied");
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
    let (config, mut parts) = args.parts();
    if let Some(addr) = config.security.probe_listen {
        anyhow::bail!("--probe-listen {addr}: the all-in-one run has several services; use it with `serve`");
    }
    // Bind every service first: a port in use fails the start before anything runs, and each
    // service learns the real addresses of the others.
    let mut listeners = Vec::new();
    for part in &parts {
        listeners.push(bind(part.listen(), &format!("{} service", part.name())).await?);
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(TcpListener::local_addr).collect::<Result<_, _>>()?;
    let urls: HashMap<&'static str, String> =
        parts.iter().zip(&addrs).map(|(p, a)| (p.name(), local_url(*a))).collect();
    for part in &mut parts {
        for (name, url) in &urls {
            part.point_at(name, url);
        }
    }
    // With mTLS on, the banner's grpcurl examples present these files.
    let tls_files = match (&config.security.tls_ca, &config.security.tls_cert, &config.security.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(format!("-cacert {} -cert {} -key {}", ca.display(), cert.display(), key.display()))
        }
        _ => None,
    };
    // One mesh for every service: certificates, key set and policy are loaded once.
    let mesh = mesh_of(config)?;
    // Every service presents the one certificate, so each calls servers of that identity.
    if let Some(tls) = mesh.tls() {
        let own = tls.identity().to_string();
        for part in &mut parts {
            part.expect_upstream_identity(&own);
        }
    }
    let authenticated = mesh.authenticates_every_call();
    let shown: Vec<(&'static str, SocketAddr, &'static str)> =
        parts.iter().zip(&addrs).map(|(p, a)| (p.name(), *a, p.grpc_service())).collect();

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (part, listener) in parts.into_iter().zip(listeners) {
        let name = part.name();
        let run = part.run(mesh.clone(), Listeners::new(listener), Box::pin(stop.clone().cancelled_owned()));
        tasks.spawn(async move { (name, run.await) });
    }
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown::signal().await;
            stop.cancel();
        });
    }

    // Asked through the mesh's own client: with mutual TLS on, a plaintext probe is refused.
    let ready = async {
        for (_, addr, grpc_service) in &shown {
            let Ok(channel) = mesh.channel(&local_url(*addr)).await else { return false };
            if !health::wait_serving_on(channel, grpc_service, Duration::from_secs(60)).await {
                return false;
            }
        }
        true
    };
    let mut failure: Option<anyhow::Error> = None;
    tokio::select! {
        ok = ready => {
            if ok {
                print_banner(&shown, started.elapsed(), authenticated, tls_files.as_deref());
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

fn task_error(
    joined: Result<(&'static str, Result<(), shopmesh::mesh::Error>), tokio::task::JoinError>,
) -> Option<anyhow::Error> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(err))) => Some(anyhow::anyhow!("{name} service: {err}")),
        Err(err) => Some(anyhow::anyhow!("a service task failed: {err}")),
    }
}

fn print_banner(
    services: &[(&'static str, SocketAddr, &'static str)],
    took: Duration,
    authenticated: bool,
    tls_files: Option<&str>,
) {
    let address =
        |name: &str| services.iter().find(|s| s.0 == name).map_or(String::new(), |s| s.1.to_string());
    let (u, c, o) = (address("user"), address("catalog"), address("order"));
    let mut table = String::new();
    for (name, addr, grpc_service) in services {
        table.push_str(&format!("  {name:<8} {addr:<16} {grpc_service}\n"));
    }
    // The order service prices every line from the catalog: create the product first, then
    // order it without a price.
    let product = r#"'{"product":{"sku":"BOOK-42","display_name":"A book","active":true,
      "unit_price":{"currency_code":"USD","amount_minor":1250}}}'"#;
    let user = r#"'{"email":"ada@example.com","display_name":"Ada"}'"#;
    let order = r#""{\"user_id\":\"$USER_ID\",\"request_id\":\"first-order\",\"line_items\":[{\"sku\":\"BOOK-42\",\"quantity\":2}]}""#;
    // Said on the banner, not only in the logs: whoever started it should know who may call.
    let exposure = if authenticated {
        ""
    } else {
        "Running without authentication: plaintext, no mutual TLS, no bearer tokens; any caller \
         that reaches these ports may call every method (docs/security.md).\n\n"
    };
    // Over mTLS, grpcurl presents the mesh's certificate (the policy decides what it may call).
    let how = tls_files.unwrap_or("-plaintext");
    println!(
        "\nshopmesh is up in {took:.0?}: {} services, each on its own port.\n\n{table}\n{exposure}\
         Try it (grpcurl and jq): create a product, a user, and an order the server prices.\n\n  \
         grpcurl {how} {o} list\n  \
         grpcurl {how} -d {product} \\\n      \
         {c} shopmesh.catalog.v1.CatalogService/CreateProduct\n  \
         USER_ID=$(grpcurl {how} -d {user} \\\n      \
         {u} shopmesh.user.v1.UserService/CreateUser | jq -r .id)\n  \
         grpcurl {how} -d {order} \\\n      \
         {o} shopmesh.order.v1.OrderService/CreateOrder\n\n\
         Ctrl-C stops every service.\n",
        services.len()
    );
}

/// The configuration reference (`docs/configuration.md`), generated from the flags themselves
/// so it cannot drift from `--help`: every flag of the all-in-one run under its help heading,
/// then the flags each `serve` subcommand adds to the mesh-wide ones.
#[cfg(test)]
fn configuration_reference() -> String {
    use std::fmt::Write as _;

    use clap::CommandFactory as _;

    fn cell(text: &str) -> String {
        text.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
    }
    fn flag(arg: &clap::Arg) -> String {
        let long = arg.get_long().unwrap_or_default();
        match arg.get_value_names() {
            Some(names) if arg.get_action().takes_values() => format!("`--{long} <{}>`", names.join(" ")),
            _ => format!("`--{long}`"),
        }
    }
    let mut cli = Cli::command();
    cli.build();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the flags themselves (`cli/src/main.rs`, test `configuration_reference_is_current`);\n\
         regenerate with `SHOPMESH_BLESS=1 cargo test -p shopmesh-cli configuration_reference`.\n\
         Every flag can also be set with its environment variable; a flag given on the command line wins.\n\
         `shopmesh` with no subcommand takes every flag below; `shopmesh serve <service>` and\n\
         `shopmesh migrate <service>` take the mesh-wide flags and that service's own (listed at the end).\n",
    );
    let mut headings: Vec<&str> = Vec::new();
    let args: Vec<&clap::Arg> =
        cli.get_arguments().filter(|a| a.get_long().is_some() && !a.is_hide_set()).collect();
    for arg in &args {
        let heading = arg.get_help_heading().unwrap_or("Options");
        if !headings.contains(&heading) {
            headings.push(heading);
        }
    }
    for heading in headings {
        let _ = write!(
            out,
            "\n## {heading}\n\n| Flag | Environment | Default | What it sets |\n|---|---|---|---|\n"
        );
        for arg in args.iter().filter(|a| a.get_help_heading().unwrap_or("Options") == heading) {
            let env = arg.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
            let default =
                if defaults.is_empty() { String::new() } else { format!("`{}`", defaults.join(",")) };
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            let _ = writeln!(out, "| {} | {env} | {default} | {} |", flag(arg), cell(&help));
        }
    }
    let _ = write!(out, "\n## Each service's own flags\n\n| Command | Its own flags |\n|---|---|\n");
    let serve = cli.find_subcommand("serve").expect("serve exists");
    let services: Vec<&clap::Command> = serve.get_subcommands().filter(|c| c.get_name() != "help").collect();
    // The mesh-wide flags are those every service takes.
    let mesh_wide: Vec<&str> = services
        .first()
        .into_iter()
        .flat_map(|c| c.get_arguments())
        .filter_map(clap::Arg::get_long)
        .filter(|long| services.iter().all(|svc| svc.get_arguments().any(|a| a.get_long() == Some(*long))))
        .collect();
    for service in services {
        let own: Vec<String> = service
            .get_arguments()
            .filter_map(clap::Arg::get_long)
            .filter(|long| !mesh_wide.contains(long) && *long != "help")
            .map(|long| format!("`--{long}`"))
            .collect();
        let _ = writeln!(out, "| `shopmesh serve {}` | {} |", service.get_name(), own.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let expected = configuration_reference();
        if std::env::var_os("SHOPMESH_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("write docs/configuration.md");
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == expected,
            "docs/configuration.md does not match the flags: run \
             `SHOPMESH_BLESS=1 cargo test -p shopmesh-cli configuration_reference` and commit it"
        );
    }

    #[test]
    fn short_help_of_each_command_fits_one_screen() {
        let mut cli = command();
        for path in
            [&["serve", "user"][..], &["serve", "order"], &["serve", "payment"], &["migrate", "order"]]
        {
            let mut command = cli.clone();
            for name in path {
                command = command.find_subcommand_mut(name).expect("subcommand").clone();
            }
            let help = command.render_help().to_string();
            let lines = help.lines().count();
            assert!(lines <= 60, "`{}` -h is {lines} lines:\n{help}", path.join(" "));
            let long = command.render_long_help().to_string();
            assert!(long.contains("Listen and databases"), "{long}");
        }
        let help = cli.render_help().to_string();
        let first = |needle: &str| help.find(needle).unwrap_or(usize::MAX);
        assert!(first("Listen and databases") < first("Calls to other services"), "{help}");
        assert!(first("Calls to other services") < first("Server limits"), "{help}");
        assert!(first("Telemetry") < first("Reconciler"), "{help}");
        assert!(!help.contains("[`"), "rustdoc links do not belong in --help:\n{help}");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        command().debug_assert();
        let cli = Cli::try_parse_from(["shopmesh", "serve", "order", "--order-listen", "0.0.0.0:1"])
            .expect("parses");
        assert!(matches!(cli.command, Some(Command::Serve { service: Service::Order(_) })));
        assert!(Cli::try_parse_from(["shopmesh", "serve", "order", "--user-listen", "x"]).is_err());
    }

    #[test]
    fn flags_parse_and_do_not_collide() {
        let cli = Cli::try_parse_from([
            "shopmesh",
            "--order-listen",
            "0.0.0.0:9000",
            "--payment-currencies",
            "USD,JPY",
            "--shutdown-timeout",
            "250ms",
        ])
        .expect("parses");
        assert_eq!(cli.all.order.listen.port(), 9000);
        assert_eq!(cli.all.payment.payment_currencies, ["USD", "JPY"]);
        assert_eq!(cli.all.mesh.shutdown_timeout, Duration::from_millis(250));
        assert_eq!(cli.all.user.listen.port(), 50051);
        assert_eq!(cli.all.payment.listen.port(), 50053);
    }

    #[test]
    fn the_all_in_one_points_each_service_at_the_local_others() {
        let cli = Cli::try_parse_from(["shopmesh"]).expect("parses");
        let (_, parts) = cli.all.parts();
        let names: Vec<_> = parts.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["user", "payment", "catalog", "order"], "callees start first");
        let args = Cli::try_parse_from(["shopmesh"]).expect("parses");
        let mut order = Configured::<Order>(args.all.order);
        order.point_at("payment", "http://127.0.0.1:7");
        order.point_at("nobody", "http://127.0.0.1:8");
        assert_eq!(order.0.payment_url, "http://127.0.0.1:7");
        assert_eq!(order.0.user_url, "http://127.0.0.1:50051", "untouched");
    }

    #[test]
    fn local_urls_replace_unspecified_ips() {
        assert_eq!(local_url("0.0.0.0:5".parse().expect("addr")), "http://127.0.0.1:5");
        assert_eq!(local_url("[::]:5".parse().expect("addr")), "http://[::1]:5");
        assert_eq!(local_url("10.1.2.3:5".parse().expect("addr")), "http://10.1.2.3:5");
    }
}
