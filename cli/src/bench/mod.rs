//! `shopmesh bench`: a load generator for a running mesh. It talks only to the public gRPC API,
//! with plain tonic clients over `--connections` HTTP/2 connections per target (not the mesh's
//! client stack, so the figures are the servers' and not our retry layer's), creates its own
//! users (and, when it orders, the products `BENCH-1` to `BENCH-10` in the catalog, since the
//! order service prices every line from it; and orders, to read them), applies load at a fixed
//! rate or concurrency, and reports throughput, latency percentiles and counts by status code,
//! as text or JSON. A secured mesh is measured as its callers reach it: over mutual TLS with
//! the bench's own certificate (`--tls-ca/--tls-cert/--tls-key`, the mesh's own TLS client),
//! and with metadata such as a bearer token on every call (`-H`).
//!
//! Exit status: 0 when the run happened, whatever the servers answered (a server that is down
//! shows as UNAVAILABLE counts) and also when stopped by SIGINT/SIGTERM; 2 for bad arguments;
//! 1 when nothing could be set up (no user could be created, no product for the orders, no
//! order for `get-order`) or the record file could not be written.

mod load;
mod notified;
mod progress;
mod raw;
mod record;
mod report;
mod scenario;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use shopmesh::api::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh::api::order::v1::order_service_client::OrderServiceClient;
use shopmesh::api::user::v1::user_service_client::UserServiceClient;
use shopmesh::mesh::security::connect::TlsConnector;
use shopmesh::mesh::security::tls::MeshTls;
use shopmesh::mesh::shutdown;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use load::{End, Mode, Plan, Shared};
use progress::Progress;
use record::Recorder;
use report::{RunInfo, Stats};
pub use scenario::Scenario;
use scenario::{Caller, Mix, Op, code_name, code_of};

