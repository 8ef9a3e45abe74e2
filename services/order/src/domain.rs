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

/// What the inventory service did with a paid order, as its events said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fulfilment {
    /// Its stock is allocated.
    Allocated,
    /// It waits for stock.
    Backordered,
    /// Cancelled, its allocated stock returned.
    Released,
}

impl Fulfilment {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allocated => "ALLOCATED",
            Self::Backordered => "BACKORDERED",
            Self::Released => "RELEASED",
        }
    }

    /// The fulfilment a stored string names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Allocated, Self::Backordered, Self::Released].into_iter().find(|f| f.as_str() == s)
    }

    /// What an order has once `next` is recorded on it while it has `self`: RELEASED is final,
    /// so that an allocation delivered late (redelivered after a killed consumer's ack wait,
    /// overtaken by the release behind it) does not undo it.
    pub fn then(self, next: Self) -> Self {
        if self == Self::Released { self } else { next }
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
    /// What the inventory did with it, once its event arrived.
    pub fulfilment: Option<Fulfilment>,
}

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 10_000;

/// A line of a CreateOrder, validated: what and how many, and the price the caller expects, if
/// it said one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    /// Stock keeping unit, as the catalog names it.
    pub sku: String,
    /// How many, 1 to [`MAX_QUANTITY`].
    pub quantity: i64,
    /// The unit price the caller expects, as (minor units, currency code).
    pub expected_price: Option<(i64, String)>,
}

/// A validated CreateOrder, before the catalog prices it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// Who orders.
    pub user_id: String,
    /// The lines, in the order given.
    pub lines: Vec<RequestedLine>,
    /// Idempotency key, if sent.
    pub request_id: Option<String>,
}

/// What the catalog says of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogPrice {
    /// Price of one unit, minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
    /// Whether it may be ordered.
    pub active: bool,
}

/// Why the catalog's prices cannot make an order of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpriced {
    /// The catalog has no such product, or it is inactive.
    Unavailable(String),
    /// The caller expected another price than the catalog's.
    PriceChanged {
        /// The product.
        sku: String,
        /// What the caller expected, (minor units, currency).
        expected: (i64, String),
        /// What the catalog says.
        actual: (i64, String),
    },
    /// The product is priced in another currency than the order's first line.
    CurrencyMismatch(String),
    /// The priced order breaks a rule of its own (its total).
    Invalid(Violations),
}

impl OrderRequest {
    /// Validates a CreateOrder: the user, the request id, and each line's SKU (the catalog's
    /// rule: 1 to 64 of `A-Z`, `0-9`, `-`, `_`, `.`), quantity and expected price, if given.
    pub fn parse(user_id: &str, lines: &[LineInput<'_>], request_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        validation::id(&mut v, "user_id", user_id);
        let request_id = validation::request_id(&mut v, "request_id", request_id, false);
        if lines.is_empty() {
            v.add("line_items", "must have at least one line");
        } else if lines.len() > MAX_LINES {
            v.add("line_items", format!("must have at most {MAX_LINES} lines"));
        }
        let mut parsed = Vec::with_capacity(lines.len().min(MAX_LINES));
        for (i, line) in lines.iter().enumerate().take(MAX_LINES) {
            let at = |f: &str| format!("line_items[{i}].{f}");
            // The catalog's rule: a SKU it could never hold is the caller's mistake.
            shopmesh_shop::sku(&mut v, &at("sku"), line.sku);
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                v.add(at("quantity"), format!("must be between 1 and {MAX_QUANTITY}"));
            }
            if let Some((amount, code)) = line.unit_price {
                if amount < 0 {
                    v.add(at("unit_price.amount_minor"), "must not be negative");
                }
                shopmesh_shop::currency_code(&mut v, &at("unit_price.currency_code"), code);
            }
            parsed.push(RequestedLine {
                sku: line.sku.to_owned(),
                quantity: line.quantity,
                expected_price: line.unit_price.map(|(amount, code)| (amount, code.to_owned())),
            });
        }
        v.check(Self { user_id: user_id.to_owned(), lines: parsed, request_id })
    }

