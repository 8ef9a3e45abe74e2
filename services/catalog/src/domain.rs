//! Products and their rules: SKUs, prices, names, update masks, etags, list pages and batch
//! reads. Knows nothing of protobuf: `convert` and `grpc` translate.

use std::fmt;

use shopmesh::mesh::validation::{self, Violations};

/// Longest SKU, in characters (all ASCII, so also bytes).
pub use shopmesh_shop::MAX_SKU_LEN;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 200;

/// Highest unit price in minor units: 10^12, so that an order of 100 lines of 10 000 units
/// each (the order service's limits) still totals within `i64` (10^18 < 9.2 × 10^18).
pub const MAX_UNIT_PRICE_MINOR: i64 = 1_000_000_000_000;

/// Most SKUs one BatchGetProducts may name (AIP-231 asks for a documented limit).
pub const MAX_BATCH: usize = 100;

/// The ISO 4217 codes of currencies in circulation that a price may be in (list one, 2025).
/// Left out: withdrawn codes (HRK, ZWL, ANG, SLL, CUC…), funds codes (BOV, CHE, CHW, CLF,
/// COU, MXV, USN, UYI, UYW), precious metals, the SDR and the `X*` testing and "no currency"
/// codes; the regional currencies XAF, XCD, XCG, XOF and XPF are in. Sorted for binary search.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
    "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP",
    "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD",
    "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK",
    "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP",
    "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP",
    "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD",
    "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG",
    "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// A stock keeping unit: 1 to [`MAX_SKU_LEN`] of `A-Z`, `0-9`, `-`, `_`, `.`; the product's id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sku(String);

impl Sku {
    /// The SKU `value` is, or what is wrong with it (to report against a field).
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        match shopmesh_shop::sku_problem(value) {
            Some(problem) => Err(problem),
            None => Ok(Self(value.to_owned())),
        }
    }

    /// Checks `value` as [`Sku::parse`] does, recording a violation against `field`.
    pub fn check(v: &mut Violations, field: &str, value: &str) -> Option<Self> {
        Self::parse(value).map_err(|problem| v.add(field, problem)).ok()
    }

    /// The SKU's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid unit price: positive, at most [`MAX_UNIT_PRICE_MINOR`], in one of [`CURRENCIES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Minor units of the currency.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency_code: String,
}

impl Price {
    /// Checks a price sent as `(amount_minor, currency_code)` (`None`: no price in the message),
    /// recording violations against `field` and its sub-fields.
    pub fn check(v: &mut Violations, field: &str, price: Option<(i64, &str)>) -> Option<Self> {
        let Some((amount_minor, currency_code)) = price else {
            v.add(field, "is required");
            return None;
        };
        let mut valid = true;
        if amount_minor <= 0 {
            v.add(format!("{field}.amount_minor"), "must be positive");
            valid = false;
        } else if amount_minor > MAX_UNIT_PRICE_MINOR {
            v.add(
                format!("{field}.amount_minor"),
                format!("must be at most {MAX_UNIT_PRICE_MINOR}, so that order totals cannot overflow"),
            );
            valid = false;
        }
        let code_field = format!("{field}.currency_code");
        if currency_code.len() != 3 || !currency_code.bytes().all(|b| b.is_ascii_uppercase()) {
            // The shared check words what a code looks like; only codes of that shape are looked up.
            shopmesh_shop::currency_code(v, &code_field, currency_code);
            valid = false;
        } else if CURRENCIES.binary_search(&currency_code).is_err() {
            v.add(code_field, "is not the ISO 4217 code of a currency in circulation");
            valid = false;
        }
        valid.then(|| Self { amount_minor, currency_code: currency_code.to_owned() })
    }
}

fn check_display_name(v: &mut Violations, field: &str, name: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        v.add(field, "is required");
    } else if name.chars().count() > MAX_DISPLAY_NAME {
        v.add(field, format!("must be at most {MAX_DISPLAY_NAME} characters"));
    } else if name.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
    name.to_owned()
}

/// A stored product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Its id.
    pub sku: Sku,
    /// The name shown to people.
    pub display_name: String,
    /// The price of one unit.
    pub unit_price: Price,
    /// Only active products are offered.
    pub active: bool,
    /// Counts changes from 1; the etag says which one a reader saw.
    pub revision: i64,
    /// Creation time, epoch milliseconds.
    pub create_time_ms: i64,
    /// Last change, epoch milliseconds.
    pub update_time_ms: i64,
}

