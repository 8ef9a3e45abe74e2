//! Events between services: a transactional outbox in each producer, a broker (NATS JetStream,
//! or the all-in-one's in-process bus with the same semantics), and consumers that act once.
//!
//! Here: [`Event`] (an event as it travels: CloudEvents attributes and a protobuf body), the
//! streams and consumers of the mesh declared as data ([`Stream`], [`Subscription`],
//! [`Events`]), and [`Broker`], the one door to either broker. Beside it: `config.rs` (the
//! broker's flags), `outbox.rs` (the rows a state change writes, and the relay that publishes
//! them), `nats.rs` (JetStream), `connect.rs` (reaching it, and waiting for it at start), `bus.rs` (the in-process bus), `consumer.rs` (what a delivery
//! becomes: ack, redelivery with backoff, dead letter; spans and metrics), `inbox.rs` (the
//! event ids a consumer has acted on) and `trace.rs` (W3C trace context in and out of events).
//!
//! Delivery is at least once everywhere: a consumer records the event id in its inbox in the
//! same transaction as its effect, so the effect happens once.

pub mod bus;
pub mod config;
mod connect;
pub mod consumer;
pub mod inbox;
pub mod nats;
pub mod outbox;
pub mod trace;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use consumer::{Handler, Outcome};

use crate::mesh::Error;

/// An event: its CloudEvents attributes (carried in message headers) and its protobuf body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `ce-id`: unique per event (a UUIDv7), also JetStream's `Nats-Msg-Id`.
    pub id: String,
    /// `ce-source`: the producing service, `shopmesh/<service>`.
    pub source: String,
    /// `ce-type`: the body's full protobuf name (`shopmesh.order.v1.OrderPaid`), also the NATS
    /// subject it is published on.
    pub event_type: String,
    /// `ce-subject`: the entity it is about (the order id).
    pub subject: String,
    /// `ce-time`: when it happened, epoch milliseconds.
    pub time_ms: i64,
    /// The W3C `traceparent` of the work that caused it.
    pub traceparent: Option<String>,
    /// The protobuf body.
    pub body: Bytes,
}

/// A stream of events: one per producing service, and the dead letters'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The JetStream stream's name.
    pub name: &'static str,
    /// The subjects it holds (event types start with the producer's package).
    pub subjects: &'static str,
}

/// The order service's events.
pub const ORDER: Stream = Stream { name: "SHOPMESH_ORDER", subjects: "shopmesh.order.v1.>" };
/// The inventory service's events.
pub const INVENTORY: Stream = Stream { name: "SHOPMESH_INVENTORY", subjects: "shopmesh.inventory.v1.>" };
/// Events no consumer could handle, under `shopmesh.dead_letter.<consumer>`.
pub const DEAD_LETTER: Stream = Stream { name: "SHOPMESH_DEAD_LETTER", subjects: "shopmesh.dead_letter.>" };

/// A durable consumer of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The durable consumer's name, unique in the mesh (`inventory-order`).
    pub durable: &'static str,
    /// The stream it reads.
    pub stream: Stream,
}

/// What a service does with events, as data: the CLI refuses to start it without a broker,
/// and the all-in-one's bus is built from every service's declarations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Events {
    /// The stream it publishes to through its outbox, if any.
    pub publishes: Option<Stream>,
    /// The streams it consumes.
    pub consumes: &'static [Subscription],
}

impl Events {
    /// A service without events.
    pub const NONE: Self = Self { publishes: None, consumes: &[] };

    /// Whether it needs a broker.
    pub const fn needed(&self) -> bool {
        self.publishes.is_some() || !self.consumes.is_empty()
    }
}

/// Where events go and come from: JetStream, or the in-process bus. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Broker {
    /// A NATS server with JetStream.
    Nats(Box<nats::Nats>),
    /// The all-in-one's in-process bus.
    InProcess(Arc<bus::Bus>),
    /// No broker (`--events-url none`): published events are dropped and nothing is consumed,
    /// the mesh as it was before its event-driven services (a producer's outbox still records
    /// every event).
    Discard,
}

