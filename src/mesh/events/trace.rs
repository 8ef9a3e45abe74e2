//! W3C trace context in and out of events, so the producer's and the consumers' spans sit in
//! the trace of the call that changed the state (OpenTelemetry's messaging conventions).

use std::collections::HashMap;

use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `traceparent` of the current span, to store with an outbox row; `None` when no
/// trace is recorded.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` naming `span` (a PRODUCER span, sent with its message so the consumer's
/// span is its child).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace `traceparent` names (no-op without one).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// The trace id of `span`'s OpenTelemetry context.
    fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
        span.context().span().span_context().trace_id()
    }

    /// What the outbox stores with a row is what the relay's PRODUCER span and a consumer's
    /// CONSUMER span continue: all three in the trace of the call that changed the state.
    #[test]
    fn an_event_carries_its_cause_s_trace_to_the_producer_and_the_consumer() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!("CreateOrder");
            let stored = call.in_scope(current_traceparent).expect("a traceparent inside a span");
            assert!(stored.starts_with("00-"), "{stored}");

            let producer = tracing::info_span!("send");
            continue_trace(&producer, Some(&stored));
            let sent = traceparent_of(&producer).expect("the producer's context");
            assert_ne!(sent, stored, "the message names the producer's span, a child of the call's");
            let consumer = tracing::info_span!("process");
            continue_trace(&consumer, Some(&sent));
            assert_eq!(trace_id(&producer), trace_id(&call));
            assert_eq!(trace_id(&consumer), trace_id(&call));

            // Without a stored context a span starts its own trace.
            let alone = tracing::info_span!("process");
            continue_trace(&alone, None);
            assert_ne!(trace_id(&alone), trace_id(&call));
        });
    }
}
