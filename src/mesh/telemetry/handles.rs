//! Metric handles of a method's calls, looked up in the recorder once per method rather than on
//! every call: the duration histogram of its OK answers and its service's in-progress gauge.
//!
//! `metrics::histogram!` / `gauge!` with runtime labels build the label list, hash the key and
//! take a read lock on the recorder's registry each time; the server's observe layer did that
//! three times per call (the histogram, the gauge up, the gauge down). A slot per method of the
//! catalogue, filled at the method's first call, keeps the handles: a series still appears only
//! once it has been recorded, with the same name and labels, and the handles are the recorder's
//! that is installed when the first call comes (the process's, set up before anything serves).
//! Answers other than OK, rare by design, are looked up as before.

use std::sync::{Arc, OnceLock};

use metrics::{Gauge, Histogram};

use crate::mesh::grpc::catalogue::{Catalogue, INFRASTRUCTURE, Method};
use crate::mesh::telemetry::labels;

/// The handles of one method.
struct Handles {
    ok: Histogram,
    active: Gauge,
}

/// See the [module](self). Cheap to clone: one per server port, shared by its connections.
#[derive(Clone)]
pub struct CallMetrics {
    histogram: &'static str,
    /// By path, sorted: the catalogue's methods, the infrastructure ones and `unknown`.
    slots: Arc<[(&'static str, OnceLock<Handles>)]>,
}

impl std::fmt::Debug for CallMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallMetrics").field("histogram", &self.histogram).finish_non_exhaustive()
    }
}

/// The in-progress gauge of `service`.
fn active_gauge(service: &'static str) -> Gauge {
    metrics::gauge!("rpc_server_active_requests", "rpc_system" => labels::RPC_SYSTEM, "rpc_service" => service)
}

impl CallMetrics {
    /// Handles of `histogram` (by method and status code) and of `rpc_server_active_requests`
    /// for the methods of `catalogue`.
    pub fn new(catalogue: Catalogue, histogram: &'static str) -> Self {
        let mut paths: Vec<&'static str> =
            catalogue.api_paths().chain(INFRASTRUCTURE).chain([Method::UNKNOWN.path]).collect();
        paths.sort_unstable();
        paths.dedup();
        Self { histogram, slots: paths.into_iter().map(|p| (p, OnceLock::new())).collect() }
    }

    fn handles(&self, method: &Method) -> Option<&Handles> {
        let i = self.slots.binary_search_by(|(p, _)| (*p).cmp(method.path)).ok()?;
        Some(self.slots[i].1.get_or_init(|| Handles {
            ok: metrics::histogram!(self.histogram, labels::rpc(method, &[("rpc_grpc_status_code", "0")])),
            active: active_gauge(method.service),
        }))
    }

    /// Records a call to `method` that took `seconds` and answered `code` (a label value).
    pub fn record(&self, method: &Method, code: &'static str, seconds: f64) {
        match self.handles(method) {
            Some(handles) if code == "0" => handles.ok.record(seconds),
            _ => metrics::histogram!(self.histogram, labels::rpc(method, &[("rpc_grpc_status_code", code)]))
                .record(seconds),
        }
    }

    /// A call to `method` in progress, counted in its service's gauge until dropped.
    pub fn active(&self, method: &Method) -> Active {
        let gauge = self.handles(method).map_or_else(|| active_gauge(method.service), |h| h.active.clone());
        gauge.increment(1.0);
        Active(gauge)
    }
}

/// Decrements the in-progress gauge however the call ends (answered or dropped).
#[derive(Debug)]
pub struct Active(Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::telemetry::recorded_labels;

    fn labels_of(name: &str, calls: &[(&str, &'static str)]) -> Vec<Vec<(String, String)>> {
        let catalogue = Catalogue::new(crate::api::CALL_POLICY);
        recorded_labels(name, || {
            let metrics = CallMetrics::new(catalogue, "rpc_server_call_duration_seconds");
            for &(path, code) in calls {
                let method = catalogue.method(path);
                let _active = metrics.active(&method);
                metrics.record(&method, code, 0.001);
            }
        })
    }

    #[test]
    fn cached_handles_record_the_same_series_as_a_lookup() {
        let get = "/shopmesh.user.v1.UserService/GetUser";
        let mut series = labels_of(
            "rpc_server_call_duration_seconds",
            &[(get, "0"), (get, "0"), (get, "5"), ("/evil.Svc/Minted", "0")],
        );
        series.sort();
        let with = |service: &str, method: &str, code: &str| {
            [
                ("rpc_system", "grpc"),
                ("rpc_service", service),
                ("rpc_method", method),
                ("rpc_grpc_status_code", code),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec()
        };
        let mut want = vec![
            with("shopmesh.user.v1.UserService", "GetUser", "0"),
            with("shopmesh.user.v1.UserService", "GetUser", "5"),
            with("unknown", "unknown", "0"),
        ];
        want.sort();
        assert_eq!(series, want);
        let gauges = labels_of("rpc_server_active_requests", &[(get, "0")]);
        let service = [("rpc_system", "grpc"), ("rpc_service", "shopmesh.user.v1.UserService")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(gauges, vec![service.to_vec()]);
    }

    #[test]
    fn a_method_never_called_has_no_series() {
        assert!(labels_of("rpc_server_call_duration_seconds", &[]).is_empty());
        assert!(labels_of("rpc_server_active_requests", &[]).is_empty());
    }
}
