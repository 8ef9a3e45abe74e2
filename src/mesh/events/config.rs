//! The broker's settings: where NATS is, and how consumers redeliver.

use std::time::Duration;

use clap::Args;

/// The `--events-url` of a mesh without a broker: events are recorded in outboxes and dropped.
pub const NONE: &str = "none";

/// Where events go (`--events-url`) and how deliveries are retried. Without a URL, a service
/// that publishes or consumes events refuses to start under `shopmesh serve`; the all-in-one
/// run uses its in-process bus.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// The NATS server with JetStream events are published to and consumed from
    /// (`nats://host:4222`; `user:password@` in the URL for a server that requires it). Needed
    /// by the order, inventory and notification services under `shopmesh serve`; the
    /// all-in-one run delivers in-process without it. `none` runs without a broker: events
    /// are recorded in the outboxes and dropped, nothing is consumed (the order service as it
    /// was before events existed).
    #[arg(long, env = "SHOPMESH_EVENTS_URL")]
    pub events_url: Option<String>,

    /// Replicas of each JetStream stream this mesh creates (1 for a single NATS server, 3 for
    /// a cluster).
    #[arg(long, env = "SHOPMESH_EVENTS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=5), hide_short_help = true)]
    pub events_replicas: u16,

    /// Deliveries of one event to a consumer before it goes to the dead-letter stream.
    #[arg(long, env = "SHOPMESH_EVENTS_MAX_DELIVER", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=100), hide_short_help = true)]
    pub events_max_deliver: u16,

    /// How long a consumer has to handle an event before the broker delivers it again.
    #[arg(long, env = "SHOPMESH_EVENTS_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration,
          hide_short_help = true)]
    pub events_ack_wait: Duration,

    /// The first redelivery's delay after a failed attempt; each next one doubles it (at most
    /// 30 s).
    #[arg(long, env = "SHOPMESH_EVENTS_BACKOFF", default_value = "200ms", value_parser = humantime::parse_duration,
          hide_short_help = true)]
    pub events_backoff: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            events_url: None,
            events_replicas: 1,
            events_max_deliver: 5,
            events_ack_wait: Duration::from_secs(30),
            events_backoff: Duration::from_millis(200),
        }
    }
}

impl EventsConfig {
    /// The delay before delivery `delivered + 1`, after `delivered` failed attempts.
    pub fn backoff(&self, delivered: u32) -> Duration {
        let doubled = self.events_backoff.saturating_mul(1 << delivered.saturating_sub(1).min(16));
        doubled.min(Duration::from_secs(30))
    }
}