    /// The distinct SKUs of the request, in the order first named.
    pub fn skus(&self) -> Vec<&str> {
        let mut skus: Vec<&str> = Vec::with_capacity(self.lines.len());
        for line in &self.lines {
            if !skus.contains(&line.sku.as_str()) {
                skus.push(&line.sku);
            }
        }
        skus
    }

    /// The order this request makes at the catalog's `prices`: every line priced by the
    /// catalog, refused if a product is missing or inactive, if the caller expected another
    /// price, or if the products are priced in different currencies.
    pub fn price(
        &self,
        prices: &std::collections::HashMap<String, CatalogPrice>,
    ) -> Result<NewOrder, Unpriced> {
        let mut currency: Option<&str> = None;
        let mut items = Vec::with_capacity(self.lines.len());
        let mut total: Option<i64> = Some(0);
        for line in &self.lines {
            let product = prices
                .get(&line.sku)
                .filter(|p| p.active)
                .ok_or_else(|| Unpriced::Unavailable(line.sku.clone()))?;
            let actual = (product.amount_minor, product.currency_code.clone());
            if let Some(expected) = &line.expected_price
                && *expected != actual
            {
                return Err(Unpriced::PriceChanged {
                    sku: line.sku.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            if *currency.get_or_insert(&product.currency_code) != product.currency_code {
                return Err(Unpriced::CurrencyMismatch(line.sku.clone()));
            }
            total = total.and_then(|t| {
                line.quantity
                    .checked_mul(product.amount_minor)
                    .and_then(|line_total| t.checked_add(line_total))
            });
            items.push(LineItem {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_minor: product.amount_minor,
            });
        }
        // The request was checked when parsed: only what the prices add is checked here, the
        // catalog's currency and the total.
        let currency = currency.unwrap_or_default();
        let mut v = Violations::new();
        shopmesh_shop::currency_code(&mut v, "line_items[0].unit_price.currency_code", currency);
        match total {
            None => v.add("line_items", "the order total does not fit in a 64-bit amount"),
            Some(t) if t <= 0 && v.is_empty() => v.add("line_items", "the order total must be positive"),
            _ => {}
        }
        v.check(NewOrder {
            user_id: self.user_id.clone(),
            items,
            currency_code: currency.to_owned(),
            total_minor: total.unwrap_or(0),
            request_id: self.request_id.clone(),
        })
        .map_err(Unpriced::Invalid)
    }

    /// Whether `order` is what this request created: a replay of the same CreateOrder (same
    /// user, SKUs and quantities; an expected price, where given, is the one charged). Prices
    /// that changed since do not matter: the stored order is returned as it was.
    pub fn matches(&self, order: &Order) -> bool {
        self.user_id == order.user_id
            && self.lines.len() == order.items.len()
            && self.lines.iter().zip(&order.items).all(|(line, item)| {
                line.sku == item.sku
                    && line.quantity == item.quantity
                    && line.expected_price.as_ref().is_none_or(|(amount, code)| {
                        *amount == item.unit_price_minor && *code == order.currency_code
                    })
            })
    }
}

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

/// An order ready to store: every line priced by the catalog ([`OrderRequest::price`], its only
/// maker).
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

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh::mesh::ids::new_id;

    fn priced(amount_minor: i64, currency: &str, active: bool) -> CatalogPrice {
        CatalogPrice { amount_minor, currency_code: currency.into(), active }
    }

    /// The order of `lines` (SKU, quantity) at the catalog's `prices` (SKU, price, currency).
    fn order_of(lines: &[(&'static str, i64)], prices: &[(&str, i64, &str)]) -> Result<NewOrder, Unpriced> {
        let lines: Vec<_> =
            lines.iter().map(|&(sku, quantity)| LineInput { sku, quantity, unit_price: None }).collect();
        let prices =
            prices.iter().map(|&(sku, amount, code)| (sku.to_owned(), priced(amount, code, true))).collect();
        OrderRequest::parse(&new_id(), &lines, "r").expect("valid").price(&prices)
    }

    fn invalid(priced: Result<NewOrder, Unpriced>) -> Violations {
        match priced {
            Err(Unpriced::Invalid(v)) => v,
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[test]
    fn totals_are_summed() {
        let o = order_of(&[("A", 2), ("B", 1)], &[("A", 150, "USD"), ("B", 99, "USD")]).expect("valid");
        assert_eq!(o.total_minor, 399);
        assert_eq!(o.currency_code, "USD");
        assert_eq!(o.items.len(), 2);
    }

    #[test]
    fn empty_orders_and_bad_lines_are_rejected() {
        let user = new_id();
        assert!(OrderRequest::parse(&user, &[], "").expect_err("empty").has("line_items"));
        let line = |sku, quantity, price| LineInput { sku, quantity, unit_price: Some((price, "USD")) };
        let err =
            OrderRequest::parse(&user, &[line("", 0, -1), line("B C", -3, 1)], "").expect_err("bad lines");
        for f in [
            "line_items[0].sku",
            "line_items[0].quantity",
            "line_items[0].unit_price.amount_minor",
            "line_items[1].sku",
            "line_items[1].quantity",
        ] {
            assert!(err.has(f), "{f} missing from {err}");
        }
        let too_many: Vec<_> = (0..=MAX_LINES).map(|_| line("A", 1, 1)).collect();
        assert!(OrderRequest::parse(&user, &too_many, "").expect_err("too many").has("line_items"));
    }

    #[test]
    fn mixed_currencies_are_rejected() {
        let mixed = order_of(&[("A", 1), ("B", 1)], &[("A", 1, "USD"), ("B", 1, "EUR")]);
        assert_eq!(mixed, Err(Unpriced::CurrencyMismatch("B".into())));
        let err = invalid(order_of(&[("A", 1)], &[("A", 1, "usd")]));
        assert!(err.has("line_items[0].unit_price.currency_code"), "{err}");
    }

    #[test]
    fn overflowing_and_zero_totals_are_rejected() {
        let err = invalid(order_of(&[("A", 2)], &[("A", i64::MAX / 2 + 1, "USD")]));
        assert!(err.has("line_items"), "{err}");
        let err = invalid(order_of(&[("A", 1), ("B", 1)], &[("A", i64::MAX, "USD"), ("B", 1, "USD")]));
        assert!(err.has("line_items"), "{err}");
        let err = invalid(order_of(&[("A", 1)], &[("A", 0, "USD")]));
        assert!(err.has("line_items"), "{err}");
    }

    #[test]
    fn replays_must_match() {
        let user = new_id();
        let order = Order {
            id: new_id(),
            request_id: Some("r".into()),
            user_id: user.clone(),
            items: vec![LineItem { sku: "A".into(), quantity: 1, unit_price_minor: 5 }],
            currency_code: "USD".into(),
            total_minor: 5,
            state: State::Paid,
            payment_id: None,
            decline_reason: None,
            cancel_request_id: None,
            create_time_ms: 0,
            update_time_ms: 0,
            fulfilment: None,
        };
        let ask = |quantity, price: Option<(i64, &'static str)>| {
            OrderRequest::parse(&user, &[LineInput { sku: "A", quantity, unit_price: price }], "r")
                .expect("valid")
        };
        assert!(ask(1, None).matches(&order), "a replay without prices matches whatever was charged");
        assert!(ask(1, Some((5, "USD"))).matches(&order));
        assert!(!ask(1, Some((6, "USD"))).matches(&order), "another expected price");
        assert!(!ask(2, None).matches(&order), "another quantity");
    }

    #[test]
    fn the_catalog_prices_every_line() {
        let user = new_id();
        let lines = [
            LineInput { sku: "BOOK-1", quantity: 2, unit_price: None },
            LineInput { sku: "PEN.2", quantity: 3, unit_price: Some((150, "USD")) },
        ];
        let req = OrderRequest::parse(&user, &lines, "r-1").expect("valid");
        assert_eq!(req.skus(), ["BOOK-1", "PEN.2"]);
        let prices: std::collections::HashMap<String, CatalogPrice> = [
            ("BOOK-1".to_owned(), priced(1000, "USD", true)),
            ("PEN.2".to_owned(), priced(150, "USD", true)),
        ]
        .into();
        let new = req.price(&prices).expect("priced");
        assert_eq!(new.total_minor, 2 * 1000 + 3 * 150);
        assert_eq!(new.items[0].unit_price_minor, 1000, "a missing client price is filled from the catalog");
        assert_eq!(new.request_id.as_deref(), Some("r-1"));

        let mut changed = prices.clone();
        changed.insert("PEN.2".into(), priced(175, "USD", true));
        assert_eq!(
            req.price(&changed),
            Err(Unpriced::PriceChanged {
                sku: "PEN.2".into(),
                expected: (150, "USD".into()),
                actual: (175, "USD".into())
            })
        );
        let mut inactive = prices.clone();
        inactive.insert("BOOK-1".into(), priced(1000, "USD", false));
        assert_eq!(req.price(&inactive), Err(Unpriced::Unavailable("BOOK-1".into())));
        let mut missing = prices.clone();
        missing.remove("PEN.2");
        assert_eq!(req.price(&missing), Err(Unpriced::Unavailable("PEN.2".into())));
        let mut euros = prices;
        euros.insert("PEN.2".into(), priced(150, "EUR", true));
        let unpriced = OrderRequest::parse(&user, &lines[..1], "").expect("valid");
        assert!(unpriced.price(&euros).is_ok());
        let both = OrderRequest::parse(
            &user,
            &[lines[0].clone(), LineInput { unit_price: None, ..lines[1].clone() }],
            "",
        )
        .expect("valid");
        assert_eq!(both.price(&euros), Err(Unpriced::CurrencyMismatch("PEN.2".into())));
    }

    #[test]
    fn requests_follow_the_catalogs_sku_rule() {
        let user = new_id();
        let line = |sku| LineInput { sku, quantity: 1, unit_price: None };
        let long = "A".repeat(65);
        for bad in ["", "lower", "A B", long.as_str()] {
            let err = OrderRequest::parse(&user, &[line(bad)], "").expect_err(bad);
            assert!(err.has("line_items[0].sku"), "{bad:?}: {err}");
        }
        assert!(OrderRequest::parse(&user, &[line("A-Z_0.9")], "").is_ok());
        let negative = LineInput { sku: "A", quantity: 1, unit_price: Some((-1, "usd")) };
        let err = OrderRequest::parse(&user, &[negative], "").expect_err("bad price");
        assert!(
            err.has("line_items[0].unit_price.amount_minor")
                && err.has("line_items[0].unit_price.currency_code")
        );
    }

    #[test]
    fn states_round_trip() {
        for s in [State::PendingPayment, State::Paid, State::PaymentDeclined, State::Cancelled] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }

    /// RELEASED is final; otherwise the newer event decides.
    #[test]
    fn a_release_is_final_and_otherwise_the_newer_fulfilment_wins() {
        use Fulfilment::{Allocated, Backordered, Released};
        assert_eq!(Allocated.then(Released), Released);
        assert_eq!(Released.then(Allocated), Released);
        assert_eq!(Released.then(Backordered), Released);
        assert_eq!(Backordered.then(Allocated), Allocated);
        assert_eq!(Allocated.then(Backordered), Backordered);
    }
}
