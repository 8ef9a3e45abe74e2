//! Deadlines across the mesh. On the server, [`ServerDeadlineLayer`] turns an inbound
//! `grpc-timeout` into a deadline that handler code reads with [`current`] and answers
//! DEADLINE_EXCEEDED when it passes. On the client, [`ClientDeadlineLayer`] sends every call
//! the time left of the request being handled (minus a margin), capped by a per-method default,
//! and fails fast, sending nothing, when no time is left.
//!
//! The deadline lives in a task-local, which `tokio::spawn` does not carry (nor the tracing
//! span): spawn with [`spawn`] (or wrap the future in [`propagate`]) so spawned work keeps both
//! its deadline and its parent span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::mesh::config::ClientConfig;

const GRPC_TIMEOUT: &str = "grpc-timeout";

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// The deadline of the request this task is handling, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// The time left before [`current`], if there is a deadline (zero once it has passed).
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Whether the request this task is handling is out of time.
pub fn expired() -> bool {
    current().is_some_and(|d| d <= Instant::now())
}

/// Runs `future` under `deadline`, as the server layer does for a handler.
pub fn scope<F: Future>(deadline: Option<Instant>, future: F) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(deadline, future)
}

/// `future` carrying this task's deadline and current span, for running on another task.
pub fn propagate<F: Future>(
    future: F,
) -> TaskLocalFuture<Option<Instant>, tracing::instrument::Instrumented<F>> {
    use tracing::Instrument as _;
    scope(current(), future.instrument(tracing::Span::current()))
}

/// `tokio::spawn` that keeps this task's deadline and parent span in the spawned task.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(propagate(future))
}

/// Runs `future` until it completes or the current deadline passes (`Err` then).
pub async fn within<F: Future>(future: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    match current() {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await,
        None => Ok(future.await),
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let mut n: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value, rounding down (a callee never gets more time
/// than the caller has) in the finest unit that fits the 8 digits the protocol allows.
pub fn encode_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    let text = if micros <= MAX {
        format!("{micros}u")
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else if u128::from(timeout.as_secs()) <= MAX {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}H", (timeout.as_secs() / 3600).min(99_999_999))
    };
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

/// A trailers-only gRPC response carrying `status` (what a server sends for an error).
pub(crate) fn status_response<B: Default>(status: tonic::Status) -> Response<B> {
    status.into_http()
}

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
            return Poll::Ready(Ok(status_response(tonic::Status::deadline_exceeded(
                "deadline exceeded while the server was handling the call",
            ))));
        }
        Poll::Pending
    }
}

/// The absolute deadline of an outgoing call, set by [`ClientDeadline`] in the request's
/// extensions for the layers below it (retries never start an attempt past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub Instant);

/// Client layer: every call gets a deadline = min(the handled request's deadline − margin,
/// now + the method's default, any `grpc-timeout` the caller set), sent as `grpc-timeout` and
/// enforced here; a call with no time left fails with DEADLINE_EXCEEDED without being sent.
#[derive(Debug, Clone)]
pub struct ClientDeadlineLayer {
    config: std::sync::Arc<ClientConfig>,
}

impl ClientDeadlineLayer {
    /// Deadlines from `config` (per-method defaults and the margin).
    pub fn new(config: std::sync::Arc<ClientConfig>) -> Self {
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
    config: std::sync::Arc<ClientConfig>,
}

/// Whether `err` is tonic's own timer running out (its connection enforces `grpc-timeout`
/// too, and may fire in the same millisecond as ours).
/// `err` and its causes, as one line: "transport error: connection reset by peer".
fn connection_failure(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = String::from("connection failed: ");
    message.push_str(&err.to_string());
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub(crate) fn is_tonic_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl<S, B, ResBody> Service<Request<B>> for ClientDeadline<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<tower::BoxError>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = tower::BoxError;
    type Future = ClientFuture<S::Future, ResBody>;

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
            return ClientFuture::Expired {
                response: Some(status_response(tonic::Status::deadline_exceeded(
                    "deadline exceeded before the call was sent",
                ))),
            };
        }
        request.headers_mut().insert(GRPC_TIMEOUT, encode_timeout(deadline - now));
        request.extensions_mut().insert(CallDeadline(deadline));
        ClientFuture::Called { inner: self.inner.call(request), sleep: tokio::time::sleep_until(deadline) }
    }
}

pin_project! {
    /// The response of a [`ClientDeadline`] service.
    #[project = ClientFutureProj]
    pub enum ClientFuture<F, ResBody> {
        /// Sent; waiting for the answer or the deadline.
        Called { #[pin] inner: F, #[pin] sleep: Sleep },
        /// Not sent: out of time.
        Expired { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody, E> Future for ClientFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<tower::BoxError>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, tower::BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ClientFutureProj::Called { inner, sleep } => {
                if let Poll::Ready(out) = inner.poll(cx) {
                    return Poll::Ready(match out.map_err(Into::into) {
                        Err(err) if is_tonic_timeout(&*err) => Ok(status_response(
                            tonic::Status::deadline_exceeded("deadline exceeded waiting for the answer"),
                        )),
                        Err(err) if err.is::<tonic::Status>() => Err(err),
                        // A connection that failed or broke under the call (refused, reset,
                        // closed): gRPC says UNAVAILABLE; tonic alone would say UNKNOWN
                        // ("transport error"), which callers cannot act on.
                        Err(err) => {
                            Ok(status_response(tonic::Status::unavailable(connection_failure(&*err))))
                        }
                        ok => ok,
                    });
                }
                ready!(sleep.poll(cx));
                Poll::Ready(Ok(status_response(tonic::Status::deadline_exceeded(
                    "deadline exceeded waiting for the answer",
                ))))
            }
            ClientFutureProj::Expired { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_timeout_parses_every_unit_and_rejects_junk() {
        assert_eq!(parse_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(&headers("4S")), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(&headers("99999999u")), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_timeout(&headers("7n")), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "100", "1x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(parse_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeout_encodes_within_eight_digits_rounding_down() {
        assert_eq!(encode_timeout(Duration::from_micros(298_500)), "298500u");
        assert_eq!(encode_timeout(Duration::from_nanos(1_999)), "1u");
        assert_eq!(encode_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000_000)), "55555H");
        for d in [Duration::from_millis(1), Duration::from_secs(5), Duration::from_secs(86_400)] {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, encode_timeout(d));
            let back = parse_timeout(&h).expect("round trip");
            assert!(back <= d && d - back < Duration::from_secs(1), "{d:?} -> {back:?}");
        }
    }

    #[tokio::test]
    async fn spawned_work_keeps_the_deadline_and_the_span() {
        use tracing::Instrument as _;
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let parent = tracing::info_span!("handler");
        let deadline = Instant::now() + Duration::from_secs(5);
        let here = || (current(), tracing::Span::current().id());
        let (plain, kept) = scope(
            Some(deadline),
            async move {
                let plain = tokio::spawn(async move { here() }).await.expect("join");
                let kept = spawn(async move { here() }).await.expect("join");
                (plain, kept)
            }
            .instrument(parent.clone()),
        )
        .await;
        assert_eq!(plain, (None, None), "tokio::spawn drops both; this is why deadline::spawn exists");
        assert_eq!(kept, (Some(deadline), parent.id()));
        assert!(parent.id().is_some());
        assert_eq!(current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn within_stops_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let out = scope(Some(deadline), within(tokio::time::sleep(Duration::from_secs(1)))).await;
        assert!(out.is_err());
        let out = scope(Some(deadline), within(async { 7 })).await;
        assert_eq!(out.ok(), Some(7));
    }
}
