//! The tables SQL sees: `bar_reports`, `claims`, `beats`, `rejects`, each
//! the archive's Parquet files and the unsealed tail of the three streams,
//! held in memory as the tail reads them. One file per table (its rows and
//! schema); [`TailTables`] holds them all and the archive's view behind one
//! lock, and [`provider::TailTable`] serves a snapshot of one to DataFusion.

pub mod bar_reports;
pub mod beats;
pub mod buffer;
pub mod claims;
pub mod columns;
pub mod provider;
pub mod rejects;
pub mod spans;

use std::collections::BTreeMap;
use std::sync::Arc;

use backbeat_schemas::names::{parse_subject, SubjectKind};
use backbeat_schemas::window::WindowIdCache;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use self::bar_reports::{parse_report, BarReportStore, BarRow, Inserted};
use self::beats::BeatRow;
use self::buffer::{ClusterRows, TableRow};
use self::claims::ClaimRow;
use self::rejects::RejectRow;
use self::spans::WindowSpans;
use crate::archive::ArchiveView;

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
    /// A row the archive already holds (read again after a restart): not held twice.
    Archived,
}

/// Every table's rows, and the windows' places in time.
#[derive(Debug)]
pub struct TailTables {
    bar_length: u64,
    bars: BarReportStore,
    claims: ClusterRows<ClaimRow>,
    beats: ClusterRows<BeatRow>,
    rejects: ClusterRows<RejectRow>,
    spans: WindowSpans,
    window_ids: WindowIdCache,
    /// What the archive holds: rows at or below its ranges are not held here.
    archive: Arc<ArchiveView>,
    /// Whether the oldest rows are let go past the limit: not on the
    /// archive's writer, whose rows must all reach the archive.
    evict: bool,
}

/// Rows of one table of one cluster that a seal takes into one file.
#[derive(Debug)]
pub struct Sealing {
    pub table: Table,
    pub cluster: String,
    /// The range the file seals (stream sequences; windows for `bar_reports`).
    pub from: u64,
    pub to: u64,
    pub batches: Vec<RecordBatch>,
}

impl Sealing {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Stream indexes of the positions passed around: `BACKBEAT_EVENTS`, `_BARS`, `_REJECTS` (as `tail::STREAMS`).
pub const EVENTS: usize = 0;
pub const BARS: usize = 1;
pub const REJECTS: usize = 2;

impl TailTables {
    /// Tables for `--bar-length` `bar_length` (at least 1), each holding at most about `rows_max` rows.
    pub fn new(bar_length: u64, rows_max: usize) -> Self {
        assert!(bar_length >= 1, "bar length must be at least 1");
        TailTables {
            bar_length,
            bars: BarReportStore::new(rows_max),
            claims: ClusterRows::new(rows_max),
            beats: ClusterRows::new(rows_max),
            rejects: ClusterRows::new(rows_max),
            spans: WindowSpans::new(rows_max),
            window_ids: WindowIdCache::default(),
            archive: Arc::new(ArchiveView::default()),
            evict: true,
        }
    }

