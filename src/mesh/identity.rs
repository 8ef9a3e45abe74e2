//! Who is calling. With mTLS on, the server's accept path puts a [`PeerIdentity`] (the SPIFFE
//! ID in the client certificate's URI SAN) into every request's extensions; with bearer tokens
//! on, the token layer puts a [`Subject`]. Authorization, rate limiting and handlers read them
//! from there and never from metadata a caller could forge.

use std::fmt;
use std::sync::Arc;

/// Longest SPIFFE ID accepted (the SPIFFE standard's limit).
const MAX_LEN: usize = 2048;

/// A workload identity of the shape this mesh issues and Kubernetes-style meshes use:
/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte ranges of the three parts within `uri`.
    trust_domain: (usize, usize),
    namespace: (usize, usize),
    service_account: (usize, usize),
}

/// Why a URI is not a SPIFFE ID of the mesh's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>: {0}")]
pub struct SpiffeIdError(&'static str);

impl SpiffeId {
    /// Parses `uri`, accepting only `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
    /// with a lowercase trust domain and no query, fragment, port or user info.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_LEN {
            return Err(SpiffeIdError("longer than 2048 bytes"));
        }
        let rest = uri.strip_prefix("spiffe://").ok_or(SpiffeIdError("scheme is not spiffe"))?;
        let (td, path) = rest.split_once('/').ok_or(SpiffeIdError("no path"))?;
        if td.is_empty()
            || !td.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(SpiffeIdError("trust domain must be lowercase letters, digits, '-', '.', '_'"));
        }
        let mut parts = path.split('/');
        let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SpiffeIdError("path must be /ns/<namespace>/sa/<service-account>"));
        };
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if !segment_ok(ns) || !segment_ok(sa) {
            return Err(SpiffeIdError(
                "namespace and service account must be letters, digits, '-', '.', '_'",
            ));
        }
        let td_start = "spiffe://".len();
        let ns_start = td_start + td.len() + "/ns/".len();
        let sa_start = ns_start + ns.len() + "/sa/".len();
        Ok(Self {
            uri: uri.into(),
            trust_domain: (td_start, td_start + td.len()),
            namespace: (ns_start, ns_start + ns.len()),
            service_account: (sa_start, sa_start + sa.len()),
        })
    }

    /// The whole ID, `spiffe://…`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[self.trust_domain.0..self.trust_domain.1]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.namespace.0..self.namespace.1]
    }

    /// The service account, which names the workload (`shopmesh-order`, …).
    pub fn service_account(&self) -> &str {
        &self.uri[self.service_account.0..self.service_account.1]
    }

    /// The identity of the mesh's service `to` beside this one, by the naming the chart and
    /// `shopmesh dev-certs` use: the same trust domain and namespace, and this ID's service
    /// account `<release>-<from>` as `<release>-<to>`. `None` when this ID's service account
    /// is not named that way.
    pub fn sibling(&self, from: &str, to: &str) -> Option<Self> {
        let release = self.service_account().strip_suffix(from)?;
        if !(release.is_empty() || release.ends_with('-')) {
            return None;
        }
        Self::parse(&format!("spiffe://{}/ns/{}/sa/{release}{to}", self.trust_domain(), self.namespace()))
            .ok()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

/// Request extension: the verified SPIFFE ID of the caller's client certificate. Absent when
/// mTLS is off or the connection is the plaintext probe port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub SpiffeId);

/// Request extension: the subject (`sub`) of the caller's validated bearer token. Absent when
/// bearer tokens are off or the call carried none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub Arc<str>);

/// Request extension: whom an API call acts for, decided once per call by the token layer
/// ([`bearer`](crate::mesh::security::bearer)) from what the caller proved. Handlers scope what
/// they serve by it; none of them infers "a service of the mesh" from a missing token.
///
/// Absent only on calls outside the API (health, reflection) and on requests that never went
/// through the server stack: [`Principal::of`] reads an absent one as [`Principal::Anonymous`],
/// so a forgotten layer fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A workload of the mesh acting for itself: an mTLS identity that the authorization
    /// policy does not name as an edge, calling without a token. On a mesh that authenticates
    /// nobody (no mTLS, no tokens: development on loopback) every caller is this.
    Mesh,
    /// An end user: the `sub` of a verified bearer token, sent by the user or by an edge acting
    /// for the user.
    User(Arc<str>),
    /// Nobody proven: no token and no mesh identity, where tokens are optional
    /// (`--jwt-require never`). May read what is public; changes nothing and reads no one's data.
    Anonymous,
}

/// A call that proved no one's identity reached something that needs one: UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this call needs a bearer token (or a mesh identity)")]
pub struct Unproven;

impl Principal {
    /// Whose data the call may reach: `None` for the mesh's own calls (anyone's), `Some(user)`
    /// for an end user (only its own); [`Unproven`] for an anonymous caller (no one's).
    pub fn scope(&self) -> Result<Option<&str>, Unproven> {
        match self {
            Self::Mesh => Ok(None),
            Self::User(sub) => Ok(Some(sub)),
            Self::Anonymous => Err(Unproven),
        }
    }

    /// The principal of `request`; [`Principal::Anonymous`] when none was set.
    pub fn of<B>(request: &http::Request<B>) -> &Self {
        request.extensions().get::<Self>().unwrap_or(&Self::Anonymous)
    }

    /// The principal of a tonic request (what handlers hold); [`Principal::Anonymous`] when
    /// none was set.
    pub fn of_call<T>(request: &tonic::Request<T>) -> &Self {
        request.extensions().get::<Self>().unwrap_or(&Self::Anonymous)
    }
}

