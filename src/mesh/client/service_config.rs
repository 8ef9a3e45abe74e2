//! The gRPC service config a caller in any language should use, generated from the same data
//! the mesh's own clients use: the protos' idempotency levels (the method catalogue) and the
//! client settings ([`ClientConfig`]). A caller whose channel takes it retries what the mesh
//! retries, with the mesh's backoff, and nothing else.
//!
//! Its shape is gRPC's service config (`grpc/service_config.proto`, the JSON every gRPC
//! implementation reads): `round_robin` over the resolved addresses; per method a `timeout`,
//! and a `retryPolicy` (UNAVAILABLE only) for methods declared `NO_SIDE_EFFECTS` or
//! `IDEMPOTENT`. Methods with side effects get none: the mesh repeats them only when the call
//! carries a `request_id`, which a service config cannot see, so a caller that sets one may
//! retry them itself. `retryThrottling` stands in for the mesh's retry budget (gRPC's token
//! bucket: a failure costs a token, a success earns `tokenRatio`).

use serde_json::{Value, json};

use crate::api::Idempotency;
use crate::mesh::config::{ClientConfig, MAX_ATTEMPTS_CAP};
use crate::mesh::grpc::catalogue::Catalogue;

/// The service config for calls to every API method of `catalogue` under `config`.
pub fn service_config(catalogue: &Catalogue, config: &ClientConfig) -> Value {
    let retry = json!({
        "maxAttempts": config.retry_max_attempts.clamp(2, MAX_ATTEMPTS_CAP),
        "initialBackoff": seconds(config.retry_backoff),
        "maxBackoff": seconds(config.retry_backoff_max),
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    });
    let method_config: Vec<Value> = catalogue
        .api_paths()
        .map(|path| catalogue.method(path))
        .map(|method| {
            let mut entry = json!({
                "name": [{"service": method.service, "method": method.method}],
                "timeout": seconds(config.timeout_for(method.path)),
            });
            let safe = matches!(method.idempotency, Idempotency::NoSideEffects | Idempotency::Idempotent);
            if safe && config.retry_max_attempts > 1 {
                entry["retryPolicy"] = retry.clone();
            }
            entry
        })
        .collect();
    json!({
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": method_config,
        "retryThrottling": {
            // The reserve the mesh allows whatever the traffic: min_per_sec over its window.
            "maxTokens": (u64::from(config.retry_budget_min_per_sec) * config.retry_budget_ttl.as_secs()).clamp(1, 1000),
            "tokenRatio": (f64::from(config.retry_budget_ratio) * 1000.0).round() / 1000.0,
        },
    })
}

/// A protobuf JSON duration: seconds with up to nine decimals and an `s`.
fn seconds(duration: std::time::Duration) -> String {
    let nanos = duration.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", duration.as_secs());
    }
    let fraction = format!("{nanos:09}");
    format!("{}.{}s", duration.as_secs(), fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(config: &'a Value, service: &str, method: &str) -> &'a Value {
        config["methodConfig"]
            .as_array()
            .expect("methodConfig")
            .iter()
            .find(|e| e["name"][0]["service"] == service && e["name"][0]["method"] == method)
            .unwrap_or_else(|| panic!("no entry for {service}/{method}"))
    }

    #[test]
    fn only_methods_safe_to_repeat_are_retried_with_the_mesh_backoff() {
        let config = service_config(&Catalogue::new(crate::api::CALL_POLICY), &ClientConfig::default());
        let get = entry(&config, "shopmesh.user.v1.UserService", "GetUser");
        assert_eq!(get["retryPolicy"]["retryableStatusCodes"], json!(["UNAVAILABLE"]));
        assert_eq!(get["retryPolicy"]["initialBackoff"], "0.025s");
        assert_eq!(get["retryPolicy"]["maxBackoff"], "1s");
        assert_eq!(get["retryPolicy"]["maxAttempts"], 3);
        assert_eq!(get["timeout"], "5s");
        // Charge moves money: repeated by the mesh only with its request_id, never blindly.
        let charge = entry(&config, "shopmesh.payment.v1.PaymentService", "Charge");
        assert!(charge.get("retryPolicy").is_none(), "{charge}");
        assert_eq!(config["methodConfig"].as_array().map(Vec::len), Some(crate::api::CALL_POLICY.len()));
        assert_eq!(config["loadBalancingConfig"], json!([{"round_robin": {}}]));
    }

    #[test]
    fn per_method_timeouts_and_no_retries_follow_the_settings() {
        let config = ClientConfig {
            retry_max_attempts: 1,
            method_timeouts: vec![crate::mesh::client::config::MethodTimeout {
                path: "/shopmesh.order.v1.OrderService/CreateOrder".into(),
                timeout: std::time::Duration::from_millis(1500),
            }],
            ..ClientConfig::default()
        };
        let config = service_config(&Catalogue::new(crate::api::CALL_POLICY), &config);
        assert_eq!(entry(&config, "shopmesh.order.v1.OrderService", "CreateOrder")["timeout"], "1.5s");
        assert!(entry(&config, "shopmesh.user.v1.UserService", "GetUser").get("retryPolicy").is_none());
    }
}
