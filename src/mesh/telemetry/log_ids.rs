//! The trace and span ids on a call's log lines, formatted when a line is written inside the
//! call and not before.
//!
//! A call's span (`rpc.server`, `rpc.client`) declares empty `trace_id` and `span_id` fields.
//! Recording them when the span was created cost every call a trip through OpenTelemetry's
//! context, two hex formattings, the log layer's copy into its JSON and the trace layer's two
//! string attributes, though most calls write no line at all. [`LogIds`] wraps the log layer's
//! line formatter: before a line is written it fills in the ids of each span in the line's scope
//! that declares them and has not had them yet (once per span), through the log layer's own
//! field formatter, so JSON and text lines show them as before. The ids come from the span's
//! OpenTelemetry context, which tracing-opentelemetry reaches through the dispatcher: the
//! formatter holds the process's, set once the subscriber is built ([`LogIds::dispatch`]).

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// See the [module](self).
#[derive(Debug, Clone)]
pub struct LogIds<E> {
    inner: E,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

/// Marks a span whose ids are in its formatted fields (or that has none to show).
struct IdsWritten;

impl<E> LogIds<E> {
    /// Lines formatted by `inner`, with the ids filled in first.
    pub fn new(inner: E) -> Self {
        Self { inner, dispatch: Arc::default() }
    }

    /// Where the subscriber this formatter is part of goes once built: until then (and for a
    /// subscriber dropped since) lines carry no ids.
    pub fn dispatch(&self) -> Arc<OnceLock<WeakDispatch>> {
        self.dispatch.clone()
    }

    fn write_ids<S, N>(&self, ctx: &FmtContext<'_, S, N>, span: &SpanRef<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'w> FormatFields<'w> + 'static,
    {
        let fields = span.metadata().fields();
        let (Some(trace_field), Some(span_field)) = (fields.field("trace_id"), fields.field("span_id"))
        else {
            return;
        };
        if span.extensions().get::<IdsWritten>().is_some() {
            return;
        }
        // Neither the span's extensions nor anything else held: tracing-opentelemetry locks them.
        let context = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| tracing_opentelemetry::get_otel_context(&span.id(), &dispatch));
        let ids = context.map(|c| c.span().span_context().clone()).filter(|c| c.is_valid());
        let mut extensions = span.extensions_mut();
        extensions.insert(IdsWritten);
        let Some(ids) = ids else { return };
        let (trace_id, span_id) =
            (tracing::field::display(ids.trace_id()), tracing::field::display(ids.span_id()));
        let values = [
            (&trace_field, Some(&trace_id as &dyn tracing::Value)),
            (&span_field, Some(&span_id as &dyn tracing::Value)),
        ];
        let values = fields.value_set(&values);
        if let Some(formatted) = extensions.get_mut::<FormattedFields<N>>() {
            let _ = ctx.field_format().add_fields(formatted, &tracing::span::Record::new(&values));
        }
    }
}

impl<S, N, E> FormatEvent<S, N> for LogIds<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                self.write_ids(ctx, &span);
            }
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::mesh::telemetry::LogLines;
    use crate::mesh::telemetry::log_fields::LogSpanFields;

    /// The lines `body` logs, as JSON or text, with the process's layers (a trace layer
    /// without exporter, whose spans are not sampled), and the ids of the span it returns.
    fn logged(json: bool, body: impl FnOnce() -> tracing::Span) -> (String, String, String) {
        let lines = LogLines::default();
        let writer = lines.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOff,
            )))
            .build();
        let format = tracing_subscriber::fmt::format()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true);
        let json_ids = LogIds::new(format);
        let text_ids = LogIds::new(tracing_subscriber::fmt::format().compact());
        let slots = [json_ids.dispatch(), text_ids.dispatch()];
        let logs = if json {
            tracing_subscriber::fmt::layer()
                .fmt_fields(LogSpanFields)
                .event_format(json_ids)
                .with_writer(move || writer.clone())
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .event_format(text_ids)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .boxed()
        };
        let subscriber = tracing_subscriber::registry().with(logs).with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_context_activation(false),
        );
        let dispatch = tracing::Dispatch::new(subscriber);
        for slot in slots {
            let _ = slot.set(dispatch.downgrade());
        }
        let (trace_id, span_id) = tracing::dispatcher::with_default(&dispatch, || {
            let span = body();
            let ids = span.context().span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = lines.text();
        (text, trace_id, span_id)
    }

    fn call_span() -> tracing::Span {
        tracing::info_span!(
            "rpc.server",
            rpc.method = "GetUser",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        )
    }

    #[test]
    fn json_lines_inside_a_call_carry_its_ids_without_recording_them() {
        let (text, trace_id, span_id) = logged(true, || {
            let span = call_span();
            span.in_scope(|| {
                tracing::info!("first");
                tracing::info!("second");
            });
            span
        });
        let lines: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(trace_id.len(), 32);
        for line in &lines {
            assert_eq!(line["span"]["trace_id"], trace_id.as_str(), "{line}");
            assert_eq!(line["span"]["span_id"], span_id.as_str(), "{line}");
            assert_eq!(line["span"]["rpc.method"], "GetUser", "{line}");
        }
    }

    #[test]
    fn text_lines_carry_the_ids_too_and_lines_outside_a_call_none() {
        let (text, trace_id, span_id) = logged(false, || {
            tracing::info!("before");
            let span = call_span();
            span.in_scope(|| tracing::info!("inside"));
            span
        });
        let (before, inside) = text.split_once('\n').expect("two lines");
        assert!(!before.contains("trace_id"), "{before}");
        assert!(inside.contains(&format!("trace_id={trace_id}")), "{inside}");
        assert!(inside.contains(&format!("span_id={span_id}")), "{inside}");
    }
}
