//! The commands that run no service: `healthcheck` (for probes in images without a shell),
//! `dev-certs` and `issue-certificate` (certificates for mutual TLS), `service-config` (the gRPC
//! service config for callers in other languages).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use shopmesh::mesh::health;
use shopmesh::mesh::security::certificates;

/// Exit 0 when `service` at `addr` is SERVING; otherwise say what it is and exit 1.
pub async fn healthcheck(addr: &str, service: &str, timeout: Duration) -> ExitCode {
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

/// `dev-certs`: a development CA and a certificate per service of the list, each directory
/// printed.
pub fn dev_certs(out: &Path, trust_domain: &str, namespace: &str) -> ExitCode {
    match certificates::generate(out, trust_domain, namespace, crate::services::NAMES) {
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

/// `issue-certificate`: says what [`certificates::issue_workload`] issued for `spiffe_id` into
/// `out`, or why it could not.
pub fn issued(spiffe_id: &str, out: &Path, result: Result<SystemTime, shopmesh::mesh::Error>) -> ExitCode {
    match result {
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

/// `service-config`: the gRPC service config for the API's methods under `client`, as JSON.
pub fn service_config(client: &shopmesh::mesh::config::ClientConfig) -> ExitCode {
    use std::io::Write as _;
    // Written, not println!: a reader that goes away (`| head`) is an error to report, not a panic.
    match writeln!(std::io::stdout(), "{}", service_config_text(client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("service-config: {err}");
            ExitCode::FAILURE
        }
    }
}

fn service_config_text(client: &shopmesh::mesh::config::ClientConfig) -> String {
    let catalogue = shopmesh::mesh::grpc::catalogue::Catalogue::new(shopmesh::api::CALL_POLICY);
    let config = shopmesh::mesh::client::service_config::service_config(&catalogue, client);
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

#[cfg(test)]
mod service_config_tests {
    use super::*;

    /// The committed copy every client ships is what `shopmesh service-config` prints with the
    /// default settings: a method added to the protos, or a changed default, fails here.
    #[test]
    fn grpc_service_config_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/grpc-service-config.json");
        let expected = service_config_text(&shopmesh::mesh::config::ClientConfig::default()) + "\n";
        if std::env::var_os("SHOPMESH_BLESS").is_some() {
            std::fs::write(&path, &expected).expect("write clients/grpc-service-config.json");
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == expected,
            "clients/grpc-service-config.json is not what `shopmesh service-config` prints: run \
             `SHOPMESH_BLESS=1 cargo test -p shopmesh-cli grpc_service_config` and commit it"
        );
    }
}
