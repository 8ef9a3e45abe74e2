//! Server overload protection: a bound on the calls a service handles at once, shared by all
//! its connections. A call over the bound is answered RESOURCE_EXHAUSTED at once instead of
//! waiting in a queue, so an overloaded service stays fast for the calls it admits and callers
//! learn immediately (queueing would only turn overload into timeouts).
//!
//! Within the bound, one connection and one mesh identity (the mTLS peer's SPIFFE ID) may hold
//! only part of it, so a single client cannot take every slot from the others. A slot is taken
//! once the request message has been read ([`request_read`](super::request_read) sits above),
//! so it is held while the handler runs, not while a slow client sends.
//!
//! Health checks and reflection are never refused for the service's load: a probe failing
//! under load would get a busy pod restarted or removed, which makes overload worse. They have
//! a bound of their own, as large, and the per-connection bound, so their long-lived streams
//! cannot pile up without end either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::{PeerIdentity, SpiffeId};
use crate::mesh::server::per_key::{KeyPermit, PerKey};
use crate::mesh::telemetry::labels;

/// Bounds concurrent calls to `limit` across every connection of a server, and the share of
/// one connection and one identity.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    infrastructure: Arc<Semaphore>,
    per_connection: Arc<PerKey<SocketAddr>>,
    per_identity: Arc<PerKey<SpiffeId>>,
}

impl LoadShedLayer {
    /// At most `limit` calls at once (at least 1), and as many health and reflection calls;
    /// no bound per connection or identity beyond that.
    pub fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            infrastructure: Arc::new(Semaphore::new(limit)),
            per_connection: Arc::new(PerKey::new(u64::MAX)),
            per_identity: Arc::new(PerKey::new(u64::MAX)),
        }
    }

    /// At most `limit` calls at once on one connection (at least 1).
    #[must_use]
    pub fn per_connection(mut self, limit: u32) -> Self {
        self.per_connection = Arc::new(PerKey::new(u64::from(limit)));
        self
    }

    /// At most `limit` calls at once from one mTLS identity, over all its connections.
    #[must_use]
    pub fn per_identity(mut self, limit: u32) -> Self {
        self.per_identity = Arc::new(PerKey::new(u64::from(limit)));
        self
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, limits: self.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    limits: LoadShedLayer,
}

/// The slots a call holds until it is answered.
#[derive(Debug)]
pub struct Permits {
    _server: OwnedSemaphorePermit,
    _connection: Option<KeyPermit<SocketAddr>>,
    _identity: Option<KeyPermit<SpiffeId>>,
}

impl LoadShedLayer {
    /// The slots for `request`, or which bound it is over.
    fn acquire<B>(&self, request: &Request<B>, method: Method) -> Result<Permits, &'static str> {
        let ext = request.extensions();
        let connection = match ext.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr) {
            Some(addr) => Some(self.per_connection.try_acquire(addr, 1).ok_or("connection")?),
            None => None,
        };
        let identity = match ext.get::<PeerIdentity>() {
            Some(PeerIdentity(id)) if !method.infrastructure => {
                Some(self.per_identity.try_acquire(id.clone(), 1).ok_or("identity")?)
            }
            _ => None,
        };
        let pool = if method.infrastructure { &self.infrastructure } else { &self.permits };
        let server = pool.clone().try_acquire_owned().map_err(|_| "server")?;
        Ok(Permits { _server: server, _connection: connection, _identity: identity })
    }
}

impl<S, B, ResBody> Service<Request<B>> for LoadShed<S>
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
        let method = Method::of(&request);
        match self.limits.acquire(&request, method) {
            Ok(permits) => Answer::guarded(self.inner.call(request), Some(permits)),
            Err(bound) => {
                tracing::debug!(method = method.path, bound, "overloaded: shedding the call");
                // Labels from the catalogue only: a caller choosing paths must not mint series.
                metrics::counter!("shopmesh_server_shed_total", labels::rpc(&method, &[("bound", bound)]))
                    .increment(1);
                Answer::refuse(&Refusal::Overloaded)
            }
        }
    }
}

