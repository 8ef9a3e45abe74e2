//! Server layer: a read-only call (NO_SIDE_EFFECTS in the proto) is handled where the
//! database layer may send its reads to a replica ([`db::read_route_scope`]), with the
//! `shopmesh-written-at` token its caller passed back; every other call's answer carries such a
//! token when this process reads from replicas, so the caller's next reads find what it wrote.
//! Design and bounds: docs/databases.md, "Reads from replicas". Without replicas (the flag the
//! database layer sets when a pool gets some) a call runs as it is: every read goes to the
//! primary anyway, and the task-local scope would be set and swapped on every poll for nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::future::Either;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

use crate::api::Idempotency;
use crate::mesh::db;
use crate::mesh::grpc::catalogue::Method;

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ReadRouteLayer {
    /// Whether some pool of this process reads from replicas now: asked on every call, since
    /// in the all-in-one another service's pool may get its replicas after this one serves.
    replicas_on: fn() -> bool,
}

impl Default for ReadRouteLayer {
    fn default() -> Self {
        Self { replicas_on: db::replicas_on }
    }
}

impl<S> Layer<S> for ReadRouteLayer {
    type Service = ReadRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadRoute { inner, replicas_on: self.replicas_on }
    }
}

/// See [`ReadRouteLayer`].
#[derive(Debug, Clone)]
pub struct ReadRoute<S> {
    inner: S,
    replicas_on: fn() -> bool,
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
        if !(self.replicas_on)() {
            return ReadRouteFuture { inner: Either::Right(self.inner.call(request)), stamp: false };
        }
        let method = Method::of(&request);
        let read_only = method.idempotency == Idempotency::NoSideEffects;
        let route = read_only.then(|| db::written_at(request.headers()));
        let stamp = !read_only && !method.infrastructure;
        ReadRouteFuture { inner: Either::Left(db::read_route_scope(route, self.inner.call(request))), stamp }
    }
}

pin_project! {
    /// The response of a [`ReadRoute`] service.
    pub struct ReadRouteFuture<F: Future> {
        #[pin]
        inner: Either<TaskLocalFuture<Option<Option<u64>>, F>, F>,
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
        seen_with(|| true, path, token).await
    }

    /// [`seen`], with `replicas_on` saying whether the process reads from replicas.
    async fn seen_with(replicas_on: fn() -> bool, path: &str, token: Option<&str>) -> Option<Option<u64>> {
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(db::read_only_call()))
        });
        let mut svc = ReadRouteLayer { replicas_on }.layer(inner);
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

    #[tokio::test]
    async fn without_replicas_every_call_runs_outside_the_read_only_scope() {
        for path in ["/shopmesh.user.v1.UserService/GetUser", "/shopmesh.user.v1.UserService/CreateUser"] {
            assert_eq!(seen_with(|| false, path, Some("1")).await, None, "{path}");
        }
    }
}
