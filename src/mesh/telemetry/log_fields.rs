//! The fields of a call's span that JSON log lines carry: `trace_id`, `span_id`,
//! `rpc.service` and `rpc.method`, and nothing else.
//!
//! tracing-subscriber's JSON layer formats every field of every span it sees into a JSON
//! object when the span is created, and on every later `record` parses that object back,
//! merges the new field and writes it again, whether or not a line is ever logged inside the
//! span. With one span per call and four records on it (its ids, then its status), that was
//! about a fifth of GetUser's CPU (issue 14's profile: serde_json's serializer and
//! deserializer, `BTreeMap` inserts, `from_utf8`). This formatter keeps only what leads from a
//! log line to its trace and call, writes it once, and appends a later field without parsing.

use std::fmt::{self, Write as _};

use serde::Serializer as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// The span fields a log line shows.
const SHOWN: [&str; 4] = ["trace_id", "span_id", "rpc.service", "rpc.method"];

/// Room for a call span's shown fields at creation (`"rpc.service":"…","rpc.method":"…"`), so
/// the buffer is allocated once.
const TYPICAL: usize = 96;

/// See the [module](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSpanFields;

/// `"name":"value"` pairs of the shown fields, comma-separated, as UTF-8 JSON.
///
/// Every span of every call comes through here when it is created, so the values are escaped
/// straight into this one buffer by serde_json (`collect_str` escapes as it formats), with no
/// string per value in between.
#[derive(Default)]
struct Pairs(Vec<u8>);

/// A `Debug` value shown through `Display`, for `collect_str`.
struct AsDisplay<'a>(&'a dyn fmt::Debug);

impl fmt::Display for AsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl Pairs {
    fn push(&mut self, field: &Field, value: &dyn fmt::Display) {
        if !SHOWN.contains(&field.name()) {
            return;
        }
        if self.0.is_empty() {
            self.0.reserve(TYPICAL);
        } else {
            self.0.push(b',');
        }
        // The names are plain; the values are escaped as JSON strings. Writing into a `Vec`
        // cannot fail; a value's own `Display` failing leaves a truncated string, still JSON.
        self.0.push(b'"');
        self.0.extend_from_slice(field.name().as_bytes());
        self.0.extend_from_slice(b"\":");
        let mut json = serde_json::Serializer::new(&mut self.0);
        let _ = (&mut json).collect_str(value);
    }

    /// The pairs as text: serde_json writes only UTF-8, and the names are `&str`.
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Visit for Pairs {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field, &AsDisplay(value));
    }
}

impl<'writer> FormatFields<'writer> for LogSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        if pairs.0.is_empty() {
            return writer.write_str("{}");
        }
        // One write, so the span's formatted fields grow to their size once.
        pairs.0.insert(0, b'{');
        pairs.0.push(b'}');
        writer.write_str(pairs.as_str())
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut pairs = Pairs::default();
        fields.record(&mut pairs);
        if pairs.0.is_empty() {
            return Ok(());
        }
        // `current` is an object this formatter wrote: `{}` or `{...}`.
        let object = &mut current.fields;
        if object.len() <= 2 {
            object.clear();
            write!(object, "{{{}}}", pairs.as_str())
        } else {
            object.pop();
            write!(object, ",{}}}", pairs.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::mesh::telemetry::LogLines;

    /// The one line `body` logs through the process's JSON log layer, parsed.
    fn json_line(body: impl FnOnce()) -> serde_json::Value {
        let lines = LogLines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .fmt_fields(LogSpanFields)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, body);
        serde_json::from_str(lines.text().trim()).expect("one JSON line")
    }

    #[test]
    fn lines_carry_the_ids_and_method_of_their_span_as_valid_json() {
        let line = json_line(|| {
            let span = tracing::info_span!(
                "rpc.server",
                rpc.service = "shopmesh.user.v1.UserService",
                rpc.method = "GetUser",
                network.peer.address = "127.0.0.1",
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            span.record("trace_id", tracing::field::display("4bf92f3577b34da6a3ce929d0e0e4736"));
            span.record("span_id", tracing::field::display("00f067aa0ba902b7"));
            span.record("rpc.grpc.status_code", 0);
            span.in_scope(|| tracing::info!(user = "a\"b", "inside"));
        });
        let span = &line["span"];
        assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
        assert_eq!(span["span_id"], "00f067aa0ba902b7", "{line}");
        assert_eq!(span["rpc.method"], "GetUser", "{line}");
        assert_eq!(span["rpc.service"], "shopmesh.user.v1.UserService", "{line}");
        assert!(span.get("network.peer.address").is_none(), "only the shown fields: {line}");
        assert!(span.get("field_error").is_none(), "{line}");
        assert_eq!(line["message"], "inside");
        assert_eq!(line["user"], "a\"b", "event fields keep their own formatting: {line}");
    }

    #[test]
    fn span_values_are_escaped_whether_given_as_text_or_as_debug() {
        let (service, method) = ("a\"quoted\" \\ service\n", "Tab\there, \u{1}, é");
        let line = json_line(|| {
            let span = tracing::info_span!(
                "rpc.server",
                rpc.service = service,
                rpc.method = tracing::field::debug(method),
                trace_id = tracing::field::Empty,
            );
            span.record("trace_id", tracing::field::display("x\"y"));
            span.in_scope(|| tracing::info!("inside"));
        });
        let span = &line["span"];
        assert_eq!(span["rpc.service"], service, "{line}");
        assert_eq!(span["rpc.method"], format!("{method:?}"), "Debug values as their Debug text: {line}");
        assert_eq!(span["trace_id"], "x\"y", "a field recorded later is appended, escaped: {line}");
    }
}
