//! What one delivery of an event to a consumer becomes, the same on either broker: the
//! handler runs in a CONSUMER span continuing the producer's trace, and its [`Outcome`]
//! decides between acknowledging, redelivering after a backoff, and the dead-letter stream.
//!
//! Events the broker has ready together are handed to the handler together
//! ([`deliver_batch`], [`Handler::handle_batch`]), so a consumer may act on several in one
//! transaction: one commit (one fsync) for the batch instead of one per event. Each event
//! keeps its own CONSUMER span and its own outcome.

use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{Instrument as _, Span};

use crate::mesh::events::config::EventsConfig;
use crate::mesh::events::{Event, Subscription, trace};

/// A consumer's work on one event. Implementations record the event id in their inbox in
/// the same transaction as their effect, so a redelivery changes nothing.
pub trait Handler: Send + Sync + 'static {
    /// Handles `event`.
    fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome>;

    /// Handles `events` (each with its CONSUMER span, under which its own work runs), in their
    /// order: one outcome per event. The default handles them one at a time; a consumer that
    /// can act on several in one transaction does, and if that transaction fails, handles them
    /// one at a time (so one event's failure is not the others').
    fn handle_batch<'a>(&'a self, events: &'a [(&'a Event, Span)]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(one_at_a_time(self, events))
    }
}

/// What a handler's batch path answers when its transaction failed with `error`: an event
/// alone is tried again later; several are handled again one at a time, each in its own
/// transaction, so one event's failure is not the others'.
pub async fn failed_batch<H: Handler + ?Sized>(
    handler: &H,
    events: &[(&Event, Span)],
    error: String,
) -> Vec<Outcome> {
    if events.len() == 1 {
        return vec![Outcome::Retry(error)];
    }
    tracing::debug!(error = %error, events = events.len(), "a batch of events failed; handled one at a time");
    one_at_a_time(handler, events).await
}

/// [`Handler::handle`] for a handler whose batch path serves one event too: `event` as a
/// batch of one, in the current span.
pub fn alone<'a, H: Handler + ?Sized>(handler: &'a H, event: &'a Event) -> BoxFuture<'a, Outcome> {
    Box::pin(async move {
        let events = [(event, Span::current())];
        let mut outcomes = handler.handle_batch(&events).await;
        outcomes.pop().unwrap_or(Outcome::Retry("no outcome from the handler".into()))
    })
}

/// Handles `events` with `handler`, one at a time, each in its span.
pub async fn one_at_a_time<H: Handler + ?Sized>(handler: &H, events: &[(&Event, Span)]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(events.len());
    for (event, span) in events {
        outcomes.push(handler.handle(event).instrument(span.clone()).await);
    }
    outcomes
}

/// How a handler left an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acted on (or found in the inbox, or of a type the consumer does not act on).
    Done,
    /// A type the consumer does not know (a newer producer): acknowledged and counted.
    Unknown,
    /// It can never be handled (an undecodable body): straight to the dead-letter stream.
    Poison(String),
    /// It failed this time (the database unreachable): delivered again after a backoff.
    Retry(String),
}

/// What the broker does with a delivery once it was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Acknowledge it.
    Ack,
    /// Deliver it again after this delay.
    Redeliver(Duration),
    /// Copy it to the dead-letter stream with this reason, then acknowledge it.
    DeadLetter(String),
}

/// Registers the help texts of the events' metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shopmesh_events_published_total",
        "Events the outbox relay published, by stream (messaging_destination_name)."
    );
    metrics::describe_counter!(
        "shopmesh_events_delivered_total",
        "Deliveries handled by a consumer, by outcome (done, unknown, poison, retry)."
    );
    metrics::describe_counter!(
        "shopmesh_events_redelivered_total",
        "Deliveries of an event that had been delivered to the consumer before."
    );
    metrics::describe_counter!(
        "shopmesh_events_dead_lettered_total",
        "Events a consumer gave up on and copied to the dead-letter stream, by reason; alert on any."
    );
    metrics::describe_gauge!(
        "shopmesh_events_consumer_lag",
        "Events of the stream not yet delivered to the consumer (JetStream's num_pending)."
    );
    metrics::describe_gauge!("shopmesh_events_outbox_backlog", "Outbox rows not yet published.");
    metrics::describe_gauge!(
        "shopmesh_events_outbox_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest unpublished outbox row; alert when it grows (the broker or the relay is stuck)."
    );
}

