//! The tables SQL sees, held in memory as the tail of the three streams
//! reads them: `bar_reports`, `claims`, `beats`, `rejects`. One file per
//! table (its rows and schema); [`TailTables`] holds them all behind one
//! lock, and [`provider::TailTable`] serves a snapshot of one to DataFusion.

pub mod bar_reports;
pub mod beats;
pub mod buffer;
pub mod claims;
pub mod columns;
pub mod provider;
pub mod rejects;
pub mod spans;

use backbeat_schemas::names::{parse_subject, SubjectKind};
use backbeat_schemas::window::WindowIdCache;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use self::bar_reports::{parse_report, BarReportStore, BarRow, Inserted};
use self::beats::BeatRow;
use self::buffer::{RowBuffer, TableRow};
use self::claims::ClaimRow;
use self::rejects::RejectRow;
use self::spans::WindowSpans;

/// A table of the query service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    BarReports,
    Claims,
    Beats,
    Rejects,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::BarReports, Table::Claims, Table::Beats, Table::Rejects];

    /// Its SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Table::BarReports => "bar_reports",
            Table::Claims => "claims",
            Table::Beats => "beats",
            Table::Rejects => "rejects",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Table::BarReports => bar_reports::schema(),
            Table::Claims => ClaimRow::schema(),
            Table::Beats => BeatRow::schema(),
            Table::Rejects => RejectRow::schema(),
        }
    }
}

/// What became of one message read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A row of a table (a bar report that replaced an earlier one of its window is `Replaced`).
    Row,
    Replaced,
    /// Not a row: a message on a bar subject that is not a valid report of its cluster.
    ForeignBar(String),
    /// Not a row: a message on a beat or claim subject that is not a valid one.
    ForeignEvent(SubjectKind),
    /// A subject the tables do not hold (another stream's, or not `backbeat.{c}.*`).
    Ignored,
}

/// Every table's rows, and the windows' places in time.
#[derive(Debug)]
pub struct TailTables {
    bar_length: u64,
    bars: BarReportStore,
    claims: RowBuffer<ClaimRow>,
    beats: RowBuffer<BeatRow>,
    rejects: RowBuffer<RejectRow>,
    spans: WindowSpans,
    window_ids: WindowIdCache,
}

impl TailTables {
    /// Tables for `--bar-length` `bar_length` (at least 1), each holding at most about `rows_max` rows.
    pub fn new(bar_length: u64, rows_max: usize) -> Self {
        assert!(bar_length >= 1, "bar length must be at least 1");
        TailTables {
            bar_length,
            bars: BarReportStore::new(rows_max),
            claims: RowBuffer::new(rows_max),
            beats: RowBuffer::new(rows_max),
            rejects: RowBuffer::new(rows_max),
            spans: WindowSpans::new(rows_max),
            window_ids: WindowIdCache::default(),
        }
    }

    /// A message of `BACKBEAT_EVENTS`.
    pub fn apply_event(&mut self, seq: u64, stored_at_us: i64, subject: &str, payload: &[u8]) -> Applied {
        let Some((cluster, kind)) = parse_subject(subject) else {
            return Applied::Ignored;
        };
        match kind {
            SubjectKind::Beat => {
                match backbeat_schemas::validate_beat_with(payload, cluster, self.bar_length, &mut self.window_ids) {
                    Ok(frame) => {
                        self.spans
                            .record(&frame.window_id, frame.beat_index, frame.hlc.physical_ms);
                        self.beats.push(BeatRow::new(seq, stored_at_us, frame, self.bar_length));
                        Applied::Row
                    }
                    Err(_) => Applied::ForeignEvent(kind),
                }
            }
            SubjectKind::Claim => match backbeat_schemas::validate_claim(payload) {
                Ok(claim) => {
                    self.claims
                        .push(ClaimRow::new(seq, stored_at_us, cluster, &claim, self.bar_length));
                    Applied::Row
                }
                Err(_) => Applied::ForeignEvent(kind),
            },
            _ => Applied::Ignored,
        }
    }

    /// A message of `BACKBEAT_BARS`.
    pub fn apply_bar(&mut self, seq: u64, stored_at_us: i64, subject: &str, payload: &[u8]) -> Applied {
        let Some((cluster, SubjectKind::Bar)) = parse_subject(subject) else {
            return Applied::Ignored;
        };
        let report = match parse_report(cluster, payload) {
            Ok(report) => report,
            Err(why) => return Applied::ForeignBar(why),
        };
        let row = BarRow {
            report,
            // parse_report read it as JSON, so it is UTF-8.
            json: String::from_utf8_lossy(payload).into(),
            stream_seq: seq,
            published_at_us: stored_at_us,
        };
        match self.bars.insert(row) {
            Inserted::New => Applied::Row,
            Inserted::Replaced => Applied::Replaced,
        }
    }

    /// A message of `BACKBEAT_REJECTS`; `header` reads its headers.
    pub fn apply_reject<'h>(
        &mut self,
        seq: u64,
        stored_at_us: i64,
        subject: &str,
        payload: &[u8],
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Applied {
        let Some((cluster, SubjectKind::Reject)) = parse_subject(subject) else {
            return Applied::Ignored;
        };
        self.rejects
            .push(RejectRow::new(seq, stored_at_us, cluster, payload, header));
        Applied::Row
    }

    /// Every row of `table`, as batches.
    pub fn snapshot(&self, table: Table) -> Vec<RecordBatch> {
        match table {
            Table::BarReports => vec![self.bars.to_batch(&self.spans)],
            Table::Claims => self.claims.snapshot(),
            Table::Beats => self.beats.snapshot(),
            Table::Rejects => self.rejects.snapshot(),
        }
    }

    /// Rows held, and rows let go since start, of `table`.
    pub fn rows(&self, table: Table) -> (usize, u64) {
        match table {
            Table::BarReports => (self.bars.rows_held(), self.bars.rows_evicted()),
            Table::Claims => (self.claims.rows_held(), self.claims.rows_evicted()),
            Table::Beats => (self.beats.rows_held(), self.beats.rows_evicted()),
            Table::Rejects => (self.rejects.rows_held(), self.rejects.rows_evicted()),
        }
    }

    pub fn bars(&self) -> &BarReportStore {
        &self.bars
    }
}
