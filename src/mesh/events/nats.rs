//! JetStream as the broker: publishing with CloudEvents headers, and durable pull consumers
//! with explicit acks whose deliveries `consumer.rs` decides on. Reaching the server and the
//! streams this mesh declares are `connect.rs`'s: until it is reached, publishing fails (the
//! outbox keeps the rows) and consumers wait.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::pull, message::PublishMessage};
use futures::StreamExt as _;

use crate::mesh::Error;
use crate::mesh::events::config::EventsConfig;
use crate::mesh::events::connect::{self, Link, broker_error};
use crate::mesh::events::consumer::{self, Action, Handler};
use crate::mesh::events::{Event, Stream, Subscription};

/// The most deliveries a consumer handles together (those the pull has ready).
const BATCH: usize = 128;

/// The header saying why an event was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "shopmesh-dead-letter-reason";

/// A JetStream connection, or one being waited for (`connect.rs`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nats {
    link: Arc<Link>,
    config: Arc<EventsConfig>,
}

impl Nats {
    /// Connects to `url` and makes sure `streams` and the dead-letter stream exist. A broker
    /// that refuses the credentials or has no JetStream, or a malformed URL, stops the start
    /// with a message rather than failing every event; one not reachable yet is waited for in
    /// the background.
    ///
    /// # Errors
    /// [`Error::Config`] naming what failed.
    pub async fn connect(url: &str, config: &EventsConfig, streams: &[Stream]) -> Result<Self, Error> {
        let link = Link::connect(url, config.events_replicas, streams).await?;
        Ok(Self { link, config: Arc::new(config.clone()) })
    }

    /// Completes with the reason once a broker waited for refuses this service for good.
    pub async fn failed(&self) -> Error {
        self.link.failed().await
    }

    async fn ensure(&self, stream: Stream) -> Result<jetstream::stream::Stream, Error> {
        let js = self.link.connected().await?;
        connect::ensure(js, usize::from(self.config.events_replicas), stream)
            .await
            .map_err(|e| broker_error(&format!("stream {} (is JetStream enabled?)", stream.name), e))
    }

    /// Publishes `event` on its type's subject and waits for JetStream's ack.
    pub(super) async fn publish(&self, event: &Event) -> Result<(), Error> {
        self.send(event.event_type.clone(), headers(event), event.body.clone()).await
    }

    async fn send(&self, subject: String, headers: HeaderMap, body: bytes::Bytes) -> Result<(), Error> {
        let id = headers.get("ce-id").map(|v| v.as_str().to_owned()).unwrap_or_default();
        let publish = PublishMessage::build().payload(body).headers(headers).message_id(id);
        // Not connected yet: the row stays in the outbox, as when the broker is down.
        let js = self.link.js().ok_or_else(|| broker_error("publish", "not connected yet"))?;
        let ack = js.send_publish(subject, publish).await.map_err(|e| broker_error("publish", e))?;
        ack.await.map_err(|e| broker_error("publish not acknowledged", e))?;
        Ok(())
    }

