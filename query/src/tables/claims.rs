//! The `claims` table: every valid status claim stored in `BACKBEAT_EVENTS`
//! (SPEC §2 fields as columns) with where and when it was stored. A message
//! on a claim subject that is not a valid claim is not a row (the gateway
//! never stores one; any other publisher's is counted as foreign).

use std::sync::{Arc, LazyLock};

use backbeat_schemas::StatusClaim;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::buffer::TableRow;
use super::columns::{int64, ms_to_us, time_column, time_field};

/// One claim.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    pub stream_seq: i64,
    /// When JetStream stored it, UTC microseconds.
    pub stored_at_us: i64,
    /// From the subject `backbeat.{cluster}.claim`.
    pub cluster_id: String,
    pub agent_id: String,
    pub task_id: Option<String>,
    pub beat_index: i64,
    /// `beat_index / --bar-length`.
    pub window_index: i64,
    pub state: &'static str,
    pub beats_left: i64,
    pub progress: f64,
    pub notes: Option<String>,
    pub hlc: String,
    /// The HLC's physical part, UTC microseconds.
    pub hlc_time_us: i64,
}

impl ClaimRow {
    pub fn new(stream_seq: u64, stored_at_us: i64, cluster_id: &str, claim: &StatusClaim<'_>, bar_length: u64) -> Self {
        ClaimRow {
            stream_seq: int64(stream_seq),
            stored_at_us,
            cluster_id: cluster_id.to_string(),
            agent_id: claim.agent_id.to_string(),
            task_id: claim.task_id.as_deref().map(str::to_string),
            beat_index: int64(claim.beat_index),
            window_index: int64(claim.beat_index / bar_length),
            state: claim.state.as_str(),
            beats_left: i64::from(claim.beats_left),
            progress: claim.progress,
            notes: claim.notes.as_deref().map(str::to_string),
            hlc: claim.hlc.to_string(),
            hlc_time_us: ms_to_us(claim.hlc.physical_ms),
        }
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("stream_seq", DataType::Int64, false),
        time_field("stored_at", false),
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("agent_id", DataType::Utf8, false),
        Field::new("task_id", DataType::Utf8, true),
        Field::new("beat_index", DataType::Int64, false),
        Field::new("window_index", DataType::Int64, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("beats_left", DataType::Int64, false),
        Field::new("progress", DataType::Float64, false),
        Field::new("notes", DataType::Utf8, true),
        Field::new("hlc", DataType::Utf8, false),
        time_field("hlc_time", false),
    ]))
});

impl TableRow for ClaimRow {
    fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    fn to_batch(rows: &[Self]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.stream_seq))),
            time_column(rows.iter().map(|r| Some(r.stored_at_us))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.cluster_id))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.agent_id))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.task_id.as_deref()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.beat_index))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.window_index))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.state))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.beats_left))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.progress))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.notes.as_deref()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.hlc))),
            time_column(rows.iter().map(|r| Some(r.hlc_time_us))),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the claims columns fit their schema")
    }

    fn stream_seq(&self) -> i64 {
        self.stream_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_becomes_a_row() {
        let payload = br#"{"type":"backbeat.statusclaim.v1","agent_id":"a","task_id":"t:1","beat_index":9,"state":"done","beats_left":0,"progress":1.0,"hlc":"3e8:0000:0001"}"#;
        let claim = backbeat_schemas::validate_claim(payload).unwrap();
        let row = ClaimRow::new(7, 5, "c", &claim, 4);
        assert_eq!((row.window_index, row.state, row.hlc_time_us), (2, "done", 1_000_000));
        let batch = ClaimRow::to_batch(&[row.clone(), row]);
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), ClaimRow::schema());
    }
}
