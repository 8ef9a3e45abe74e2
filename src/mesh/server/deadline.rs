//! Server layer: the caller's `grpc-timeout` becomes the handler's deadline
//! ([`deadline::current`]), and a handler still running when it passes is dropped and answered
//! DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::mesh::deadline::scope;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::grpc::timeout::parse_timeout;

/// Tonic's own server timer answers CANCELLED when `grpc-timeout` runs out; this layer's timer
/// is set this much earlier so the caller gets DEADLINE_EXCEEDED instead.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

/// Server layer: the inbound `grpc-timeout` becomes the handler's deadline ([`current`]), and
/// a handler still running when it passes is dropped and answered with DEADLINE_EXCEEDED.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerDeadlineLayer;

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline { inner }
    }
}

/// See [`ServerDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for ServerDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = parse_timeout(request.headers())
            .map(|timeout| Instant::now() + timeout.saturating_sub(AHEAD_OF_TONIC));
        ServerFuture {
            sleep: deadline.map(tokio::time::sleep_until),
            inner: scope(deadline, self.inner.call(request)),
        }
    }
}

pin_project! {
    /// The response of a [`ServerDeadline`] service.
    pub struct ServerFuture<F: Future> {
        #[pin]
        inner: TaskLocalFuture<Option<Instant>, F>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F, ResBody, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            tracing::debug!("deadline passed while handling; answering DEADLINE_EXCEEDED");
            metrics::counter!("shopmesh_server_deadline_exceeded_total").increment(1);
            return Poll::Ready(Ok(Refusal::DeadlineWhileHandling.respond()));
        }
        Poll::Pending
    }
}
