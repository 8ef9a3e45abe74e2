//! Per-method authorization: which workloads (SPIFFE IDs from their mTLS certificates) may call
//! which methods. Deny by default: once a policy is configured, a call is served only if a rule
//! allows its caller to call its method. Health checks are always allowed (kubelet probes carry
//! no identity); reflection is decided by the policy like any other method.
//!
//! A caller without an identity gets UNAUTHENTICATED; one whose identity no rule allows,
//! PERMISSION_DENIED. Every refusal is counted in
//! `shopmesh_server_authz_denied_total{rpc_system,rpc_service,rpc_method,reason}` and logged (warn, inside the
//! call's span, so with its trace id), a few lines a second at most ([`Throttle`]), each naming
//! the method as the catalogue knows it (`unknown` otherwise), never the path the caller sent.
//!
//! [`Throttle`]: crate::mesh::throttle::Throttle
//!
//! The policy is JSON, because Helm renders a values tree into it exactly with `toJson` (Helm's
//! `toToml` has no stable output for every value) and serde_json is already in the build:
//!
//! ```json
//! { "rules": [ {
//!     "description": "the order service charges and refunds orders",
//!     "callers": ["spiffe://cluster.local/ns/shop/sa/shopmesh-order"],
//!     "methods": ["/shopmesh.payment.v1.PaymentService/Charge", "/shopmesh.payment.v1.PaymentService/Refund"]
//! } ],
//!   "edges": ["spiffe://cluster.local/ns/shop/sa/shopmesh-gateway"] }
//! ```
//!
//! `edges` (optional) names the workloads that act for end users, such as the API gateway or
//! ingress that presents its certificate for every internet request. A call from an edge is
//! served only with a user's verified bearer token and acts for that user; without one it is
//! UNAUTHENTICATED, so leaving the token out never gives an edge's caller more than sending
//! one. Naming edges needs bearer tokens on (`--jwt-jwks`): the mesh refuses to start otherwise.
//!
//! A caller is a SPIFFE ID, where any of the trust domain, namespace and service account may be
//! `*` (any value of that one segment). A method is `/package.Service/Method` or
//! `/package.Service/*` (every method of the service); names the server does not know are an
//! error, so a typo cannot silently deny (or allow) nothing. The policy is compiled at start into
//! a table indexed by the static method path: a call costs a binary search and a set lookup,
//! and no allocation.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::Deserialize;
use tower::{Layer, Service};

use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::{Catalogue, Method, REFLECTION};
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::{PeerIdentity, SpiffeId};
use crate::mesh::telemetry::labels;
use crate::mesh::throttle::Throttle;

/// The health service, always allowed.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// The policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RuleFile>,
    /// The identities that act for end users (an API gateway, an ingress): every API call
    /// they make must carry the user's bearer token. Same syntax as a rule's callers.
    #[serde(default)]
    edges: Vec<String>,
}

/// One rule as written: these callers may call these methods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Why the rule exists; for people, not checked.
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    callers: Vec<String>,
    methods: Vec<String>,
}

/// Why a policy does not load.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read authorization policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON of the policy's shape.
    #[error("authorization policy is not valid: {0}")]
    Syntax(#[from] serde_json::Error),
    /// A caller that is not a SPIFFE ID pattern.
    #[error(
        "authorization policy: caller {0:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<account> (segments may be *)"
    )]
    Caller(String),
    /// A method this server does not know.
    #[error(
        "authorization policy: method {0:?} is not /package.Service/Method or /package.Service/* of a known service"
    )]
    Method(String),
}

/// One segment of a caller pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Any,
    Is(Box<str>),
}

impl Segment {
    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Is(s) => **s == *value,
        }
    }
}

/// A caller pattern with at least one `*` segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    trust_domain: Segment,
    namespace: Segment,
    service_account: Segment,
}

impl Pattern {
    fn matches(&self, id: &SpiffeId) -> bool {
        self.trust_domain.matches(id.trust_domain())
            && self.namespace.matches(id.namespace())
            && self.service_account.matches(id.service_account())
    }
}

/// A caller as written: an exact ID, or a pattern.
enum Caller {
    Exact(Box<str>),
    Pattern(Pattern),
}

