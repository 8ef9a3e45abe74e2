//! The all-in-one's broker: events delivered in-process, with JetStream's semantics where
//! they matter. Each declared consumer has its own queue, filled from the start (so events
//! published before a consumer attaches wait for it); deliveries are handled one at a time,
//! redelivered after a backoff, and dead-lettered after the last attempt. A publish returns
//! once every consumer has handled the event, so the outbox row stays unpublished (and is
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
        while let Some((event, done)) = queue.recv().await {
            let mut delivered = 1;
            loop {
                match consumer::deliver(
                    subscription,
                    "in_process",
                    handler.as_ref(),
                    &event,
                    delivered,
                    &self.config,
                )
                .await
                {
                    Action::Ack => break,
                    Action::Redeliver(delay) => {
                        tokio::time::sleep(delay).await;
                        delivered += 1;
                    }
                    Action::DeadLetter(reason) => {
                        if let Ok(mut dead) = self.dead.lock() {
                            if dead.len() == DEAD_LETTERS_KEPT {
                                dead.remove(0);
                            }
                            dead.push(DeadLetter {
                                consumer: subscription.durable,
                                event: event.clone(),
                                reason,
                            });
                        }
                        break;
                    }
                }
            }
            let _ = done.send(());
        }
        Ok(())
    }
}

fn stopped() -> Error {
    Error::Config("the in-process event bus has stopped".into())
}