/// The response of a [`LoadShed`] service: handled while holding its slots (returned with the
/// answer), or refused.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody, Option<Permits>>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    fn code(response: &Response<tonic::body::Body>) -> Option<String> {
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn calls_over_the_limit_are_refused_and_health_is_not() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let inner = tower::service_fn({
            let gate = gate.clone();
            move |_req: Request<()>| {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    Ok::<_, Infallible>(Response::new(tonic::body::Body::default()))
                }
            }
        });
        let svc = LoadShedLayer::new(1).layer(inner);
        let call =
            |path: &'static str| svc.clone().oneshot(Request::builder().uri(path).body(()).expect("request"));
        let first = tokio::spawn(call("/shopmesh.user.v1.UserService/GetUser"));
        tokio::task::yield_now().await;
        let shed = call("/shopmesh.user.v1.UserService/GetUser").await.expect("answer");
        assert_eq!(code(&shed).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        let health = tokio::spawn(call("/grpc.health.v1.Health/Check"));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        assert_eq!(code(&first.await.expect("join").expect("answer")), None);
        let health = health.await.expect("join").expect("answer");
        assert_eq!(code(&health), None, "health is never shed");
    }

    fn pending()
    -> impl Service<Request<()>, Response = Response<tonic::body::Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|_req: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(tonic::body::Body::default()))
        })
    }

    #[tokio::test]
    async fn shed_calls_are_labelled_from_the_catalogue_never_by_the_raw_path() {
        let mut svc = LoadShedLayer::new(1).layer(pending());
        let _held =
            svc.call(Request::builder().uri("/grpc.health.v1.Health/Check").body(()).expect("request"));
        let mut known =
            Request::builder().uri("/shopmesh.user.v1.UserService/GetUser").body(()).expect("request");
        let get_user =
            crate::mesh::grpc::catalogue::Catalogue::new(crate::api::CALL_POLICY).method(known.uri().path());
        known.extensions_mut().insert(get_user);
        let _first = svc.call(known);
        let mut shed = Vec::new();
        let labels = crate::mesh::telemetry::recorded_labels("shopmesh_server_shed_total", || {
            for i in 0..50 {
                let path = format!("/attacker.Chosen{i}/Path{i}");
                let mut request = Request::builder().uri(path.as_str()).body(()).expect("request");
                request.extensions_mut().insert(Method::UNKNOWN);
                shed.push(svc.call(request));
            }
        });
        assert!(!labels.is_empty(), "shed calls are counted");
        for set in &labels {
            for (_, value) in set {
                assert!(!value.contains("attacker"), "a label from the raw path: {labels:?}");
            }
        }
        assert_eq!(labels.len(), 1, "one series for every unknown path: {labels:?}");
        for answer in shed {
            assert_eq!(code(&answer.await.expect("answer")).as_deref(), Some("8"));
        }
    }

    fn on_connection(port: u16, identity: Option<&str>) -> Request<()> {
        let mut r =
            Request::builder().uri("/shopmesh.user.v1.UserService/GetUser").body(()).expect("request");
        let remote = std::net::SocketAddr::from(([10, 0, 0, 1], port));
        r.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(remote) });
        if let Some(id) = identity {
            let id = crate::mesh::identity::SpiffeId::parse(id).expect("id");
            r.extensions_mut().insert(crate::mesh::identity::PeerIdentity(id));
        }
        r
    }

    /// The answer of a call that must be refused at once (an admitted one here never ends).
    async fn refused<F: std::future::Future<Output = Result<Response<tonic::body::Body>, Infallible>>>(
        call: F,
    ) -> Response<tonic::body::Body> {
        tokio::time::timeout(std::time::Duration::from_secs(10), call)
            .await
            .expect("refused at once, not admitted")
            .expect("answer")
    }

    #[tokio::test]
    async fn one_connection_or_one_identity_cannot_take_every_slot() {
        const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
        const ORDER: &str = "spiffe://cluster.local/ns/shop/sa/order";
        let mut svc = LoadShedLayer::new(100).per_connection(2).per_identity(3).layer(pending());
        let mut held = vec![svc.call(on_connection(1, None)), svc.call(on_connection(1, None))];
        let third = refused(svc.call(on_connection(1, None))).await;
        assert_eq!(code(&third).as_deref(), Some("8"), "a third call on one connection is shed");
        held.push(svc.call(on_connection(2, Some(GATEWAY))));
        held.push(svc.call(on_connection(3, Some(GATEWAY))));
        held.push(svc.call(on_connection(4, Some(GATEWAY))));
        let fourth = refused(svc.call(on_connection(5, Some(GATEWAY)))).await;
        assert_eq!(code(&fourth).as_deref(), Some("8"), "a fourth call of one identity is shed");
        held.push(svc.call(on_connection(6, Some(ORDER))));
        // Give back one call of connection 1 and one of the gateway.
        drop(held.remove(0));
        drop(held.remove(1));
        let _again = svc.call(on_connection(1, None));
        let _gateway = svc.call(on_connection(7, Some(GATEWAY)));
        for pending in [svc.call(on_connection(1, None)), svc.call(on_connection(8, Some(GATEWAY)))] {
            assert_eq!(
                code(&refused(pending).await).as_deref(),
                Some("8"),
                "slots are given back, and only once"
            );
        }
        let other = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            svc.call(on_connection(9, Some(ORDER))),
        )
        .await;
        assert!(other.is_err(), "another identity on another connection still gets a slot (and runs)");
    }
}
