//! The order use cases: CreateOrder (check the user, store, charge, settle) and CancelOrder
//! (refund exactly once), each safe to repeat under the same request id.

use std::time::Duration;

use tokio::time::Instant;

use crate::domain::{NewOrder, Order, OrderRequest, State};
use crate::error::Error;
use crate::in_flight::{Entered, InFlight, Turn};
use crate::store::Store;
use crate::upstream::{Charged, Prices, Refunded, Upstream, UserCheck};
use shopmesh::mesh::validation::{Page, Paged};
use tonic::{Code, Status};

/// Orders.
#[derive(Debug, Clone)]
pub struct Orders {
    store: Store,
    upstream: Upstream,
    /// The orders this process is settling now, which replays wait for.
    in_flight: InFlight,
}

impl Orders {
    /// The use cases over `store`, calling the other services through `upstream`.
    pub fn new(store: Store, upstream: Upstream) -> Self {
        Self { store, upstream, in_flight: InFlight::default() }
    }

    /// The store, for the reconciler, which works on the orders' records themselves.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The payment service's state of payment `id` (`None`: it has no such payment), for the
    /// reconciler's audit.
    pub(crate) async fn payment_state(
        &self,
        id: &str,
    ) -> Result<Option<shopmesh::api::payment::v1::PaymentState>, Status> {
        self.upstream.payment_state(id).await
    }

    /// One page of `user_id`'s orders, oldest id first.
    pub async fn list(&self, user_id: &str, page: &Page) -> Result<Paged<Order>, Error> {
        let orders = self.store.list_by_user(user_id, page.after.as_deref(), page.fetch()).await?;
        Ok(page.split(orders, |o| &o.id))
    }

    /// The order `id`, for `owner` (a bearer-token subject) only if it is theirs: another's
    /// order and a missing one are both PERMISSION_DENIED, so existence is not revealed.
    pub async fn get(&self, id: &str, owner: Option<&str>) -> Result<Order, Error> {
        let order = self.store.get(id).await?;
        owned(order, id, owner)
    }

    /// Creates and charges an order, every line priced by the catalog. A request id seen
    /// before returns its order as it was stored (whatever the prices are now), finishing the
    /// payment if an earlier attempt was cut short; the charge's key is the order id, so that
    /// can never charge twice. Nothing is written unless the user may order and the catalog
    /// priced every line.
    pub async fn create(&self, request: &OrderRequest) -> Result<Order, Error> {
        // A repeat is not looked for first, which would cost every new order a query: the
        // insert finds it (its key conflicts), and a request that cannot be priced or whose
        // user may not order now looks for it before failing, so a repeat still gets its order
        // whatever the user service and the catalog say now.
        let new = match self.priced(request).await {
            Ok(new) => new,
            Err(err) => {
                return match self.replay(request).await? {
                    Some(existing) => self.settle(existing).await,
                    None => Err(err),
                };
            }
        };
        let order = match self.store.insert(&new).await? {
            Some(order) => order,
            // An earlier or concurrent request with the same key stored first: continue with
            // its order.
            None => self.replay(request).await?.ok_or_else(|| Error::Conflict("order vanished".into()))?,
        };
        tracing::debug!(order_id = %order.id, total = order.total_minor, "order stored");
        self.settle(order).await
    }

    /// `request` priced by the catalog, if its user may order.
    async fn priced(&self, request: &OrderRequest) -> Result<NewOrder, Error> {
        // Both answers are needed before anything is written; neither depends on the other.
        let skus = request.skus();
        let (user, prices) =
            tokio::join!(self.upstream.check_user(&request.user_id), self.upstream.prices(&skus));
        match user.map_err(Error::User)? {
            UserCheck::Active => {}
            UserCheck::Inactive => return Err(Error::UserInactive(request.user_id.clone())),
            UserCheck::Missing => return Err(Error::UserNotFound(request.user_id.clone())),
        }
        let prices = match prices.map_err(Error::Catalog)? {
            Prices::Found(prices) => prices,
            Prices::Missing(sku) => return Err(Error::ProductUnavailable(sku)),
        };
        Ok(request.price(&prices)?)
    }

