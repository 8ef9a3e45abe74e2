//! The all-in-one's broker: events delivered in-process, with JetStream's semantics where
//! they matter. Each declared consumer has its own queue, filled from the start (so events
//! published before a consumer attaches wait for it); deliveries are handled in order,
//! redelivered after a backoff, and dead-lettered after the last attempt. The events queued
//! when a consumer asks are handed to it together (up to [`BATCH`]), as JetStream hands a
//! pull consumer the messages it has ready. A publish returns once every consumer has
//! handled the event, so the outbox row stays unpublished (and is
//! published again after a restart) until then: nothing is lost with the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::mesh::Error;
use crate::mesh::events::config::EventsConfig;
use crate::mesh::events::consumer::{self, Action, Handler};
use crate::mesh::events::{Event, Subscription};

/// An event on its way to one consumer, and who waits for it to be handled.
type Delivery = (Event, oneshot::Sender<()>);

/// The most events a consumer is handed at once (those queued when it asks).
const BATCH: usize = 128;

/// How many dead letters the bus keeps for inspection (the newest).
const DEAD_LETTERS_KEPT: usize = 1000;

/// One event a consumer gave up on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The consumer.
    pub consumer: &'static str,
    /// The event.
    pub event: Event,
    /// Why.
    pub reason: String,
}

/// The in-process bus.
#[derive(Debug)]
pub struct Bus {
    config: EventsConfig,
    /// Per consumer: the subject prefix of its stream and its queue.
    queues: Vec<(&'static str, mpsc::UnboundedSender<Delivery>)>,
    /// The queues' receiving ends, until their consumer attaches.
    waiting: Mutex<HashMap<&'static str, mpsc::UnboundedReceiver<Delivery>>>,
    dead: Mutex<Vec<DeadLetter>>,
}

impl Bus {
    /// A bus for the `subscriptions` of every service in the process.
    pub fn new(config: EventsConfig, subscriptions: &[Subscription]) -> Self {
        let mut queues = Vec::new();
        let mut waiting = HashMap::new();
        for subscription in subscriptions {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push((subscription.stream.subjects.trim_end_matches('>'), tx));
            waiting.insert(subscription.durable, rx);
        }
        Self { config, queues, waiting: Mutex::new(waiting), dead: Mutex::new(Vec::new()) }
    }

    /// The dead letters so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Queues `event` for every consumer of its stream and waits until each has handled it.
    pub(super) async fn publish(&self, event: &Event) -> Result<(), Error> {
        let mut handled = Vec::new();
        for (prefix, queue) in &self.queues {
            if event.event_type.starts_with(prefix) {
                let (done, wait) = oneshot::channel();
                queue.send((event.clone(), done)).map_err(|_| stopped())?;
                handled.push(wait);
            }
        }
        for wait in handled {
            wait.await.map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Handles the queue of `subscription` with `handler` until dropped.
    pub(super) async fn consume(
        &self,
        subscription: Subscription,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error> {
        let taken = self.waiting.lock().ok().and_then(|mut w| w.remove(subscription.durable));
        let mut queue = taken.ok_or_else(|| {
            Error::Config(format!(
                "the in-process bus has no queue for consumer {} (or it is taken)",
                subscription.durable
            ))
        })?;
        let lag = metrics::gauge!("shopmesh_events_consumer_lag", "messaging_consumer_group_name" => subscription.durable);
        let mut ready = Vec::with_capacity(BATCH);
        while queue.recv_many(&mut ready, BATCH).await > 0 {
            lag.set(queue.len() as f64);
            let deliveries: Vec<(&Event, u32)> = ready.iter().map(|(event, _)| (event, 1)).collect();
            let actions = consumer::deliver_batch(
                subscription,
                "in_process",
                handler.as_ref(),
                &deliveries,
                &self.config,
            )
            .await;
            for ((event, done), action) in ready.drain(..).zip(actions) {
                self.settle(subscription, handler.as_ref(), event, action).await;
                let _ = done.send(());
            }
        }
        Ok(())
    }
}

impl Bus {
    /// Carries out `action` for delivery 1 of `event`: a redelivery is handled alone, again
    /// and again after its backoff, before the events behind it (their order kept), until it
    /// is acknowledged or dead-lettered.
    async fn settle(
        &self,
        subscription: Subscription,
        handler: &dyn Handler,
        event: Event,
        mut action: Action,
    ) {
        let mut delivered = 1;
        loop {
            match action {
                Action::Ack => return,
                Action::Redeliver(delay) => {
                    tokio::time::sleep(delay).await;
                    delivered += 1;
                    action = consumer::deliver(
                        subscription,
                        "in_process",
                        handler,
                        &event,
                        delivered,
                        &self.config,
                    )
                    .await;
                }
                Action::DeadLetter(reason) => {
                    if let Ok(mut dead) = self.dead.lock() {
                        if dead.len() == DEAD_LETTERS_KEPT {
                            dead.remove(0);
                        }
                        dead.push(DeadLetter { consumer: subscription.durable, event, reason });
                    }
                    return;
                }
            }
        }
    }
}

fn stopped() -> Error {
    Error::Config("the in-process event bus has stopped".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;

    use super::*;
    use crate::mesh::events::{ORDER, Outcome};

    /// Fails `failures` deliveries of every event with `outcome`, then acts.
    struct Flaky {
        failures: u32,
        outcome: Outcome,
        seen: AtomicU32,
    }

    impl Handler for Flaky {
        fn handle<'a>(&'a self, _event: &'a Event) -> BoxFuture<'a, Outcome> {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { if n < self.failures { self.outcome.clone() } else { Outcome::Done } })
        }
    }

    fn event(event_type: &str) -> Event {
        Event {
            id: "e1".into(),
            source: "shopmesh/test".into(),
            event_type: event_type.into(),
            subject: "o1".into(),
            time_ms: 0,
            traceparent: None,
            body: bytes::Bytes::new(),
        }
    }

    const SUBSCRIPTION: Subscription = Subscription { durable: "test-order", stream: ORDER };

    fn bus() -> Arc<Bus> {
        let config = EventsConfig { events_backoff: Duration::from_millis(1), ..EventsConfig::default() };
        Arc::new(Bus::new(config, &[SUBSCRIPTION]))
    }

    fn consume(bus: &Arc<Bus>, handler: Arc<Flaky>) {
        let bus = Arc::clone(bus);
        tokio::spawn(async move { bus.consume(SUBSCRIPTION, handler).await });
    }

    /// An event published before its consumer attached waits for it; a failed delivery comes
    /// again; the publish returns once the consumer is done with it.
    #[tokio::test]
    async fn a_publish_waits_for_late_consumers_and_their_redeliveries() {
        let bus = bus();
        let handler =
            Arc::new(Flaky { failures: 2, outcome: Outcome::Retry("down".into()), seen: AtomicU32::new(0) });
        let publish = tokio::spawn({
            let bus = Arc::clone(&bus);
            async move { bus.publish(&event("shopmesh.order.v1.OrderPaid")).await }
        });
        tokio::task::yield_now().await;
        assert!(!publish.is_finished(), "nobody has handled it yet");
        consume(&bus, Arc::clone(&handler));
        publish.await.expect("joins").expect("handled");
        assert_eq!(handler.seen.load(Ordering::SeqCst), 3, "two failures, then done");
        assert!(bus.dead_letters().is_empty());
        // Another stream's event is nobody's here: published at once.
        bus.publish(&event("shopmesh.inventory.v1.StockAllocated")).await.expect("published");
        assert_eq!(handler.seen.load(Ordering::SeqCst), 3);
    }

    /// Takes batches, and fails the first delivery of event "e2".
    #[derive(Default)]
    struct Batches {
        sizes: Mutex<Vec<usize>>,
        handled: Mutex<Vec<String>>,
    }

    impl Handler for Batches {
        fn handle<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Outcome> {
            if let Ok(mut handled) = self.handled.lock() {
                handled.push(event.id.clone());
            }
            Box::pin(async { Outcome::Done })
        }

        fn handle_batch<'a>(
            &'a self,
            events: &'a [(&'a Event, tracing::Span)],
        ) -> BoxFuture<'a, Vec<Outcome>> {
            if let Ok(mut sizes) = self.sizes.lock() {
                sizes.push(events.len());
            }
            let outcomes = events
                .iter()
                .map(|(event, _)| {
                    if event.id == "e2" {
                        Outcome::Retry("down".into())
                    } else {
                        if let Ok(mut handled) = self.handled.lock() {
                            handled.push(event.id.clone());
                        }
                        Outcome::Done
                    }
                })
                .collect();
            Box::pin(async move { outcomes })
        }
    }