/// Settings of `shopmesh bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to call.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The user service (GetUser, and the users every scenario creates first).
    #[arg(long, env = "SHOPMESH_BENCH_USER", default_value = "http://127.0.0.1:50051")]
    pub user: String,

    /// The order service (CreateOrder, GetOrder).
    #[arg(long, env = "SHOPMESH_BENCH_ORDER", default_value = "http://127.0.0.1:50052")]
    pub order: String,

    /// The catalog service the order service prices from (the products BENCH-1 to BENCH-10
    /// that `create-order`, `get-order` and `mix` order are created there first).
    #[arg(long, env = "SHOPMESH_BENCH_CATALOG", default_value = "http://127.0.0.1:50054")]
    pub catalog: String,

    /// `call`: the server called (any gRPC server, e.g. a floor the mesh is compared with).
    #[arg(long, env = "SHOPMESH_BENCH_TARGET", default_value = "http://127.0.0.1:50051")]
    pub target: String,

    /// `call`: the unary method called, `package.Service/Method`.
    #[arg(long, value_name = "PACKAGE.SERVICE/METHOD")]
    pub method: Option<String>,

    /// `call`: the request as JSON (protobuf's JSON mapping), for a method of the mesh's own
    /// APIs: `--request-json '{"id": "..."}'`.
    #[arg(long, value_name = "JSON", conflicts_with = "request_file")]
    pub request_json: Option<String>,

    /// `call`: a file holding the request as protobuf bytes (no gRPC frame), for any method of
    /// any server.
    #[arg(long, value_name = "FILE")]
    pub request_file: Option<PathBuf>,

    /// HTTP/2 connections opened to each service; calls take them in turn.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// Open loop: start this many calls per second whatever the answers; latency is timed
    /// from when each call was due. Without it the run is a closed loop (`--concurrency`).
    #[arg(long, conflicts_with = "concurrency", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: Option<u32>,

    /// Closed loop: keep this many calls in flight [default: 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// Open loop: most calls in flight; a call due when this many are in flight is not sent,
    /// and counted as not sent [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: Option<u32>,

    /// How long to measure, after the warm-up [default: 10s].
    #[arg(long, value_parser = positive_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Measure this many calls instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Load applied first and left out of every figure (connections, caches, pools warm up).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Deadline of each call, sent as `grpc-timeout`; a call not answered in time counts as
    /// DEADLINE_EXCEEDED.
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    pub timeout: Duration,

    /// Users created before the run (CreateUser with request ids); calls spread over them.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub users: u32,

    /// Orders created before the run for `get-order` and `mix` to read.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub orders: u32,

    /// Weights of the calls of `mix` [default: create-order=1,get-order=3,get-user=6].
    #[arg(long, value_parser = Mix::parse)]
    pub mix: Option<Mix>,

    /// Send a CreateOrder that failed UNAVAILABLE or DEADLINE_EXCEEDED (or lost its connection)
    /// again, with the same request id, up to this many times.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,

    /// Write one JSON line per CreateOrder (request id, user, total, final code, order id and
    /// state when OK) to this file; complete when the process exits, SIGINT/SIGTERM included.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// After a create-order run with --record, the notification service to time each PAID
    /// order's notification at: the report adds the time from CreateOrder's answer to the
    /// notification's send time (p50, p99), waiting up to 30 s for the last ones. Meaningful
    /// when the mesh runs on this host (both times are this clock's).
    #[arg(long, env = "SHOPMESH_BENCH_NOTIFICATION", value_name = "URL", requires = "record")]
    pub notification: Option<String>,

    /// Print the report as one JSON object (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// No progress bar and no set-up messages.
    #[arg(long, short)]
    pub quiet: bool,

    /// The CA bundle (PEM) the services' certificates must chain to. With --tls-cert and
    /// --tls-key, every call goes over mutual TLS, checked as the mesh's own clients check a
    /// server (the CA and a SPIFFE ID of --trust-domain); targets may then be https://.
    #[arg(long, env = "SHOPMESH_BENCH_TLS_CA", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,

    /// The bench's own certificate chain (PEM), e.g. the gateway's `tls.crt`: its SPIFFE ID is
    /// the identity the services see.
    #[arg(long, env = "SHOPMESH_BENCH_TLS_CERT", value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,

    /// The bench's private key (PEM), e.g. `tls.key`.
    #[arg(long, env = "SHOPMESH_BENCH_TLS_KEY", value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,

    /// The SPIFFE trust domain of the services' (and the bench's) certificates.
    #[arg(long, env = "SHOPMESH_BENCH_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Metadata sent with every call, `key: value`, repeatable: `-H "authorization: Bearer $TOKEN"`.
    #[arg(short = 'H', long = "header", env = "SHOPMESH_BENCH_HEADER", hide_env_values = true,
          value_name = "KEY: VALUE", value_parser = header)]
    pub headers: Vec<Header>,
}

/// One `key: value` of metadata that every call carries.
#[derive(Debug, Clone)]
pub struct Header {
    key: MetadataKey<Ascii>,
    value: MetadataValue<Ascii>,
}

/// Parses `key: value`: an ASCII metadata name (not a pseudo-header, not `grpc-…`, which the
/// protocol owns) and a printable ASCII value.
fn header(s: &str) -> Result<Header, String> {
    let (key, value) = s.split_once(':').ok_or("expected `key: value`")?;
    let key = key.trim();
    if key.starts_with("grpc-")
        || key.ends_with("-bin")
        || key.eq_ignore_ascii_case("te")
        || key.eq_ignore_ascii_case("content-type")
    {
        return Err(format!("{key:?} is set by the gRPC protocol, not by the caller"));
    }
    let key =
        MetadataKey::from_bytes(key.as_bytes()).map_err(|_| format!("{key:?} is not a metadata name"))?;
    let value =
        MetadataValue::try_from(value.trim()).map_err(|_| "the value must be printable ASCII".to_owned())?;
    Ok(Header { key, value })
}

/// Adds the `-H` metadata to each call.
#[derive(Debug, Clone)]
pub struct WithHeaders(Arc<[Header]>);

impl tonic::service::Interceptor for WithHeaders {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        // Reference-counted clones: no allocation beyond the map's own entries.
        for Header { key, value } in self.0.iter() {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

/// A channel as the bench's clients use it: one HTTP/2 connection, the `-H` metadata added.
pub type Channel = InterceptedService<tonic::transport::Channel, WithHeaders>;

/// A duration above zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(err) => Err(err.to_string()),
    }
}

