//! Log lines a peer can cause at will (refused handshakes, authorization denials), limited per
//! process: a flood of refusals writes a few lines a second, each saying how many lines were
//! left out since the last one written. Metrics still count every refusal, so nothing is lost
//! but the repetition.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A token bucket (`governor`'s GCRA) for one kind of log line, and the count of lines it left
/// out. Checking costs an atomic compare-and-swap; nothing is locked or allocated.
#[derive(Debug)]
pub struct Throttle {
    limiter: DefaultDirectRateLimiter,
    suppressed: AtomicU64,
}

impl Throttle {
    /// At most `burst` lines at once, then `per_second` lines a second.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The default for refusals: 10 lines at once, then 1 a second.
    pub fn for_refusals() -> Self {
        Self::new(NonZeroU32::MIN, NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))
    }

    /// `Some(left_out)` when a line may be written now (`left_out` lines were dropped since the
    /// last one written); `None` when this one is to be left out.
    pub fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_the_burst_then_counts_what_it_left_out() {
        // One line per 1000 s after the burst: nothing refills during the test.
        let throttle = Throttle {
            limiter: RateLimiter::direct(
                Quota::with_period(std::time::Duration::from_secs(1000))
                    .expect("non-zero period")
                    .allow_burst(NonZeroU32::new(3).expect("3")),
            ),
            suppressed: AtomicU64::new(0),
        };
        let admitted: Vec<_> = (0..100).map(|_| throttle.admit()).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        assert_eq!(throttle.suppressed.load(Ordering::Relaxed), 97);
    }
}
