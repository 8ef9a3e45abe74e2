//! `--notification URL`: after a create-order run, how long each paid order took from
//! CreateOrder's answer to its notification (the CONFIRMED or BACKORDERED message the
//! notification service sends once the order's events went through the outbox, the broker and
//! the inventory). It reads the run's `--record` file (each OK order's id and the Unix time of
//! its answer, `done_ms`), asks the notification service for each PAID order's notifications
//! until they are there or `wait` is over, and takes the notification's `send_time` minus the
//! answer's time: both clocks are this host's when the mesh runs here (loopback), so the figure
//! is only meaningful then. Millisecond resolution: both times are stored in milliseconds.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use shopmesh::api::notification::v1::notification_service_client::NotificationServiceClient;
use shopmesh::api::notification::v1::{ListNotificationsRequest, NotificationKind};
use shopmesh::mesh::security::tls::MeshTls;
use tokio::time::Instant;

use super::{Channel, WithHeaders, channels};

/// How long the last notifications are waited for after the run.
const WAIT: Duration = Duration::from_secs(30);
/// Orders asked about at once.
const PARALLEL: usize = 32;
/// How often one order's notifications are asked for again while they are not there.
const POLL: Duration = Duration::from_millis(50);

/// From CreateOrder's answer to the notification, over the run's PAID orders.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// PAID orders in the record.
    pub paid: u64,
    /// Of those, notified within the wait.
    pub notified: u64,
    /// Notified at or before the client had the answer (counted as 0 ms): the event's path
    /// was quicker than the answer's way back.
    pub before_answer: u64,
    /// Percentiles in milliseconds (`p50`, `p90`, `p99`, `max`), over the notified orders.
    pub latency_ms: std::collections::BTreeMap<&'static str, u64>,
}

impl Latency {
    /// The report's lines.
    pub fn text(&self) -> String {
        let get = |k| self.latency_ms.get(k).copied().unwrap_or(0);
        format!(
            "notification after CreateOrder's answer: {} of {} PAID orders notified ({} at or before the answer); \
             p50 {} ms, p90 {} ms, p99 {} ms, max {} ms\n",
            self.notified,
            self.paid,
            self.before_answer,
            get("p50"),
            get("p90"),
            get("p99"),
            get("max")
        )
    }
}

/// The PAID orders of a record file: (order id, answer time in Unix milliseconds).
fn paid_orders(record: &Path) -> Result<Vec<(String, i64)>, String> {
    let text = std::fs::read_to_string(record).map_err(|e| format!("{}: {e}", record.display()))?;
    let mut paid = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{line:?}: {e}"))?;
        let field = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or_default();
        if field("code") == "OK" && field("state").trim_start_matches("ORDER_STATE_") == "PAID" {
            let done = v.get("done_ms").and_then(serde_json::Value::as_i64).unwrap_or_default();
            paid.push((field("order_id").to_owned(), done));
        }
    }
    Ok(paid)
}

/// The send time (Unix milliseconds) of `order_id`'s confirmation or backorder notice, asked
/// for until `deadline`.
async fn sent_ms(
    mut client: NotificationServiceClient<Channel>,
    order_id: String,
    deadline: Instant,
) -> Option<i64> {
    loop {
        let req = ListNotificationsRequest { order_id: order_id.clone(), ..Default::default() };
        if let Ok(answer) = client.list_notifications(req).await {
            let first =
                answer.into_inner().notifications.into_iter().find(|n| {
                    matches!(n.kind(), NotificationKind::Confirmed | NotificationKind::Backordered)
                });
            if let Some(time) = first.and_then(|n| n.send_time) {
                return Some(time.seconds * 1_000 + i64::from(time.nanos) / 1_000_000);
            }
        }
        if Instant::now() + POLL > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Measures the PAID orders of `record` against the notification service at `url`, over one
/// connection made as the bench's others are (`tls`, the `-H` metadata).
pub async fn at(
    url: &str,
    record: &Path,
    timeout: Duration,
    tls: Option<&MeshTls>,
    headers: &WithHeaders,
) -> Result<Latency, String> {
    let channel = channels(url, 1, timeout, tls, headers).map_err(|e| e.to_string())?;
    let channel = channel.into_iter().next().ok_or("no channel")?;
    measure(record, NotificationServiceClient::new(channel), WAIT).await
}

/// Measures the PAID orders of `record` against the notification service behind `client`,
/// waiting at most `wait` for the last ones.
async fn measure(
    record: &Path,
    client: NotificationServiceClient<Channel>,
    wait: Duration,
) -> Result<Latency, String> {
    let paid = paid_orders(record)?;
    let deadline = Instant::now() + wait;
    let sent: Vec<(i64, Option<i64>)> = futures::stream::iter(paid)
        .map(|(order_id, done)| {
            let client = client.clone();
            async move { (done, sent_ms(client, order_id, deadline).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut histogram = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut notified, mut before_answer) = (0, 0);
    for (done, sent) in &sent {
        let Some(sent) = sent else { continue };
        notified += 1;
        let ms = u64::try_from(sent - done).unwrap_or_else(|_| {
            before_answer += 1;
            0
        });
        histogram.record(ms).map_err(|e| e.to_string())?;
    }
    let latency_ms = if notified == 0 {
        Default::default()
    } else {
        [
            ("p50", histogram.value_at_quantile(0.5)),
            ("p90", histogram.value_at_quantile(0.9)),
            ("p99", histogram.value_at_quantile(0.99)),
            ("max", histogram.max()),
        ]
        .into_iter()
        .collect()
    };
    Ok(Latency { paid: sent.len() as u64, notified, before_answer, latency_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paid_orders_of_the_record_are_measured() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("record.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"request_id":"a","code":"OK","order_id":"o1","state":"ORDER_STATE_PAID","done_ms":5}"#,
                "\n",
                r#"{"request_id":"b","code":"OK","order_id":"o2","state":"ORDER_STATE_PAYMENT_DECLINED","done_ms":6}"#,
                "\n",
                r#"{"request_id":"c","code":"UNAVAILABLE","done_ms":7}"#,
                "\n"
            ),
        )
        .expect("write");
        assert_eq!(paid_orders(&path).expect("parsed"), vec![("o1".to_owned(), 5)]);
    }
}