impl BenchArgs {
    /// What clap cannot check by itself: URLs, and `--mix` only with the `mix` scenario.
    pub fn validate(&self) -> Result<(), String> {
        let tls = self.tls_cert.is_some();
        for (flag, url) in [("--user", &self.user), ("--order", &self.order), ("--catalog", &self.catalog)] {
            check_url(flag, url, tls)?;
        }
        if let Some(url) = &self.notification {
            check_url("--notification", url, tls)?;
        }
        let call = self.scenario == Scenario::Call;
        if call != self.method.is_some() {
            return Err("`call` needs --method, and --method applies only to `call`".into());
        }
        if call != (self.request_json.is_some() || self.request_file.is_some()) {
            return Err("`call` needs --request-json or --request-file, and they apply only to `call`".into());
        }
        if let Some(method) = &self.method {
            raw::method_path(method)?;
            check_url("--target", &self.target, tls)?;
        }
        if self.notification.is_some() && self.scenario != Scenario::CreateOrder {
            return Err("--notification applies only to the `create-order` scenario".into());
        }
        if self.mix.is_some() && self.scenario != Scenario::Mix {
            return Err("--mix applies only to the `mix` scenario".into());
        }
        if self.rate.is_none() && self.max_in_flight.is_some() {
            return Err("--max-in-flight applies only to an open loop (--rate)".into());
        }
        Ok(())
    }

    fn mix(&self) -> Mix {
        match self.scenario {
            Scenario::CreateOrder => Mix::only(Op::CreateOrder),
            Scenario::GetOrder => Mix::only(Op::GetOrder),
            Scenario::GetUser => Mix::only(Op::GetUser),
            Scenario::Call => Mix::only(Op::Call),
            Scenario::Mix => self.mix.clone().unwrap_or_else(|| {
                Mix::parse(Mix::DEFAULT).expect("the default mix parses (a unit test checks it)")
            }),
        }
    }
}

/// A target URL the bench can call: http://, or https:// when the bench has its certificate.
fn check_url(flag: &str, url: &str, tls: bool) -> Result<(), String> {
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{flag} {url:?} is not a URL like http://127.0.0.1:50051: {e}"))?;
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("http") => Ok(()),
        Some("https") if tls => Ok(()),
        Some("https") => Err(format!("{flag} {url:?}: https:// needs --tls-ca, --tls-cert and --tls-key")),
        _ => Err(format!("{flag} {url:?}: only http:// and https:// targets are supported")),
    }
}

/// `call`'s method and request, read and encoded before anything is sent.
fn raw_call(args: &BenchArgs, channels: Vec<Channel>) -> Result<raw::RawCall, String> {
    let path = raw::method_path(args.method.as_deref().unwrap_or_default())?;
    let body = match (&args.request_json, &args.request_file) {
        (Some(json), _) => raw::encode_json(&path, json)?,
        (None, Some(file)) => std::fs::read(file)
            .map_err(|e| format!("cannot read --request-file {}: {e}", file.display()))?
            .into(),
        (None, None) => return Err("`call` needs --request-json or --request-file".into()),
    };
    let clients = channels.into_iter().map(tonic::client::Grpc::new).collect();
    Ok(raw::RawCall { path, body: raw::Encoded(body), clients })
}

/// `n` lazily connected channels to `url`: each is one HTTP/2 connection, made on first use
/// and remade after it breaks, so a server that is down costs calls, not the run. With `tls`,
/// connections are mutual TLS (the scheme, http or https, then says nothing).
fn channels(
    url: &str,
    n: u32,
    timeout: Duration,
    tls: Option<&MeshTls>,
    headers: &WithHeaders,
) -> Result<Vec<Channel>, tonic::transport::Error> {
    // The connector makes the TLS; tonic is given the plain scheme it can connect without.
    let url = match url.strip_prefix("https://") {
        Some(rest) if tls.is_some() => format!("http://{rest}"),
        _ => url.to_owned(),
    };
    (0..n)
        .map(|_| {
            let endpoint = Endpoint::from_shared(url.clone())?
                .tcp_nodelay(true)
                .connect_timeout(timeout.min(Duration::from_secs(5)));
            let channel = match tls {
                Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector::new(tls.clone())),
                None => endpoint.connect_lazy(),
            };
            Ok(InterceptedService::new(channel, headers.clone()))
        })
        .collect()
}

