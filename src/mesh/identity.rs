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
}
