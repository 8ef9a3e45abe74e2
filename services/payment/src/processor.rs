//! The simulated card processor. Its rules are deterministic and documented in the proto:
//! a charge above the limit is declined "amount_over_limit", one in a currency it does not
//! accept "currency_not_supported", anything else succeeds. Like a real processor it is keyed by
//! an idempotency key (the payment id), so asking twice about one payment is harmless.

use std::time::Duration;

/// What the processor answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The money was captured.
    Approved,
    /// Refused, with a machine-readable reason.
    Declined(&'static str),
}

/// The simulated processor's settings.
#[derive(Debug, Clone)]
pub struct Processor {
    limit_minor: i64,
    currencies: Vec<String>,
    latency: Duration,
}

impl Processor {
    /// A processor declining amounts above `limit_minor` and currencies not in `currencies`,
    /// taking `latency` per call.
    pub fn new(limit_minor: i64, currencies: Vec<String>, latency: Duration) -> Self {
        let currencies = currencies.into_iter().map(|c| c.trim().to_uppercase()).collect();
        Self { limit_minor, currencies, latency }
    }

    /// Decides a charge of `amount_minor` in `currency` for payment `_key`.
    pub async fn charge(&self, _key: &str, amount_minor: i64, currency: &str) -> Outcome {
        self.wait().await;
        if !self.currencies.iter().any(|c| c == currency) {
            Outcome::Declined("currency_not_supported")
        } else if amount_minor > self.limit_minor {
            Outcome::Declined("amount_over_limit")
        } else {
            Outcome::Approved
        }
    }

    /// Returns a captured payment's money; the simulation always succeeds.
    pub async fn refund(&self, _key: &str) {
        self.wait().await;
    }

    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn decline_rules() {
        let p = Processor::new(1000, vec!["usd".into(), "EUR".into()], Duration::ZERO);
        assert_eq!(p.charge("k", 1000, "USD").await, Outcome::Approved);
        assert_eq!(p.charge("k", 1001, "USD").await, Outcome::Declined("amount_over_limit"));
        assert_eq!(p.charge("k", 5, "JPY").await, Outcome::Declined("currency_not_supported"));
        assert_eq!(p.charge("k", 5, "EUR").await, Outcome::Approved);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_applied() {
        let p = Processor::new(1000, vec!["USD".into()], Duration::from_millis(250));
        let start = tokio::time::Instant::now();
        p.charge("k", 1, "USD").await;
        assert!(start.elapsed() >= Duration::from_millis(250));
    }
}