/// Runs the bench; see the module docs for the exit status.
pub async fn run(args: BenchArgs) -> ExitCode {
    // Listening before anything else, so that no signal finds the default action (exit at
    // once, record unflushed). First SIGINT/SIGTERM: send nothing more, let the calls in
    // flight finish, report. Second: drop the calls in flight too.
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    tokio::spawn({
        let (stop, abort) = (stop.clone(), abort.clone());
        async move {
            shutdown::signal().await;
            stop.cancel();
            shutdown::signal().await;
            abort.cancel();
        }
    });

    let say = |text: String| {
        if !args.quiet && !args.json {
            eprintln!("{text}");
        }
    };
    let recorder = match &args.record {
        Some(path) => match Recorder::create(path) {
            Ok(r) => Arc::new(r),
            Err(err) => {
                eprintln!("error: cannot create the record file {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => Arc::new(Recorder::default()),
    };
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let security = shopmesh::mesh::config::SecurityConfig {
                tls_cert: Some(cert.clone()),
                tls_key: Some(key.clone()),
                tls_ca: Some(ca.clone()),
                trust_domain: args.trust_domain.clone(),
                ..Default::default()
            };
            match MeshTls::load(&security) {
                Ok(tls) => tls,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let headers = WithHeaders(args.headers.clone().into());
    let (user_channels, order_channels, catalog_channel) = match (
        channels(&args.user, args.connections, args.timeout, tls.as_ref(), &headers),
        channels(&args.order, args.connections, args.timeout, tls.as_ref(), &headers),
        channels(&args.catalog, 1, args.timeout, tls.as_ref(), &headers),
    ) {
        (Ok(u), Ok(o), Ok(mut c)) => (u, o, c.remove(0)),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    let mix = args.mix();
    let mut caller = Caller {
        users: user_channels.into_iter().map(UserServiceClient::new).collect(),
        orders: order_channels.into_iter().map(OrderServiceClient::new).collect(),
        user_ids: Vec::new(),
        products: Vec::new(),
        order_ids: Vec::new(),
        timeout: args.timeout,
        retries: args.retries,
        recorder: recorder.clone(),
        stop: stop.clone(),
        raw: None,
    };
    if args.scenario == Scenario::Call {
        let made = channels(&args.target, args.connections, args.timeout, tls.as_ref(), &headers)
            .map_err(|e| e.to_string())
            .and_then(|c| raw_call(&args, c));
        match made {
            Ok(raw) => caller.raw = Some(raw),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
    }

    // Set-up: a run id keeps this run's users (and their emails) apart from any other run's.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let created = if args.scenario == Scenario::Call {
        // `call` calls what it is told with what it is given: nothing to create.
        Ok(Vec::new())
    } else {
        say(format!("creating {} users at {}", args.users, args.user));
        tokio::select! {
            users = setup::users(&caller.users, args.users, &run_id, args.timeout) => users,
            () = stop.cancelled() => return finish_interrupted_setup(&recorder),
        }
    };
    caller.user_ids = match created {
        Ok(ids) => ids,
        Err(status) => {
            eprintln!(
                "error: cannot create users at {}: {}: {}",
                args.user,
                code_name(code_of(&status)),
                status.message()
            );
            return flush(&recorder, ExitCode::FAILURE);
        }
    };
    if mix.includes(Op::CreateOrder) || mix.includes(Op::GetOrder) {
        say(format!("creating products BENCH-1 to BENCH-{} at {}", setup::PRODUCTS, args.catalog));
        let catalog = CatalogServiceClient::new(catalog_channel);
        let created = tokio::select! {
            products = setup::products(&catalog, args.timeout) => products,
            () = stop.cancelled() => return finish_interrupted_setup(&recorder),
        };
        caller.products = match created {
            Ok(products) => products,
            Err(status) => {
                eprintln!(
                    "error: cannot create products at {}: {}: {}",
                    args.catalog,
                    code_name(code_of(&status)),
                    status.message()
                );
                return flush(&recorder, ExitCode::FAILURE);
            }
        };
    }
    if mix.includes(Op::GetOrder) {
        say(format!("creating {} orders at {}", args.orders, args.order));
        let created = tokio::select! {
            orders = setup::orders(&caller, args.orders) => orders,
            () = stop.cancelled() => return finish_interrupted_setup(&recorder),
        };
        caller.order_ids = match created {
            Ok(ids) => ids,
            Err(code) => {
                eprintln!("error: cannot create orders at {}: {code}", args.order);
                return flush(&recorder, ExitCode::FAILURE);
            }
        };
    }

    let plan = Plan {
        mode: match args.rate {
            Some(rate) => Mode::Open { rate, max_in_flight: args.max_in_flight.unwrap_or(1000) },
            None => Mode::Closed { concurrency: args.concurrency.unwrap_or(16) },
        },
        warmup: args.warmup,
        end: match (args.requests, args.duration) {
            (Some(n), _) => End::Requests(n),
            (None, d) => End::After(d.unwrap_or(Duration::from_secs(10))),
        },
    };
    let info = RunInfo {
        scenario: clap::ValueEnum::to_possible_value(&args.scenario)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default(),
        mix: (args.scenario == Scenario::Mix).then(|| mix.spec().to_owned()),
        mode: if args.rate.is_some() { "open" } else { "closed" },
        target_rate: args.rate,
        concurrency: args.rate.is_none().then(|| args.concurrency.unwrap_or(16)),
        connections: args.connections,
        users: caller.user_ids.len(),
        orders: caller.order_ids.len(),
        interrupted: false,
    };
    let stats = Arc::new(Stats::default());
    let progress = Progress::start(args.quiet || args.json, plan.end, plan.warmup, stats.clone());
    let shared = Shared { caller: Arc::new(caller), mix: Arc::new(mix), stats: stats.clone() };
    let start = Instant::now();
    load::run(plan, shared, start, stop.clone(), abort).await;
    progress.finish();

    let report = stats.report(RunInfo { interrupted: stop.is_cancelled(), ..info }, start + plan.warmup);
    let notified = match (&args.notification, &args.record) {
        // The record is read back: complete before the notifications are timed.
        (Some(_), Some(_)) if flush(&recorder, ExitCode::SUCCESS) == ExitCode::FAILURE => {
            return ExitCode::FAILURE;
        }
        (Some(url), Some(path)) => {
            say(format!("timing each PAID order's notification at {url}"));
            match notified::at(url, path, args.timeout, tls.as_ref(), &headers).await {
                Ok(latency) => Some(latency),
                Err(err) => {
                    eprintln!("error: cannot time the notifications at {url}: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    if args.json {
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        if let (Some(latency), Some(object)) = (&notified, json.as_object_mut()) {
            object.insert("notification".into(), serde_json::to_value(latency).unwrap_or_default());
        }
        println!("{json}");
    } else {
        print!("{}", report.text());
        if let Some(latency) = &notified {
            print!("{}", latency.text());
        }
    }
    flush(&recorder, ExitCode::SUCCESS)
}

/// Flushes the record file; a record that could not be written fails the run, since a harness
/// would otherwise reconcile against an incomplete file.
fn flush(recorder: &Recorder, code: ExitCode) -> ExitCode {
    match recorder.flush() {
        Ok(()) => code,
        Err(err) => {
            eprintln!("error: the record file is incomplete: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Stopped before the load began: nothing to report, the record (set-up orders) is flushed.
fn finish_interrupted_setup(recorder: &Recorder) -> ExitCode {
    eprintln!("interrupted during set-up; no load was applied");
    flush(recorder, ExitCode::SUCCESS)
}