    /// The order its user stored under `request`'s request id, if any; an error if it differs
    /// from `request`. Another user's order under the same key is not looked at.
    async fn replay(&self, request: &OrderRequest) -> Result<Option<Order>, Error> {
        let Some(request_id) = &request.request_id else { return Ok(None) };
        match self.store.by_request_id(&request.user_id, request_id).await? {
            Some(order) if request.matches(&order) => Ok(Some(order)),
            Some(_) => Err(Error::RequestIdReused(request_id.clone())),
            None => Ok(None),
        }
    }

    /// Charges a PENDING_PAYMENT order and records the outcome; other orders are returned as
    /// they are. An unknown outcome leaves the order PENDING_PAYMENT, for a retry or the
    /// reconciler.
    pub(crate) async fn settle(&self, order: Order) -> Result<Order, Error> {
        self.settle_with(order, None).await
    }

    /// [`Self::settle`], for a CancelOrder under `cancel_request_id`: an order whose payment
    /// turns out refunded already is cancelled under that key.
    ///
    /// A call whose order another call is settling waits for it, within its own deadline, and
    /// answers what it stored: in this process on that call's turn ([`InFlight`]), and for a
    /// charge in flight elsewhere (the payment answers PROCESSING) by reading the order again,
    /// less and less often. UNAVAILABLE only when the deadline would pass first.
    async fn settle_with(&self, mut order: Order, cancel_request_id: Option<&str>) -> Result<Order, Error> {
        loop {
            if order.state != State::PendingPayment {
                return Ok(order);
            }
            match self.in_flight.enter(&order.id) {
                Entered::Turn(turn) => return self.settle_on_turn(order, cancel_request_id, turn).await,
                Entered::Wait(mut settling) => {
                    // Ends with the other call (settled, failed or cancelled): read what it left.
                    if tokio::time::timeout_at(wait_until(), settling.changed()).await.is_err() {
                        return Err(Error::PaymentInFlight(order.id));
                    }
                    order = self.reread(&order.id).await?;
                }
            }
        }
    }

