//! Server layer: a read-only call (NO_SIDE_EFFECTS in the proto) is handled where the
//! database layer may send its reads to a replica ([`db::read_route_scope`]), with the
//! `shopmesh-written-at` token its caller passed back; every other call's answer carries such a
//! token when this process reads from replicas, so the caller's next reads find what it wrote.
//! Design and bounds: docs/databases.md, "Reads from replicas".

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::api::Idempotency;
use crate::mesh::db;
use crate::mesh::grpc::catalogue::Method;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadRouteLayer;

impl<S> Layer<S> for ReadRouteLayer {
    type Service = ReadRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadRoute { inner }
    }
}

/// See [`ReadRouteLayer`].
#[derive(Debug, Clone)]
pub struct ReadRoute<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for ReadRoute<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ReadRouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = Method::of(&request);
        let read_only = method.idempotency == Idempotency::NoSideEffects;
        let route = read_only.then(|| db::written_at(request.headers()));
        let stamp = !read_only && !method.infrastructure && db::replicas_on();
        ReadRouteFuture { inner: db::read_route_scope(route, self.inner.call(request)), stamp }
    }
}

pin_project! {
    /// The response of a [`ReadRoute`] service.
    pub struct ReadRouteFuture<F: Future> {
        #[pin]
        inner: TaskLocalFuture<Option<Option<u64>>, F>,
        stamp: bool,
    }
}

impl<F, ResBody, E> Future for ReadRouteFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = ready!(this.inner.poll(cx));
        if *this.stamp
            && let Ok(response) = &mut out
        {
            // Stamped when answered, after the handler's commit: a read passing it back is
            // sent to the primary for as long as a replica may not have the write yet.
            response.headers_mut().insert(db::WRITTEN_AT, HeaderValue::from(db::written_now_ms()));
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// What the handler of `path` sees (with `token` as the caller's header): read-only or not,
    /// and the caller's written-at.
    async fn seen(path: &str, token: Option<&str>) -> Option<Option<u64>> {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(db::read_only_call()))
        });
        let mut svc = ReadRouteLayer.layer(inner);
        let mut request = Request::builder().uri(path).body(()).expect("request");
        if let Some(token) = token {
            request.headers_mut().insert(db::WRITTEN_AT, HeaderValue::from_str(token).expect("header"));
        }
        let method = crate::mesh::grpc::catalogue::Catalogue::new(crate::api::CALL_POLICY).method(path);
        request.extensions_mut().insert(method);
        svc.call(request).await.expect("answered").into_body()
    }

    #[tokio::test]
    async fn only_calls_without_side_effects_may_read_from_a_replica() {
        assert_eq!(seen("/shopmesh.user.v1.UserService/GetUser", None).await, Some(None));
        assert_eq!(
            seen("/shopmesh.order.v1.OrderService/ListOrders", Some("1700000000000")).await,
            Some(Some(1_700_000_000_000))
        );
        // A token that does not parse is a write just now: the primary answers.
        assert_eq!(seen("/shopmesh.user.v1.UserService/GetUser", Some("soon")).await, Some(Some(u64::MAX)));
        // Writes (and their read-before-write) never do, token or not.
        assert_eq!(seen("/shopmesh.user.v1.UserService/CreateUser", Some("1")).await, None);
        assert_eq!(seen("/shopmesh.user.v1.UserService/UpdateUser", None).await, None);
        assert_eq!(seen("/shopmesh.payment.v1.PaymentService/Charge", None).await, None);
    }
}