impl Product {
    /// The etag of this version (AIP-154). The revision is enough: it changes on every update,
    /// and a SKU is never created twice (there is no delete).
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }
}

/// The revision an etag names, or `None` if this service did not issue it.
fn parse_etag(etag: &str) -> Option<i64> {
    let digits = etag.strip_prefix('"')?.strip_suffix('"')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Past i64::MAX (or absurdly long) does not parse: no product ever had that revision.
    digits.parse().ok().filter(|r| *r > 0)
}

/// A validated CreateProduct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// The SKU to create.
    pub sku: Sku,
    /// Trimmed display name.
    pub display_name: String,
    /// The unit price.
    pub unit_price: Price,
    /// Whether it is offered at once.
    pub active: bool,
}

impl NewProduct {
    /// Validates a CreateProduct's product, reporting every bad field under `product.`;
    /// `unit_price` is `None` when the message had none.
    pub fn parse(
        sku: &str,
        display_name: &str,
        unit_price: Option<(i64, &str)>,
        active: bool,
    ) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let sku = Sku::check(&mut v, "product.sku", sku);
        let display_name = check_display_name(&mut v, "product.display_name", display_name);
        let unit_price = Price::check(&mut v, "product.unit_price", unit_price);
        match (sku, unit_price) {
            (Some(sku), Some(unit_price)) if v.is_empty() => {
                Ok(Self { sku, display_name, unit_price, active })
            }
            _ => Err(v),
        }
    }

    /// The product as first stored at `now_ms`.
    pub fn into_product(self, now_ms: i64) -> Product {
        Product {
            sku: self.sku,
            display_name: self.display_name,
            unit_price: self.unit_price,
            active: self.active,
            revision: 1,
            create_time_ms: now_ms,
            update_time_ms: now_ms,
        }
    }
}

/// Which fields an UpdateProduct changes, and to what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProductPatch {
    /// New display name, if it changes.
    pub display_name: Option<String>,
    /// New unit price, if it changes.
    pub unit_price: Option<Price>,
    /// New active flag, if it changes.
    pub active: Option<bool>,
}

/// A validated UpdateProduct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The product to change.
    pub sku: Sku,
    /// The revision the caller's etag names: change only that one. `None`: any.
    pub expected_revision: Option<i64>,
    /// The change.
    pub patch: ProductPatch,
}

/// What an UpdateProduct carries, before validation.
#[derive(Debug, Clone, Copy)]
pub struct UpdateInput<'a> {
    /// `product.sku`.
    pub sku: &'a str,
    /// `product.etag`; empty for an unconditional update.
    pub etag: &'a str,
    /// `update_mask.paths`.
    pub paths: &'a [String],
    /// `product.display_name`.
    pub display_name: &'a str,
    /// `product.unit_price`, if present.
    pub unit_price: Option<(i64, &'a str)>,
    /// `product.active`.
    pub active: bool,
}

impl Update {
    /// Validates an UpdateProduct (AIP-134): an empty mask means the fields holding
    /// non-default values; `*` means every updatable field. Violations name request fields
    /// (`product.display_name`, `update_mask`).
    pub fn parse(input: UpdateInput<'_>) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let sku = Sku::check(&mut v, "product.sku", input.sku);
        let expected_revision = if input.etag.is_empty() {
            None
        } else {
            let revision = parse_etag(input.etag);
            if revision.is_none() {
                v.add("product.etag", "is not an etag this service issued; send the one read, or none");
            }
            revision
        };
        let (mut name, mut price, mut active) = (false, false, false);
        if input.paths.is_empty() {
            name = !input.display_name.is_empty();
            price = input.unit_price.is_some();
            active = input.active;
        }
        for path in input.paths {
            match path.as_str() {
                "display_name" => name = true,
                "unit_price" => price = true,
                "active" => active = true,
                "*" => (name, price, active) = (true, true, true),
                "sku" | "create_time" | "update_time" | "etag" => {
                    v.add("update_mask", format!("{path:?} cannot be changed"));
                }
                _ => v.add(
                    "update_mask",
                    format!("{path:?} is not one of display_name, unit_price, active or *"),
                ),
            }
        }
        let patch = ProductPatch {
            display_name: name
                .then(|| check_display_name(&mut v, "product.display_name", input.display_name)),
            unit_price: if price {
                Price::check(&mut v, "product.unit_price", input.unit_price)
            } else {
                None
            },
            active: active.then_some(input.active),
        };
        if !(name || price || active) && v.is_empty() {
            v.add("update_mask", "names no field to update");
        }
        match sku {
            Some(sku) if v.is_empty() => Ok(Self { sku, expected_revision, patch }),
            _ => Err(v),
        }
    }
}

