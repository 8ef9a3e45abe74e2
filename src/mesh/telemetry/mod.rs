//! A process's telemetry, set up once by the binary: logs, traces and metrics; and the
//! [`observe`] layers that give every call its span and metrics, on both sides.
//!
//! - Logs: `tracing-subscriber`, JSON when stderr is not a terminal (containers), readable on
//!   a terminal, filtered by `RUST_LOG`. Lines written inside a call carry the call's
//!   `trace_id` and `span_id` (fields of the spans [`crate::mesh::telemetry::observe`] creates).
//! - Traces: `tracing` spans become OpenTelemetry spans (`tracing-opentelemetry`). They are
//!   exported over OTLP/gRPC, batched on a background thread, only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise
//!   trace ids still flow (W3C `traceparent`) and reach the logs, new traces are not recorded,
//!   and nothing is exported or complained about. The standard `OTEL_*` variables configure
//!   the rest (service name, resource attributes, sampler: parent-based always-on by default).
//! - Metrics: the `metrics` facade, exposed in Prometheus text format at `/metrics` on an admin
//!   port by `metrics-exporter-prometheus`.
//!
//! Its settings are [`config`]; [`log_fields`] holds the fields every log line of a call
//! carries and [`log_ids`] fills in their ids once a line is written; [`labels`] the labels
//! every metric about a call carries; [`handles`] the server's metric handles per method,
//! looked up once.

pub mod config;
pub mod handles;
pub mod labels;
pub mod log_fields;
pub mod log_ids;
pub mod observe;

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::mesh::Error;
use crate::mesh::config::{LogFormat, MetricsListen, TelemetryConfig};

/// The log filter without `RUST_LOG`.
const DEFAULT_LOG_FILTER: &str = "info,async_nats::connector=off";
/// Bucket bounds (seconds) of every duration histogram: fine enough around 0.5 ms–100 ms for
/// p50 to p99.9 of calls on one machine, coarse out to the 10 s of a timed-out call.
pub const DURATION_BUCKETS: [f64; 20] = [
    0.000_25, 0.0005, 0.000_75, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the `process_*` metrics are read from the operating system.
const PROCESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the spans this process makes reach an exporter. Until [`Telemetry::init`] says
/// otherwise it is `true`: a subscriber installed some other way (a test's) sees every span.
static SPANS_EXPORTED: AtomicBool = AtomicBool::new(true);

/// Whether the spans this process makes are exported (OTLP configured). A span whose only use
/// is the exported trace (a statement's: log lines leave it out, and it calls no one) need
/// not be made when they are not.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// The process's telemetry; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// The OpenTelemetry resource: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` when given,
/// otherwise `default_service_name`; the version; an instance id unique to this process.
fn resource(default_service_name: &str) -> Resource {
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let mut builder = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") && !attributes.contains("service.name=") {
        builder = builder.with_service_name(default_service_name.to_owned());
    }
    if !attributes.contains("service.version=") {
        builder = builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    if !attributes.contains("service.instance.id=") {
        builder =
            builder.with_attribute(KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()));
    }
    builder.build()
}

