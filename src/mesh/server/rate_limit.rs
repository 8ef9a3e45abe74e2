//! Per-caller rate limits: a token bucket (GCRA, from `governor`) per caller, so one noisy
//! client cannot take a service's capacity from the others. A caller is its [`CallerKey`]: its
//! mesh identity and its token's subject together when it has both (a gateway calling for its
//! signed-in users: each user gets a bucket, not one for the whole gateway), else whichever of
//! the two it has, else its IP address. A call over its caller's rate is answered
//! RESOURCE_EXHAUSTED at once with `grpc-retry-pushback-ms`, the time until it would be admitted.
//!
//! Health checks and reflection are never limited: a probe refused would get a pod restarted.
//! Memory stays bounded: [`RateLimitLayer::housekeeping`] drops, every few seconds, the buckets
//! that have refilled (a caller idle for `burst / rate` seconds), so the map holds only callers
//! seen within that time.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::CallerKey;
use crate::mesh::telemetry::labels;

/// How often buckets that have refilled are dropped.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

type Limiter = DefaultKeyedRateLimiter<CallerKey>;

/// Limits each caller to a rate with a burst; a pass-through when no rate is set.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
}

impl RateLimitLayer {
    /// `rate_per_sec` calls per second per caller on average, `burst` at once; a rate of 0
    /// (or less) turns limiting off.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        if !rate_per_sec.is_finite() || rate_per_sec <= 0.0 {
            return Self { limiter: None };
        }
        // One token per period; a sub-nanosecond period would round to zero, i.e. no quota.
        let period = Duration::from_secs_f64(1.0 / rate_per_sec).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let limiter = Quota::with_period(period).map(|q| Arc::new(RateLimiter::keyed(q.allow_burst(burst))));
        Self { limiter }
    }

    /// The task that keeps the bucket map small: run it beside the server (it never ends;
    /// `None` when limiting is off).
    pub fn housekeeping(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let limiter = self.limiter.clone()?;
        Some(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit { inner, limiter: self.limiter.clone() }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
}

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
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
        let Some(limiter) = &self.limiter else {
            return ResponseFuture::inner(self.inner.call(request));
        };
        let method = Method::of(&request);
        if method.infrastructure {
            return ResponseFuture::inner(self.inner.call(request));
        }
        match limiter.check_key(&CallerKey::of(&request)) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                tracing::debug!(method = method.path, ?wait, "caller over its rate: refusing the call");
                metrics::counter!("shopmesh_server_rate_limited_total", labels::rpc(&method, &[]))
                    .increment(1);
                ResponseFuture::refuse(&Refusal::RateLimited { retry_after: wait })
            }
        }
    }
}

/// The response of a [`RateLimit`] service: handed on, or answered at once.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody>;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::transport::server::TcpConnectInfo;
    use tower::ServiceExt as _;

    use super::*;
    use crate::mesh::identity::{PeerIdentity, SpiffeId, Subject};

    fn from(ip: &str) -> Request<()> {
        let mut r =
            Request::builder().uri("/shopmesh.user.v1.UserService/GetUser").body(()).expect("request");
        let addr = std::net::SocketAddr::new(ip.parse().expect("ip"), 4000);
        r.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(addr) });
        r
    }

    #[tokio::test]
    async fn a_caller_over_its_burst_is_refused_with_pushback_and_others_are_not() {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(tonic::body::Body::default()))
        });
        // One token per 1000 s: nothing refills during the test, however slow the machine.
        let layer = RateLimitLayer::new(0.001, 2);
        let svc = layer.layer(inner);
        let code =
            |r: &Response<tonic::body::Body>| r.headers().get("grpc-status").map(|v| v.as_bytes().to_vec());
        for _ in 0..2 {
            let ok = svc.clone().oneshot(from("10.0.0.1")).await.expect("answer");
            assert_eq!(code(&ok), None);
        }
        let refused = svc.clone().oneshot(from("10.0.0.1")).await.expect("answer");
        assert_eq!(code(&refused).as_deref(), Some(&b"8"[..]), "RESOURCE_EXHAUSTED");
        let pushback: u64 =
            refused.headers()["grpc-retry-pushback-ms"].to_str().expect("ascii").parse().expect("ms");
        assert!(pushback > 900_000 && pushback <= 1_000_000, "{pushback} ms until the next token");
        let other = svc.clone().oneshot(from("10.0.0.2")).await.expect("answer");
        assert_eq!(code(&other), None, "another caller keeps its own bucket");
        let mut health = from("10.0.0.1");
        *health.uri_mut() = "/grpc.health.v1.Health/Check".parse().expect("uri");
        assert_eq!(code(&svc.clone().oneshot(health).await.expect("answer")), None, "health is exempt");
    }

    #[tokio::test]
    async fn users_behind_one_gateway_identity_keep_their_own_buckets() {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(tonic::body::Body::default()))
        });
        let svc = RateLimitLayer::new(0.001, 1).layer(inner);
        let gateway = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/shopmesh-gateway").expect("id");
        let call = |subject: Option<&str>| {
            let mut r = from("10.0.0.1");
            r.extensions_mut().insert(PeerIdentity(gateway.clone()));
            if let Some(sub) = subject {
                r.extensions_mut().insert(Subject(sub.into()));
            }
            let svc = svc.clone();
            async move {
                let response = svc.oneshot(r).await.expect("answer");
                response.headers().get("grpc-status").map(|v| v.as_bytes().to_vec())
            }
        };
        assert_eq!(call(Some("u1")).await, None);
        assert_eq!(call(Some("u1")).await.as_deref(), Some(&b"8"[..]), "u1 is over its rate");
        assert_eq!(call(Some("u2")).await, None, "u2, behind the same gateway, is not");
        assert_eq!(call(None).await, None, "nor is the gateway's own traffic");
        assert_eq!(call(None).await.as_deref(), Some(&b"8"[..]), "which has a bucket of its own");
    }

    #[test]
    fn no_rate_means_no_limiter() {
        assert!(RateLimitLayer::new(0.0, 10).limiter.is_none());
        assert!(RateLimitLayer::new(f64::NAN, 10).limiter.is_none());
        assert!(RateLimitLayer::new(1e12, 10).limiter.is_some());
    }
}
