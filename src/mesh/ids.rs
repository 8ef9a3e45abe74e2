//! Ids, times and page tokens: the small conventions every service shares.

use std::time::{SystemTime, UNIX_EPOCH};

/// A new resource id: a UUIDv7, so ids sort by creation time and index well.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Whether `s` is an id this mesh could have issued (a UUID in canonical lower-case form).
///
/// Checking the form first answers garbage with INVALID_ARGUMENT before any database work.
pub fn is_id(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok() && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// Milliseconds since the Unix epoch, the form every table stores times in.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The protobuf form of a stored time.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product always fits in i32.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Default and maximum page sizes of every List method (AIP-158).
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger requested page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The effective page size for a requested one, or `None` if it is negative.
pub fn page_size(requested: i32) -> Option<u32> {
    match requested {
        ..0 => None,
        0 => Some(DEFAULT_PAGE_SIZE),
        n => Some(n.unsigned_abs().min(MAX_PAGE_SIZE)),
    }
}

/// A page token is the id of the last item of the previous page; lists run in id order, and ids
/// are UUIDv7, so this is keyset pagination that stays correct while rows are inserted.
/// Returns `None` for a token this mesh did not issue.
pub fn parse_page_token(token: &str) -> Option<Option<&str>> {
    if token.is_empty() {
        Some(None)
    } else if is_id(token) {
        Some(Some(token))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_uuids() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert!(is_id(&a) && is_id(&b));
        assert!(a < b, "{a} should sort before {b}");
        assert!(!is_id("not-an-id"));
        assert!(!is_id(&a.to_uppercase()));
    }

    #[test]
    fn timestamps_split_millis() {
        assert_eq!(timestamp(1_500).seconds, 1);
        assert_eq!(timestamp(1_500).nanos, 500_000_000);
        assert_eq!(timestamp(-1).seconds, -1);
        assert_eq!(timestamp(-1).nanos, 999_000_000);
    }

    #[test]
    fn page_sizes_follow_aip_158() {
        assert_eq!(page_size(-1), None);
        assert_eq!(page_size(0), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(i32::MAX), Some(MAX_PAGE_SIZE));
    }

    #[test]
    fn page_tokens_must_be_ids() {
        assert_eq!(parse_page_token(""), Some(None));
        assert_eq!(parse_page_token("x"), None);
        let id = new_id();
        assert_eq!(parse_page_token(&id), Some(Some(id.as_str())));
    }
}