    /// Whether `seq` of `table` of `cluster` is in the archive.
    fn archived(&self, table: Table, cluster: &str, seq: u64) -> bool {
        self.archive
            .through(table, cluster)
            .is_some_and(|through| seq <= through)
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
                        // Spans are kept for archived beats too: a report not yet sealed needs its window's.
                        self.spans
                            .record(&frame.window_id, frame.beat_index, frame.hlc.physical_ms);
                        if self.archived(Table::Beats, cluster, seq) {
                            return Applied::Archived;
                        }
                        let row = BeatRow::new(seq, stored_at_us, frame, self.bar_length);
                        self.beats.push(cluster, row, self.evict);
                        Applied::Row
                    }
                    Err(_) => Applied::ForeignEvent(kind),
                }
            }
            SubjectKind::Claim => match backbeat_schemas::validate_claim(payload) {
                Ok(_) if self.archived(Table::Claims, cluster, seq) => Applied::Archived,
                Ok(claim) => {
                    let row = ClaimRow::new(seq, stored_at_us, cluster, &claim, self.bar_length);
                    self.claims.push(cluster, row, self.evict);
                    Applied::Row
                }
                Err(_) => Applied::ForeignEvent(kind),
            },
            _ => Applied::Ignored,
        }
    }

    /// A message of `BACKBEAT_BARS`. A report of a window the archive holds
    /// is not a row: the archived report stays the window's.
    pub fn apply_bar(&mut self, seq: u64, stored_at_us: i64, subject: &str, payload: &[u8]) -> Applied {
        let Some((cluster, SubjectKind::Bar)) = parse_subject(subject) else {
            return Applied::Ignored;
        };
        let report = match parse_report(cluster, payload) {
            Ok(report) => report,
            Err(why) => return Applied::ForeignBar(why),
        };
        if self.archived(Table::BarReports, cluster, report.window_index) {
            return Applied::Archived;
        }
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
        if self.archived(Table::Rejects, cluster, seq) {
            return Applied::Archived;
        }
        let row = RejectRow::new(seq, stored_at_us, cluster, payload, header);
        self.rejects.push(cluster, row, self.evict);
        Applied::Row
    }

    /// Every row of `table` the tail holds (none the archive holds), as batches.
    pub fn snapshot(&self, table: Table) -> Vec<RecordBatch> {
        match table {
            Table::BarReports => {
                let rows = self.bars.unarchived(&self.archive);
                vec![BarReportStore::to_batch(&rows, &self.spans)]
            }
            Table::Claims => self.claims.snapshot(),
            Table::Beats => self.beats.snapshot(),
            Table::Rejects => self.rejects.snapshot(),
        }
    }

    /// What the archive holds, as the tail last learnt it.
    pub fn archive(&self) -> Arc<ArchiveView> {
        self.archive.clone()
    }

    /// Takes `view` as what the archive holds, and lets go of every row it holds.
    pub fn install(&mut self, view: ArchiveView) {
        for (table, cluster, through) in view.all_through() {
            let seq = i64::try_from(through).unwrap_or(i64::MAX);
            match table {
                Table::Claims => self.claims.drop_through(cluster, seq),
                Table::Beats => self.beats.drop_through(cluster, seq),
                Table::Rejects => self.rejects.drop_through(cluster, seq),
                // Kept for /api/v1/windows; SQL sees them from the archive.
                Table::BarReports => {}
            }
        }
        self.archive = Arc::new(view);
    }

    /// Whether the oldest rows may be let go past the limit (false on the archive's writer).
    pub fn set_evict(&mut self, evict: bool) {
        self.evict = evict;
    }

    /// Whether a table of rows holds more than its limit (only on the
    /// archive's writer, which lets none go: it seals instead). Reports are
    /// bounded by their own limit (the oldest stored go first, and those a
    /// writer sealed long ago).
    pub fn over_limit(&self) -> bool {
        self.claims.over_limit() || self.beats.over_limit() || self.rejects.over_limit()
    }

    /// Whether the tail must wait for a seal before it reads on: the
    /// archive's writer (which lets no row go) over a table's limit.
    pub fn must_wait(&self) -> bool {
        !self.evict && self.over_limit()
    }

    /// Whether some table holds more than half its limit: a seal then takes
    /// everything read, reported or not, so the tail never has to wait long.
    pub fn under_pressure(&self) -> bool {
        let half = self.claims.rows_max() / 2;
        [
            self.claims.rows_held(),
            self.beats.rows_held(),
            self.rejects.rows_held(),
        ]
        .into_iter()
        .any(|held| held > half)
    }

    /// Rows let go past the limit since start, all tables.
    pub fn rows_evicted_total(&self) -> u64 {
        Table::ALL.iter().map(|t| self.rows(*t).1).sum()
    }

    /// What a seal takes now, `read` being how far each stream was read
    /// ([`EVENTS`], [`BARS`], [`REJECTS`]): per cluster, the reports whose
    /// events were all read (`seq_last` at or below the events read), and
    /// the claims and beats up to the highest `seq_last` of those (the
    /// events of reported windows); every dead letter read. With `force`
    /// (the tail over half its limit), every report, claim and beat read.
    pub fn to_seal(&self, read: [u64; 3], force: bool) -> Vec<Sealing> {
        let mut sealings = Vec::new();
        let mut event_cuts: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_cluster: BTreeMap<&str, Vec<&BarRow>> = BTreeMap::new();
        for row in self.bars.unarchived(&self.archive) {
            by_cluster.entry(&row.report.cluster_id).or_default().push(row);
        }
        for (cluster, rows) in by_cluster {
            let eligible: Vec<&BarRow> = rows
                .into_iter()
                .take_while(|row| force || row.report.seq_last <= read[EVENTS])
                .collect();
            let (Some(first), Some(last)) = (eligible.first(), eligible.last()) else {
                continue;
            };
            let from = self
                .archive
                .through(Table::BarReports, cluster)
                .map_or(first.report.window_index, |through| through + 1);
            sealings.push(Sealing {
                table: Table::BarReports,
                cluster: cluster.to_string(),
                from,
                to: last.report.window_index,
                batches: vec![BarReportStore::to_batch(&eligible, &self.spans)],
            });
            let cut = eligible.iter().map(|row| row.report.seq_last).max().unwrap_or(0);
            event_cuts.insert(cluster.to_string(), cut.min(read[EVENTS]));
        }
        if force {
            let claims = self.claims.clusters().map(|(cluster, _)| cluster);
            for cluster in claims.chain(self.beats.clusters().map(|(cluster, _)| cluster)) {
                event_cuts.insert(cluster.clone(), read[EVENTS]);
            }
        }
        for (cluster, cut) in event_cuts {
            sealings.extend(self.sealing(&self.claims, Table::Claims, &cluster, cut));
            sealings.extend(self.sealing(&self.beats, Table::Beats, &cluster, cut));
        }
        for (cluster, _) in self.rejects.clusters() {
            sealings.extend(self.sealing(&self.rejects, Table::Rejects, cluster, read[REJECTS]));
        }
        sealings
    }

    /// The rows of `table` of `cluster` after what the archive holds, through `cut`.
    fn sealing<R: TableRow>(&self, rows: &ClusterRows<R>, table: Table, cluster: &str, cut: u64) -> Option<Sealing> {
        let through = self.archive.through(table, cluster).unwrap_or(0);
        if cut <= through {
            return None;
        }
        let batches = rows
            .cluster(cluster)?
            .batches_through(i64::try_from(cut).unwrap_or(i64::MAX));
        let sealing = Sealing {
            table,
            cluster: cluster.to_string(),
            from: through + 1,
            to: cut,
            batches,
        };
        (sealing.rows() > 0).then_some(sealing)
    }

    /// Where each stream can be read from again with nothing missing: every
    /// row at or below it is archived (or not a row), given `read`. Written
    /// as `_positions/{stream}` after a seal.
    pub fn positions(&self, read: [u64; 3]) -> [u64; 3] {
        let below = |first: Option<i64>, read: u64| first.map_or(read, |s| (s.max(1) as u64 - 1).min(read));
        let events_first = [self.claims.first_seq(), self.beats.first_seq()]
            .into_iter()
            .flatten()
            .min();
        let bars_first = self
            .bars
            .unarchived(&self.archive)
            .iter()
            .map(|row| i64::try_from(row.stream_seq).unwrap_or(i64::MAX))
            .min();
        [
            below(events_first, read[EVENTS]),
            below(bars_first, read[BARS]),
            below(self.rejects.first_seq(), read[REJECTS]),
        ]
    }

    /// Reports held and not yet archived (windows reported, not yet sealed).
    pub fn unsealed_reports(&self) -> usize {
        self.bars.unarchived(&self.archive).len()
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

#[cfg(test)]
mod tests {
    use backbeat_schemas::window::window_id;

    use super::*;
    use crate::archive::ArchivedFile;

    fn beat(index: u64) -> String {
        let phase = match index % 4 {
            0 => "plan",
            3 => "review",
            _ => "execution",
        };
        format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"c","beat_index":{index},"downbeat":{},"phase":"{phase}","hlc":"3e8:0000:0001","deadline_at":"2026-01-01T00:00:01Z","tempo_bpm":60,"window_id":"{}"}}"#,
            index.is_multiple_of(4),
            window_id("c", 4, index / 4)
        )
    }

    const CLAIM: &[u8] = br#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":1,"state":"idle","beats_left":0,"progress":0,"hlc":"3e8:0000:0002"}"#;

    fn report(window: u64, seq_last: u64) -> String {
        let id = window_id("c", 4, window);
        format!(
            r#"{{"type":"backbeat.barreport.v1","window_id":"{id}","from_beat":{},"to_beat":{},"agents_reporting":1,"on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[],"cluster_id":"c","window_index":{window},"bar_length":4,"beats_observed":4,"claims_accepted":1,"claims_late":0,"claims_rejected":0,"tempo_bpm":60,"seq_first":1,"seq_last":{seq_last}}}"#,
            window * 4,
            window * 4 + 3
        )
    }

    fn view_of(sealings: &[Sealing]) -> ArchiveView {
        let mut view = ArchiveView::default();
        for s in sealings {
            view.add(ArchivedFile {
                table: s.table,
                cluster: s.cluster.clone(),
                date: "1970-01-01".into(),
                from: s.from,
                to: s.to,
                window_min: 0,
                window_max: 0,
                path: Default::default(),
                size: 0,
            });
        }
        view
    }

    #[test]
    fn a_seal_takes_reported_windows_and_the_tail_lets_them_go() {
        let mut tables = TailTables::new(4, 100);
        // Window 0: beats 1..=4 and a claim (5); window 1's first beat (6) closes it.
        for (seq, index) in [(1, 0), (2, 1), (3, 2), (4, 3)] {
            assert_eq!(
                tables.apply_event(seq, 0, "backbeat.c.beat", beat(index).as_bytes()),
                Applied::Row
            );
        }
        assert_eq!(tables.apply_event(5, 0, "backbeat.c.claim", CLAIM), Applied::Row);
        assert_eq!(
            tables.apply_event(6, 0, "backbeat.c.beat", beat(4).as_bytes()),
            Applied::Row
        );
        assert_eq!(
            tables.apply_bar(1, 0, "backbeat.c.bar", report(0, 5).as_bytes()),
            Applied::Row
        );
        assert_eq!(
            tables.apply_reject(1, 0, "backbeat.c.reject", b"x", |_| None),
            Applied::Row
        );
        // A report whose events were not all read yet waits.
        assert!(tables
            .to_seal([4, 1, 1], false)
            .iter()
            .all(|s| s.table == Table::Rejects));

        let sealings = tables.to_seal([6, 1, 1], false);
        let taken: Vec<(Table, u64, u64, usize)> = sealings.iter().map(|s| (s.table, s.from, s.to, s.rows())).collect();
        assert_eq!(
            taken,
            [
                (Table::BarReports, 0, 0, 1),
                (Table::Claims, 1, 5, 1),
                (Table::Beats, 1, 5, 4),
                (Table::Rejects, 1, 1, 1)
            ]
        );
        tables.install(view_of(&sealings));
        assert_eq!(tables.rows(Table::Beats).0, 1, "beat 6 of the open window stays");
        assert_eq!(tables.rows(Table::Claims).0, 0);
        assert_eq!(tables.snapshot(Table::BarReports)[0].num_rows(), 0);
        assert_eq!(tables.unsealed_reports(), 0);
        // Every row at or below these is archived: beat 6 is not yet.
        assert_eq!(tables.positions([6, 1, 1]), [5, 1, 1]);
        // Read again after a restart: not held twice, and the window's report stays the archived one.
        assert_eq!(tables.apply_event(5, 0, "backbeat.c.claim", CLAIM), Applied::Archived);
        assert_eq!(
            tables.apply_bar(2, 0, "backbeat.c.bar", report(0, 5).as_bytes()),
            Applied::Archived
        );
        assert!(tables.to_seal([6, 2, 1], false).is_empty());
        // Forced (the tail over half its limit): everything read goes.
        let forced = tables.to_seal([6, 2, 1], true);
        let taken: Vec<(Table, u64, u64)> = forced.iter().map(|s| (s.table, s.from, s.to)).collect();
        assert_eq!(taken, [(Table::Beats, 6, 6)]);
    }
}
