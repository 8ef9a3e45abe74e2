//! The reconciler: settles PENDING_PAYMENT orders that no call is finishing any more — the
//! charge's reply was lost, its deadline passed, payment was down, or the order service died
//! between storing the order and recording the charge.
//!
//! Each round it claims due orders with a lease (a compare-and-set on the row, so with several
//! replicas on one PostgreSQL exactly one works on an order at a time, and a dead replica's
//! claims run out) and sends Charge again with the order id as `request_id`. The payment
//! service keeps one payment per key, so however many times this happens — and whatever a
//! retried CreateOrder or a CancelOrder does at the same time — the order is charged at most
//! once. An attempt that learns nothing is repeated with exponential backoff and jitter.
//!
//! Beside that it audits: every `reconcile_audit_interval` it checks the next batch of PAID
//! orders against the payment service, and counts (`shopmesh_order_payment_mismatches_total`)
//! and logs each whose payment is not SUCCEEDED — refunded on the payment service itself, or
//! lost with its database — since nothing else would notice the two services drifting apart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ReconcileConfig;
use futures::StreamExt as _;
use shopmesh::api::payment::v1::PaymentState;
use shopmesh::mesh::ids;
use tracing::Instrument as _;

use crate::domain::State;
use crate::error::Error;
use crate::service::Orders;
use crate::store::{Due, Store};

/// Settles orders whose payment outcome is unknown.
#[derive(Debug, Clone)]
pub struct Reconciler {
    orders: Orders,
    config: ReconcileConfig,
    /// This replica's name in leases.
    owner: String,
    /// The id of the last PAID order the audit checked ("" to start the sweep over).
    audited: Arc<Mutex<String>>,
}

/// What one audit step found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Audit {
    /// PAID orders whose payment was asked about.
    pub checked: usize,
    /// Of those, orders whose payment is not SUCCEEDED.
    pub mismatched: usize,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Orders claimed and attempted.
    pub attempted: usize,
    /// Of those, settled (PAID or PAYMENT_DECLINED).
    pub settled: usize,
}

impl Reconciler {
    /// A reconciler over the order use cases, with a fresh owner name for its leases.
    pub fn new(orders: Orders, config: ReconcileConfig) -> Self {
        Self { orders, config, owner: ids::new_id(), audited: Arc::default() }
    }

    fn store(&self) -> &Store {
        self.orders.store()
    }

