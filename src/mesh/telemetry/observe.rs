//! What every call leaves behind: a span (OpenTelemetry RPC conventions) and RED metrics, on
//! both sides of a call. One layer per side does both, so a call is timed once and its path
//! and status are read once.
//!
//! The server layer continues the caller's trace from the W3C `traceparent` / `tracestate` /
//! `baggage` metadata; the client layer sends its own span's context the same way, so order,
//! user and payment spans form one trace. When the mesh authenticates callers (mutual TLS or
//! bearer tokens), only a caller with a mesh identity (an mTLS certificate) is trusted with
//! that: anyone else's call starts a new trace, its context kept only as a span link and its
//! baggage dropped, so an outside caller can neither force sampling nor send baggage on to
//! the services behind this one. Without authentication (local development) every caller's
//! context is continued, so grpcurl with a `traceparent` joins the caller's trace. Spans
//! declare `trace_id` and `span_id` fields, which the log formatter fills in and prints on every
//! line written inside them ([`log_ids`](super::log_ids): only once a line is written).
//!
//! Metric and label names follow OpenTelemetry's RPC conventions in their Prometheus form:
//! `rpc_server_call_duration_seconds` and `rpc_client_call_duration_seconds` (histograms by
//! the [`labels`] of a call and `rpc_grpc_status_code`; their `_count` is the request count),
//! and `rpc_server_active_requests` (a gauge per service).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::mesh::grpc::catalogue::{Catalogue, Method};
use crate::mesh::grpc::code::code_of;
use crate::mesh::identity::PeerIdentity;
use crate::mesh::telemetry::handles::{Active, CallMetrics};
use crate::mesh::telemetry::labels;

/// gRPC status codes as label values, by number.
const CODES: [&str; 17] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// Codes that are the server's fault, which mark a server span as an error (OpenTelemetry's
/// gRPC conventions); on the client every non-OK code is an error.
fn server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Records `code` on a finished call's span (an error status when `is_error` says so) and
/// returns it as a label value.
fn finish_span(span: &tracing::Span, code: i32, is_error: fn(i32) -> bool) -> &'static str {
    span.record("rpc.grpc.status_code", code);
    if is_error(code) {
        span.record("otel.status_code", "ERROR");
    }
    usize::try_from(code).ok().and_then(|c| CODES.get(c)).copied().unwrap_or("2")
}

/// Registers help texts of the metrics this crate records.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "rpc_server_call_duration_seconds",
        Unit::Seconds,
        "Duration of calls handled, by method and status code."
    );
    describe_histogram!(
        "rpc_client_call_duration_seconds",
        Unit::Seconds,
        "Duration of calls made (retries included), by method and status code."
    );
    describe_gauge!("rpc_server_active_requests", "Calls being handled now.");
    describe_counter!("shopmesh_client_retries_total", "Retry attempts made, by method.");
    describe_counter!(
        "shopmesh_client_retries_refused_total",
        "Retries not made because the retry budget was spent, by method and reason."
    );
    describe_counter!(
        "shopmesh_client_ejections_total",
        "Endpoints taken out of a balancer after consecutive failures."
    );
    describe_gauge!("shopmesh_client_endpoints", "Endpoints a client balances over.");
    describe_counter!(
        "shopmesh_client_in_process_calls_total",
        "Call attempts sent in-process (no socket) to a service of this process, by its name."
    );
    describe_counter!(
        "shopmesh_server_shed_total",
        "Calls refused with RESOURCE_EXHAUSTED because the server, the connection or the identity was at its limit, by method and bound."
    );
    describe_counter!(
        "shopmesh_server_request_read_refused_total",
        "Calls answered before their handler because the request message was late (timeout), too large or broken off, by method and reason."
    );
    describe_counter!(
        "shopmesh_server_malformed_timeout_total",
        "Calls whose grpc-timeout did not parse and which got the server's default deadline instead, by method."
    );
    describe_counter!(
        "shopmesh_server_deadline_exceeded_total",
        "Calls whose deadline passed while being handled."
    );
    describe_counter!("shopmesh_client_deadline_fail_fast_total", "Calls not sent because no time was left.");
    describe_counter!(
        "shopmesh_server_authz_denied_total",
        "Calls refused by the authorization policy, by method and reason (no_identity, not_allowed)."
    );
    describe_counter!(
        "shopmesh_server_tls_handshake_failures_total",
        "Connections refused at the TLS handshake, by reason: failed (no, foreign or invalid certificate), timeout, too_many_handshakes."
    );
    describe_counter!(
        "shopmesh_server_unauthenticated_total",
        "Calls refused with UNAUTHENTICATED because their bearer token was missing or invalid."
    );
    describe_counter!(
        "shopmesh_server_rate_limited_total",
        "Calls refused with RESOURCE_EXHAUSTED because their caller was over its rate, by method."
    );
    describe_gauge!("shopmesh_build_info", "Always 1; the labels say which build runs (version, commit).");
    describe_gauge!("db_client_connection_count", "Database connections by state (idle, used).");
    describe_gauge!("db_client_connection_max", "Largest number of database connections the pool opens.");
    describe_gauge!("db_client_connection_pending_requests", "Requests waiting for a database connection.");
    describe_counter!("shopmesh_db_replica_reads_total", "Reads of read-only calls a replica answered.");
    describe_counter!(
        "shopmesh_db_replica_fallback_total",
        "Reads of read-only calls that went to the primary, by reason: unusable (every replica lagging or down), not_found, error, recent_write."
    );
    describe_gauge!(
        "shopmesh_db_replica_lag_seconds",
        "A replica's replay lag, measured on it every second."
    );
    describe_gauge!(
        "shopmesh_db_replica_usable",
        "1 while reads may use the replica (answering, lag within --max-replica-lag)."
    );
    describe_histogram!(
        "db_client_connection_wait_time_seconds",
        Unit::Seconds,
        "Time spent waiting for a database connection."
    );
}

