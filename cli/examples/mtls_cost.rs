//! What mutual TLS costs: GetUser on the real user service (SQLite) through the mesh's full
//! server and client stacks, once in plaintext and once over mTLS (rustls on ring, SPIFFE
//! identities from a dev CA, the authorization layer off), both served in this process from one
//! database. Rounds alternate between the two so machine noise hits both alike.
//!
//! ```sh
//! cargo run --release -p shopmesh-cli --example mtls_cost -- [rate/s] [seconds] [rounds]
//! ```
//!
//! Open loop at a fixed rate: each call is timed from when it was due, not from when it was
//! sent, so a stall shows in the percentiles (no coordinated omission). Then a closed loop at
//! 64 calls in flight gives the most each can do. Connections are long-lived, as in the mesh:
//! this measures encryption per call, not handshakes.

use std::time::Duration;

use hdrhistogram::Histogram;

use shopmesh::api::user::v1::{CreateUserRequest, GetUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::config::{MeshConfig, SecurityConfig};
use shopmesh::mesh::security::certificates;
use shopmesh::mesh::security::tls::MeshTls;
use shopmesh::mesh::service::{Listeners, Mesh, MeshService as _};
use shopmesh::mesh::{client, db, server};
use shopmesh_user::{User, UserConfig};
use tokio::net::TcpListener;

mod common;

use common::{closed_loop, line, open_loop};

/// Settings naming the files `dev-certs` wrote for `sa`.
fn security(dir: &std::path::Path, sa: &str) -> SecurityConfig {
    let d = dir.join(sa);
    SecurityConfig {
        tls_cert: Some(d.join("tls.crt")),
        tls_key: Some(d.join("tls.key")),
        tls_ca: Some(d.join("ca.crt")),
        ..SecurityConfig::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rate = args.first().copied().unwrap_or(2000);
    let seconds = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(3);

    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    certificates::generate(&certs, "cluster.local", "default", &["user", "order"])?;
    let mut mesh = MeshConfig::default();
    // Neither server may shed what the other would serve.
    mesh.server.max_concurrent_requests = 10_000;
    let url = format!("sqlite://{}/user.db", dir.path().display());
    let pool = db::open(&url, &mesh, User::MIGRATIONS).await?;

    let mut tls_mesh = mesh.clone();
    tls_mesh.security = security(&certs, "shopmesh-user");
    let mut started = Vec::new();
    for config in [mesh.clone(), tls_mesh] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        started.push(format!("http://{}", listener.local_addr()?));
        let mesh = Mesh::new(config, shopmesh::mesh_api())?;
        // The service as it runs, through its one door.
        let user = UserConfig::new("127.0.0.1:0".parse()?, url.clone());
        let routes = User::start(&mesh, &user, pool.clone()).await?.routes;
        tokio::spawn(async move {
            server::serve(
                None,
                &mesh,
                &[User::GRPC_SERVICE],
                routes,
                Listeners::new(listener),
                None,
                std::future::pending(),
            )
            .await
        });
    }
    let (plain_url, tls_url) = (started[0].clone(), started[1].clone());
    shopmesh::mesh::health::wait_serving(&plain_url, User::GRPC_SERVICE, Duration::from_secs(10)).await;

    let client_tls = MeshTls::load(&security(&certs, "shopmesh-order"))?;
    let catalogue = shopmesh::mesh_api().catalogue;
    let mut plain = UserServiceClient::new(client::channel(&plain_url, &mesh.client, catalogue, None).await?);
    let tls = UserServiceClient::new(
        client::channel(&tls_url, &mesh.client, catalogue, client_tls.as_ref()).await?,
    );
    let user = plain
        .create_user(CreateUserRequest {
            email: "bench@example.com".into(),
            display_name: "Bench".into(),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    // Warm both paths (connections and handshakes, SQLite page cache).
    closed_loop(&plain, &user.id, 16, 1).await;
    closed_loop(&tls, &user.id, 16, 1).await;
    tls.clone().get_user(GetUserRequest { id: user.id.clone() }).await?;

    println!("GetUser, open loop at {rate}/s for {seconds}s, {rounds} alternating rounds each:");
    let mut tls_all = Histogram::<u64>::new(3)?;
    let mut plain_all = Histogram::<u64>::new(3)?;
    let (mut tls_rps, mut plain_rps) = (0.0, 0.0);
    for round in 1..=rounds {
        let p = open_loop(&plain, &user.id, rate, seconds).await;
        println!("  round {round} {}", line("plaintext", &p));
        let t = open_loop(&tls, &user.id, rate, seconds).await;
        println!("  round {round} {}", line("mTLS", &t));
        plain_all.add(&p.1)?;
        tls_all.add(&t.1)?;
        plain_rps += p.0;
        tls_rps += t.0;
    }
    let n = rounds as f64;
    println!(
        "all rounds: p99 plaintext {} µs, mTLS {} µs (ratio {:.2}); p50 plaintext {} µs, mTLS {} µs",
        plain_all.value_at_quantile(0.99),
        tls_all.value_at_quantile(0.99),
        tls_all.value_at_quantile(0.99) as f64 / plain_all.value_at_quantile(0.99).max(1) as f64,
        plain_all.value_at_quantile(0.5),
        tls_all.value_at_quantile(0.5),
    );
    println!("achieved rate: plaintext {:.0}/s, mTLS {:.0}/s", plain_rps / n, tls_rps / n);

    println!("closed loop, 64 in flight, {seconds}s each, alternating:");
    let (mut plain_max, mut tls_max) = (0.0, 0.0);
    for round in 1..=rounds {
        let p = closed_loop(&plain, &user.id, 64, seconds).await;
        let t = closed_loop(&tls, &user.id, 64, seconds).await;
        println!("  round {round}: plaintext {p:.0} req/s, mTLS {t:.0} req/s");
        plain_max += p;
        tls_max += t;
    }
    println!("max throughput ratio mTLS/plaintext: {:.3}", tls_max / plain_max);
    Ok(())
}