    /// Runs the durable consumer `subscription` with `handler`, in order (so the events of one
    /// order are handled in the order they were published), until dropped.
    pub(super) async fn consume(
        &self,
        subscription: Subscription,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error> {
        let stream = self.ensure(subscription.stream).await?;
        let durable = subscription.durable;
        let pull = stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.events_ack_wait,
                    // One more than ours, so the last delivery still reaches `consumer::deliver`,
                    // which dead-letters it rather than leaving it unacknowledged.
                    max_deliver: i64::from(self.config.events_max_deliver) + 1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| broker_error(&format!("consumer {durable}"), e))?;
        loop {
            let messages = match pull.messages().await {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(consumer = durable, error = %e, "cannot pull events; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // What the pull has ready is handled together (one transaction for the batch when
            // the handler can), each acknowledged after.
            let mut batches = messages.ready_chunks(BATCH);
            while let Some(batch) = batches.next().await {
                let mut ready = Vec::with_capacity(batch.len());
                let mut failed = false;
                for message in batch {
                    match message {
                        Ok(message) => ready.push(message),
                        Err(e) => {
                            // The connection is down (the client reconnects): pull again shortly.
                            tracing::debug!(consumer = durable, error = %e, "pulling events failed");
                            failed = true;
                        }
                    }
                }
                self.handle(subscription, handler.as_ref(), &ready).await;
                if failed {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn handle(
        &self,
        subscription: Subscription,
        handler: &dyn Handler,
        messages: &[jetstream::Message],
    ) {
        let durable = subscription.durable;
        let mut decoded = Vec::with_capacity(messages.len());
        let mut actions: Vec<Option<Action>> = Vec::with_capacity(messages.len());
        for message in messages {
            let delivered = match message.info() {
                Ok(info) => {
                    metrics::gauge!("shopmesh_events_consumer_lag", "messaging_consumer_group_name" => durable)
                        .set(info.pending as f64);
                    u32::try_from(info.delivered).unwrap_or(u32::MAX)
                }
                Err(_) => 1,
            };
            match event(message) {
                Ok(event) => {
                    decoded.push((event, delivered));
                    actions.push(None);
                }
                Err(why) => {
                    tracing::error!(consumer = durable, subject = %message.subject, reason = %why, "undecodable event dead-lettered");
                    metrics::counter!("shopmesh_events_dead_lettered_total", "messaging_consumer_group_name" => durable).increment(1);
                    actions.push(Some(Action::DeadLetter(why)));
                }
            }
        }
        let deliveries: Vec<(&Event, u32)> =
            decoded.iter().map(|(event, delivered)| (event, *delivered)).collect();
        let mut handled = if deliveries.is_empty() {
            Vec::new()
        } else {
            consumer::deliver_batch(subscription, "nats", handler, &deliveries, &self.config).await
        }
        .into_iter();
        for (message, action) in messages.iter().zip(actions) {
            // Every decoded event has its action, in order.
            let Some(action) = action.or_else(|| handled.next()) else { continue };
            self.settle(durable, message, action).await;
        }
    }

    /// Acknowledges `message`, or asks for it again later, or dead-letters it, as `action` says.
    async fn settle(&self, durable: &'static str, message: &jetstream::Message, action: Action) {
        let acked = match action {
            Action::Ack => message.ack().await,
            Action::Redeliver(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
            Action::DeadLetter(why) => {
                let mut headers = message.headers.clone().unwrap_or_default();
                headers.insert(DEAD_LETTER_REASON, why.as_str());
                let subject = format!("shopmesh.dead_letter.{durable}");
                // Settling follows a delivery, so the link is connected.
                let Some(js) = self.link.js() else { return };
                match js.publish_with_headers(subject, headers, message.payload.clone()).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => message.ack().await,
                        // Not acknowledged: delivered again, and dead-lettered again then.
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e.into()),
                }
            }
        };
        if let Err(e) = acked {
            tracing::warn!(consumer = durable, error = %e, "cannot acknowledge an event; it will be delivered again");
        }
    }
}

/// The CloudEvents headers of `event` (NATS binding).
fn headers(event: &Event) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", event.id.as_str());
    headers.insert("ce-source", event.source.as_str());
    headers.insert("ce-type", event.event_type.as_str());
    headers.insert("ce-subject", event.subject.as_str());
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(event.time_ms).unwrap_or(0));
    headers.insert("ce-time", humantime::format_rfc3339_millis(time).to_string().as_str());
    headers.insert("content-type", "application/protobuf");
    if let Some(traceparent) = &event.traceparent {
        headers.insert("traceparent", traceparent.as_str());
    }
    headers
}

/// The event a message carries, or why it is not one.
fn event(message: &jetstream::Message) -> Result<Event, String> {
    let headers = message.headers.as_ref().ok_or("no CloudEvents headers")?;
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let required = |name: &str| header(name).filter(|v| !v.is_empty()).ok_or(format!("no {name} header"));
    let time_ms = match header("ce-time") {
        Some(time) => humantime::parse_rfc3339(&time)
            .map_err(|e| format!("ce-time {time:?}: {e}"))?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        None => 0,
    };
    Ok(Event {
        id: required("ce-id")?,
        source: required("ce-source")?,
        event_type: required("ce-type")?,
        subject: required("ce-subject")?,
        time_ms,
        traceparent: header("traceparent"),
        body: message.payload.clone(),
    })
}
