//! Server overload protection: a bound on the calls a service handles at once, shared by all
//! its connections. A call over the bound is answered RESOURCE_EXHAUSTED at once instead of
//! waiting in a queue, so an overloaded service stays fast for the calls it admits and callers
//! learn immediately (queueing would only turn overload into timeouts).
//!
//! Health checks and reflection are never refused: a probe failing under load would get a busy
//! pod restarted or removed, which makes overload worse.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;

/// Bounds concurrent calls to `limit` across every connection of a server.
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
}

impl LoadShedLayer {
    /// At most `limit` calls at once (at least 1).
    pub fn new(limit: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))) }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, permits: self.permits.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    permits: Arc<Semaphore>,
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
        if method.infrastructure {
            return Answer::guarded(self.inner.call(request), None);
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Answer::guarded(self.inner.call(request), Some(permit)),
            Err(_) => {
                tracing::debug!(path = request.uri().path(), "overloaded: shedding the call");
                metrics::counter!("shopmesh_server_shed_total", "rpc_method" => request.uri().path().to_owned())
                    .increment(1);
                Answer::refuse(&Refusal::Overloaded)
            }
        }
    }
}

/// The response of a [`LoadShed`] service: handled while holding a permit (returned with the
/// answer), or refused.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody, Option<OwnedSemaphorePermit>>;

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
}
