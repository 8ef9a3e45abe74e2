//! Payments and their rules. Knows nothing of protobuf: `grpc.rs` converts.

use shopmesh::mesh::validation::{self, Violations};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded before the processor was asked; a retry of the same Charge completes it.
    Processing,
    /// Captured.
    Succeeded,
    /// Refused by the processor.
    Declined,
    /// Claimed by one Refund, which is asking the processor to return it; a Refund under any
    /// key finishes it once that claim's lease runs out.
    Refunding,
    /// Captured, then returned in full.
    Refunded,
}

impl State {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Succeeded => "SUCCEEDED",
            Self::Declined => "DECLINED",
            Self::Refunding => "REFUNDING",
            Self::Refunded => "REFUNDED",
        }
    }

    /// The state a stored string names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Processing, Self::Succeeded, Self::Declined, Self::Refunding, Self::Refunded]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// UUIDv7. (Not the processor's key: that is the request id within the order.)
    pub id: String,
    /// The Charge's idempotency key.
    pub request_id: String,
    /// The order paid for.
    pub order_id: String,
    /// The user charged.
    pub user_id: String,
    /// Amount in minor units, positive.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
    /// Where it is in its life.
    pub state: State,
    /// Why it was declined.
    pub decline_reason: Option<String>,
    /// The idempotency key of the Refund that claimed it (REFUNDING) and refunded it.
    pub refund_request_id: Option<String>,
    /// Creation time, epoch milliseconds.
    pub create_time_ms: i64,
    /// Last change, epoch milliseconds.
    pub update_time_ms: i64,
}

/// A validated Charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCharge {
    /// The order paid for.
    pub order_id: String,
    /// The user charged.
    pub user_id: String,
    /// Positive amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
    /// Idempotency key.
    pub request_id: String,
}

impl NewCharge {
    /// Validates a Charge's fields; `amount` is `None` when the message had no amount.
    pub fn parse(
        order_id: &str,
        user_id: &str,
        amount: Option<(i64, &str)>,
        request_id: &str,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        validation::id(&mut v, "order_id", order_id);
        validation::id(&mut v, "user_id", user_id);
        let (amount_minor, currency_code) = amount.unwrap_or((0, ""));
        if amount.is_none() {
            v.add("amount", "is required");
        } else {
            if amount_minor <= 0 {
                v.add("amount.amount_minor", "must be positive");
            }
            shopmesh_shop::currency_code(&mut v, "amount.currency_code", currency_code);
        }
        let request_id = validation::request_id(&mut v, "request_id", request_id, true);
        v.check(Self {
            order_id: order_id.to_owned(),
            user_id: user_id.to_owned(),
            amount_minor,
            currency_code: currency_code.to_owned(),
            request_id: request_id.unwrap_or_default(),
        })
    }

    /// Whether `payment` is what this request would create: a replay of the same Charge.
    pub fn matches(&self, payment: &Payment) -> bool {
        self.order_id == payment.order_id
            && self.user_id == payment.user_id
            && self.amount_minor == payment.amount_minor
            && self.currency_code == payment.currency_code
    }
}

/// A validated Refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The payment to refund.
    pub payment_id: String,
    /// Idempotency key.
    pub request_id: String,
}

impl RefundRequest {
    /// Validates a Refund's fields.
    pub fn parse(payment_id: &str, request_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        validation::id(&mut v, "payment_id", payment_id);
        let request_id = validation::request_id(&mut v, "request_id", request_id, true);
        v.check(Self { payment_id: payment_id.to_owned(), request_id: request_id.unwrap_or_default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh::mesh::ids::new_id;

    #[test]
    fn states_round_trip() {
        for s in [State::Processing, State::Succeeded, State::Declined, State::Refunding, State::Refunded] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("LOST"), None);
    }

    #[test]
    fn charges_are_validated() {
        let (o, u) = (new_id(), new_id());
        let ok = NewCharge::parse(&o, &u, Some((100, "USD")), "r1").expect("valid");
        assert_eq!(ok.amount_minor, 100);
        let err = NewCharge::parse("", "x", Some((0, "usd")), "").expect_err("invalid");
        for f in ["order_id", "user_id", "amount.amount_minor", "amount.currency_code", "request_id"] {
            assert!(err.has(f), "{f} not reported: {err}");
        }
        assert!(NewCharge::parse(&o, &u, None, "r").expect_err("no amount").has("amount"));
        assert!(
            NewCharge::parse(&o, &u, Some((-5, "USD")), "r")
                .expect_err("negative")
                .has("amount.amount_minor")
        );
    }

    #[test]
    fn replays_must_match_every_charged_field() {
        let (o, u) = (new_id(), new_id());
        let req = NewCharge::parse(&o, &u, Some((100, "USD")), "r1").expect("valid");
        let paid = Payment {
            id: new_id(),
            request_id: "r1".into(),
            order_id: o.clone(),
            user_id: u.clone(),
            amount_minor: 100,
            currency_code: "USD".into(),
            state: State::Succeeded,
            decline_reason: None,
            refund_request_id: None,
            create_time_ms: 0,
            update_time_ms: 0,
        };
        assert!(req.matches(&paid));
        assert!(!req.matches(&Payment { amount_minor: 101, ..paid.clone() }));
        assert!(!req.matches(&Payment { currency_code: "EUR".into(), ..paid.clone() }));
        assert!(!req.matches(&Payment { order_id: new_id(), ..paid }));
    }
}
