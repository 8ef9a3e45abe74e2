//! The labels of every metric about a call, one scheme for all of them: OpenTelemetry's RPC
//! conventions in their Prometheus form, `rpc_system` (always `grpc`), `rpc_service`
//! (`package.Service`) and `rpc_method` (the method's short name, `GetOrder`). No label is
//! named `service` or `job`: a Prometheus Operator scrape sets those on the target and would
//! rename ours to `exported_service`.
//!
//! Values come from the method catalogue ([`Method`]): static strings, so a caller choosing
//! paths cannot mint series (a path outside the catalogue is `unknown`) and no label value is
//! allocated; the one allocation is the label list a `metrics` key with runtime values needs.

use metrics::Label;

use crate::mesh::grpc::catalogue::Method;

/// `rpc_system`'s one value.
pub const RPC_SYSTEM: &str = "grpc";

/// The labels of a metric about a call to `method`, followed by `extra` (a reason, a bound, a
/// status code).
pub fn rpc(method: &Method, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(3 + extra.len());
    labels.push(Label::from_static_parts("rpc_system", RPC_SYSTEM));
    labels.push(Label::from_static_parts("rpc_service", method.service));
    labels.push(Label::from_static_parts("rpc_method", method.method));
    labels.extend(extra.iter().map(|&(key, value)| Label::from_static_parts(key, value)));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::grpc::catalogue::Catalogue;

    #[test]
    fn a_call_is_labelled_by_system_service_and_short_method() {
        let method =
            Catalogue::new(crate::api::CALL_POLICY).method("/shopmesh.order.v1.OrderService/GetOrder");
        let labels: Vec<_> = rpc(&method, &[("reason", "budget")])
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let want = [
            ("rpc_system", "grpc"),
            ("rpc_service", "shopmesh.order.v1.OrderService"),
            ("rpc_method", "GetOrder"),
            ("reason", "budget"),
        ];
        assert_eq!(labels, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn a_path_outside_the_catalogue_is_unknown() {
        let method = Catalogue::new(crate::api::CALL_POLICY).method("/evil.Svc/Minted");
        let values: Vec<_> = rpc(&method, &[]).iter().map(|l| l.value().to_owned()).collect();
        assert_eq!(values, ["grpc", "unknown", "unknown"]);
    }
}
