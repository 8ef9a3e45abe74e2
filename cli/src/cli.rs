//! The command line's types: the commands and their flags (each service's come from the
//! service list, [`crate::services`]).

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::bench;
use crate::services::{AllArgs, Service};

/// A gRPC mesh of small services: user accounts, idempotent payments, a product catalog, and
/// orders.
///
/// Every flag can also be set with the environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(name = "shopmesh", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub all: AllArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Print the gRPC service config (JSON) for a caller's channel in any language:
    /// round_robin, each method's deadline, and retries (UNAVAILABLE, the mesh's backoff) of
    /// the methods the protos declare safe to repeat, under the client settings given here. The
    /// defaults' output is clients/grpc-service-config.json (see docs/clients.md).
    ServiceConfig {
        #[command(flatten)]
        client: shopmesh::mesh::config::ClientConfig,
    },
}
