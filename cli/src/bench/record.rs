//! `--record FILE`: one JSON line per CreateOrder the bench sent, with its request id and how it
//! ended, so a harness can check that every order the mesh confirmed exists and none is doubled.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Where outcomes go: a file, or nowhere without `--record`.
#[derive(Debug, Default)]
pub struct Recorder {
    out: Option<Mutex<Sink>>,
}

#[derive(Debug)]
struct Sink {
    file: BufWriter<File>,
    /// The first write that failed; the file is then incomplete and the run says so.
    error: Option<std::io::Error>,
}

/// One line of the record file.
#[derive(Debug, Serialize)]
struct Line<'a> {
    request_id: &'a str,
    user_id: &'a str,
    total_minor: i64,
    currency_code: &'a str,
    /// The final status code's name (`OK`, `UNAVAILABLE`, …); `CANCELLED` when the bench was
    /// stopped before the answer came.
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    /// The status message of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    /// How many times it was sent (1 + retries).
    attempts: u32,
    /// When the answer came (Unix epoch milliseconds): a failover harness finds the first write
    /// that succeeded after the promotion with it.
    done_ms: u128,
}

impl Recorder {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = BufWriter::new(File::create(path)?);
        Ok(Self { out: Some(Mutex::new(Sink { file, error: None })) })
    }

    /// Starts the record of one CreateOrder; it is written when finished, or as `CANCELLED` if
    /// it is dropped first (the run was aborted while the call was in flight).
    pub fn start<'a>(
        &'a self,
        request_id: &str,
        user_id: &str,
        total_minor: i64,
        currency_code: &str,
    ) -> Pending<'a> {
        Pending {
            recorder: self,
            request_id: request_id.to_owned(),
            user_id: user_id.to_owned(),
            total_minor,
            currency_code: currency_code.to_owned(),
            attempts: 0,
            written: self.out.is_none(),
        }
    }

    fn write(&self, line: &Line<'_>) {
        let Some(out) = &self.out else { return };
        // Serialised outside the lock; a line is a few hundred bytes.
        let mut text = match serde_json::to_vec(line) {
            Ok(text) => text,
            Err(err) => {
                let mut sink = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                sink.error.get_or_insert(std::io::Error::other(err));
                return;
            }
        };
        text.push(b'\n');
        let mut sink = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = sink.file.write_all(&text) {
            sink.error.get_or_insert(err);
        }
    }

    /// Writes out what is buffered; the first error of the whole run, if any write failed.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(out) = &self.out else { return Ok(()) };
        let mut sink = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let flushed = sink.file.flush();
        match sink.error.take() {
            Some(err) => Err(err),
            None => flushed,
        }
    }
}

/// A CreateOrder under way, written to the record once.
#[derive(Debug)]
pub struct Pending<'a> {
    recorder: &'a Recorder,
    request_id: String,
    user_id: String,
    total_minor: i64,
    currency_code: String,
    attempts: u32,
    written: bool,
}

impl Pending<'_> {
    /// Counts one more send.
    pub fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// Records an OK answer.
    pub fn finish_ok(&mut self, order_id: &str, state: &str) {
        self.write("OK", Some(order_id), Some(state), None);
    }

    /// Records a failure.
    pub fn finish(&mut self, code: &str, message: &str) {
        self.write(code, None, None, Some(message));
    }

    fn write(&mut self, code: &str, order_id: Option<&str>, state: Option<&str>, message: Option<&str>) {
        if self.written {
            return;
        }
        self.written = true;
        self.recorder.write(&Line {
            request_id: &self.request_id,
            user_id: &self.user_id,
            total_minor: self.total_minor,
            currency_code: &self.currency_code,
            code,
            order_id,
            state,
            message,
            attempts: self.attempts,
            done_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis()),
        });
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Aborted in flight: the order may or may not exist, and the harness must know the id.
        self.write("CANCELLED", None, None, Some("the bench was stopped before the answer came"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_started_call_is_written_once_even_when_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("record.jsonl");
        let recorder = Arc::new(Recorder::create(&path).expect("create"));
        {
            let mut done = recorder.start("r1", "u1", 250, "USD");
            done.attempt();
            done.finish_ok("o1", "ORDER_STATE_PAID");
            done.finish("UNAVAILABLE", "twice");
            let mut failed = recorder.start("r2", "u1", 100, "USD");
            failed.attempt();
            failed.attempt();
            failed.finish("UNAVAILABLE", "down");
            let _dropped = recorder.start("r3", "u2", 300, "EUR");
        }
        recorder.flush().expect("flush");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["code"], "OK");
        assert_eq!(lines[0]["order_id"], "o1");
        assert_eq!(lines[0]["state"], "ORDER_STATE_PAID");
        assert_eq!(lines[0]["total_minor"], 250);
        assert_eq!(lines[1]["code"], "UNAVAILABLE");
        assert_eq!(lines[1]["attempts"], 2);
        assert!(lines[1].get("order_id").is_none());
        assert_eq!(lines[2]["request_id"], "r3");
        assert_eq!(lines[2]["code"], "CANCELLED");
        assert_eq!(lines[2]["currency_code"], "EUR");
    }
}
