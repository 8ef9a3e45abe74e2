//! `shopmesh`: with no subcommand, runs every service (user, payment, catalog, order) in one process,
//! each on its own port and calling the others over gRPC exactly as separate processes would.
//! `shopmesh serve <service>` runs one service, which is what a container runs;
//! `shopmesh migrate <service>` applies a service's migrations (a deployment's one-off job);
//! `shopmesh healthcheck <addr> [service]` asks a server's health (for images without a shell);
//! `shopmesh bench <scenario>` applies load to a running mesh and reports what it measured;
//! `shopmesh dev-certs --out DIR` makes a development CA and a certificate per service for
//! mutual TLS.
//!
//! This file parses and dispatches; each job lives in a file named for it: the service list
//! (`services.rs`), the commands' types (`cli.rs`), the help shortener (`help.rs`), the all-in-one
//! run (`all_in_one.rs`) and its banner (`banner.rs`), one service (`serve.rs`), the commands
//! that run none (`tools.rs`), the bench (`bench/`) and the configuration reference
//! (`reference.rs`).

mod all_in_one;
mod banner;
mod bench;
mod cli;
mod help;
#[cfg(test)]
mod reference;
mod serve;
mod services;
mod tools;

/// mimalloc instead of glibc's malloc: allocation was a tenth of a call's CPU in the profile of
/// issue 14; docs/benchmarks.md#against-the-floor has the before and after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use shopmesh::mesh::config::TelemetryConfig;
use shopmesh::mesh::security::certificates;
use shopmesh::mesh::telemetry::Telemetry;

use cli::{Cli, Command};
use help::command;

fn main() -> ExitCode {
    use clap::FromArgMatches as _;
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|err| err.exit());
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        None => {
            let telemetry = cli.all.mesh.telemetry.clone();
            runtime.block_on(with_telemetry("shopmesh", telemetry, all_in_one::run_all(cli.all)))
        }
        Some(Command::Serve { service }) => service.with(serve::Serve(&runtime)),
        Some(Command::Migrate { service }) => service.with(serve::Migrate(&runtime)),
        Some(Command::Healthcheck { addr, service, timeout }) => {
            runtime.block_on(tools::healthcheck(&addr, &service, timeout))
        }
        // The bench is a client: no telemetry, and no metrics port that a local mesh already uses.
        Some(Command::Bench(args)) => {
            if let Err(message) = args.validate() {
                command().error(clap::error::ErrorKind::ArgumentConflict, message).exit();
            }
            runtime.block_on(bench::run(*args))
        }
        Some(Command::DevCerts { out, trust_domain, namespace }) => {
            tools::dev_certs(&out, &trust_domain, &namespace)
        }
        Some(Command::IssueCertificate { ca_cert, ca_key, spiffe_id, dns, validity, out }) => {
            let result = certificates::issue_workload(&ca_cert, &ca_key, &spiffe_id, &dns, validity, &out);
            tools::issued(&spiffe_id, &out, result)
        }
        Some(Command::ServiceConfig { client }) => tools::service_config(&client),
    }
}

/// The async runtime. With one CPU to run on (the process's affinity mask or its cgroup's CPU
/// quota, as `available_parallelism` reads them: `taskset -c 0`, a pod limited to one core or
/// less), tokio's current-thread scheduler: one thread runs every task and the I/O driver, with
/// no work-stealing queues, no cross-thread wake-ups and no idle worker parked and unparked
/// between calls. A multi-thread scheduler with one worker does the same work with that
/// machinery around it; docs/benchmarks.md#the-runtime has the figures. With more CPUs, or
/// when `TOKIO_WORKER_THREADS` asks for a number of workers, the multi-thread scheduler.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    if one_cpu && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
}

/// Runs `work` with the process's telemetry (`name` is the resource's service.name when
/// OTEL_SERVICE_NAME does not say otherwise), logs its error, and flushes telemetry at the end.
async fn with_telemetry(
    name: &str,
    config: TelemetryConfig,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;
    use crate::services::Service;

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
}