    /// Events queued when the consumer asks are handed over together; one that fails in the
    /// batch is delivered again alone, and every publish returns once its event was handled.
    #[tokio::test]
    async fn queued_events_are_handled_together_and_a_failed_one_again_alone() {
        let bus = bus();
        let mut publishes = Vec::new();
        for id in ["e1", "e2", "e3"] {
            let bus = Arc::clone(&bus);
            let mut event = event("shopmesh.order.v1.OrderPaid");
            event.id = id.into();
            event.subject = format!("o-{id}");
            publishes.push(tokio::spawn(async move { bus.publish(&event).await }));
        }
        // All three queued before the consumer attaches.
        while bus.waiting.lock().expect("lock")[SUBSCRIPTION.durable].len() < 3 {
            tokio::task::yield_now().await;
        }
        let handler = Arc::new(Batches::default());
        let consumer = Arc::clone(&bus);
        let consuming = Arc::clone(&handler);
        tokio::spawn(async move { consumer.consume(SUBSCRIPTION, consuming).await });
        for publish in publishes {
            publish.await.expect("joins").expect("handled");
        }
        assert_eq!(*handler.sizes.lock().expect("lock"), [3], "one batch of the three");
        assert_eq!(*handler.handled.lock().expect("lock"), ["e1", "e3", "e2"], "e2 again, alone");
        assert!(bus.dead_letters().is_empty());
    }

    /// A poison event is dead-lettered at once; one failing every delivery after the last.
    #[tokio::test]
    async fn poison_and_exhausted_events_are_dead_lettered_and_the_queue_goes_on() {
        let bus = bus();
        let poison = Arc::new(Flaky {
            failures: 1,
            outcome: Outcome::Poison("undecodable".into()),
            seen: AtomicU32::new(0),
        });
        consume(&bus, Arc::clone(&poison));
        bus.publish(&event("shopmesh.order.v1.OrderPaid")).await.expect("handled");
        bus.publish(&event("shopmesh.order.v1.OrderPaid")).await.expect("the next one too");
        let dead = bus.dead_letters();
        assert_eq!(
            (dead.len(), dead[0].reason.as_str(), poison.seen.load(Ordering::SeqCst)),
            (1, "undecodable", 2)
        );

        let bus = self::bus();
        let failing = Arc::new(Flaky {
            failures: u32::MAX,
            outcome: Outcome::Retry("down".into()),
            seen: AtomicU32::new(0),
        });
        consume(&bus, Arc::clone(&failing));
        bus.publish(&event("shopmesh.order.v1.OrderPaid")).await.expect("given up on");
        assert_eq!(failing.seen.load(Ordering::SeqCst), 5, "--events-max-deliver");
        assert!(bus.dead_letters()[0].reason.starts_with("failed 5 deliveries"), "{:?}", bus.dead_letters());
    }
}
