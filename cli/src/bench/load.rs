//! The two ways of applying load. Open loop sends at a fixed rate whatever the answers, and times
//! each call from when it was due, so a stalled server shows in the percentiles instead of
//! slowing the sender down (no coordinated omission). Closed loop keeps a fixed number of calls
//! in flight and finds the most the servers can do.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::report::Stats;
use super::scenario::{Caller, Mix};

/// How the load is applied.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `rate` calls per second; a call due while `max_in_flight` are in flight is not sent.
    Open { rate: u32, max_in_flight: u32 },
    /// `concurrency` calls in flight at all times.
    Closed { concurrency: u32 },
}

/// When the measured part ends.
#[derive(Debug, Clone, Copy)]
pub enum End {
    /// After this long.
    After(Duration),
    /// After this many requests came due.
    Requests(u64),
}

/// A run's plan: the mode, the warm-up before measuring, and the end.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Fixed rate or fixed concurrency.
    pub mode: Mode,
    /// Load applied before measuring.
    pub warmup: Duration,
    /// When measuring stops.
    pub end: End,
}

/// Everything a request task needs.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Makes the calls.
    pub caller: Arc<Caller>,
    /// Which call each request makes.
    pub mix: Arc<Mix>,
    /// Where answers are counted.
    pub stats: Arc<Stats>,
}

impl Shared {
    /// Makes request `i`, due at `due`, and records its answer.
    async fn request(&self, i: u64, due: Instant, warm: bool) {
        let op = self.mix.pick(i);
        let outcome = self.caller.call(op, i).await;
        self.stats.answered(op, outcome, due, warm);
    }
}

/// Applies the load from `start` (the warm-up first) until the plan ends or `stop` is
/// cancelled, then waits for the calls in flight, or drops them when `abort` is cancelled.
pub async fn run(
    plan: Plan,
    shared: Shared,
    start: Instant,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let measure_from = start + plan.warmup;
    let mut tasks = JoinSet::new();
    match plan.mode {
        Mode::Open { rate, max_in_flight } => {
            open(&mut tasks, plan, &shared, (start, measure_from), rate, max_in_flight, &stop).await;
        }
        Mode::Closed { concurrency } => {
            let measured = Arc::new(AtomicU64::new(0));
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency {
                let (shared, stop) = (shared.clone(), stop.clone());
                let (measured, next) = (measured.clone(), next.clone());
                tasks.spawn(async move {
                    loop {
                        let now = Instant::now();
                        let warm = now < measure_from;
                        let over = match plan.end {
                            End::After(d) => now >= measure_from + d,
                            End::Requests(n) => !warm && measured.fetch_add(1, Relaxed) >= n,
                        };
                        if over || stop.is_cancelled() {
                            break;
                        }
                        shared.stats.due(warm);
                        shared.request(next.fetch_add(1, Relaxed), now, warm).await;
                    }
                });
            }
        }
    }
    tokio::select! {
        () = async { while tasks.join_next().await.is_some() {} } => {}
        () = abort.cancelled() => {
            // Dropping the calls writes each unfinished CreateOrder to the record as CANCELLED.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Waits until `due`; false when the run is stopped first.
///
/// Each call goes out at its own instant, not in bursts. tokio's timer counts whole
/// milliseconds, so sleeping until each call was due would send the calls of a millisecond
/// together (5 at 5 000/s), and a tail measured at a fixed rate would be the bursts' (h2load's
/// `--rps` sends bursts too). So the sender sleeps on the timer only to a millisecond before,
/// and then yields to the runtime until the instant comes: the answers of calls in flight are
/// handled meanwhile, and the sender's core is busy for at most a millisecond per call (all of
/// it above 1 000 calls/s: a load generator's core is not the server's). A late sender catches
/// up at once; each call is still timed from when it was due.
async fn pace(due: Instant, stop: &CancellationToken) -> bool {
    const TIMER_RESOLUTION: Duration = Duration::from_millis(1);
    if let Some(early) = due.checked_sub(TIMER_RESOLUTION).filter(|at| *at > Instant::now()) {
        tokio::select! {
            () = tokio::time::sleep_until(early) => {}
            () = stop.cancelled() => return false,
        }
    }
    while Instant::now() < due {
        if stop.is_cancelled() {
            return false;
        }
        tokio::task::yield_now().await;
    }
    !stop.is_cancelled()
}

/// The open loop's sender: request `i` is due at `start + i / rate`.
async fn open(
    tasks: &mut JoinSet<()>,
    plan: Plan,
    shared: &Shared,
    (start, measure_from): (Instant, Instant),
    rate: u32,
    max_in_flight: u32,
    stop: &CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(usize::try_from(max_in_flight).unwrap_or(usize::MAX)));
    let period_nanos = 1_000_000_000 / u64::from(rate.max(1));
    let mut measured = 0u64;
    for i in 0u64.. {
        let due = start + Duration::from_nanos(period_nanos.saturating_mul(i));
        let warm = due < measure_from;
        let over = match plan.end {
            End::After(d) => due >= measure_from + d,
            End::Requests(n) => !warm && measured >= n,
        };
        if over {
            break;
        }
        if !pace(due, stop).await {
            break;
        }
        if !warm {
            measured += 1;
        }
        shared.stats.due(warm);
        // Reap finished calls so the set holds only those in flight.
        while tasks.try_join_next().is_some() {}
        match in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tasks.spawn(async move {
                    shared.request(i, due, warm).await;
                    drop(permit);
                });
            }
            Err(_) if !warm => shared.stats.not_sent(),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call sent early would be timed from a later instant than it went out, and shorten
    /// every latency measured: the sender must never be ahead of the schedule, below the
    /// timer's millisecond too.
    #[tokio::test]
    async fn no_call_goes_out_before_it_is_due() {
        let stop = CancellationToken::new();
        let start = Instant::now();
        for i in 0..300u64 {
            let due = start + Duration::from_micros(137 * i);
            assert!(pace(due, &stop).await);
            assert!(Instant::now() >= due, "call {i} went out early");
        }
    }

    #[tokio::test]
    async fn a_stopped_run_sends_nothing_more() {
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(!pace(Instant::now() + Duration::from_millis(50), &stop).await);
        assert!(!pace(Instant::now(), &stop).await, "not even a call already due");
    }
}
