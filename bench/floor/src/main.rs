//! `shopmesh-bench-floor [ADDR]`: tonic's hello-world Greeter with tonic's default server and
//! nothing else (no layers, no metrics, no logging), on `ADDR` (default `127.0.0.1:50100`).
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50100".to_owned()).parse()?;
    eprintln!("floor: tonic Greeter on {addr}");
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Hello))
        .serve_with_shutdown(addr, async {
            // `scripts/bench-peers` stops it with SIGINT.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
