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
