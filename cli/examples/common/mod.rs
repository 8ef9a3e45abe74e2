//! The GetUser load loops the cost examples share (`stack_cost`, `mtls_cost`): an open loop
//! timed from each call's due time, a closed loop, and one report line per run.

use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use shopmesh::api::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Calls per second achieved, latency histogram (µs), errors.
pub type Stats = (f64, Histogram<u64>, u64);

pub async fn open_loop<T>(client: &UserServiceClient<T>, id: &str, rate: u64, seconds: u64) -> Stats
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = rate * seconds;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + period * u32::try_from(i).expect("small");
        tokio::time::sleep_until(due).await;
        let mut client = client.clone();
        let (histogram, errors, id) = (histogram.clone(), errors.clone(), id.to_owned());
        tasks.spawn(async move {
            let ok = client.get_user(GetUserRequest { id }).await.is_ok();
            let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = histogram.lock().await.record(micros);
        });
    }
    while tasks.join_next().await.is_some() {}
    let rps = total as f64 / start.elapsed().as_secs_f64();
    let h = histogram.lock().await.clone();
    (rps, h, errors.load(std::sync::atomic::Ordering::Relaxed))
}

pub async fn closed_loop<T>(client: &UserServiceClient<T>, id: &str, in_flight: usize, seconds: u64) -> f64
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let mut client = client.clone();
        let id = id.to_owned();
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                if client.get_user(GetUserRequest { id: id.clone() }).await.is_ok() {
                    n += 1;
                }
            }
            n
        });
    }
    let mut done = 0;
    while let Some(n) = tasks.join_next().await {
        done += n.unwrap_or(0);
    }
    done as f64 / start.elapsed().as_secs_f64()
}

pub fn line(name: &str, (rps, h, errors): &Stats) -> String {
    format!(
        "{name:<12} {rps:>9.0} req/s   p50 {:>6} µs   p90 {:>6} µs   p99 {:>6} µs   p99.9 {:>6} µs   max {:>7} µs   errors {errors}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}
