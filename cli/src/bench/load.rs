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
        // Sleeping only when ahead: the timer's 1 ms resolution would otherwise cap the rate,
        // and a late sender catches up at once (each call is still timed from when it was due).
        if due > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = stop.cancelled() => break,
            }
        } else if stop.is_cancelled() {
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
