//! The payment use cases: idempotent Charge and Refund over the store and the processor.

use crate::domain::{NewCharge, Payment, RefundRequest, State};
use crate::error::Error;
use crate::processor::{Outcome, Processor};
use crate::store::Store;
use shopmesh::mesh::validation::{Page, Paged};

/// Charges and refunds.
#[derive(Debug, Clone)]
pub struct Payments {
    store: Store,
    processor: Processor,
}

impl Payments {
    /// The use cases over `store`, charging through `processor`.
    pub fn new(store: Store, processor: Processor) -> Self {
        Self { store, processor }
    }

    /// The payment `id`, if there is one.
    pub async fn get(&self, id: &str) -> Result<Option<Payment>, Error> {
        Ok(self.store.get(id).await?)
    }

    /// One page of `order_id`'s payments, oldest id first.
    pub async fn list(&self, order_id: &str, page: &Page) -> Result<Paged<Payment>, Error> {
        let payments = self.store.list_by_order(order_id, page.after.as_deref(), page.fetch()).await?;
        Ok(page.split(payments, |p| &p.id))
    }

    /// Charges once per request id of an order.
    ///
    /// The PROCESSING row is written before the processor is asked, under the order's unique
    /// request id, so two concurrent or repeated Charges share one payment; the call that wrote
    /// it owns it for a lease, and a duplicate meanwhile gets it back PROCESSING. A payment left
    /// PROCESSING (a crash, a lost reply) is claimed by the next Charge after the lease and
    /// completed by asking the processor again. The processor's key is the caller's request id
    /// within its order, never the payment's id, so even a payment row lost with the database's
    /// last commits is charged at most once.
    pub async fn charge(&self, charge: &NewCharge) -> Result<Payment, Error> {
        let payment = match self.store.insert_processing(charge).await? {
            Some(new) => new,
            None => {
                let existing =
                    self.store.by_request_id(&charge.order_id, &charge.request_id).await?.ok_or_else(
                        || Error::Conflict("payment vanished after a request_id conflict".into()),
                    )?;
                if !charge.matches(&existing) {
                    return Err(Error::RequestIdReused(charge.request_id.clone()));
                }
                // Another call owns it while its lease runs: "not decided yet".
                if existing.state != State::Processing || !self.store.claim(&existing.id).await? {
                    return Ok(existing);
                }
                existing
            }
        };
        let key = processor_key(&payment.order_id, &payment.request_id);
        let outcome = match self
            .processor
            .charge(&key, &payment.order_id, payment.amount_minor, &payment.currency_code)
            .await
        {
            Ok(outcome) => outcome,
            Err(err) => {
                // Nothing is known to have happened: let the next Charge ask at once.
                if let Err(release) = self.store.release(&payment.id).await {
                    tracing::debug!(error = %release, "could not release the lease; it runs out");
                }
                return Err(Error::Processor(err));
            }
        };
        let (state, reason) = match outcome {
            Outcome::Approved => (State::Succeeded, None),
            Outcome::Declined(reason) => (State::Declined, Some(reason)),
        };
        tracing::debug!(payment_id = %payment.id, order_id = %payment.order_id, state = state.as_str(), "charge decided");
        self.store.finish(&payment, state, reason).await?.ok_or_else(|| Error::NotFound(payment.id.clone()))
    }

    /// Refunds a SUCCEEDED payment once per request id (a key is scoped to the payment's order).
    pub async fn refund(&self, req: &RefundRequest) -> Result<Payment, Error> {
        let payment =
            self.store.get(&req.payment_id).await?.ok_or_else(|| Error::NotFound(req.payment_id.clone()))?;
        match payment.state {
            State::Succeeded => {}
            State::Refunded if payment.refund_request_id.as_deref() == Some(req.request_id.as_str()) => {
                return Ok(payment);
            }
            State::Refunded => return Err(Error::AlreadyRefunded(payment.id)),
            State::Processing | State::Declined => {
                return Err(Error::NotRefundable { id: payment.id, state: payment.state });
            }
        }
        if self.store.by_refund_request_id(&payment.order_id, &req.request_id).await?.is_some() {
            // Another payment of the same order was refunded under this key.
            return Err(Error::RequestIdReused(req.request_id.clone()));
        }
        // The processor is keyed by the refund's request id within the order, so asking again
        // after a crash here, or after the refund's commit was lost, is safe.
        let key = processor_key(&payment.order_id, &req.request_id);
        self.processor
            .refund(&key, &payment.order_id, payment.amount_minor, &payment.currency_code)
            .await
            .map_err(Error::Processor)?;
        match self.store.mark_refunded(&payment.id, &req.request_id).await {
            Ok(true) => {}
            Ok(false) => {
                // Another Refund got there first: same key is a replay, another key a conflict.
                let now =
                    self.store.get(&payment.id).await?.ok_or_else(|| Error::NotFound(payment.id.clone()))?;
                return if now.refund_request_id.as_deref() == Some(req.request_id.as_str()) {
                    Ok(now)
                } else {
                    Err(Error::AlreadyRefunded(payment.id))
                };
            }
            // The key was taken by a refund of another payment of the same order.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::RequestIdReused(req.request_id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(payment_id = %payment.id, "refunded");
        self.store.get(&payment.id).await?.ok_or_else(|| Error::NotFound(payment.id))
    }
}

/// The processor's idempotency key for the caller's `request_id` within `order_id` (callers'
/// keys are scoped to their order; `/` cannot occur in either part).
fn processor_key(order_id: &str, request_id: &str) -> String {
    format!("{order_id}/{request_id}")
}
