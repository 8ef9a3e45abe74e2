//! `shopmesh-bench-floor [ADDR] [--tuned]`: tonic's hello-world Greeter with tonic's default
//! server and nothing else (no layers, no metrics, no logging), on `ADDR` (default
//! `127.0.0.1:50100`).
//!
//! `--tuned` runs it as a production server on one core would be run: on tokio's current-thread
//! runtime (no work-stealing scheduler, no cross-thread wake-ups). `TCP_NODELAY` is on in both,
//! as tonic's server sets it by default. The tuned floor is the one the mesh's goals are set
//! against: the best tonic itself does here.
//!
//! `scripts/bench-peers` runs it beside the mesh on the same core, so the mesh's figures are
//! read as ratios against what tonic itself costs on this machine, in the same run.

use tonic::{Request, Response, Status};

mod pb {
    tonic::include_proto!("helloworld");
}

use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

#[derive(Debug, Default)]
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let message = format!("Hello {}!", request.into_inner().name);
        Ok(Response::new(HelloReply { message }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tuned = args.iter().any(|a| a == "--tuned");
    let addr =
        args.iter().find(|a| !a.starts_with("--")).map_or("127.0.0.1:50100", String::as_str).parse()?;
    let runtime = if tuned {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?
    };
    eprintln!("floor: tonic Greeter on {addr}{}", if tuned { " (tuned)" } else { "" });
    runtime.block_on(serve(addr))
}

async fn serve(addr: std::net::SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Hello))
        .serve_with_shutdown(addr, async {
            // `scripts/bench-peers` stops it with SIGINT.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
