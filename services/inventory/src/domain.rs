//! Stock and what a paid order gets of it: all its lines allocated, or backordered with the
//! reason, never part of it and never below zero.

use std::collections::BTreeMap;

/// Most units on hand of one SKU that SetStock accepts.
pub const MAX_ON_HAND: i64 = 1_000_000_000;

/// The stock of one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    /// The SKU.
    pub sku: String,
    /// Units on hand and free.
    pub on_hand: i64,
    /// Units allocated to paid orders.
    pub allocated: i64,
    /// Last change, epoch milliseconds.
    pub update_time_ms: i64,
}

/// A paid order's lines, one per SKU (lines of the same SKU added up), in SKU order.
pub fn lines_per_sku(lines: impl IntoIterator<Item = (String, i64)>) -> Vec<(String, i64)> {
    let mut per_sku: BTreeMap<String, i64> = BTreeMap::new();
    for (sku, quantity) in lines {
        let total = per_sku.entry(sku).or_default();
        *total = total.saturating_add(quantity);
    }
    per_sku.into_iter().collect()
}

/// Why a line cannot be allocated, for the backorder's reason.
pub fn shortage(sku: &str, ordered: i64, on_hand: Option<i64>) -> Option<String> {
    match on_hand {
        None => Some(format!("{sku}: unknown SKU (no stock record)")),
        Some(have) if have < ordered => Some(format!("{sku}: {have} on hand, {ordered} ordered")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_one_sku_are_added_up_and_shortages_say_why() {
        let lines = lines_per_sku([("B".to_owned(), 2), ("A".to_owned(), 1), ("B".to_owned(), 3)]);
        assert_eq!(lines, [("A".to_owned(), 1), ("B".to_owned(), 5)]);
        assert_eq!(shortage("A", 2, Some(2)), None);
        assert_eq!(shortage("A", 3, Some(2)).as_deref(), Some("A: 2 on hand, 3 ordered"));
        assert_eq!(shortage("Z", 1, None).as_deref(), Some("Z: unknown SKU (no stock record)"));
    }
}
