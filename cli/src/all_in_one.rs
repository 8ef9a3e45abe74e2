//! The all-in-one run (`shopmesh` with no subcommand): every service of the list in one
//! process, each on its own port, through a mesh whose upstream table points at the local
//! ports. Calls between them go in-process ([`client::local`]): through the same client and
//! server stacks as separate processes' calls, without a socket; `--in-process-calls=false`
//! sends them over the local ports instead.
//!
//! [`client::local`]: shopmesh::mesh::client::local

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shopmesh::mesh::client::local::LocalServers;
use shopmesh::mesh::config::CALLS;
use shopmesh::mesh::events::{Broker, Events};
use shopmesh::mesh::service::{Listeners, Mesh, MeshService};
use shopmesh::mesh::upstream::Upstream;
use shopmesh::mesh::{health, server, shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::banner::print_banner;
use crate::serve::{bind, mesh_of};
use crate::services::AllArgs;

/// How the all-in-one's services call each other.
#[derive(Debug, Clone, clap::Args)]
pub struct InProcess {
    /// Whether calls between the all-in-one's services go in-process: into the callee's server
    /// stack (the same layers, policy and traces as over its port) without a socket or HTTP/2.
    /// `false` sends them over the local ports, as separate processes would. Outside callers
    /// use the ports either way.
    #[arg(long = "in-process-calls", env = "SHOPMESH_IN_PROCESS_CALLS", default_value_t = true, value_name = "BOOL",
          action = clap::ArgAction::Set, help_heading = CALLS)]
    pub calls: bool,
}

