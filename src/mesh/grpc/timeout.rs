//! The `grpc-timeout` request header: how a caller tells a server its deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let mut n: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value, rounding down (a callee never gets more time
/// than the caller has) in the finest unit that fits the 8 digits the protocol allows.
pub fn encode_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    let text = if micros <= MAX {
        format!("{micros}u")
    } else if timeout.as_millis() <= MAX {
        format!("{}m", timeout.as_millis())
    } else if u128::from(timeout.as_secs()) <= MAX {
        format!("{}S", timeout.as_secs())
    } else {
        format!("{}H", (timeout.as_secs() / 3600).min(99_999_999))
    };
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("99999999H"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_timeout_parses_every_unit_and_rejects_junk() {
        assert_eq!(parse_timeout(&headers("2H")), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(&headers("3M")), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(&headers("4S")), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(&headers("99999999u")), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_timeout(&headers("7n")), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "100", "1x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(parse_timeout(&headers(bad)), None, "{bad:?}");
        }
        assert_eq!(parse_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn grpc_timeout_encodes_within_eight_digits_rounding_down() {
        assert_eq!(encode_timeout(Duration::from_micros(298_500)), "298500u");
        assert_eq!(encode_timeout(Duration::from_nanos(1_999)), "1u");
        assert_eq!(encode_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(encode_timeout(Duration::from_secs(200_000_000)), "55555H");
        for d in [Duration::from_millis(1), Duration::from_secs(5), Duration::from_secs(86_400)] {
            let mut h = HeaderMap::new();
            h.insert(GRPC_TIMEOUT, encode_timeout(d));
            let back = parse_timeout(&h).expect("round trip");
            assert!(back <= d && d - back < Duration::from_secs(1), "{d:?} -> {back:?}");
        }
    }
}
