//! What the mesh's tower stacks cost: GetUser on the real user service (SQLite), through the
//! full server stack (load shedding, deadline, message size) and client stack (deadline, retry,
//! balancer), against the same handler served and called with the layers off (a bare tonic
//! server and channel). Rounds alternate between the two so machine noise hits both alike.
//!
//! ```sh
//! cargo run --release -p shopmesh-cli --example stack_cost -- [rate/s] [seconds] [rounds]
//! ```
//!
//! Open loop at a fixed rate: each call is timed from when it was due, not from when it was
//! sent, so a stall shows in the percentiles (no coordinated omission). Then a closed loop at
//! 64 calls in flight gives the most each can do.

use std::time::Duration;

use hdrhistogram::Histogram;

use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::config::MeshConfig;
use shopmesh::mesh::service::{Listeners, Mesh, MeshService as _};
use shopmesh::mesh::{client, db, server};
use shopmesh_user::{User, UserConfig};
use tokio::net::TcpListener;

mod common;

use common::{closed_loop, line, open_loop};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rate = args.first().copied().unwrap_or(2000);
    let seconds = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(3);

    let dir = tempfile::tempdir()?;
    let mut mesh = MeshConfig::default();
    // The stack must not shed or throttle what the bare server would serve.
    mesh.server.max_concurrent_requests = 10_000;
    let url = format!("sqlite://{}/user.db", dir.path().display());
    let pool = db::open(&url, &mesh, User::MIGRATIONS).await?;

    // Layers on: the mesh's server::serve.
    let on = TcpListener::bind("127.0.0.1:0").await?;
    let on_url = format!("http://{}", on.local_addr()?);
    let mesh_for_server = Mesh::new(mesh.clone(), shopmesh::mesh_api())?;
    // The service as it runs (GetUser's cache included), through its one door.
    let user_config = UserConfig::new("127.0.0.1:0".parse()?, url.clone());
    let routes = User::start(&mesh_for_server, &user_config, pool.clone()).await?.routes;
    let serving = mesh_for_server.clone();
    tokio::spawn(async move {
        server::serve(
            None,
            &serving,
            &[User::GRPC_SERVICE],
            routes,
            Listeners::new(on),
            None,
            std::future::pending(),
        )
        .await
    });
    // Layers off: the same routes on a bare tonic server, with only the token layer (tokens off),
    // which tells handlers whom a call acts for (the mesh, here) and costs a few extensions.
    let off = TcpListener::bind("127.0.0.1:0").await?;
    let off_url = format!("http://{}", off.local_addr()?);
    let routes = User::start(&mesh_for_server, &user_config, pool.clone()).await?.routes;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(shopmesh::mesh::security::bearer::BearerAuthLayer::new(None, None))
            .add_routes(routes)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(off).with_nodelay(Some(true))),
    );
    shopmesh::mesh::health::wait_serving(&on_url, User::GRPC_SERVICE, Duration::from_secs(10)).await;

    let mut stacked = UserServiceClient::new(
        client::channel(&on_url, &mesh.client, shopmesh::mesh_api().catalogue, None).await?,
    );
    let bare = UserServiceClient::new(
        tonic::transport::Endpoint::from_shared(off_url)?.tcp_nodelay(true).connect().await?,
    );
    let user = stacked
        .create_user(CreateUserRequest {
            email: "bench@example.com".into(),
            display_name: "Bench".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    // Warm both paths (connections, SQLite page cache).
    closed_loop(&stacked, &user.id, 16, 1).await;
    closed_loop(&bare, &user.id, 16, 1).await;

    println!("GetUser, open loop at {rate}/s for {seconds}s, {rounds} alternating rounds each:");
    let mut on_all = Histogram::<u64>::new(3)?;
    let mut off_all = Histogram::<u64>::new(3)?;
    let (mut on_rps, mut off_rps) = (0.0, 0.0);
    for round in 1..=rounds {
        let off = open_loop(&bare, &user.id, rate, seconds).await;
        println!("  round {round} {}", line("layers off", &off));
        let on = open_loop(&stacked, &user.id, rate, seconds).await;
        println!("  round {round} {}", line("layers on", &on));
        off_all.add(&off.1)?;
        on_all.add(&on.1)?;
        off_rps += off.0;
        on_rps += on.0;
    }
    let n = rounds as f64;
    println!(
        "all rounds: p99 off {} µs, on {} µs (ratio {:.2}); p50 off {} µs, on {} µs",
        off_all.value_at_quantile(0.99),
        on_all.value_at_quantile(0.99),
        on_all.value_at_quantile(0.99) as f64 / off_all.value_at_quantile(0.99).max(1) as f64,
        off_all.value_at_quantile(0.5),
        on_all.value_at_quantile(0.5),
    );
    println!("achieved rate: off {:.0}/s, on {:.0}/s", off_rps / n, on_rps / n);

    println!("closed loop, 64 in flight, {seconds}s each, alternating:");
    let (mut off_max, mut on_max) = (0.0, 0.0);
    for round in 1..=rounds {
        let off = closed_loop(&bare, &user.id, 64, seconds).await;
        let on = closed_loop(&stacked, &user.id, 64, seconds).await;
        println!("  round {round}: layers off {off:.0} req/s, layers on {on:.0} req/s");
        off_max += off;
        on_max += on;
    }
    println!("max throughput ratio on/off: {:.3}", on_max / off_max);
    Ok(())
}