impl Broker {
    /// Publishes `event`, returning once the broker has it (JetStream's ack; on the bus, once
    /// every consumer has handled it), so the outbox row may be marked published.
    ///
    /// # Errors
    /// The broker is unreachable or refused it: the row stays and is published again later.
    pub async fn publish(&self, event: &Event) -> Result<(), Error> {
        match self {
            Self::Nats(nats) => nats.publish(event).await,
            Self::InProcess(bus) => bus.publish(event).await,
            Self::Discard => Ok(()),
        }
    }

    /// Consumes `subscription` with `handler` until the task is dropped.
    ///
    /// # Errors
    /// The consumer cannot be created (a stream missing, the broker refusing).
    pub async fn consume(&self, subscription: Subscription, handler: Arc<dyn Handler>) -> Result<(), Error> {
        match self {
            Self::Nats(nats) => nats.consume(subscription, handler).await,
            Self::InProcess(bus) => bus.consume(subscription, handler).await,
            Self::Discard => futures::future::pending().await,
        }
    }

    /// [`Broker::consume`] as a task to run beside a service's routes: a consumer that stops
    /// (its broker refused it) is logged as an error.
    pub fn consuming(&self, subscription: Subscription, handler: Arc<dyn Handler>) -> BoxFuture<'static, ()> {
        let broker = self.clone();
        Box::pin(async move {
            if let Err(e) = broker.consume(subscription, handler).await {
                tracing::error!(consumer = subscription.durable, error = %e, "event consumer stopped");
            }
        })
    }

    /// Completes with the reason when the broker, waited for since the start, refuses this
    /// service for good (credentials, no JetStream): the process stops with it. Never for the
    /// in-process bus or none.
    pub async fn failed(&self) -> Error {
        match self {
            Self::Nats(nats) => nats.failed().await,
            Self::InProcess(_) | Self::Discard => futures::future::pending().await,
        }
    }

    /// The broker for a process running services that declare `declared`: JetStream when
    /// `--events-url` is set; else the in-process bus when `in_process` (the all-in-one run),
    /// or none (a service needing one then refuses to start, saying what to set).
    ///
    /// # Errors
    /// [`Error::Config`] when the NATS server refuses this service (credentials, no JetStream)
    /// or the URL is malformed. One not reachable yet is no error: it is waited for in the
    /// background, see [`Broker::failed`].
    pub async fn for_services(
        config: &config::EventsConfig,
        declared: &[Events],
        in_process: bool,
    ) -> Result<Option<Self>, Error> {
        if !declared.iter().any(Events::needed) {
            return Ok(None);
        }
        let subscriptions: Vec<Subscription> =
            declared.iter().flat_map(|e| e.consumes.iter().copied()).collect();
        if config.events_url.as_deref() == Some(config::NONE) {
            return Ok(Some(Self::Discard));
        }
        if let Some(url) = &config.events_url {
            let mut streams: Vec<Stream> = declared.iter().filter_map(|e| e.publishes).collect();
            streams.extend(subscriptions.iter().map(|s| s.stream));
            streams.dedup();
            return Ok(Some(Self::Nats(Box::new(nats::Nats::connect(url, config, &streams).await?))));
        }
        if !in_process {
            return Ok(None);
        }
        // The bus is in this process: always reached, so the gauge and its alert read the same
        // for the all-in-one as for a service connected to NATS.
        connect::connected_gauge().set(1.0);
        Ok(Some(Self::InProcess(Arc::new(bus::Bus::new(config.clone(), &subscriptions)))))
    }

    /// Which system it is, for `messaging.system`.
    pub fn system(&self) -> &'static str {
        match self {
            Self::Nats(_) => "nats",
            Self::InProcess(_) => "in_process",
            Self::Discard => "none",
        }
    }
}
