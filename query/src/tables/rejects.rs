//! The `rejects` table: every dead letter stored in `BACKBEAT_REJECTS`, with
//! the reason and the other `Backbeat-*` headers the gateway writes, and the
//! payload as received (or its marked prefix).

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::buffer::TableRow;
use super::columns::{int64, time_column, time_field};

/// The headers of a dead letter (as `ingest` writes them).
pub const HEADER_REASON: &str = "Backbeat-Reason";
pub const HEADER_ERROR: &str = "Backbeat-Error";
pub const HEADER_SOURCE: &str = "Backbeat-Source";
pub const HEADER_SUBJECT: &str = "Backbeat-Subject";
pub const HEADER_TRUNCATED: &str = "Backbeat-Truncated";
pub const HEADER_LINES: &str = "Backbeat-Lines";
pub const HEADER_LINES_REFUSED: &str = "Backbeat-Lines-Refused";

/// One dead letter.
#[derive(Debug, Clone)]
pub struct RejectRow {
    pub stream_seq: i64,
    /// When JetStream stored it, UTC microseconds.
    pub stored_at_us: i64,
    /// The cluster token of `backbeat.{cluster}.reject` (`_invalid` for refused cluster ids).
    pub cluster_id: String,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub source: Option<String>,
    /// The subject the input arrived on.
    pub subject: Option<String>,
    /// The payload, invalid UTF-8 replaced by U+FFFD (see `payload_is_utf8`).
    pub payload: String,
    pub payload_is_utf8: bool,
    /// The full length when the payload is only its prefix.
    pub truncated_from_bytes: Option<i64>,
    pub lines: Option<String>,
    pub lines_refused: Option<i64>,
}

impl RejectRow {
    /// `header` reads a header's value by name.
    pub fn new<'h>(
        stream_seq: u64,
        stored_at_us: i64,
        cluster_id: &str,
        payload: &[u8],
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Self {
        let number = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok()).map(int64);
        let text = |name: &str| header(name).map(str::to_string);
        let (payload, payload_is_utf8) = match std::str::from_utf8(payload) {
            Ok(text) => (text.to_string(), true),
            Err(_) => (String::from_utf8_lossy(payload).into_owned(), false),
        };
        RejectRow {
            stream_seq: int64(stream_seq),
            stored_at_us,
            cluster_id: cluster_id.to_string(),
            reason: text(HEADER_REASON),
            error: text(HEADER_ERROR),
            source: text(HEADER_SOURCE),
            subject: text(HEADER_SUBJECT),
            payload,
            payload_is_utf8,
            truncated_from_bytes: number(HEADER_TRUNCATED),
            lines: text(HEADER_LINES),
            lines_refused: number(HEADER_LINES_REFUSED),
        }
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("stream_seq", DataType::Int64, false),
        time_field("stored_at", false),
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
        Field::new("payload_is_utf8", DataType::Boolean, false),
        Field::new("truncated_from_bytes", DataType::Int64, true),
        Field::new("lines", DataType::Utf8, true),
        Field::new("lines_refused", DataType::Int64, true),
    ]))
});

impl TableRow for RejectRow {
    fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    fn to_batch(rows: &[Self]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.stream_seq))),
            time_column(rows.iter().map(|r| Some(r.stored_at_us))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.cluster_id))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.reason.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.error.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.source.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.subject.as_deref()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.payload))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.payload_is_utf8)))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.truncated_from_bytes))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.lines.as_deref()))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.lines_refused))),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the rejects columns fit their schema")
    }

    fn stream_seq(&self) -> i64 {
        self.stream_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_invalid_utf8() {
        let row = RejectRow::new(1, 0, "c", b"ab\xff", |name| match name {
            HEADER_REASON => Some("invalid_json"),
            HEADER_TRUNCATED => Some("9000"),
            _ => None,
        });
        assert_eq!(row.reason.as_deref(), Some("invalid_json"));
        assert_eq!(row.truncated_from_bytes, Some(9000));
        assert!(!row.payload_is_utf8);
        assert_eq!(row.payload, "ab\u{fffd}");
        assert_eq!(RejectRow::to_batch(&[row]).num_rows(), 1);
    }
}