/// Which products a list returns, by their active flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveFilter {
    /// Every product.
    All,
    /// Only active ones.
    Active,
    /// Only inactive ones.
    Inactive,
}

impl ActiveFilter {
    /// The `active` value the filter keeps, `None` for all.
    pub fn active(self) -> Option<bool> {
        match self {
            Self::All => None,
            Self::Active => Some(true),
            Self::Inactive => Some(false),
        }
    }

    fn token_prefix(self) -> &'static str {
        match self {
            Self::All => "all:",
            Self::Active => "active:",
            Self::Inactive => "inactive:",
        }
    }
}

/// A validated ListProducts: a page of products in SKU order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The most products to return.
    pub size: u32,
    /// The SKU to continue after; `None` for the first page.
    pub after: Option<Sku>,
    /// Which products.
    pub filter: ActiveFilter,
}

impl ListQuery {
    /// Validates a ListProducts; `filter` is `None` for a value the API does not define.
    /// A page token is the last SKU of the previous page (keyset pagination, stable while
    /// products are added) behind the filter it was issued for, so that a token is not
    /// silently reused with another filter (AIP-158).
    pub fn parse(page_size: i32, page_token: &str, filter: Option<ActiveFilter>) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let size = validation::page_size(&mut v, "page_size", page_size);
        if filter.is_none() {
            v.add(
                "active_filter",
                "must be ACTIVE_FILTER_UNSPECIFIED, ACTIVE_FILTER_ACTIVE or ACTIVE_FILTER_INACTIVE",
            );
        }
        let filter = filter.unwrap_or(ActiveFilter::All);
        let after = if page_token.is_empty() {
            None
        } else {
            let issued_for = [ActiveFilter::All, ActiveFilter::Active, ActiveFilter::Inactive]
                .into_iter()
                .find_map(|f| Some((f, page_token.strip_prefix(f.token_prefix())?)));
            match issued_for {
                Some((f, sku)) => match Sku::parse(sku) {
                    Ok(sku) if f == filter => Some(sku),
                    Ok(_) => {
                        v.add("page_token", "was issued for another active_filter");
                        None
                    }
                    Err(_) => {
                        v.add("page_token", "is not a token returned by this service");
                        None
                    }
                },
                None => {
                    v.add("page_token", "is not a token returned by this service");
                    None
                }
            }
        };
        v.check(Self { size, after, filter })
    }

    /// The token for the page after the one ending in `last`.
    pub fn next_token(&self, last: &Sku) -> String {
        format!("{}{last}", self.filter.token_prefix())
    }
}

/// Validates a BatchGetProducts' SKUs: at most [`MAX_BATCH`], each valid (`skus[i]`).
pub fn batch_skus(skus: &[String]) -> Result<Vec<Sku>, Violations> {
    let mut v = Violations::new();
    if skus.len() > MAX_BATCH {
        v.add("skus", format!("must name at most {MAX_BATCH} SKUs, not {}", skus.len()));
    }
    let parsed: Vec<Sku> =
        skus.iter().enumerate().filter_map(|(i, s)| Sku::check(&mut v, &format!("skus[{i}]"), s)).collect();
    v.check(parsed)
}

