//! The deadline of the request being handled, as handler code sees it. The server's
//! [deadline layer](crate::mesh::server::caller_deadline) sets it from the caller's `grpc-timeout`;
//! the client's [deadline layer](crate::mesh::client::call_deadline) sends what is left of it on
//! every outgoing call; [`db`](crate::mesh::db) stops waiting for a connection when it passes.
//!
//! The deadline lives in a task-local, which `tokio::spawn` does not carry (nor the tracing
//! span): spawn with [`spawn`] (or wrap the future in [`propagate`]) so spawned work keeps both
//! its deadline and its parent span.

use std::future::Future;
use std::time::Duration;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// The deadline of the request this task is handling, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// The time left before [`current`], if there is a deadline (zero once it has passed).
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Whether the request this task is handling is out of time.
pub fn expired() -> bool {
    current().is_some_and(|d| d <= Instant::now())
}

/// Runs `future` under `deadline`, as the server layer does for a handler.
pub fn scope<F: Future>(deadline: Option<Instant>, future: F) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(deadline, future)
}

/// `future` carrying this task's deadline and current span, for running on another task.
pub fn propagate<F: Future>(
    future: F,
) -> TaskLocalFuture<Option<Instant>, tracing::instrument::Instrumented<F>> {
    use tracing::Instrument as _;
    scope(current(), future.instrument(tracing::Span::current()))
}

/// `tokio::spawn` that keeps this task's deadline and parent span in the spawned task.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(propagate(future))
}

/// Runs `future` until it completes or the current deadline passes (`Err` then).
pub async fn within<F: Future>(future: F) -> Result<F::Output, tokio::time::error::Elapsed> {
    match current() {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await,
        None => Ok(future.await),
    }
}

/// Sleeps `delay` and answers `true`; or answers `false` at once when the request's deadline,
/// less `margin` for the answer's way back, would pass first. For a call waiting on work
/// another call is doing: it gives up while it can still say so in time.
pub async fn sleep_within(delay: Duration, margin: Duration) -> bool {
    let wake = Instant::now() + delay;
    if current().is_some_and(|deadline| wake + margin >= deadline) {
        return false;
    }
    tokio::time::sleep_until(wake).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawned_work_keeps_the_deadline_and_the_span() {
        use tracing::Instrument as _;
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let parent = tracing::info_span!("handler");
        let deadline = Instant::now() + Duration::from_secs(5);
        let here = || (current(), tracing::Span::current().id());
        let (plain, kept) = scope(
            Some(deadline),
            async move {
                let plain = tokio::spawn(async move { here() }).await.expect("join");
                let kept = spawn(async move { here() }).await.expect("join");
                (plain, kept)
            }
            .instrument(parent.clone()),
        )
        .await;
        assert_eq!(plain, (None, None), "tokio::spawn drops both; this is why deadline::spawn exists");
        assert_eq!(kept, (Some(deadline), parent.id()));
        assert!(parent.id().is_some());
        assert_eq!(current(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn within_stops_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let out = scope(Some(deadline), within(tokio::time::sleep(Duration::from_secs(1)))).await;
        assert!(out.is_err());
        let out = scope(Some(deadline), within(async { 7 })).await;
        assert_eq!(out.ok(), Some(7));
    }
}