/// Handles delivery number `delivered` (from 1) of `event` to `subscription` and decides what
/// becomes of it.
pub async fn deliver(
    subscription: Subscription,
    system: &'static str,
    handler: &dyn Handler,
    event: &Event,
    delivered: u32,
    config: &EventsConfig,
) -> Action {
    let span = span(subscription, system, event, delivered);
    let outcome = handler.handle(event).instrument(span.clone()).await;
    decide(subscription, event, delivered, outcome, &span, config)
}

/// [`deliver`] for several deliveries the broker had ready together, `(event, delivery
/// number)`: the handler gets them at once ([`Handler::handle_batch`]); one action per event,
/// in their order.
pub async fn deliver_batch(
    subscription: Subscription,
    system: &'static str,
    handler: &dyn Handler,
    deliveries: &[(&Event, u32)],
    config: &EventsConfig,
) -> Vec<Action> {
    if let [(event, delivered)] = deliveries {
        return vec![deliver(subscription, system, handler, event, *delivered, config).await];
    }
    let spans: Vec<(&Event, Span)> = deliveries
        .iter()
        .map(|(event, delivered)| (*event, span(subscription, system, event, *delivered)))
        .collect();
    // The batch's shared statements (its transaction, its inbox rows) run in the first event's
    // span, each event's own in its span.
    let mut outcomes = handler.handle_batch(&spans).instrument(spans[0].1.clone()).await;
    // A handler answering for fewer events than it was given leaves the rest to be delivered again.
    outcomes.resize(deliveries.len(), Outcome::Retry("no outcome from the handler".into()));
    deliveries
        .iter()
        .zip(&spans)
        .zip(outcomes)
        .map(|(((event, delivered), (_, span)), outcome)| {
            decide(subscription, event, *delivered, outcome, span, config)
        })
        .collect()
}

/// The CONSUMER span of delivery number `delivered` of `event`, continuing its producer's trace.
fn span(subscription: Subscription, system: &'static str, event: &Event, delivered: u32) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {}", event.event_type),
        otel.kind = "consumer",
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.destination.name = event.event_type.as_str(),
        messaging.consumer.group.name = subscription.durable,
        messaging.message.id = event.id.as_str(),
        messaging.message.delivery_count = delivered,
    );
    trace::continue_trace(&span, event.traceparent.as_deref());
    if delivered > 1 {
        metrics::counter!("shopmesh_events_redelivered_total", "messaging_consumer_group_name" => subscription.durable)
            .increment(1);
    }
    span
}

/// What becomes of delivery number `delivered` of `event` that the handler left as `outcome`.
fn decide(
    subscription: Subscription,
    event: &Event,
    delivered: u32,
    outcome: Outcome,
    span: &Span,
    config: &EventsConfig,
) -> Action {
    let consumer = subscription.durable;
    let label = match &outcome {
        Outcome::Done => "done",
        Outcome::Unknown => "unknown",
        Outcome::Poison(_) => "poison",
        Outcome::Retry(_) => "retry",
    };
    metrics::counter!("shopmesh_events_delivered_total", "messaging_consumer_group_name" => consumer, "outcome" => label)
        .increment(1);
    let action = match outcome {
        Outcome::Done | Outcome::Unknown => Action::Ack,
        Outcome::Poison(why) => Action::DeadLetter(why),
        Outcome::Retry(why) if delivered >= u32::from(config.events_max_deliver) => {
            Action::DeadLetter(format!("failed {delivered} deliveries, last: {why}"))
        }
        Outcome::Retry(why) => {
            let _in = span.enter();
            tracing::warn!(consumer, event_id = %event.id, delivered, error = %why, "event handling failed; delivered again later");
            Action::Redeliver(config.backoff(delivered))
        }
    };
    if let Action::DeadLetter(why) = &action {
        let _in = span.enter();
        tracing::error!(consumer, event_id = %event.id, event_type = %event.event_type, reason = %why, "event dead-lettered");
        metrics::counter!("shopmesh_events_dead_lettered_total", "messaging_consumer_group_name" => consumer)
            .increment(1);
    }
    action
}
