//! The live progress bar on stderr: elapsed time, the rate answers come back at, errors, and
//! calls not sent. Drawn only on a terminal, and never with `--json` or `--quiet`.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::load::End;
use super::report::Stats;

/// A progress bar refreshed from the run's counters until [`Progress::finish`].
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the bar (hidden when `hidden` or stderr is not a terminal); its length is the
    /// requests to make, or the seconds to run, warm-up included.
    pub fn start(hidden: bool, end: End, warmup: Duration, stats: Arc<Stats>) -> Self {
        if hidden || !std::io::stderr().is_terminal() {
            return Self { bar: ProgressBar::hidden(), ticker: None };
        }
        let (len, template) = match end {
            End::Requests(n) => (n, "{elapsed:>4} [{wide_bar}] {pos}/{len} {msg}"),
            End::After(d) => ((warmup + d).as_secs().max(1), "{elapsed:>4} [{wide_bar}] {msg}"),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let started = Instant::now();
        let measure_from = started + warmup;
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let (mut last_at, mut last_answered) = (Instant::now(), 0u64);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let answered = stats.answered.load(Relaxed);
                    let rate = (answered - last_answered) as f64 / (now - last_at).as_secs_f64().max(1e-3);
                    (last_at, last_answered) = (now, answered);
                    bar.set_position(match end {
                        End::Requests(_) => stats.measured.load(Relaxed),
                        End::After(_) => (now - started).as_secs(),
                    });
                    bar.set_message(if now < measure_from {
                        format!("warm-up ({} calls)", stats.warmup.load(Relaxed))
                    } else {
                        format!(
                            "{rate:>7.0} req/s   {answered} answered   {} errors   {} not sent",
                            stats.errors.load(Relaxed),
                            stats.not_sent.load(Relaxed)
                        )
                    });
                }
            }
        });
        Self { bar, ticker: Some(ticker) }
    }

    /// Stops refreshing and clears the bar, so the report starts on a clean line.
    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
