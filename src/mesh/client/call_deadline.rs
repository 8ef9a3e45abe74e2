//! Client layer: every call gets a deadline = min(the handled request's deadline − margin,
//! now + the method's default, any `grpc-timeout` the caller set), sent as `grpc-timeout` and
//! enforced here; a call with no time left fails with DEADLINE_EXCEEDED without being sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::mesh::config::ClientConfig;
use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::grpc::timeout::{GRPC_TIMEOUT, encode_timeout, parse_timeout};
use crate::mesh::request_deadline::current;

/// The absolute deadline of an outgoing call, set by [`ClientDeadline`] in the request's
/// extensions for the layers below it (retries never start an attempt past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub Instant);

/// Sets each outgoing call's deadline (see the module docs); one per client stack.
#[derive(Debug, Clone)]
pub struct ClientDeadlineLayer {
    config: Arc<ClientConfig>,
}

impl ClientDeadlineLayer {
    /// Deadlines from `config` (per-method defaults and the margin).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        Self { config }
    }
}

impl<S> Layer<S> for ClientDeadlineLayer {
    type Service = ClientDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientDeadline { inner, config: self.config.clone() }
    }
}

/// See [`ClientDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ClientDeadline<S> {
    inner: S,
    config: Arc<ClientConfig>,
}

impl<S, B, ResBody> Service<Request<B>> for ClientDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<tower::BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = tower::BoxError;
    type Future = Answer<Called<S::Future>, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let now = Instant::now();
        let mut deadline = now + self.config.timeout_for(request.uri().path());
        if let Some(parent) = current() {
            // The margin pays for the hop, so the callee's answer can still reach our caller.
            deadline = deadline.min(parent.checked_sub(self.config.deadline_margin).unwrap_or(now));
        }
        if let Some(explicit) = parse_timeout(request.headers()) {
            deadline = deadline.min(now + explicit);
        }
        if deadline <= now {
            tracing::debug!(path = request.uri().path(), "no time left for the call; not sending it");
            metrics::counter!("shopmesh_client_deadline_fail_fast_total").increment(1);
            return Answer::refuse(&Refusal::DeadlineBeforeSending);
        }
        request.headers_mut().insert(GRPC_TIMEOUT, encode_timeout(deadline - now));
        request.extensions_mut().insert(CallDeadline(deadline));
        Answer::inner(Called { inner: self.inner.call(request), sleep: tokio::time::sleep_until(deadline) })
    }
}

pin_project! {
    /// A call that was sent: its answer, or DEADLINE_EXCEEDED when the deadline passes first.
    pub struct Called<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
    }
}

impl<F, ResBody, E> Future for Called<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<tower::BoxError>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(match out.map_err(Into::into) {
                // A transport failure becomes the status its caller can act on.
                Err(err) => match Refusal::of_transport_error(&*err) {
                    Some(refusal) => Ok(refusal.respond()),
                    None => Err(err),
                },
                ok => ok,
            });
        }
        ready!(this.sleep.poll(cx));
        Poll::Ready(Ok(Refusal::DeadlineWhileWaiting.respond()))
    }
}