    /// Charges PENDING_PAYMENT `order` and records the outcome, holding this process's turn on
    /// it until done; a charge in flight in another process is waited for on the order's row.
    async fn settle_on_turn(
        &self,
        mut order: Order,
        cancel_request_id: Option<&str>,
        _turn: Turn,
    ) -> Result<Order, Error> {
        let mut pause = FIRST_PAUSE;
        loop {
            match resolve(self.upstream.charge(&order).await) {
                Resolution::Settled { state, payment_id, reason } => {
                    let cancel_request_id = cancel_request_id.filter(|_| state == State::Cancelled);
                    return self
                        .record(&order, state, payment_id.as_deref(), reason.as_deref(), cancel_request_id)
                        .await;
                }
                Resolution::Unknown(Some(status)) => return Err(Error::Payment(status)),
                Resolution::Unknown(None) => {
                    // Another process's call is charging it: its outcome lands on the order's row.
                    if !shopmesh::mesh::request_deadline::sleep_within(pause, REPLY_MARGIN).await {
                        return Err(Error::PaymentInFlight(order.id));
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                    order = self.reread(&order.id).await?;
                    if order.state != State::PendingPayment {
                        return Ok(order);
                    }
                }
            }
        }
    }

    /// The order `id` as stored now.
    async fn reread(&self, id: &str) -> Result<Order, Error> {
        self.store.get(id).await?.ok_or_else(|| Error::NotFound(id.to_owned()))
    }

    /// Stores a known charge outcome on PENDING_PAYMENT `order`.
    pub(crate) async fn record(
        &self,
        order: &Order,
        state: State,
        payment_id: Option<&str>,
        reason: Option<&str>,
        cancel_request_id: Option<&str>,
    ) -> Result<Order, Error> {
        let settled = self
            .store
            .settle(order, state, payment_id, reason, cancel_request_id)
            .await?
            .ok_or_else(|| Error::NotFound(order.id.clone()))?;
        tracing::debug!(order_id = %settled.id, state = settled.state.as_str(), "order settled");
        Ok(settled)
    }

    /// Cancels an order: a PAID one is refunded (keyed by the order id, so exactly once; one
    /// refunded on the payment service already is not refunded again), a PAYMENT_DECLINED one
    /// just cancelled. Repeating with the same request id returns the
    /// cancelled order. An `owner` (a bearer-token subject) may cancel only its own orders.
    ///
    /// A PENDING_PAYMENT order's charge may or may not have happened, and only the payment
    /// service knows: its payment is settled first, by the same keyed Charge the reconciler
    /// sends (so it is never charged twice), then it is cancelled like any other — refunded if
    /// the charge went through. If the payment service cannot answer, the call fails
    /// UNAVAILABLE and the order is left as it was.
    pub async fn cancel(
        &self,
        id: &str,
        request_id: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Order, Error> {
        let mut order = owned(self.store.get(id).await?, id, owner)?;
        if order.state == State::PendingPayment {
            order = self.settle_with(order, request_id).await?;
        }
        match order.state {
            State::Cancelled => return cancelled(order, request_id),
            State::PendingPayment => return Err(Error::PaymentInFlight(order.id)),
            State::Paid => {
                let payment_id = order.payment_id.as_deref().unwrap_or_default();
                // A payment refunded on the payment service itself is not refunded again: the
                // order just follows it.
                if self.upstream.refund(&order.id, payment_id).await.map_err(Error::Payment)?
                    == Refunded::Before
                {
                    tracing::warn!(order_id = %order.id, payment_id, "cancelling an order whose payment was refunded elsewhere");
                }
            }
            State::PaymentDeclined => {}
        }
        let cancelled_here = self.store.cancel(&order, request_id).await?;
        let now = self.store.get(id).await?.ok_or_else(|| Error::NotFound(id.to_owned()))?;
        if cancelled_here {
            tracing::info!(order_id = %now.id, "order cancelled");
            return Ok(now);
        }
        // A concurrent CancelOrder got there first: the stored order decides.
        cancelled(now, request_id)
    }
}

/// First and longest pause between two looks at an order whose charge another process is
/// making.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Time kept back from the caller's deadline for the answer's way back.
const REPLY_MARGIN: Duration = Duration::from_millis(20);

/// Longest a call with no deadline waits for another call of this process to settle.
const NO_DEADLINE_WAIT: Duration = Duration::from_secs(10);

/// When a call waiting for another to settle gives up: its deadline less the reply's margin.
fn wait_until() -> Instant {
    match shopmesh::mesh::request_deadline::current() {
        Some(deadline) => deadline.checked_sub(REPLY_MARGIN).unwrap_or(deadline),
        None => Instant::now() + NO_DEADLINE_WAIT,
    }
}

/// `order` (looked up as `id`) if `owner` may see it: no owner means a caller inside the mesh,
/// which may see every order. An order's user never changes, so checking once suffices.
fn owned(order: Option<Order>, id: &str, owner: Option<&str>) -> Result<Order, Error> {
    match (order, owner) {
        (Some(order), Some(owner)) if order.user_id != owner => Err(Error::PermissionDenied),
        (Some(order), _) => Ok(order),
        (None, Some(_)) => Err(Error::PermissionDenied),
        (None, None) => Err(Error::NotFound(id.to_owned())),
    }
}

#[cfg(feature = "testing")]
impl Orders {
    /// Sends the order's Charge without recording the outcome, as a crash right after the
    /// charge would; the payment's id.
    pub(crate) async fn settle_charge_only(&self, order: &Order) -> String {
        match self.upstream.charge(order).await.expect("charge") {
            Charged::Succeeded(id) | Charged::Declined(id, _) | Charged::Refunded(id) => id,
            Charged::Processing => panic!("still processing"),
        }
    }
}

/// A cancelled order is the answer to a repeat of the CancelOrder that cancelled it, and an
/// error to any other.
fn cancelled(order: Order, request_id: Option<&str>) -> Result<Order, Error> {
    if order.state != State::Cancelled {
        Err(Error::Conflict(format!("order {} changed while being cancelled", order.id)))
    } else if request_id.is_some() && order.cancel_request_id.as_deref() == request_id {
        Ok(order)
    } else {
        Err(Error::AlreadyCancelled(order.id))
    }
}

/// What one Charge attempt tells about a PENDING_PAYMENT order.
#[derive(Debug, Clone)]
pub(crate) enum Resolution {
    /// The outcome is known and final.
    Settled {
        /// PAID or PAYMENT_DECLINED; CANCELLED when the charge was refunded since.
        state: State,
        /// The payment, when one was made.
        payment_id: Option<String>,
        /// Why it was declined.
        reason: Option<String>,
    },
    /// Not known yet: the payment is still processing (`None`) or the call failed in a way that
    /// says nothing about whether it was charged. Ask again with the same key.
    Unknown(Option<Status>),
}

/// Interprets a Charge's answer. Only answers that prove the outcome settle the order: the
/// payment's own state, or INVALID_ARGUMENT / OUT_OF_RANGE, which the payment service gives
/// before recording anything (so nothing was charged). Every other failure — UNAVAILABLE,
/// DEADLINE_EXCEEDED, PERMISSION_DENIED from a misconfigured policy, INTERNAL — may hide a
/// charge that went through, so the order stays pending.
pub(crate) fn resolve(answer: Result<Charged, Status>) -> Resolution {
    match answer {
        Ok(Charged::Succeeded(payment)) => {
            Resolution::Settled { state: State::Paid, payment_id: Some(payment), reason: None }
        }
        Ok(Charged::Declined(payment, reason)) => Resolution::Settled {
            state: State::PaymentDeclined,
            payment_id: Some(payment),
            reason: Some(reason),
        },
        // Charged and then refunded on the payment service: not paid, and nothing to refund.
        Ok(Charged::Refunded(payment)) => {
            Resolution::Settled { state: State::Cancelled, payment_id: Some(payment), reason: None }
        }
        Ok(Charged::Processing) => Resolution::Unknown(None),
        Err(status) if matches!(status.code(), Code::InvalidArgument | Code::OutOfRange) => {
            Resolution::Settled {
                state: State::PaymentDeclined,
                payment_id: None,
                reason: Some(format!("payment_rejected: {}", status.message())),
            }
        }
        Err(status) => Resolution::Unknown(Some(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proof_settles_an_order() {
        let paid = resolve(Ok(Charged::Succeeded("p1".into())));
        assert!(
            matches!(paid, Resolution::Settled { state: State::Paid, ref payment_id, reason: None }
                if payment_id.as_deref() == Some("p1")),
            "{paid:?}"
        );
        let declined = resolve(Ok(Charged::Declined("p2".into(), "insufficient_funds".into())));
        assert!(
            matches!(declined, Resolution::Settled { state: State::PaymentDeclined, ref payment_id, ref reason }
                if payment_id.as_deref() == Some("p2") && reason.as_deref() == Some("insufficient_funds")),
            "{declined:?}"
        );
        let refunded = resolve(Ok(Charged::Refunded("p3".into())));
        assert!(
            matches!(refunded, Resolution::Settled { state: State::Cancelled, ref payment_id, reason: None }
                if payment_id.as_deref() == Some("p3")),
            "a refunded payment does not pay an order: {refunded:?}"
        );
        assert!(matches!(resolve(Ok(Charged::Processing)), Resolution::Unknown(None)));
        let rejected = resolve(Err(Status::invalid_argument("amount too large")));
        assert!(
            matches!(rejected, Resolution::Settled { state: State::PaymentDeclined, payment_id: None, ref reason }
                if reason.as_deref() == Some("payment_rejected: amount too large")),
            "{rejected:?}"
        );
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::NotFound,
        ] {
            assert!(
                matches!(resolve(Err(Status::new(code, "x"))), Resolution::Unknown(Some(ref s)) if s.code() == code),
                "{code:?} settled an order whose charge may have happened"
            );
        }
    }
}
