//! Orders, their lines and their rules. Knows nothing of protobuf: `grpc.rs` converts.

use shopmesh::mesh::validation::{self, Violations};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Stored; the charge's outcome is not known yet.
    PendingPayment,
    /// Charged.
    Paid,
    /// The charge was declined.
    PaymentDeclined,
    /// Cancelled (and refunded if it had been paid).
    Cancelled,
}

impl State {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Paid => "PAID",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The state a stored string names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::PendingPayment, Self::Paid, Self::PaymentDeclined, Self::Cancelled]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    /// Stock keeping unit.
    pub sku: String,
    /// How many, 1 to [`MAX_QUANTITY`].
    pub quantity: i64,
    /// Price of one, minor units of the order's currency.
    pub unit_price_minor: i64,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// UUIDv7; also the idempotency key of its Charge and Refund.
    pub id: String,
    /// The idempotency key it was created with.
    pub request_id: Option<String>,
    /// Who ordered.
    pub user_id: String,
    /// The lines, in the order given.
    pub items: Vec<LineItem>,
    /// ISO 4217 code shared by every line.
    pub currency_code: String,
    /// Sum of quantity x unit price.
    pub total_minor: i64,
    /// Where it is in its life.
    pub state: State,
    /// The payment that charged it.
    pub payment_id: Option<String>,
    /// Why the charge was declined.
    pub decline_reason: Option<String>,
    /// The idempotency key of the CancelOrder that cancelled it.
    pub cancel_request_id: Option<String>,
    /// Creation time, epoch milliseconds.
    pub create_time_ms: i64,
    /// Last change, epoch milliseconds.
    pub update_time_ms: i64,
}

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Longest SKU.
pub const MAX_SKU_LEN: usize = 64;

/// A line as the caller sent it, before validation.
#[derive(Debug, Clone)]
pub struct LineInput<'a> {
    /// Stock keeping unit.
    pub sku: &'a str,
    /// Requested quantity.
    pub quantity: i64,
    /// Unit price as (minor units, currency code), `None` if missing.
    pub unit_price: Option<(i64, &'a str)>,
}

/// A validated CreateOrder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Who orders.
    pub user_id: String,
    /// The lines.
    pub items: Vec<LineItem>,
    /// The one currency of every line.
    pub currency_code: String,
    /// Positive total that fits in i64.
    pub total_minor: i64,
    /// Idempotency key, if sent.
    pub request_id: Option<String>,
}

impl NewOrder {
    /// Validates a CreateOrder: every field, one currency, a positive total without overflow.
    pub fn parse(user_id: &str, lines: &[LineInput<'_>], request_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        validation::id(&mut v, "user_id", user_id);
        let request_id = validation::request_id(&mut v, "request_id", request_id, false);
        if lines.is_empty() {
            v.add("line_items", "must have at least one line");
        } else if lines.len() > MAX_LINES {
            v.add("line_items", format!("must have at most {MAX_LINES} lines"));
        }
        let currency = lines.iter().find_map(|l| l.unit_price.map(|(_, c)| c)).unwrap_or_default();
        let mut items = Vec::with_capacity(lines.len().min(MAX_LINES));
        let mut total: Option<i64> = Some(0);
        for (i, line) in lines.iter().enumerate().take(MAX_LINES) {
            let at = |f: &str| format!("line_items[{i}].{f}");
            if line.sku.is_empty() {
                v.add(at("sku"), "is required");
            } else if line.sku.len() > MAX_SKU_LEN
                || !line.sku.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                v.add(at("sku"), format!("must be 1 to {MAX_SKU_LEN} letters, digits, '-', '_' or '.'"));
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                v.add(at("quantity"), format!("must be between 1 and {MAX_QUANTITY}"));
            }
            let price = match line.unit_price {
                None => {
                    v.add(at("unit_price"), "is required");
                    0
                }
                Some((amount, code)) => {
                    if amount < 0 {
                        v.add(at("unit_price.amount_minor"), "must not be negative");
                    }
                    if code != currency {
                        v.add(
                            at("unit_price.currency_code"),
                            format!("must be {currency}, the currency of the first line"),
                        );
                    }
                    amount
                }
            };
            total = total.and_then(|t| {
                line.quantity.checked_mul(price).and_then(|line_total| t.checked_add(line_total))
            });
            items.push(LineItem {
                sku: line.sku.to_owned(),
                quantity: line.quantity,
                unit_price_minor: price,
            });
        }
        if !lines.is_empty() {
            validation::currency_code(&mut v, "line_items[0].unit_price.currency_code", currency);
        }
        match total {
            None => v.add("line_items", "the order total does not fit in a 64-bit amount"),
            Some(t) if t <= 0 && !lines.is_empty() && v.is_empty() => {
                v.add("line_items", "the order total must be positive");
            }
            _ => {}
        }
        v.check(Self {
            user_id: user_id.to_owned(),
            items,
            currency_code: currency.to_owned(),
            total_minor: total.unwrap_or(0),
            request_id,
        })
    }

