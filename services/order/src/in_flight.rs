//! The orders this process is settling now, so that replays of a CreateOrder (or a CancelOrder)
//! whose charge is in progress wait for it here instead of each asking the payment service,
//! which would answer them PROCESSING ("still in flight").
//!
//! One entry per order being settled: the first call to [`InFlight::enter`] gets a [`Turn`] to
//! charge; the others get a receiver that ends when that turn is dropped (settled, failed, or
//! cancelled with its call), then read the order again. A replica in another process is not
//! seen here: the call that meets its charge in flight polls the order's row instead
//! (`service.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The orders being settled in this process, each with the channel its waiters watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight {
    orders: Arc<Mutex<HashMap<String, watch::Sender<()>>>>,
}

/// What [`InFlight::enter`] gave a call.
pub(crate) enum Entered {
    /// This call settles the order; others wait until the turn is dropped.
    Turn(Turn),
    /// Another call of this process is settling it: `changed()` ends when it is done.
    Wait(watch::Receiver<()>),
}

/// The right to settle one order, given up when dropped.
pub(crate) struct Turn {
    orders: Arc<Mutex<HashMap<String, watch::Sender<()>>>>,
    id: String,
}

impl InFlight {
    /// The turn to settle order `id`, or a way to wait for the call that has it.
    pub(crate) fn enter(&self, id: &str) -> Entered {
        // Held for a map lookup and insert; never across an `.await`.
        let mut orders = self.orders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = orders.get(id) {
            return Entered::Wait(sender.subscribe());
        }
        orders.insert(id.to_owned(), watch::channel(()).0);
        Entered::Turn(Turn { orders: self.orders.clone(), id: id.to_owned() })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Dropping the sender ends every waiter's `changed()`.
        self.orders.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_order_and_waiters_wake_when_it_ends() {
        let in_flight = InFlight::default();
        let Entered::Turn(turn) = in_flight.enter("o1") else { panic!("the first call gets the turn") };
        let Entered::Wait(mut waiter) = in_flight.enter("o1") else { panic!("a second call waits") };
        // Another order is not held up by it.
        let Entered::Turn(other) = in_flight.enter("o2") else { panic!("another order's turn") };
        drop(turn);
        assert!(waiter.changed().await.is_err(), "the waiter is woken when the turn ends");
        assert!(matches!(in_flight.enter("o1"), Entered::Turn(_)), "the order is free again");
        drop(other);
    }
}