/// Server side: a span per call that continues the caller's trace (when the caller may steer
/// it), the call's duration by method and status, and the number of calls in progress.
#[derive(Debug, Clone)]
pub struct ServerObserveLayer {
    authenticated: bool,
    metrics: CallMetrics,
}

impl ServerObserveLayer {
    /// With `authenticated` (the mesh runs with mutual TLS or bearer tokens), only callers with
    /// a mesh identity continue their trace; without, every caller does. The metric handles of
    /// the methods of `catalogue` are kept once looked up.
    pub fn new(authenticated: bool, catalogue: Catalogue) -> Self {
        Self { authenticated, metrics: CallMetrics::new(catalogue, "rpc_server_call_duration_seconds") }
    }
}

impl<S> Layer<S> for ServerObserveLayer {
    type Service = ServerObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerObserve { inner, authenticated: self.authenticated, metrics: self.metrics.clone() }
    }
}

/// See [`ServerObserveLayer`].
#[derive(Debug, Clone)]
pub struct ServerObserve<S> {
    inner: S,
    authenticated: bool,
    metrics: CallMetrics,
}

impl<S, B, ResBody> Service<Request<B>> for ServerObserve<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ServerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let called = Method::of(&request);
        let (name, service, method) = (called.full_name(), called.service, called.method);
        // Probes call health every few seconds on every pod: counted, but not traced, so
        // traces show the calls people make.
        let span = if called.infrastructure {
            tracing::Span::none()
        } else {
            let peer = request
                .extensions()
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(tonic::transport::server::TcpConnectInfo::remote_addr);
            let span = tracing::info_span!(
                "rpc.server",
                otel.name = name,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = tracing::field::Empty,
                network.peer.address = peer.map(|p| tracing::field::display(p.ip())),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            let parent = opentelemetry::global::get_text_map_propagator(|p| {
                p.extract(&HeaderExtractor(request.headers()))
            });
            if !self.authenticated || request.extensions().get::<PeerIdentity>().is_some() {
                let _ = span.set_parent(parent);
            } else {
                // A new root with no baggage (an empty context); the caller's trace only linked.
                let _ = span.set_parent(opentelemetry::Context::new());
                span.add_link(parent.span().span_context().clone());
            }
            span
        };
        let active = self.metrics.active(&called);
        // Inside the span, so what the layers below log while deciding (a refusal) carries
        // the call's trace id.
        let inner = span.in_scope(|| self.inner.call(request));
        ServerFuture {
            inner: inner.instrument(span.clone()),
            span,
            start: Instant::now(),
            method: called,
            metrics: self.metrics.clone(),
            _active: active,
        }
    }
}

pin_project! {
    /// The response of a [`ServerObserve`] service.
    pub struct ServerFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: tracing::Span,
        start: Instant,
        method: Method,
        metrics: CallMetrics,
        _active: Active,
    }
}

impl<F, ResBody, E> Future for ServerFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let code = finish_span(this.span, code_of(&result), server_error);
        this.metrics.record(this.method, code, this.start.elapsed().as_secs_f64());
        Poll::Ready(result)
    }
}

/// Client side: a span per call (its retries included) whose context is sent as
/// `traceparent`, and the call's duration by method and status.
#[derive(Debug, Clone, Copy)]
pub struct ClientObserveLayer {
    catalogue: Catalogue,
}

impl ClientObserveLayer {
    /// Names calls by the methods of `catalogue` (`unknown` outside it).
    pub fn new(catalogue: Catalogue) -> Self {
        Self { catalogue }
    }
}

impl<S> Layer<S> for ClientObserveLayer {
    type Service = ClientObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientObserve { inner, catalogue: self.catalogue }
    }
}

/// See [`ClientObserveLayer`].
#[derive(Debug, Clone)]
pub struct ClientObserve<S> {
    inner: S,
    catalogue: Catalogue,
}

impl<S, B, ResBody> Service<Request<B>> for ClientObserve<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ClientFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let called = self.catalogue.method(request.uri().path());
        let (name, service, method) = (called.full_name(), called.service, called.method);
        let span = tracing::info_span!(
            "rpc.client",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = request.uri().authority().map(|a| tracing::field::display(a.host())),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(request.headers_mut()));
        });
        ClientFuture {
            inner: self.inner.call(request).instrument(span.clone()),
            span,
            start: Instant::now(),
            method: called,
        }
    }
}

pin_project! {
    /// The response of a [`ClientObserve`] service.
    pub struct ClientFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        span: tracing::Span,
        start: Instant,
        method: Method,
    }
}

impl<F, ResBody, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let code = finish_span(this.span, code_of(&result), |code| code != 0);
        metrics::histogram!(
            "rpc_client_call_duration_seconds",
            labels::rpc(this.method, &[("rpc_grpc_status_code", code)])
        )
        .record(this.start.elapsed().as_secs_f64());
        Poll::Ready(result)
    }
}
