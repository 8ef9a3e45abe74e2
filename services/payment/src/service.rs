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

    /// Charges once per request id.
    ///
    /// The PROCESSING row is written before the processor is asked, under a unique request id,
    /// so two concurrent or repeated Charges share one payment. A payment left PROCESSING (a
    /// crash, a lost reply) is completed by asking the processor again with the same key.
    pub async fn charge(&self, charge: &NewCharge) -> Result<Payment, Error> {
        let payment = match self.store.insert_processing(charge).await? {
            Some(new) => new,
            None => {
                let existing =
                    self.store.by_request_id(&charge.request_id).await?.ok_or_else(|| {
                        Error::Conflict("payment vanished after a request_id conflict".into())
                    })?;
                if !charge.matches(&existing) {
                    return Err(Error::RequestIdReused(charge.request_id.clone()));
                }
                if existing.state != State::Processing {
                    return Ok(existing);
                }
                existing
            }
        };
        let (state, reason) =
            match self.processor.charge(&payment.id, payment.amount_minor, &payment.currency_code).await {
                Outcome::Approved => (State::Succeeded, None),
                Outcome::Declined(reason) => (State::Declined, Some(reason)),
            };
        tracing::debug!(payment_id = %payment.id, order_id = %payment.order_id, state = state.as_str(), "charge decided");
        self.store
            .finish(&payment.id, state, reason)
            .await?
            .ok_or_else(|| Error::NotFound(payment.id.clone()))
    }

    /// Refunds a SUCCEEDED payment once per request id.
    pub async fn refund(&self, req: &RefundRequest) -> Result<Payment, Error> {
        if let Some(done) = self.store.by_refund_request_id(&req.request_id).await? {
            return if done.id == req.payment_id {
                Ok(done)
            } else {
                Err(Error::RequestIdReused(req.request_id.clone()))
            };
        }
        let payment =
            self.store.get(&req.payment_id).await?.ok_or_else(|| Error::NotFound(req.payment_id.clone()))?;
        match payment.state {
            State::Succeeded => {}
            State::Refunded => return Err(Error::AlreadyRefunded(payment.id)),
            State::Processing | State::Declined => {
                return Err(Error::NotRefundable { id: payment.id, state: payment.state });
            }
        }
        // The processor is keyed by the payment id, so asking again after a crash here is safe.
        self.processor.refund(&payment.id).await;
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
            // The key was taken by a concurrent refund of another payment.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::RequestIdReused(req.request_id.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(payment_id = %payment.id, "refunded");
        self.store.get(&payment.id).await?.ok_or_else(|| Error::NotFound(payment.id))
    }
}