/// Whom a per-caller budget (rate, buffered bytes, signature checks) belongs to: its mesh
/// identity ([`PeerIdentity`]) and its bearer token's [`Subject`] together when it has both (a
/// gateway calling for its signed-in users: each user gets a budget, not one for the whole
/// gateway), else whichever of the two it has, else its IP address (an IPv6 address by its
/// /64, which one host can fill).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// A subject behind a mesh identity: a user of a gateway.
    PeerSubject(SpiffeId, Arc<str>),
    /// A mesh identity.
    Peer(SpiffeId),
    /// A token's subject, on a connection without a mesh identity.
    Subject(Arc<str>),
    /// Neither: the address the connection comes from.
    Ip(std::net::IpAddr),
    /// No address known (not a TCP connection): all such calls share one budget.
    Unknown,
}

impl CallerKey {
    /// The key of `request`, from the extensions the server's layers set.
    pub fn of<B>(request: &http::Request<B>) -> Self {
        Self::from_extensions(request.extensions())
    }

    /// The key of a request with these extensions.
    pub fn from_extensions(ext: &http::Extensions) -> Self {
        use std::net::IpAddr;
        use tonic::transport::server::TcpConnectInfo;
        match (ext.get::<PeerIdentity>(), ext.get::<Subject>()) {
            (Some(PeerIdentity(id)), Some(Subject(sub))) => {
                return Self::PeerSubject(id.clone(), sub.clone());
            }
            (Some(PeerIdentity(id)), None) => return Self::Peer(id.clone()),
            (None, Some(Subject(sub))) => return Self::Subject(sub.clone()),
            (None, None) => {}
        }
        match ext.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr).map(|a| a.ip()) {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Ip(IpAddr::V4(v4)),
                // One host usually owns a whole /64; keying by full address would let it mint
                // budgets (and map entries) at will.
                None => Self::Ip(IpAddr::V6((u128::from(v6) & !(u128::from(u64::MAX))).into())),
            },
            Some(ip) => Self::Ip(ip),
            None => Self::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_mesh_shape() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/shopmesh-order").expect("valid");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "shopmesh-order");
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/shopmesh-order");
    }

    #[test]
    fn rejects_other_shapes() {
        for uri in [
            "https://cluster.local/ns/shop/sa/order",
            "spiffe://cluster.local",
            "spiffe:///ns/shop/sa/order",
            "spiffe://Cluster.Local/ns/shop/sa/order",
            "spiffe://cluster.local:443/ns/shop/sa/order",
            "spiffe://user@cluster.local/ns/shop/sa/order",
            "spiffe://cluster.local/ns/shop/sa/order/extra",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns//sa/order",
            "spiffe://cluster.local/ns/../sa/order",
            "spiffe://cluster.local/sa/order/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/order?x=1",
            "spiffe://cluster.local/ns/shop/sa/order#f",
        ] {
            assert!(SpiffeId::parse(uri).is_err(), "{uri} accepted");
        }
        let long = format!("spiffe://cluster.local/ns/shop/sa/{}", "a".repeat(MAX_LEN));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn siblings_follow_the_charts_naming() {
        let order = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/prod-shopmesh-order").expect("valid");
        let payment = order.sibling("order", "payment").expect("named <release>-order");
        assert_eq!(payment.as_str(), "spiffe://cluster.local/ns/shop/sa/prod-shopmesh-payment");
        let bare = SpiffeId::parse("spiffe://td/ns/default/sa/order").expect("valid");
        assert_eq!(
            bare.sibling("order", "user").map(|id| id.to_string()).as_deref(),
            Some("spiffe://td/ns/default/sa/user")
        );
        for other in ["spiffe://td/ns/default/sa/reorder", "spiffe://td/ns/default/sa/order-1"] {
            let id = SpiffeId::parse(other).expect("valid");
            assert_eq!(id.sibling("order", "payment"), None, "{other}");
        }
    }

    fn from(ip: &str) -> http::Request<()> {
        let mut r =
            http::Request::builder().uri("/shopmesh.user.v1.UserService/GetUser").body(()).expect("request");
        let addr = std::net::SocketAddr::new(ip.parse().expect("ip"), 4000);
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(addr) });
        r
    }

    #[test]
    fn callers_are_keyed_by_identity_and_subject_then_address() {
        let mut r = from("10.0.0.1");
        assert_eq!(CallerKey::of(&r), CallerKey::Ip("10.0.0.1".parse().expect("ip")));
        r.extensions_mut().insert(Subject("u1".into()));
        assert_eq!(CallerKey::of(&r), CallerKey::Subject("u1".into()));
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/shopmesh-order").expect("id");
        r.extensions_mut().insert(PeerIdentity(id.clone()));
        assert_eq!(CallerKey::of(&r), CallerKey::PeerSubject(id.clone(), "u1".into()));
        r.extensions_mut().remove::<Subject>();
        assert_eq!(CallerKey::of(&r), CallerKey::Peer(id));
        assert_eq!(CallerKey::of(&from("2001:db8::1")), CallerKey::of(&from("2001:db8::ffff:1")), "same /64");
        assert_ne!(CallerKey::of(&from("2001:db8::1")), CallerKey::of(&from("2001:db8:0:1::1")));
        assert_eq!(CallerKey::of(&from("::ffff:10.0.0.1")), CallerKey::of(&from("10.0.0.1")));
    }
}