    /// Runs rounds every `reconcile_interval` until dropped; returns at once when the
    /// interval is zero (reconciliation off).
    pub async fn run(self) {
        if self.config.reconcile_interval.is_zero() {
            tracing::info!("reconciler off");
            return;
        }
        let mut ticker = tokio::time::interval(self.config.reconcile_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Until the first round succeeds the schema may not exist yet (the readiness tracker
        // is migrating, or waits for `shopmesh migrate`): not worth a warning.
        let mut working = false;
        let audit_every = self.config.reconcile_audit_interval;
        let mut last_audit = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            match self.round().await {
                Ok(_) => working = true,
                Err(err) if working => {
                    working = false;
                    tracing::warn!(error = %err, "reconciler round failed; retrying next round");
                }
                Err(err) => tracing::debug!(error = %err, "reconciler round failed"),
            }
            if working && !audit_every.is_zero() && last_audit.elapsed() >= audit_every {
                last_audit = tokio::time::Instant::now();
                if let Err(err) = self.audit().await {
                    tracing::warn!(error = %err, "audit of paid orders failed; retrying next time");
                }
            }
        }
    }

    /// One step of the audit's sweep over PAID orders: asks the payment service about the next
    /// `reconcile_batch` of them, and counts and logs each whose payment is not SUCCEEDED. The
    /// sweep starts over after the last PAID order. A payment the service cannot answer about
    /// now is skipped (the next sweep comes back to it).
    ///
    /// # Errors
    /// A database error reading the orders.
    pub async fn audit(&self) -> Result<Audit, sqlx::Error> {
        let after = self.audited.lock().map(|a| a.clone()).unwrap_or_default();
        let batch = self.store().paid_after(&after, self.config.reconcile_batch).await?;
        let next = match batch.last() {
            Some((id, _)) if batch.len() == self.config.reconcile_batch as usize => id.clone(),
            _ => String::new(),
        };
        if let Ok(mut audited) = self.audited.lock() {
            *audited = next;
        }
        let checked = batch.len();
        let mismatched = futures::stream::iter(batch)
            .map(|(order_id, payment_id)| async move {
                let state = match self.orders.payment_state(&payment_id).await {
                    Ok(Some(PaymentState::Succeeded)) => return false,
                    Ok(Some(state)) => state.as_str_name().trim_start_matches("PAYMENT_STATE_").to_lowercase(),
                    Ok(None) => "missing".to_owned(),
                    Err(status) => {
                        tracing::debug!(%order_id, error = %status, "audit: payment not reachable");
                        return false;
                    }
                };
                tracing::warn!(%order_id, %payment_id, payment_state = %state, "PAID order whose payment is not SUCCEEDED");
                metrics::counter!("shopmesh_order_payment_mismatches_total", "payment_state" => state).increment(1);
                true
            })
            .buffer_unordered(16)
            .filter(|found| std::future::ready(*found))
            .count()
            .await;
        Ok(Audit { checked, mismatched })
    }

    /// One round: publishes the pending gauges, claims the due orders and attempts them
    /// concurrently.
    ///
    /// # Errors
    /// A database error before any order was claimed.
    pub async fn round(&self) -> Result<Round, sqlx::Error> {
        let now = ids::now_ms();
        let pending = self.store().pending().await?;
        metrics::gauge!("shopmesh_order_pending_orders").set(pending.count as f64);
        let oldest = pending.oldest_create_time_ms.map_or(0, |t| now.saturating_sub(t).max(0));
        metrics::gauge!("shopmesh_order_oldest_pending_age_seconds").set(oldest as f64 / 1000.0);

        let mut claimed = Vec::new();
        for due in self.store().due(Duration::ZERO, self.config.reconcile_batch).await? {
            if self.store().claim(&due, &self.owner, self.config.reconcile_lease).await? {
                claimed.push(due);
            }
        }
        let attempted = claimed.len();
        let settled = futures::stream::iter(claimed)
            .map(|due| self.attempt(due))
            .buffer_unordered(usize::MAX)
            .filter(|settled| std::future::ready(*settled))
            .count()
            .await;
        Ok(Round { attempted, settled })
    }

    /// Sends the claimed order's Charge again and records what it tells; `true` if the order
    /// is no longer pending.
    async fn attempt(&self, due: Due) -> bool {
        let span = tracing::info_span!("reconcile order", order_id = %due.id, attempt = due.attempts + 1);
        async {
            let result = match self.store().get(&due.id).await {
                Ok(Some(order)) => self.orders.settle(order).await,
                Ok(None) => Err(Error::NotFound(due.id.clone())),
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(order) if order.state != State::PendingPayment => {
                    let outcome = match order.state {
                        State::Paid => "paid",
                        State::Cancelled => "refunded",
                        _ => "declined",
                    };
                    metrics::counter!("shopmesh_order_reconcile_attempts_total", "outcome" => outcome)
                        .increment(1);
                    tracing::info!(state = order.state.as_str(), "reconciled");
                    true
                }
                other => {
                    metrics::counter!("shopmesh_order_reconcile_attempts_total", "outcome" => "unknown")
                        .increment(1);
                    let wait = backoff(&self.config, due.attempts + 1, fastrand::f64());
                    let error = other.err().map(|e| e.to_string()).unwrap_or_default();
                    if due.attempts % 10 == 9 {
                        tracing::warn!(%error, retry_in = ?wait, "payment outcome still unknown");
                    } else {
                        tracing::debug!(%error, retry_in = ?wait, "payment outcome still unknown");
                    }
                    if let Err(err) = self.store().defer(&due.id, &self.owner, wait).await {
                        // The lease runs out and the order becomes due again anyway.
                        tracing::warn!(error = %err, "could not record the attempt");
                    }
                    false
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// The wait before attempt `attempt + 1`: the interval doubled per attempt, capped at the
/// maximum backoff, then scaled into its upper half by `jitter` (0..1) so replicas that failed
/// together do not retry together.
pub(crate) fn backoff(config: &ReconcileConfig, attempts: i64, jitter: f64) -> Duration {
    let base = config.reconcile_interval.max(Duration::from_millis(1));
    let doublings = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
    let full = base.saturating_mul(1 << doublings).min(config.reconcile_max_backoff.max(base));
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_within_its_jitter() {
        let config = ReconcileConfig {
            reconcile_interval: Duration::from_secs(1),
            reconcile_max_backoff: Duration::from_secs(60),
            ..ReconcileConfig::default()
        };
        assert_eq!(backoff(&config, 0, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&config, 1, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(&config, 3, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(&config, 3, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(&config, 6, 1.0), Duration::from_secs(60), "capped");
        assert_eq!(backoff(&config, i64::MAX, 1.0), Duration::from_secs(60), "no overflow");
        assert_eq!(backoff(&config, -1, 1.0), Duration::from_secs(1));
    }
}