    /// Whether `order` is what this request would create: a replay of the same CreateOrder.
    pub fn matches(&self, order: &Order) -> bool {
        self.user_id == order.user_id
            && self.items == order.items
            && self.currency_code == order.currency_code
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh::mesh::ids::new_id;

    fn line(sku: &str, quantity: i64, price: i64, currency: &str) -> LineInput<'static> {
        LineInput {
            sku: Box::leak(sku.to_owned().into_boxed_str()),
            quantity,
            unit_price: Some((price, Box::leak(currency.to_owned().into_boxed_str()))),
        }
    }

    #[test]
    fn totals_are_summed() {
        let o = NewOrder::parse(&new_id(), &[line("a", 2, 150, "USD"), line("b", 1, 99, "USD")], "r")
            .expect("valid");
        assert_eq!(o.total_minor, 399);
        assert_eq!(o.currency_code, "USD");
        assert_eq!(o.items.len(), 2);
    }

    #[test]
    fn empty_orders_and_bad_lines_are_rejected() {
        let user = new_id();
        assert!(NewOrder::parse(&user, &[], "").expect_err("empty").has("line_items"));
        let err = NewOrder::parse(&user, &[line("", 0, -1, "USD"), line("b c", -3, 1, "USD")], "")
            .expect_err("bad lines");
        for f in [
            "line_items[0].sku",
            "line_items[0].quantity",
            "line_items[0].unit_price.amount_minor",
            "line_items[1].sku",
            "line_items[1].quantity",
        ] {
            assert!(err.has(f), "{f} missing from {err}");
        }
        let missing = LineInput { sku: "a", quantity: 1, unit_price: None };
        assert!(
            NewOrder::parse(&user, &[missing], "").expect_err("no price").has("line_items[0].unit_price")
        );
        let too_many: Vec<_> = (0..=MAX_LINES).map(|_| line("a", 1, 1, "USD")).collect();
        assert!(NewOrder::parse(&user, &too_many, "").expect_err("too many").has("line_items"));
    }

    #[test]
    fn mixed_currencies_are_rejected() {
        let err = NewOrder::parse(&new_id(), &[line("a", 1, 1, "USD"), line("b", 1, 1, "EUR")], "")
            .expect_err("mixed");
        assert!(err.has("line_items[1].unit_price.currency_code"));
        let err = NewOrder::parse(&new_id(), &[line("a", 1, 1, "usd")], "").expect_err("bad code");
        assert!(err.has("line_items[0].unit_price.currency_code"));
    }

    #[test]
    fn overflowing_and_zero_totals_are_rejected() {
        let user = new_id();
        let err = NewOrder::parse(&user, &[line("a", 2, i64::MAX / 2 + 1, "USD")], "").expect_err("mul");
        assert!(err.has("line_items"), "{err}");
        let err = NewOrder::parse(&user, &[line("a", 1, i64::MAX, "USD"), line("b", 1, 1, "USD")], "")
            .expect_err("add");
        assert!(err.has("line_items"), "{err}");
        let err = NewOrder::parse(&user, &[line("a", 1, 0, "USD")], "").expect_err("zero");
        assert!(err.has("line_items"), "{err}");
    }

    #[test]
    fn replays_must_match() {
        let user = new_id();
        let req = NewOrder::parse(&user, &[line("a", 1, 5, "USD")], "r").expect("valid");
        let order = Order {
            id: new_id(),
            request_id: Some("r".into()),
            user_id: user.clone(),
            items: req.items.clone(),
            currency_code: "USD".into(),
            total_minor: 5,
            state: State::Paid,
            payment_id: None,
            decline_reason: None,
            cancel_request_id: None,
            create_time_ms: 0,
            update_time_ms: 0,
        };
        assert!(req.matches(&order));
        let other = NewOrder::parse(&user, &[line("a", 2, 5, "USD")], "r").expect("valid");
        assert!(!other.matches(&order));
    }

    #[test]
    fn states_round_trip() {
        for s in [State::PendingPayment, State::Paid, State::PaymentDeclined, State::Cancelled] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
