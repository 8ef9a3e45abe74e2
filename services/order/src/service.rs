//! The order use cases: CreateOrder (check the user, store, charge, settle) and CancelOrder
//! (refund exactly once), each safe to repeat under the same request id.

use crate::domain::{NewOrder, Order, State};
use crate::error::Error;
use crate::store::Store;
use crate::upstream::{Charged, Upstream, UserCheck};

/// Orders.
#[derive(Debug, Clone)]
pub struct Orders {
    store: Store,
    upstream: Upstream,
}

impl Orders {
    /// The use cases over `store`, calling the other services through `upstream`.
    pub fn new(store: Store, upstream: Upstream) -> Self {
        Self { store, upstream }
    }

    /// The store, for reads that need no rules.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The order `id`, for `owner` (a bearer-token subject) only if it is theirs: another's
    /// order and a missing one are both PERMISSION_DENIED, so existence is not revealed.
    pub async fn get(&self, id: &str, owner: Option<&str>) -> Result<Order, Error> {
        let order = self.store.get(id).await?;
        owned(order, id, owner)
    }

    /// Creates and charges an order. A request id seen before returns its order, finishing the
    /// payment if an earlier attempt was cut short; the charge's key is the order id, so that
    /// can never charge twice.
    pub async fn create(&self, new: &NewOrder) -> Result<Order, Error> {
        if let Some(existing) = self.replay(new).await? {
            return self.settle(existing).await;
        }
        match self.upstream.check_user(&new.user_id).await.map_err(Error::User)? {
            UserCheck::Active => {}
            UserCheck::Inactive => return Err(Error::UserInactive(new.user_id.clone())),
            UserCheck::Missing => return Err(Error::UserNotFound(new.user_id.clone())),
        }
        let order = match self.store.insert(new).await? {
            Some(order) => order,
            // A concurrent request with the same key stored first: continue with its order.
            None => self.replay(new).await?.ok_or_else(|| Error::Conflict("order vanished".into()))?,
        };
        tracing::info!(order_id = %order.id, total = order.total_minor, "order stored");
        self.settle(order).await
    }

    /// The order stored under `new`'s request id, if any; an error if it differs from `new`.
    async fn replay(&self, new: &NewOrder) -> Result<Option<Order>, Error> {
        let Some(request_id) = &new.request_id else { return Ok(None) };
        match self.store.by_request_id(request_id).await? {
            Some(order) if new.matches(&order) => Ok(Some(order)),
            Some(_) => Err(Error::RequestIdReused(request_id.clone())),
            None => Ok(None),
        }
    }

    /// Charges a PENDING_PAYMENT order and records the outcome; other orders are returned as
    /// they are.
    async fn settle(&self, order: Order) -> Result<Order, Error> {
        if order.state != State::PendingPayment {
            return Ok(order);
        }
        let (state, payment_id, reason) = match self.upstream.charge(&order).await.map_err(Error::Payment)? {
            Charged::Succeeded(payment) => (State::Paid, payment, None),
            Charged::Declined(payment, reason) => (State::PaymentDeclined, payment, Some(reason)),
            Charged::Processing => return Err(Error::PaymentInFlight(order.id)),
        };
        let settled = self
            .store
            .settle(&order.id, state, &payment_id, reason.as_deref())
            .await?
            .ok_or_else(|| Error::NotFound(order.id.clone()))?;
        tracing::info!(order_id = %settled.id, state = settled.state.as_str(), "order settled");
        Ok(settled)
    }

    /// Cancels an order: a PAID one is refunded (keyed by the order id, so exactly once), a
    /// PAYMENT_DECLINED one just cancelled. Repeating with the same request id returns the
    /// cancelled order. An `owner` (a bearer-token subject) may cancel only its own orders.
    pub async fn cancel(
        &self,
        id: &str,
        request_id: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Order, Error> {
        let order = owned(self.store.get(id).await?, id, owner)?;
        match order.state {
            State::Cancelled => return cancelled(order, request_id),
            State::PendingPayment => return Err(Error::PaymentPending(order.id)),
            State::Paid => {
                let payment_id = order.payment_id.as_deref().unwrap_or_default();
                self.upstream.refund(&order.id, payment_id).await.map_err(Error::Payment)?;
            }
            State::PaymentDeclined => {}
        }
        let cancelled_here = self.store.cancel(&order.id, request_id).await?;
        let now = self.store.get(id).await?.ok_or_else(|| Error::NotFound(id.to_owned()))?;
        if cancelled_here {
            tracing::info!(order_id = %now.id, "order cancelled");
            return Ok(now);
        }
        // A concurrent CancelOrder got there first: the stored order decides.
        cancelled(now, request_id)
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