fn parse_caller(s: &str) -> Result<Caller, PolicyError> {
    let bad = || PolicyError::Caller(s.to_owned());
    if !s.contains('*') {
        return SpiffeId::parse(s).map(|id| Caller::Exact(id.as_str().into())).map_err(|_| bad());
    }
    // Check the shape by parsing with each `*` segment replaced by a valid placeholder.
    let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let [td, "ns", ns, "sa", sa] = segments.as_slice() else { return Err(bad()) };
    let fill = |seg: &str| if seg == "*" { "x".to_owned() } else { seg.to_owned() };
    SpiffeId::parse(&format!("spiffe://{}/ns/{}/sa/{}", fill(td), fill(ns), fill(sa))).map_err(|_| bad())?;
    let segment = |seg: &str| if seg == "*" { Segment::Any } else { Segment::Is(seg.into()) };
    Ok(Caller::Pattern(Pattern {
        trust_domain: segment(td),
        namespace: segment(ns),
        service_account: segment(sa),
    }))
}

/// Who may call one method.
#[derive(Debug, Default)]
struct Allowed {
    exact: HashSet<Box<str>>,
    patterns: Vec<Pattern>,
}

impl Allowed {
    fn allows(&self, id: &SpiffeId) -> bool {
        self.exact.contains(id.as_str()) || self.patterns.iter().any(|p| p.matches(id))
    }
}

/// A method the server knows, its service, and who may call it.
#[derive(Debug)]
struct Entry {
    path: &'static str,
    service: &'static str,
    allowed: Allowed,
}

/// Every method a policy may name: the API's and reflection, sorted by path.
fn known_methods(catalogue: &Catalogue) -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = catalogue.api_paths().chain(REFLECTION).collect();
    paths.sort_unstable();
    paths
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    entries: Vec<Entry>,
    /// Who acts for end users: their calls count as the mesh's only with a user's token.
    edges: Allowed,
}

/// What the policy says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Allow,
    /// No identity: UNAUTHENTICATED.
    NoIdentity,
    /// An identity no rule allows for this method: PERMISSION_DENIED.
    NotAllowed,
}

impl Policy {
    /// Reads and compiles the policy in `path`.
    ///
    /// # Errors
    /// [`PolicyError`] naming what is wrong; a service must not start with a policy it cannot
    /// enforce.
    pub fn load(path: &Path, catalogue: &Catalogue) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text, catalogue)
    }

    /// Compiles a policy from its JSON text, over the methods of `catalogue`.
    ///
    /// # Errors
    /// [`PolicyError`] naming what is wrong.
    pub fn from_json(text: &str, catalogue: &Catalogue) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_json::from_str(text)?;
        let mut edges = Allowed::default();
        for edge in &file.edges {
            match parse_caller(edge)? {
                Caller::Exact(id) => {
                    edges.exact.insert(id);
                }
                Caller::Pattern(p) => edges.patterns.push(p),
            }
        }
        let mut entries: Vec<Entry> = known_methods(catalogue)
            .into_iter()
            .map(|path| {
                let service = path[1..].split_once('/').map_or("unknown", |(service, _)| service);
                Entry { path, service, allowed: Allowed::default() }
            })
            .collect();
        for rule in file.rules {
            let callers = rule.callers.iter().map(|c| parse_caller(c)).collect::<Result<Vec<_>, _>>()?;
            for method in &rule.methods {
                let normalized = format!("/{}", method.trim_start_matches('/'));
                let matched: Vec<usize> = match normalized.strip_suffix("/*") {
                    Some(service) => entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.service == &service[1..])
                        .map(|(i, _)| i)
                        .collect(),
                    None => entries.iter().position(|e| e.path == normalized).into_iter().collect(),
                };
                if matched.is_empty() {
                    return Err(PolicyError::Method(method.clone()));
                }
                for i in matched {
                    for caller in &callers {
                        match caller {
                            Caller::Exact(id) => {
                                entries[i].allowed.exact.insert(id.clone());
                            }
                            Caller::Pattern(p) => entries[i].allowed.patterns.push(p.clone()),
                        }
                    }
                }
            }
        }
        Ok(Self { entries, edges })
    }

    /// Whether the policy names `id` as an edge: a workload that acts for end users, whose
    /// API calls must carry the user's bearer token (see [`bearer`](crate::mesh::security::bearer)).
    pub fn is_edge(&self, id: &SpiffeId) -> bool {
        self.edges.allows(id)
    }

    /// Whether the policy names any edge.
    pub fn has_edges(&self) -> bool {
        !self.edges.exact.is_empty() || !self.edges.patterns.is_empty()
    }

    fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.path.cmp(path)).ok().map(|i| &self.entries[i])
    }

    /// Whether `peer` may call `path`.
    pub fn decide(&self, path: &str, peer: Option<&PeerIdentity>) -> Decision {
        if path.starts_with(HEALTH) {
            return Decision::Allow;
        }
        let Some(PeerIdentity(id)) = peer else { return Decision::NoIdentity };
        match self.entry(path) {
            Some(entry) if entry.allowed.allows(id) => Decision::Allow,
            _ => Decision::NotAllowed,
        }
    }
}

