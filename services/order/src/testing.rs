//! A harness for tests outside this crate (the cross-service reconciler tests in `cli/tests`):
//! the order use cases and store over a migrated database, calling the user and payment
//! services over given channels, without making the crate's internals public.
//!
//! Only built with the `testing` feature.

use std::time::Duration;

use shopmesh::mesh::client::Channel;
use shopmesh::mesh::db::Pool;

use crate::config::ReconcileConfig;
use crate::domain::{NewOrder, Order, State};
use crate::reconciler::Reconciler;
use crate::service::Orders;
use crate::store::Store;
use crate::upstream::Upstream;

pub use crate::store::Due;

/// The order use cases over a real database, as the service builds them, with direct access to
/// the rows the reconciler works on.
#[derive(Debug, Clone)]
pub struct Harness {
    orders: Orders,
}

impl Harness {
    /// The use cases over `pool` (migrated with the service's migrations), calling the user and
    /// payment services over the given channels. Pending orders are due for reconciliation as
    /// soon as they are stored (`reconcile_after` is zero).
    pub fn new(pool: Pool, users: Channel, payments: Channel) -> Self {
        // Reconciliation never asks the catalog: its channel is the user service's, unused.
        let upstream = Upstream::new(users.clone(), users, payments, Duration::ZERO, Duration::ZERO);
        Self { orders: Orders::new(Store::new(pool, Duration::ZERO), upstream) }
    }

    /// Stores `new` as a PENDING_PAYMENT order, as CreateOrder does just before charging —
    /// the state a crash after the order insert leaves behind. `None` if its request id was
    /// already used.
    ///
    /// # Errors
    /// A database error.
    pub async fn insert_pending(&self, new: &NewOrder) -> Result<Option<Order>, sqlx::Error> {
        self.orders.store().insert(new).await
    }

    /// The stored order `id`, if any.
    ///
    /// # Errors
    /// A database error.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, sqlx::Error> {
        self.orders.store().get(id).await
    }

    /// The state of the stored order `id`.
    ///
    /// # Panics
    /// On a database error or when there is no such order.
    pub async fn state_of(&self, id: &str) -> State {
        self.get(id).await.expect("get order").expect("order exists").state
    }

    /// Up to `limit` orders the reconciler may take `ahead` from now (the database's clock).
    ///
    /// # Errors
    /// A database error.
    pub async fn due(&self, ahead: Duration, limit: u32) -> Result<Vec<Due>, sqlx::Error> {
        self.orders.store().due(ahead, limit).await
    }

    /// Claims `due` for `owner` for `lease` (the database's clock), as a reconciler replica
    /// does; `false` if another owner holds an unexpired lease on it (or it changed since it
    /// was due).
    ///
    /// # Errors
    /// A database error.
    pub async fn claim(&self, due: &Due, owner: &str, lease: Duration) -> Result<bool, sqlx::Error> {
        self.orders.store().claim(due, owner, lease).await
    }

    /// Records a failed attempt by `owner` on order `id`, due again `wait` from now; `false`
    /// if `owner` does not hold its lease.
    ///
    /// # Errors
    /// A database error.
    pub async fn defer(&self, id: &str, owner: &str, wait: Duration) -> Result<bool, sqlx::Error> {
        self.orders.store().defer(id, owner, wait).await
    }

    /// Sends the order's Charge without recording the outcome, as a crash right after the
    /// charge would; the payment's id.
    ///
    /// # Panics
    /// When the charge fails or is still processing.
    pub async fn settle_charge_only(&self, order: &Order) -> String {
        self.orders.settle_charge_only(order).await
    }

    /// A reconciler over these use cases, with a fresh owner name for its leases (several are
    /// independent replicas sharing the database).
    pub fn reconciler(&self, config: ReconcileConfig) -> Reconciler {
        Reconciler::new(self.orders.clone(), config)
    }
}