/// Runs one service on the mesh and its listeners until the shutdown future completes.
type Run = Box<dyn FnOnce(Mesh, Listeners, BoxFuture<'static, ()>) -> BoxFuture<'static, RunResult> + Send>;
type RunResult = Result<(), shopmesh::mesh::Error>;

/// A service of the all-in-one run with its settings: what the run needs to know of it, and
/// how to run it.
pub struct Launch {
    /// Its short name.
    pub name: &'static str,
    /// Its gRPC service.
    pub grpc_service: &'static str,
    listen: SocketAddr,
    upstreams: &'static [Upstream],
    events: Events,
    run: Run,
}

impl Launch {
    /// Service `S` with `config`.
    pub fn of<S: MeshService>(config: S::Config) -> Self {
        Self {
            name: S::NAME,
            grpc_service: S::GRPC_SERVICE,
            listen: S::listen(&config),
            upstreams: S::UPSTREAMS,
            events: S::EVENTS,
            run: Box::new(move |mesh, listeners, stop| {
                Box::pin(async move { server::run::<S, _>(&mesh, config, listeners, stop).await })
            }),
        }
    }
}

/// `launches` in the order they start: each after the services it calls (callees first), the
/// list's order otherwise.
pub fn start_order(mut launches: Vec<Launch>) -> Vec<Launch> {
    let mut ordered: Vec<Launch> = Vec::with_capacity(launches.len());
    while !launches.is_empty() {
        let waiting = |upstream: &Upstream, rest: &[Launch]| rest.iter().any(|l| l.name == upstream.name);
        let next = (0..launches.len())
            .find(|&i| !launches[i].upstreams.iter().any(|u| waiting(u, &launches)))
            // A cycle of calls: start the rest in the list's order (channels are lazy).
            .unwrap_or(0);
        ordered.push(launches.remove(next));
    }
    ordered
}

/// The address a local client reaches a listener on: its own, with an unspecified IP (0.0.0.0,
/// ::) replaced by loopback.
pub fn local_url(addr: SocketAddr) -> String {
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

/// Runs every service until a signal, or until one of them stops.
pub async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let in_process = args.in_process.calls;
    let (config, upstreams, launches) = args.launches();
    let launches = start_order(launches);
    if let Some(addr) = config.security.probe_listen {
        anyhow::bail!("--probe-listen {addr}: the all-in-one run has several services; use it with `serve`");
    }
    // Bind every service first: a port in use fails the start before anything runs, and each
    // service learns the real addresses of the others.
    let mut listeners = Vec::new();
    for launch in &launches {
        listeners.push(bind(launch.listen, &format!("{} service", launch.name)).await?);
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(TcpListener::local_addr).collect::<Result<_, _>>()?;
    let mut table = upstreams.table;
    for (launch, addr) in launches.iter().zip(&addrs) {
        table.point_at(launch.name, &local_url(*addr));
    }
    // With mTLS on, the banner's grpcurl examples present these files.
    let tls_files = match (&config.security.tls_ca, &config.security.tls_cert, &config.security.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(format!("-cacert {} -cert {} -key {}", ca.display(), cert.display(), key.display()))
        }
        _ => None,
    };
    // Events go through NATS with --events-url, else through the in-process bus, built from
    // every service's declared consumers so none misses an event published before it started.
    let declared: Vec<Events> = launches.iter().map(|l| l.events).collect();
    let broker = Broker::for_services(&config.events, &declared, true).await?;
    // One mesh for every service: certificates, key set and policy are loaded once.
    let mut mesh = mesh_of(config)?;
    if let Some(broker) = &broker {
        mesh = mesh.with_broker(broker.clone());
    }
    // Every service presents the one certificate, so each calls servers of that identity.
    if let Some(tls) = mesh.tls() {
        table.expect_everywhere(&tls.identity().to_string());
    }
    let mut mesh = mesh.with_upstreams(table);
    if in_process {
        mesh = mesh
            .with_local_servers(LocalServers::new(launches.iter().zip(&addrs).map(|(l, a)| (l.name, *a))));
    }
    let authenticated = mesh.authenticates_every_call();
    let shown: Vec<(&'static str, SocketAddr, &'static str)> =
        launches.iter().zip(&addrs).map(|(l, a)| (l.name, *a, l.grpc_service)).collect();

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (launch, listener) in launches.into_iter().zip(listeners) {
        let name = launch.name;
        let run =
            (launch.run)(mesh.clone(), Listeners::new(listener), Box::pin(stop.clone().cancelled_owned()));
        tasks.spawn(async move { (name, run.await) });
    }
    if let Some(broker) = broker {
        // A broker waited for since the start that refuses the mesh for good stops it.
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                why = broker.failed() => ("events", Err(why)),
                () = stop.cancelled() => ("events", Ok(())),
            }
        });
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

fn task_error(joined: Result<(&'static str, RunResult), tokio::task::JoinError>) -> Option<anyhow::Error> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(err))) => Some(anyhow::anyhow!("{name} service: {err}")),
        Err(err) => Some(anyhow::anyhow!("a service task failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn the_all_in_one_points_each_service_at_the_local_others() {
        let cli = Cli::try_parse_from(["shopmesh"]).expect("parses");
        let (_, upstreams, launches) = cli.all.launches();
        let names: Vec<_> = start_order(launches).iter().map(|l| l.name).collect();
        assert_eq!(
            names,
            ["user", "payment", "catalog", "order", "inventory", "notification"],
            "callees start first"
        );
        let mut table = upstreams.table;
        table.point_at("payment", "http://127.0.0.1:7");
        assert_eq!(table.get("payment").map(|t| t.url.as_str()), Some("http://127.0.0.1:7"));
        assert_eq!(table.get("user").map(|t| t.url.as_str()), Some("http://127.0.0.1:50051"), "untouched");
    }

    #[test]
    fn local_urls_replace_unspecified_ips() {
        assert_eq!(local_url("0.0.0.0:5".parse().expect("addr")), "http://127.0.0.1:5");
        assert_eq!(local_url("[::]:5".parse().expect("addr")), "http://[::1]:5");
        assert_eq!(local_url("10.1.2.3:5".parse().expect("addr")), "http://10.1.2.3:5");
    }
}
