//! Which calls may read from a replica: the read-only ones (NO_SIDE_EFFECTS in the proto),
//! with the `shopmesh-written-at` token their caller passed back, if any. The server's
//! `read_route` layer runs each read-only handler inside [`scope`]; a store's read outside one
//! (a write's read-before-write, a background task, a test) runs on the primary.

use std::future::Future;

use tokio::task::futures::TaskLocalFuture;

/// The response header on a write's answer (and the request header on a read passing it back):
/// when the write was answered, in milliseconds since the Unix epoch. A read carrying one from
/// less than the replicas' staleness bound ago reads from the primary, so a caller reads what
/// it wrote on whichever pod it lands.
pub const WRITTEN_AT: &str = "shopmesh-written-at";

tokio::task_local! {
    /// `Some(written_at)` while a read-only call is handled (`written_at` its caller's token).
    static READ_ONLY: Option<Option<u64>>;
}

/// `future` (a handler) run as a read-only call if `read_only`, whose caller wrote at
/// `written_at` (a token that does not parse counts as a write just now).
pub fn scope<F: Future>(
    read_only: Option<Option<u64>>,
    future: F,
) -> TaskLocalFuture<Option<Option<u64>>, F> {
    READ_ONLY.scope(read_only, future)
}

/// `Some(written_at)` when the call being handled is read-only.
pub(crate) fn read_only() -> Option<Option<u64>> {
    READ_ONLY.try_with(|r| *r).ok().flatten()
}

/// The token a request carries: `None` without one, `Some(u64::MAX)` (a write just now, so the
/// primary answers) for one that does not parse.
pub fn token(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(WRITTEN_AT)?;
    Some(value.to_str().ok().and_then(|v| v.trim().parse().ok()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, as tokens are written.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