/// The products of a batch read in request order, one per requested SKU (repeats included),
/// or every requested SKU not among `found`, each once, in request order (AIP-231: all or
/// nothing).
pub fn in_request_order(requested: &[Sku], found: Vec<Product>) -> Result<Vec<Product>, Vec<Sku>> {
    let by_sku: std::collections::HashMap<Sku, Product> =
        found.into_iter().map(|p| (p.sku.clone(), p)).collect();
    let mut missing: Vec<Sku> = Vec::new();
    for sku in requested {
        if !by_sku.contains_key(sku) && !missing.contains(sku) {
            missing.push(sku.clone());
        }
    }
    if missing.is_empty() {
        Ok(requested.iter().filter_map(|sku| by_sku.get(sku).cloned()).collect())
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopmesh::mesh::ids;

    #[test]
    fn skus_follow_the_rules() {
        for ok in ["A", "BOOK-42", "PEN.7_X", &"Z".repeat(64), "0"] {
            assert_eq!(Sku::parse(ok).map(|s| s.0), Ok(ok.to_owned()), "{ok:?}");
        }
        for bad in ["", "book-42", "A B", "A/B", "Ä", "A\n", &"Z".repeat(65), "É"] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn currencies_are_sorted_unique_codes() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]), "sorted and unique, for binary search");
        assert!(CURRENCIES.iter().all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        for code in ["USD", "EUR", "JPY", "GBP", "XOF", "ZWG"] {
            assert!(CURRENCIES.binary_search(&code).is_ok(), "{code}");
        }
        for code in ["HRK", "ZWL", "XXX", "XTS", "XAU", "BOV", "ABC"] {
            assert!(CURRENCIES.binary_search(&code).is_err(), "{code}");
        }
    }

    #[test]
    fn prices_must_be_positive_bounded_and_in_a_currency() {
        let mut v = Violations::new();
        assert_eq!(
            Price::check(&mut v, "p", Some((1, "USD"))),
            Some(Price { amount_minor: 1, currency_code: "USD".into() })
        );
        assert!(Price::check(&mut v, "p", Some((MAX_UNIT_PRICE_MINOR, "JPY"))).is_some());
        assert!(v.is_empty());
        for (amount, code, field) in [
            (0, "USD", "p.amount_minor"),
            (-1, "USD", "p.amount_minor"),
            (i64::MIN, "USD", "p.amount_minor"),
            (MAX_UNIT_PRICE_MINOR + 1, "USD", "p.amount_minor"),
            (i64::MAX, "USD", "p.amount_minor"),
            (1, "usd", "p.currency_code"),
            (1, "", "p.currency_code"),
            (1, "ABC", "p.currency_code"),
            (1, "XXX", "p.currency_code"),
        ] {
            let mut v = Violations::new();
            assert_eq!(Price::check(&mut v, "p", Some((amount, code))), None, "{amount} {code}");
            assert!(v.has(field) && v.iter().count() == 1, "{amount} {code}: {v}");
        }
        let mut v = Violations::new();
        assert_eq!(Price::check(&mut v, "p", Some((0, "abc"))), None);
        assert!(v.has("p.amount_minor") && v.has("p.currency_code"), "both reported: {v}");
        let mut v = Violations::new();
        assert_eq!(Price::check(&mut v, "p", None), None);
        assert!(v.has("p"));
    }

    #[test]
    fn new_products_report_every_bad_field() {
        let p = NewProduct::parse("BOOK-1", "  A book ", Some((1999, "EUR")), true).expect("valid");
        assert_eq!((p.sku.as_str(), p.display_name.as_str(), p.active), ("BOOK-1", "A book", true));
        let err = NewProduct::parse("book 1", " ", Some((0, "eur")), false).expect_err("invalid");
        for f in [
            "product.sku",
            "product.display_name",
            "product.unit_price.amount_minor",
            "product.unit_price.currency_code",
        ] {
            assert!(err.has(f), "{f} not reported: {err}");
        }
        assert!(NewProduct::parse("A", "A", None, true).expect_err("no price").has("product.unit_price"));
        assert!(
            NewProduct::parse("A", &"é".repeat(MAX_DISPLAY_NAME), Some((1, "USD")), true).is_ok(),
            "the limit counts characters"
        );
        assert!(
            NewProduct::parse("A", &"x".repeat(MAX_DISPLAY_NAME + 1), Some((1, "USD")), true)
                .expect_err("long")
                .has("product.display_name")
        );
        assert!(NewProduct::parse("A", "a\u{7}b", Some((1, "USD")), true).is_err(), "control character");
    }

    fn update(
        sku: &str,
        etag: &str,
        paths: &[&str],
        name: &str,
        price: Option<(i64, &str)>,
        active: bool,
    ) -> Result<Update, Violations> {
        let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
        Update::parse(UpdateInput { sku, etag, paths: &paths, display_name: name, unit_price: price, active })
    }

    #[test]
    fn update_masks_and_etags() {
        let u = update("A", "", &["active"], "", None, false).expect("valid");
        assert_eq!(u.patch, ProductPatch { active: Some(false), ..ProductPatch::default() });
        assert_eq!(u.expected_revision, None);

        let u = update("A", "\"7\"", &[], "New", Some((5, "USD")), false).expect("implied mask");
        assert_eq!(u.expected_revision, Some(7));
        assert_eq!(u.patch.display_name.as_deref(), Some("New"));
        assert_eq!(u.patch.unit_price, Some(Price { amount_minor: 5, currency_code: "USD".into() }));
        assert_eq!(u.patch.active, None, "implied mask leaves a false active alone");

        let u = update("A", "", &["*"], "N", Some((5, "USD")), true).expect("wildcard");
        assert_eq!(u.patch.active, Some(true));
        assert!(update("A", "", &["*"], "N", None, true).expect_err("no price").has("product.unit_price"));

        for (paths, etag, field) in [
            (&["sku"][..], "", "update_mask"),
            (&["unit_price.amount_minor"][..], "", "update_mask"),
            (&["etag"][..], "", "update_mask"),
            (&[][..], "", "update_mask"),
            (&["active"][..], "7", "product.etag"),
            (&["active"][..], "\"0\"", "product.etag"),
            (&["active"][..], "\"-1\"", "product.etag"),
            (&["active"][..], "\"99999999999999999999\"", "product.etag"),
            (&["display_name"][..], "", "product.display_name"),
            (&["unit_price"][..], "", "product.unit_price"),
        ] {
            let err = update("A", etag, paths, "", None, false).expect_err("invalid");
            assert!(err.has(field), "{paths:?} {etag:?}: {err}");
        }
        let err = update("a", "", &["active"], "", None, true).expect_err("bad sku");
        assert!(err.has("product.sku"));
    }

    #[test]
    fn etags_round_trip() {
        let p = NewProduct::parse("A", "A", Some((1, "USD")), true).expect("valid").into_product(5);
        assert_eq!(p.etag(), "\"1\"");
        assert_eq!(parse_etag(&p.etag()), Some(1));
        assert_eq!(parse_etag(&Product { revision: i64::MAX, ..p }.etag()), Some(i64::MAX));
        for bad in ["1", "\"\"", "\"+1\"", "\"0\"", "\"9223372036854775808\"", "W/\"1\""] {
            assert_eq!(parse_etag(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_tokens_carry_their_filter() {
        let q = ListQuery::parse(0, "", Some(ActiveFilter::Active)).expect("valid");
        assert_eq!((q.size, q.after.clone()), (ids::DEFAULT_PAGE_SIZE, None));
        let token = q.next_token(&Sku::parse("B-2").expect("sku"));
        let next = ListQuery::parse(10, &token, Some(ActiveFilter::Active)).expect("valid");
        assert_eq!(next.after.as_ref().map(Sku::as_str), Some("B-2"));
        let err = ListQuery::parse(10, &token, Some(ActiveFilter::Inactive)).expect_err("other filter");
        assert!(err.has("page_token"));
        for bad in ["B-2", "all:", "all:b", "nope:B", "all:B C"] {
            assert!(ListQuery::parse(1, bad, Some(ActiveFilter::All)).expect_err(bad).has("page_token"));
        }
        let err = ListQuery::parse(-1, "", None).expect_err("invalid");
        assert!(err.has("page_size") && err.has("active_filter"));
    }

    #[test]
    fn batches_are_bounded_and_checked() {
        let ok: Vec<String> = (0..MAX_BATCH).map(|i| format!("S{i}")).collect();
        assert_eq!(batch_skus(&ok).expect("valid").len(), MAX_BATCH);
        let mut over = ok.clone();
        over.push("S".into());
        assert!(batch_skus(&over).expect_err("over").has("skus"));
        let err = batch_skus(&["A".into(), "b".into(), String::new()]).expect_err("bad");
        assert!(err.has("skus[1]") && err.has("skus[2]") && !err.has("skus[0]"));
        assert_eq!(batch_skus(&[]).expect("empty"), Vec::<Sku>::new());
    }

    #[test]
    fn batch_results_follow_the_request() {
        let sku = |s: &str| Sku::parse(s).expect("sku");
        let product =
            |s: &str| NewProduct::parse(s, s, Some((1, "USD")), true).expect("valid").into_product(0);
        let found = vec![product("A"), product("B")];
        let got = in_request_order(&[sku("B"), sku("A"), sku("B")], found.clone()).expect("all found");
        let skus: Vec<&str> = got.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus, ["B", "A", "B"]);
        let missing =
            in_request_order(&[sku("C"), sku("A"), sku("D"), sku("C")], found).expect_err("missing");
        assert_eq!(missing, [sku("C"), sku("D")]);
    }
}
