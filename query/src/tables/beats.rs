//! The `beats` table: every valid beat frame stored in `BACKBEAT_EVENTS`
//! (SPEC §2 fields as columns, valid for `--bar-length` as the fold checks
//! them) with where and when it was stored. Anything else on a beat subject
//! (garbage, a frame of another bar length, a forged frame that does not
//! parse) is not a row: counted as foreign.

use std::sync::{Arc, LazyLock};

use backbeat_schemas::BeatFrame;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::buffer::TableRow;
use super::columns::{int64, ms_to_us, time_column, time_field};

/// One beat.
#[derive(Debug, Clone)]
pub struct BeatRow {
    pub stream_seq: i64,
    /// When JetStream stored it, UTC microseconds.
    pub stored_at_us: i64,
    pub cluster_id: String,
    pub beat_index: i64,
    /// `beat_index / --bar-length`.
    pub window_index: i64,
    pub downbeat: bool,
    pub phase: &'static str,
    pub hlc: String,
    /// The HLC's physical part, UTC microseconds.
    pub hlc_time_us: i64,
    /// As the frame writes it (up to nine fraction digits, kept exact).
    pub deadline_at: String,
    pub tempo_bpm: i32,
    pub window_id: String,
}

impl BeatRow {
    pub fn new(stream_seq: u64, stored_at_us: i64, frame: BeatFrame, bar_length: u64) -> Self {
        BeatRow {
            stream_seq: int64(stream_seq),
            stored_at_us,
            beat_index: int64(frame.beat_index),
            window_index: int64(frame.beat_index / bar_length),
            downbeat: frame.downbeat,
            phase: frame.phase.as_str(),
            hlc: frame.hlc.to_string(),
            hlc_time_us: ms_to_us(frame.hlc.physical_ms),
            tempo_bpm: i32::try_from(frame.tempo_bpm).unwrap_or(i32::MAX),
            cluster_id: frame.cluster_id,
            deadline_at: frame.deadline_at,
            window_id: frame.window_id,
        }
    }
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("stream_seq", DataType::Int64, false),
        time_field("stored_at", false),
        Field::new("cluster_id", DataType::Utf8, false),
        Field::new("beat_index", DataType::Int64, false),
        Field::new("window_index", DataType::Int64, false),
        Field::new("downbeat", DataType::Boolean, false),
        Field::new("phase", DataType::Utf8, false),
        Field::new("hlc", DataType::Utf8, false),
        time_field("hlc_time", false),
        Field::new("deadline_at", DataType::Utf8, false),
        Field::new("tempo_bpm", DataType::Int32, false),
        Field::new("window_id", DataType::Utf8, false),
    ]))
});

impl TableRow for BeatRow {
    fn schema() -> SchemaRef {
        SCHEMA.clone()
    }

    fn to_batch(rows: &[Self]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.stream_seq))),
            time_column(rows.iter().map(|r| Some(r.stored_at_us))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.cluster_id))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.beat_index))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.window_index))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.downbeat)))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.phase))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.hlc))),
            time_column(rows.iter().map(|r| Some(r.hlc_time_us))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.deadline_at))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.tempo_bpm))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.window_id))),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the beats columns fit their schema")
    }

    fn stream_seq(&self) -> i64 {
        self.stream_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_becomes_a_row() {
        let window_id = backbeat_schemas::window::window_id("c", 4, 1);
        let payload = format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"c","beat_index":5,"downbeat":false,"phase":"execution","hlc":"3e8:0000:0001","deadline_at":"2026-01-01T00:00:00Z","tempo_bpm":60,"window_id":"{window_id}"}}"#
        );
        let frame = backbeat_schemas::validate_beat(payload.as_bytes(), "c", 4).unwrap();
        let row = BeatRow::new(3, 0, frame, 4);
        assert_eq!(
            (row.window_index, row.phase, row.hlc_time_us),
            (1, "execution", 1_000_000)
        );
        assert_eq!(BeatRow::to_batch(&[row]).num_rows(), 1);
    }
}