/// Refuses calls the policy does not allow; with no policy, serves everything.
#[derive(Debug, Clone, Default)]
pub struct AuthzLayer {
    policy: Option<Arc<Policy>>,
}

impl AuthzLayer {
    /// Enforces `policy` (`None`: authorization off).
    pub fn new(policy: Option<Arc<Policy>>) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz { inner, policy: self.policy.clone() }
    }
}

/// See [`AuthzLayer`].
#[derive(Debug, Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

impl<S, B, ResBody> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(policy) = &self.policy else {
            return Answer::inner(self.inner.call(request));
        };
        let peer = request.extensions().get::<PeerIdentity>();
        let method = Method::of(&request);
        let (refusal, reason) = match policy.decide(request.uri().path(), peer) {
            Decision::Allow => return Answer::inner(self.inner.call(request)),
            Decision::NoIdentity => (Refusal::NoIdentity, "no_identity"),
            Decision::NotAllowed => (
                // The catalogue's name: the answer does not echo what the caller sent.
                Refusal::NotAllowed {
                    caller: peer.map(|p| p.0.as_str().to_owned()),
                    path: method.path.to_owned(),
                },
                "not_allowed",
            ),
        };
        metrics::counter!("shopmesh_server_authz_denied_total", labels::rpc(&method, &[("reason", reason)]))
            .increment(1);
        // A caller can be refused as fast as it can send: a few lines a second, the metric
        // counts the rest.
        static LINES: LazyLock<Throttle> = LazyLock::new(Throttle::for_refusals);
        if let Some(left_out) = LINES.admit() {
            // Inside the call's span (the observe layer calls this layer in it): with its trace id.
            tracing::warn!(
                caller = peer.map_or("none", |p| p.0.as_str()),
                method = method.path,
                reason,
                left_out,
                "call refused by the authorization policy"
            );
        }
        Answer::refuse(&refusal)
    }
}

