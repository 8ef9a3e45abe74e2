//! What a run measured: latency histograms and counts by status code while it runs, and the
//! final report, as text or as one JSON object.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Code;

use super::scenario::{Op, Outcome, code_name};

/// Counts and latencies of the measured requests (those due after the warm-up), shared by
/// every request task; the atomics feed the progress bar without taking the lock.
#[derive(Debug)]
pub struct Stats {
    /// Requests due after the warm-up, sent or not.
    pub measured: AtomicU64,
    /// Measured requests answered (any code).
    pub answered: AtomicU64,
    /// Measured requests answered with another code than OK.
    pub errors: AtomicU64,
    /// Measured requests not sent because `--max-in-flight` calls were already in flight.
    pub not_sent: AtomicU64,
    /// Requests made during the warm-up (not in any other figure).
    pub warmup: AtomicU64,
    /// CreateOrder re-sends.
    pub retries: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Every answer's latency in microseconds, from when the request was due.
    all: Histogram<u64>,
    /// The OK answers' latencies.
    ok: Histogram<u64>,
    /// Answers by call and status code name.
    calls: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// When the last measured answer came.
    last: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, three significant digits, up to an hour (longer is recorded as an hour).
    // Fixed bounds: an auto-resizing histogram would clamp `saturating_record` at its
    // initial, tiny, highest value.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid hdrhistogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            measured: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
            warmup: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                all: histogram(),
                ok: histogram(),
                calls: BTreeMap::new(),
                last: None,
            }),
        }
    }
}

impl Stats {
    /// Counts a request that came due (`warm`: during the warm-up).
    pub fn due(&self, warm: bool) {
        if warm {
            self.warmup.fetch_add(1, Relaxed);
        } else {
            self.measured.fetch_add(1, Relaxed);
        }
    }

    /// Counts a measured request that was not sent.
    pub fn not_sent(&self) {
        self.not_sent.fetch_add(1, Relaxed);
    }

    /// Records the answer to a request that was due at `due`.
    pub fn answered(&self, op: Op, outcome: Outcome, due: Instant, warm: bool) {
        self.retries.fetch_add(u64::from(outcome.retries), Relaxed);
        if warm {
            return;
        }
        let now = Instant::now();
        let micros = u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        {
            let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inner.all.saturating_record(micros);
            if outcome.code == Code::Ok {
                inner.ok.saturating_record(micros);
            }
            *inner.calls.entry(op.name()).or_default().entry(code_name(outcome.code)).or_default() += 1;
            inner.last = Some(inner.last.map_or(now, |l| l.max(now)));
        }
        if outcome.code != Code::Ok {
            self.errors.fetch_add(1, Relaxed);
        }
        self.answered.fetch_add(1, Relaxed);
    }

    /// The report of the measured requests, measurement having started at `from`.
    pub fn report(&self, run: RunInfo, from: Instant) -> Report {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let answered = self.answered.load(Relaxed);
        let elapsed = inner.last.map_or(Duration::ZERO, |l| l.saturating_duration_since(from));
        let mut codes = BTreeMap::new();
        for by_code in inner.calls.values() {
            for (code, n) in by_code {
                *codes.entry((*code).to_owned()).or_default() += n;
            }
        }
        let calls = inner
            .calls
            .iter()
            .map(|(op, by_code)| {
                ((*op).to_owned(), by_code.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect())
            })
            .collect();
        Report {
            run,
            requests: self.measured.load(Relaxed),
            sent: answered,
            not_sent: self.not_sent.load(Relaxed),
            warmup_requests: self.warmup.load(Relaxed),
            elapsed_seconds: elapsed.as_secs_f64(),
            achieved_rate: if elapsed.is_zero() { 0.0 } else { answered as f64 / elapsed.as_secs_f64() },
            latency_ms: Latency::of(&inner.all),
            ok_latency_ms: Latency::of(&inner.ok),
            codes,
            calls,
            retries: self.retries.load(Relaxed),
        }
    }
}

/// How the run was set up, repeated in the report so a saved report says what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `create-order`, `get-order`, `get-user` or `mix`.
    pub scenario: String,
    /// The mix's weights, for `mix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<String>,
    /// `open` (fixed rate) or `closed` (fixed concurrency).
    pub mode: &'static str,
    /// The requested rate (open loop).
    pub target_rate: Option<u32>,
    /// Calls kept in flight (closed loop).
    pub concurrency: Option<u32>,
    /// HTTP/2 connections to each target.
    pub connections: u32,
    /// Users created before the run.
    pub users: usize,
    /// Orders created before the run (for GetOrder).
    pub orders: usize,
    /// Whether SIGINT/SIGTERM cut the run short.
    pub interrupted: bool,
}

