//! The commands that run no service: `healthcheck` (for probes in images without a shell),
//! `dev-certs` and `issue-certificate` (certificates for mutual TLS).

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
