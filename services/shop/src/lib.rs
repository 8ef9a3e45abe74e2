//! The shop's rules that more than one service enforces, so each is written once: a SKU (the
//! catalog names products by it, orders reference them) and an ISO 4217 currency code (prices,
//! orders and payments). The runtime's `validation` holds only what every service of any mesh
//! checks (ids, idempotency keys, pages).

use shopmesh::mesh::validation::Violations;

/// Checks an ISO 4217 alphabetic currency code: three upper-case ASCII letters.
pub fn currency_code(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        v.add(field, "must be an ISO 4217 code of three upper-case letters, like USD");
    }
}

/// Longest SKU (stock keeping unit), the catalog's product id.
pub const MAX_SKU_LEN: usize = 64;

/// What is wrong with `value` as a SKU, if anything: 1 to [`MAX_SKU_LEN`] of `A-Z`, `0-9`, `-`,
/// `_`, `.`. One rule for the catalog that names products and the orders that reference them.
pub fn sku_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("is required")
    } else if value.len() > MAX_SKU_LEN {
        Some("must be at most 64 characters")
    } else if !value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"-_.".contains(&b)) {
        Some("may contain only upper-case letters A-Z, digits and - _ .")
    } else {
        None
    }
}

/// Checks a SKU (see [`sku_problem`]), recording a violation against `field`.
pub fn sku(v: &mut Violations, field: &str, value: &str) {
    if let Some(problem) = sku_problem(value) {
        v.add(field, problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes() {
        let mut v = Violations::new();
        currency_code(&mut v, "ok", "EUR");
        currency_code(&mut v, "lower", "eur");
        currency_code(&mut v, "long", "EURO");
        currency_code(&mut v, "empty", "");
        assert!(!v.has("ok"));
        assert!(v.has("lower") && v.has("long") && v.has("empty"));
    }
}