/// The response of an [`Authz`] service: handed on, or refused.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody>;

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::new(crate::api::CALL_POLICY)
    }

    fn peer(uri: &str) -> PeerIdentity {
        PeerIdentity(SpiffeId::parse(uri).expect("valid id"))
    }

    const CHARGE: &str = "/shopmesh.payment.v1.PaymentService/Charge";
    const GET_USER: &str = "/shopmesh.user.v1.UserService/GetUser";

    #[test]
    fn exact_ids_wildcards_and_deny_by_default() {
        let policy = Policy::from_json(
            r#"{"rules": [
                {"callers": ["spiffe://td/ns/shop/sa/order"], "methods": ["/shopmesh.payment.v1.PaymentService/Charge"]},
                {"callers": ["spiffe://td/ns/*/sa/gateway"], "methods": ["shopmesh.user.v1.UserService/*"]}
            ]}"#,
            &catalogue(),
        )
        .expect("compiles");
        assert_eq!(policy.decide(CHARGE, Some(&peer("spiffe://td/ns/shop/sa/order"))), Decision::Allow);
        assert_eq!(policy.decide(CHARGE, Some(&peer("spiffe://td/ns/other/sa/order"))), Decision::NotAllowed);
        assert_eq!(
            policy.decide(CHARGE, Some(&peer("spiffe://td/ns/shop/sa/gateway"))),
            Decision::NotAllowed
        );
        assert_eq!(policy.decide(GET_USER, Some(&peer("spiffe://td/ns/a/sa/gateway"))), Decision::Allow);
        assert_eq!(
            policy.decide(GET_USER, Some(&peer("spiffe://other/ns/a/sa/gateway"))),
            Decision::NotAllowed
        );
        assert_eq!(policy.decide(GET_USER, None), Decision::NoIdentity);
        assert_eq!(policy.decide("/grpc.health.v1.Health/Check", None), Decision::Allow);
        assert_eq!(
            policy.decide(REFLECTION[0], Some(&peer("spiffe://td/ns/shop/sa/order"))),
            Decision::NotAllowed,
            "reflection is decided by the policy"
        );
        assert_eq!(
            policy.decide("/x.Y/Z", Some(&peer("spiffe://td/ns/shop/sa/order"))),
            Decision::NotAllowed
        );
    }

    #[test]
    fn mistakes_are_errors() {
        for (bad, what) in [
            (
                r#"{"rules": [{"callers": ["spiffe://td/ns/a/sa/b"], "methods": ["/shopmesh.user.v1.UserService/GetUsr"]}]}"#,
                "method",
            ),
            (
                r#"{"rules": [{"callers": ["spiffe://td/ns/a/sa/b"], "methods": ["/shopmesh.user.v1.UsrService/*"]}]}"#,
                "method",
            ),
            (
                r#"{"rules": [{"callers": ["spiffe://td/ns/a/b"], "methods": ["/shopmesh.user.v1.UserService/*"]}]}"#,
                "caller",
            ),
            (
                r#"{"rules": [{"callers": ["spiffe://td/ns/a*/sa/b"], "methods": ["/shopmesh.user.v1.UserService/*"]}]}"#,
                "caller",
            ),
            (r#"{"rules": [{"callers": [], "methods": [], "extra": 1}]}"#, "syntax"),
        ] {
            let err = Policy::from_json(bad, &catalogue()).expect_err(bad);
            let ok = match what {
                "method" => matches!(err, PolicyError::Method(_)),
                "caller" => matches!(err, PolicyError::Caller(_)),
                _ => matches!(err, PolicyError::Syntax(_)),
            };
            assert!(ok, "{bad}: {err}");
        }
    }

    #[test]
    fn the_shipped_policy_compiles() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/authz-policy.json");
        Policy::load(&path, &catalogue()).expect("deploy/authz-policy.json compiles");
    }

    /// A method no identity may call is a service nobody can use (the inventory and
    /// notification APIs shipped so): every method of the API has a caller in the shipped
    /// policy, but the payment reads, closed on purpose (README, "Authorization policy").
    #[test]
    fn the_shipped_policy_closes_no_method_by_accident() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/authz-policy.json");
        let policy = Policy::load(&path, &catalogue()).expect("compiles");
        let text = std::fs::read_to_string(&path).expect("reads");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let callers: Vec<PeerIdentity> = json["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|rule| rule["callers"].as_array().expect("callers").iter())
            .filter_map(|c| c.as_str().filter(|c| !c.ends_with('*')).map(peer))
            .collect();
        let orphans: Vec<&str> = crate::api::CALL_POLICY
            .iter()
            .map(|(path, _)| *path)
            .filter(|path| !callers.iter().any(|c| policy.decide(path, Some(c)) == Decision::Allow))
            .collect();
        let closed = [
            "/shopmesh.payment.v1.PaymentService/GetPayment",
            "/shopmesh.payment.v1.PaymentService/ListPayments",
        ];
        assert_eq!(orphans, closed, "the methods no identity may call");
    }

    #[test]
    fn denials_log_no_caller_chosen_path_and_a_flood_of_them_logs_few_lines() {
        use tower::Layer as _;
        let policy = Policy::from_json(r#"{"rules": []}"#, &catalogue()).expect("compiles");
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(tonic::body::Body::default()))
        });
        let mut svc = AuthzLayer::new(Some(Arc::new(policy))).layer(inner);
        let long_path = format!("/shopmesh.user.v1.UserService/{}", "A".repeat(8000));
        let captured = crate::mesh::telemetry::LogLines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish();
        let mut answers = Vec::new();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..200 {
                let mut request = Request::builder().uri(long_path.as_str()).body(()).expect("request");
                request.extensions_mut().insert(peer("spiffe://td/ns/shop/sa/order"));
                answers.push(svc.call(request));
            }
        });
        let logs = captured.text();
        let lines = logs.lines().filter(|l| l.contains("authorization policy")).count();
        assert!(lines >= 1, "denials are logged: {logs}");
        assert!(lines <= 20, "200 denials at once log {lines} lines");
        assert!(
            !logs.contains("AAAAAAAA"),
            "the caller-chosen path is not logged: {}",
            &logs[..logs.len().min(300)]
        );
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let first = rt.block_on(answers.swap_remove(0)).expect("answer");
        let message = first.headers().get("grpc-message").map(|m| m.as_bytes().len()).unwrap_or_default();
        assert!(message < 256, "the answer does not echo the 8 KiB path ({message} bytes)");
    }
}