/// The final figures. `sent + not_sent == requests`, and the `codes` add up to `sent`.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    /// Measured requests: those due after the warm-up.
    pub requests: u64,
    /// Of those, the ones sent (all of which were answered or timed out: each has a code).
    pub sent: u64,
    /// Of those, the ones not sent because `--max-in-flight` calls were in flight.
    pub not_sent: u64,
    /// Requests during the warm-up, in no other figure.
    pub warmup_requests: u64,
    /// From the end of the warm-up to the last answer.
    pub elapsed_seconds: f64,
    /// Answers per second over `elapsed_seconds`.
    pub achieved_rate: f64,
    /// Latency of every answer, from when its request was due.
    pub latency_ms: Option<Latency>,
    /// Latency of the OK answers only.
    pub ok_latency_ms: Option<Latency>,
    /// Answers by status code name.
    pub codes: BTreeMap<String, u64>,
    /// Answers by call, then status code name.
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// CreateOrder re-sends (`--retries`), warm-up included.
    pub retries: u64,
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Slowest answer.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        (!h.is_empty()).then(|| Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms",
            self.p50, self.p90, self.p99, self.p99_9, self.max
        )
    }
}

impl Report {
    /// The report as a person reads it.
    pub fn text(&self) -> String {
        let r = &self.run;
        let load = match (r.target_rate, r.concurrency) {
            (Some(rate), _) => format!("open loop at {rate} req/s"),
            (None, Some(c)) => format!("closed loop, {c} in flight"),
            (None, None) => String::new(),
        };
        let mut out = format!(
            "{}{}: {load}, {} connection(s) per target, {} users, {} orders{}\n",
            r.scenario,
            r.mix.as_deref().map(|m| format!(" ({m})")).unwrap_or_default(),
            r.connections,
            r.users,
            r.orders,
            if r.interrupted { ", interrupted" } else { "" },
        );
        out += &format!(
            "  requests  {} in {:.2} s: {:.1} req/s achieved{}\n",
            self.requests,
            self.elapsed_seconds,
            self.achieved_rate,
            r.target_rate.map(|t| format!(" (target {t})")).unwrap_or_default(),
        );
        if self.not_sent > 0 {
            out += &format!("            {} not sent (--max-in-flight reached)\n", self.not_sent);
        }
        if self.warmup_requests > 0 {
            out += &format!("            {} more during the warm-up, not counted\n", self.warmup_requests);
        }
        match &self.latency_ms {
            Some(l) => out += &format!("  latency   {}\n", l.line()),
            None => out += "  latency   no answers\n",
        }
        if let (Some(ok), true) = (&self.ok_latency_ms, self.codes.len() > 1) {
            out += &format!("  OK only   {}\n", ok.line());
        }
        let codes = |m: &BTreeMap<String, u64>| {
            m.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
        };
        out += &format!("  codes     {}\n", codes(&self.codes));
        if self.calls.len() > 1 {
            for (call, by_code) in &self.calls {
                out += &format!("    {call:<13} {}\n", codes(by_code));
            }
        }
        if self.retries > 0 {
            out += &format!("  retries   {}\n", self.retries);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
            scenario: "mix".into(),
            mix: Some("get-user=1".into()),
            mode: "open",
            target_rate: Some(100),
            concurrency: None,
            connections: 1,
            users: 1,
            orders: 0,
            interrupted: false,
        }
    }

    #[test]
    fn the_report_adds_up_and_leaves_out_the_warmup() {
        let stats = Stats::default();
        let from = Instant::now();
        let ok = Outcome { code: Code::Ok, retries: 0 };
        let down = Outcome { code: Code::Unavailable, retries: 2 };
        stats.due(true);
        stats.answered(Op::GetUser, down, from, true);
        for _ in 0..3 {
            stats.due(false);
            stats.answered(Op::GetUser, ok, from, false);
        }
        stats.due(false);
        stats.answered(Op::CreateOrder, down, from, false);
        stats.due(false);
        stats.not_sent();
        let report = stats.report(run(), from);
        assert_eq!((report.requests, report.sent, report.not_sent, report.warmup_requests), (5, 4, 1, 1));
        assert_eq!(report.codes, BTreeMap::from([("OK".into(), 3), ("UNAVAILABLE".into(), 1)]));
        assert_eq!(report.calls["get-user"]["OK"], 3);
        assert_eq!(report.calls["create-order"]["UNAVAILABLE"], 1);
        assert_eq!(report.retries, 4, "warm-up retries count too");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["scenario"], "mix");
        assert!(json["latency_ms"]["p99.9"].is_number());
        assert!(report.text().contains("UNAVAILABLE 1"), "{}", report.text());
    }

    #[test]
    fn latency_is_timed_from_when_the_call_was_due() {
        let stats = Stats::default();
        let now = Instant::now();
        let ok = Outcome { code: Code::Ok, retries: 0 };
        for ms in [40, 50, 60, 2_000] {
            stats.due(false);
            stats.answered(Op::GetUser, ok, now - Duration::from_millis(ms), false);
        }
        let report = stats.report(run(), now);
        let latency = report.latency_ms.expect("latency");
        // Each answer came at least as long after its due time as it was due before `now` (the
        // upper bounds leave room for a loaded machine between `now` and the answers).
        assert!((50.0..1_000.0).contains(&latency.p50), "{latency:?}");
        assert!((2_000.0..3_000.0).contains(&latency.max), "{latency:?}");
        assert!(latency.p90 >= 60.0, "{latency:?}");
    }

    #[test]
    fn an_empty_run_has_no_percentiles() {
        let report = Stats::default().report(run(), Instant::now());
        assert!(report.latency_ms.is_none());
        assert_eq!(report.achieved_rate, 0.0);
        assert!(report.text().contains("no answers"));
    }
}
