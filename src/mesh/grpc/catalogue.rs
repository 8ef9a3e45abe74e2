//! The method catalogue: every method the mesh knows, by gRPC path. The API's methods come in
//! as data (the table `build.rs` writes from the protos, `shopmesh::api::CALL_POLICY`), the way
//! tonic-reflection takes a descriptor set; the infrastructure methods served beside every
//! service (health, reflection) are listed here, once.
//!
//! Labels, span names, retry decisions, the authorization policy's method list and the
//! exemptions of shedding, the readiness gate and tokens all read the same [`Method`].

use crate::api::{CallPolicy, Idempotency};

/// The infrastructure methods served beside every service: never shed, never gated, no token.
pub const INFRASTRUCTURE: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The reflection methods, which the authorization policy decides like any other (health is
/// always allowed).
pub const REFLECTION: [&str; 2] = [INFRASTRUCTURE[2], INFRASTRUCTURE[3]];

/// The infrastructure services' names, as reflection advertises them.
pub const INFRASTRUCTURE_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What the mesh knows of one method. Every string is static, so labels and span names cost
/// no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// `/package.Service/Method`, or `unknown` for a path outside the catalogue.
    pub path: &'static str,
    /// `package.Service` (`unknown` outside the catalogue).
    pub service: &'static str,
    /// `Method` (`unknown` outside the catalogue).
    pub method: &'static str,
    /// What the method's proto says about repeating it.
    pub idempotency: Idempotency,
    /// The field number of the request's `request_id` (AIP-155), if it has one: a call that
    /// sets it may be repeated, since the server answers repeats from its record.
    pub request_id_field: Option<u32>,
    /// Health or reflection.
    pub infrastructure: bool,
}

impl Method {
    /// A path outside the catalogue: labelled `unknown`, never repeated.
    pub const UNKNOWN: Method = Method {
        path: "unknown",
        service: "unknown",
        method: "unknown",
        idempotency: Idempotency::Unknown,
        request_id_field: None,
        infrastructure: false,
    };

    fn new(path: &'static str, policy: CallPolicy, infrastructure: bool) -> Self {
        let slash = path.rfind('/').unwrap_or(0);
        Self {
            path,
            service: path.get(1..slash).unwrap_or("unknown"),
            method: path.get(slash + 1..).unwrap_or("unknown"),
            idempotency: policy.idempotency,
            request_id_field: policy.request_id_field,
            infrastructure,
        }
    }

    /// `package.Service/Method`, the span name the RPC conventions ask for.
    pub fn full_name(&self) -> &'static str {
        self.path.strip_prefix('/').unwrap_or(self.path)
    }

    /// Whether a call may be sent again: its method is declared safe, or it carries a
    /// request id (`has_request_id` is asked only when that matters).
    pub fn repeatable(&self, has_request_id: impl FnOnce(u32) -> bool) -> bool {
        match (self.idempotency, self.request_id_field) {
            (Idempotency::NoSideEffects | Idempotency::Idempotent, _) => true,
            (Idempotency::Unknown, Some(field)) => has_request_id(field),
            (Idempotency::Unknown, None) => false,
        }
    }

    /// The method a server layer is handling: the one [`MethodLayer`] put in the request's
    /// extensions, else looked up in a catalogue that knows only infrastructure methods (a
    /// layer used on its own, as in its unit tests).
    ///
    /// [`MethodLayer`]: crate::mesh::server::method::MethodLayer
    pub fn of<B>(request: &http::Request<B>) -> Method {
        request
            .extensions()
            .get::<Method>()
            .copied()
            .unwrap_or_else(|| Catalogue::EMPTY.method(request.uri().path()))
    }
}

/// Every method of an API plus the infrastructure methods, looked up by path. `Copy`: it
/// borrows the static table it was given.
#[derive(Debug, Clone, Copy)]
pub struct Catalogue {
    api: &'static [(&'static str, CallPolicy)],
}

impl Catalogue {
    /// A catalogue of infrastructure methods only.
    pub const EMPTY: Catalogue = Catalogue { api: &[] };

    /// The catalogue of `api`, a table sorted by path (as `build.rs` writes it).
    ///
    /// # Panics
    /// If `api` is not sorted by path: lookups binary-search it.
    pub fn new(api: &'static [(&'static str, CallPolicy)]) -> Self {
        assert!(api.windows(2).all(|w| w[0].0 < w[1].0), "the API table must be sorted by path");
        Self { api }
    }

    /// The method at `path`, if the catalogue has it.
    pub fn get(&self, path: &str) -> Option<Method> {
        if let Ok(i) = self.api.binary_search_by(|(p, _)| (*p).cmp(path)) {
            let (path, policy) = self.api[i];
            return Some(Method::new(path, policy, false));
        }
        let infra = INFRASTRUCTURE.iter().find(|p| **p == path)?;
        let safe = CallPolicy { idempotency: Idempotency::NoSideEffects, request_id_field: None };
        Some(Method::new(infra, safe, true))
    }

    /// The method at `path`, or [`Method::UNKNOWN`].
    pub fn method(&self, path: &str) -> Method {
        self.get(path).unwrap_or(Method::UNKNOWN)
    }

    /// The paths of the API's methods (infrastructure excluded).
    pub fn api_paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.api.iter().map(|(p, _)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_found_with_their_policy_and_names() {
        let catalogue = Catalogue::new(crate::api::CALL_POLICY);
        let get = catalogue.method("/shopmesh.user.v1.UserService/GetUser");
        assert_eq!((get.service, get.method), ("shopmesh.user.v1.UserService", "GetUser"));
        assert_eq!(get.full_name(), "shopmesh.user.v1.UserService/GetUser");
        assert_eq!(get.idempotency, Idempotency::NoSideEffects);
        assert!(!get.infrastructure);
        assert!(get.repeatable(|_| false));
        let charge = catalogue.method("/shopmesh.payment.v1.PaymentService/Charge");
        assert_eq!(charge.request_id_field, Some(4));
        assert!(charge.repeatable(|field| field == 4));
        assert!(!charge.repeatable(|_| false), "an unkeyed charge is never repeated");
        let health = catalogue.method("/grpc.health.v1.Health/Check");
        assert!(health.infrastructure);
        assert_eq!(health.service, "grpc.health.v1.Health");
        assert_eq!(catalogue.method("/x.Y/Z"), Method::UNKNOWN);
        assert_eq!(catalogue.method("/shopmesh.order.v1.OrderService/Nope"), Method::UNKNOWN);
        assert!(
            Catalogue::EMPTY
                .method("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
                .infrastructure
        );
        assert_eq!(Catalogue::EMPTY.method("/shopmesh.user.v1.UserService/GetUser"), Method::UNKNOWN);
        assert_eq!(catalogue.api_paths().count(), crate::api::CALL_POLICY.len());
    }

    #[test]
    fn a_method_in_the_extensions_wins_over_the_path() {
        let mut request = http::Request::new(());
        *request.uri_mut() = "/grpc.health.v1.Health/Check".parse().expect("uri");
        assert!(Method::of(&request).infrastructure);
        request.extensions_mut().insert(Method::UNKNOWN);
        assert_eq!(Method::of(&request), Method::UNKNOWN);
    }
}
