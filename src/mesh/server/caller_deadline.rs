//! Server layer: the caller's `grpc-timeout` becomes the handler's deadline
//! ([`request_deadline::current`]), and a handler still running when it passes is dropped and answered
//! DEADLINE_EXCEEDED. A `grpc-timeout` that does not parse gets the server's default deadline
//! (`--call-timeout`) rather than none, and is counted in
//! `shopmesh_server_malformed_timeout_total`: a caller cannot lift the deadline by garbling it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::mesh::grpc::catalogue::Method;
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::grpc::timeout::{GRPC_TIMEOUT, parse_timeout};
use crate::mesh::request_deadline::scope;
use crate::mesh::telemetry::labels;

/// Tonic's own server timer answers CANCELLED when `grpc-timeout` runs out; this layer's timer
/// is set this much earlier so the caller gets DEADLINE_EXCEEDED instead.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

/// Server layer: the inbound `grpc-timeout` becomes the handler's deadline ([`current`]), and
/// a handler still running when it passes is dropped and answered with DEADLINE_EXCEEDED.
#[derive(Debug, Clone, Copy)]
pub struct ServerDeadlineLayer {
    malformed: Duration,
}

impl ServerDeadlineLayer {
    /// Deadlines from `grpc-timeout`; `malformed` for a call whose `grpc-timeout` does not parse.
    pub fn new(malformed: Duration) -> Self {
        Self { malformed }
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline { inner, malformed: self.malformed }
    }
}

/// See [`ServerDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    malformed: Duration,
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
        let timeout = match parse_timeout(request.headers()) {
            Some(timeout) => Some(timeout),
            None if request.headers().contains_key(GRPC_TIMEOUT) => {
                let method = Method::of(&request);
                tracing::debug!(method = method.path, default = ?self.malformed, "malformed grpc-timeout; default deadline");
                metrics::counter!("shopmesh_server_malformed_timeout_total", labels::rpc(&method, &[]))
                    .increment(1);
                Some(self.malformed)
            }
            None => None,
        };
        let deadline = timeout.map(|timeout| Instant::now() + timeout.saturating_sub(AHEAD_OF_TONIC));
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_malformed_grpc_timeout_gets_the_default_deadline_and_is_counted() {
        let inner = tower::service_fn(|_req: Request<()>| async {
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(tonic::body::Body::default()))
        });
        let mut svc = ServerDeadlineLayer::new(Duration::from_secs(5)).layer(inner);
        let mut request = Request::builder()
            .uri("/shopmesh.user.v1.UserService/GetUser")
            .header("grpc-timeout", "1 hour")
            .body(())
            .expect("request");
        // As the method layer above puts it there: the labels come from the catalogue.
        let get_user = crate::mesh::grpc::catalogue::Catalogue::new(crate::api::CALL_POLICY)
            .method(request.uri().path());
        request.extensions_mut().insert(get_user);
        let mut answer = None;
        let labels =
            crate::mesh::telemetry::recorded_labels("shopmesh_server_malformed_timeout_total", || {
                answer = Some(svc.call(request));
            });
        assert_eq!(labels.len(), 1, "a malformed grpc-timeout is counted");
        let names: Vec<_> = labels[0].iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            names,
            ["rpc_system=grpc", "rpc_service=shopmesh.user.v1.UserService", "rpc_method=GetUser"],
            "the RPC labels of every metric about a call"
        );
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(3600), answer.expect("called"))
            .await
            .expect("answered within the default deadline, not never")
            .expect("a response");
        assert_eq!(response.headers().get("grpc-status").map(|v| v.as_bytes()), Some(&b"4"[..]));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(4) && waited <= Duration::from_secs(6), "{waited:?}");
    }
}
