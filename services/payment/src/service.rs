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
                if existing.state != State::Processing
                    || !self.store.claim(&existing.id, State::Processing).await?
                {
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
                if let Err(release) = self.store.release(&payment.id, State::Processing).await {
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
        // No row to finish: the database lost it (see `Error::Lost`), not a caller's mistake.
        self.store.finish(&payment, state, reason).await?.ok_or_else(|| Error::Lost(payment.id.clone()))
    }

    /// Refunds a SUCCEEDED payment, once at the processor whatever the keys and the races.
    ///
    /// The Refund first claims the payment (SUCCEEDED -> REFUNDING under its request id, owned
    /// for a lease, a compare-and-set on the row): of concurrent Refunds exactly one does, and
    /// only that one asks the processor; the others wait for it (within their deadline) and get
    /// its outcome: the refunded payment under the same key, ALREADY_REFUNDED under another. A
    /// claim whose owner died is taken over by the next Refund, under any key, once its lease
    /// runs out, and finished under the same processor key: the charge's (one refund per
    /// payment), never the refund's request id.
    pub async fn refund(&self, req: &RefundRequest) -> Result<Payment, Error> {
        let mut pause = INITIAL_PAUSE;
        loop {
            let payment = self
                .store
                .get(&req.payment_id)
                .await?
                .ok_or_else(|| Error::NotFound(req.payment_id.clone()))?;
            match payment.state {
                State::Succeeded => match self.store.claim_refund(&payment.id, &req.request_id).await {
                    Ok(true) => {
                        let claimed = Payment {
                            state: State::Refunding,
                            refund_request_id: Some(req.request_id.clone()),
                            ..payment
                        };
                        return self.finish_refund(claimed, req).await;
                    }
                    // Claimed (or changed) by another call since it was read: look again.
                    Ok(false) => continue,
                    // The key was taken by a refund of another payment of the same order.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err(Error::RequestIdReused(req.request_id.clone()));
                    }
                    Err(e) => return Err(e.into()),
                },
                State::Refunding => {
                    if self.store.claim(&payment.id, State::Refunding).await? {
                        tracing::info!(payment_id = %payment.id, "finishing a refund whose owner gave up");
                        return self.finish_refund(payment, req).await;
                    }
                    // Its owner is at the processor: wait for its outcome while time is left.
                    if !shopmesh::mesh::request_deadline::sleep_within(pause, REPLY_MARGIN).await {
                        return Err(Error::RefundInFlight(payment.id));
                    }
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                State::Refunded => return refunded_for(payment, req),
                State::Processing | State::Declined => {
                    return Err(Error::NotRefundable { id: payment.id, state: payment.state });
                }
            }
        }
    }

    /// Asks the processor to return a payment this call claimed (REFUNDING), then marks it
    /// REFUNDED; the answer is for `req`, whose key may not be the claim's.
    async fn finish_refund(&self, payment: Payment, req: &RefundRequest) -> Result<Payment, Error> {
        // Keyed by the payment's charge, so however many Refunds (and takeovers, and commits
        // lost by payment's database) there are, the processor refunds it once.
        let key = processor_key(&payment.order_id, &payment.request_id);
        if let Err(err) =
            self.processor.refund(&key, &payment.order_id, payment.amount_minor, &payment.currency_code).await
        {
            // Nothing is known to have happened: the next Refund, under any key, finishes it.
            if let Err(release) = self.store.release(&payment.id, State::Refunding).await {
                tracing::debug!(error = %release, "could not release the refund's lease; it runs out");
            }
            return Err(Error::Processor(err));
        }
        if self.store.mark_refunded(&payment.id).await? {
            tracing::info!(payment_id = %payment.id, "refunded");
        }
        let now = self.store.get(&payment.id).await?.ok_or_else(|| Error::NotFound(payment.id.clone()))?;
        refunded_for(now, req)
    }
}

/// First and longest pause between two looks at a refund another call is finishing.
const INITIAL_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Time kept back from the caller's deadline for the answer's way back.
const REPLY_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

/// The answer to `req` about a REFUNDED `payment`: the payment for the key that refunded it
/// (a replay), ALREADY_REFUNDED for any other.
fn refunded_for(payment: Payment, req: &RefundRequest) -> Result<Payment, Error> {
    if payment.state == State::Refunded
        && payment.refund_request_id.as_deref() == Some(req.request_id.as_str())
    {
        Ok(payment)
    } else if payment.state == State::Refunded {
        Err(Error::AlreadyRefunded(payment.id))
    } else {
        Err(Error::Conflict(format!("payment {} changed while being refunded", payment.id)))
    }
}

/// The processor's idempotency key for the caller's `request_id` within `order_id` (callers'
/// keys are scoped to their order; `/` cannot occur in either part).
fn processor_key(order_id: &str, request_id: &str) -> String {
    format!("{order_id}/{request_id}")
}