impl Telemetry {
    /// Installs logging, tracing and metrics for this process. Must run inside the tokio
    /// runtime (the OTLP exporter and the metrics listener use it).
    ///
    /// # Errors
    /// [`Error::Config`] when the exporter or the metrics listener cannot be set up.
    pub fn init(default_service_name: &str, config: &TelemetryConfig) -> Result<Self, Error> {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ]),
        );
        let exporting =
            env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        SPANS_EXPORTED.store(exporting, Ordering::Relaxed);
        let mut provider = SdkTracerProvider::builder().with_resource(resource(default_service_name));
        if !exporting && !env_set("OTEL_TRACES_SAMPLER") {
            // Nothing would receive the spans: keep ids (for logs and for callees that do
            // export) but record only what a caller asked to sample.
            provider = provider.with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOff,
            )));
        }
        if exporting {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| Error::Config(format!("OTLP exporter: {e}")))?;
            provider = provider.with_batch_exporter(exporter);
        }
        let provider = provider.build();
        let tracer = provider.tracer("shopmesh");

        // async-nats's connector logs an ERROR for every failed attempt to reach the broker
        // (every 0.5-5 s while a service waits for NATS at start, and while it reconnects): the
        // mesh says it once itself (`events/connect.rs`), keeps the gauge and the relay's warnings.
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
        let json = match config.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => !std::io::stderr().is_terminal(),
        };
        let json_format = tracing_subscriber::fmt::format()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true);
        let (logs, ids) = if json {
            let format = log_ids::LogIds::new(json_format);
            let ids = format.dispatch();
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .fmt_fields(log_fields::LogSpanFields)
                .event_format(format);
            (layer.boxed(), ids)
        } else {
            let format = log_ids::LogIds::new(tracing_subscriber::fmt::format().compact());
            let ids = format.dispatch();
            (tracing_subscriber::fmt::layer().with_writer(std::io::stderr).event_format(format).boxed(), ids)
        };
        // RUST_LOG filters the log lines only: quieting logs must not switch tracing off, so the
        // OpenTelemetry layer has its own filter (every span and event at INFO and above).
        // The log layer formats the fields of every span it sees, whether or not a line is
        // ever written inside it; a statement's span (its SQL text, escaped into JSON) was a
        // few percent of a call's CPU. Lines logged during a statement still carry the call's
        // span, the nearest one this layer sees.
        let spans_for_logs =
            tracing_subscriber::filter::filter_fn(|meta| !meta.is_span() || meta.name() != "db");
        // The OpenTelemetry layer's filter is a dynamic one, whose callsites are never cached
        // as `Interest::always`. tracing-subscriber's per-layer filters pass each decision from
        // `enabled()` to `on_new_span` through a thread-local; a callsite cached as `always`
        // skips `enabled()`, and its span then reads a decision left by an unrelated check
        // (sqlx asks whether its statement logs are enabled after each query). With a log
        // filter that mixes levels by target, that dropped a call's `rpc.server` span from the
        // trace now and then (tokio-rs/tracing#2519). Being asked on every span and event costs
        // a level comparison; callsites below INFO stay `never`, skipped without asking.
        let traced =
            tracing_subscriber::filter::dynamic_filter_fn(|meta, _| *meta.level() <= LevelFilter::INFO)
                .with_callsite_filter(|meta| {
                    if *meta.level() <= LevelFilter::INFO {
                        tracing::subscriber::Interest::sometimes()
                    } else {
                        tracing::subscriber::Interest::never()
                    }
                });
        let subscriber =
            tracing_subscriber::registry().with(logs.with_filter(filter.and(spans_for_logs))).with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    // Entering a span would otherwise make its context OpenTelemetry's current
                    // one (a clone and a thread-local push on every poll of every call, and the
                    // pop on exit). Nothing here reads `opentelemetry::Context::current()`: the
                    // client sends, and the events carry, the span's own context
                    // (`span.context()`), and a new span finds its parent in the span registry.
                    .with_context_activation(false)
                    // A span's busy and idle time (`busy_ns`, `idle_ns`) take a clock read and
                    // a write lock on the span's extensions at each enter and exit, every poll
                    // of every call, and are only ever read in an exported span.
                    .with_tracked_inactivity(exporting)
                    .with_filter(traced),
            );
        let dispatch = tracing::Dispatch::new(subscriber);
        let _ = ids.set(dispatch.downgrade());
        dispatch.try_init().map_err(|e| Error::Config(format!("logging is already set up: {e}")))?;

        if let MetricsListen(Some(addr)) = config.metrics_listen {
            PrometheusBuilder::new()
                .with_http_listener(addr)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
                .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
                .install()
                .map_err(|e| Error::Config(format!("cannot serve metrics on {addr}: {e}")))?;
            crate::mesh::telemetry::observe::describe_metrics();
            // Which build runs: the version, and the commit when the build was told it
            // (SHOPMESH_GIT_COMMIT at compile time, as the image build sets it).
            metrics::gauge!(
                "shopmesh_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => option_env!("SHOPMESH_GIT_COMMIT").unwrap_or("unknown"),
            )
            .set(1.0);
            // The process itself (CPU seconds, resident and virtual memory, open and most file
            // descriptors, threads, start time), by Prometheus's `process_*` conventions, read
            // from /proc every PROCESS_INTERVAL: a scrape sees values at most that old.
            let process = metrics_process::Collector::default();
            process.describe();
            process.collect();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(PROCESS_INTERVAL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    every.tick().await;
                    process.collect();
                }
            });
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        if exporting {
            tracing::info!("exporting traces over OTLP/gRPC");
        }
        Ok(Self { provider, exporting })
    }

    /// Exports every buffered span and stops the exporter (at the end of a graceful shutdown).
    pub fn shutdown(self) {
        if self.exporting
            && let Err(err) = self.provider.shutdown()
        {
            tracing::warn!(%err, "flushing traces failed");
        }
    }
}

/// The label sets of every `name` series that `call` records (for unit tests of layers).
#[cfg(test)]
pub(crate) fn recorded_labels(name: &str, call: impl FnOnce()) -> Vec<Vec<(String, String)>> {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, call);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(key, ..)| key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect())
        .collect()
}

/// A log writer whose lines a unit test reads back (for tests of the log formatters).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl LogLines {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
    }
}

#[cfg(test)]
impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
