//! The `bar_reports` table: one row per (cluster, window) BarReport in
//! `BACKBEAT_BARS`, every SPEC §2 field its own typed column, `issues` a list
//! of SPEC §6 structs, plus where and when it was stored and the window's
//! place in time (from its beats' HLCs, see [`super::spans`]).
//!
//! Anyone allowed to publish on `backbeat.{c}.bar` can put anything there.
//! A message is a row only when it is a valid BarReport of that cluster
//! ([`parse_report`]: strict JSON, every SPEC field present and typed, window
//! math consistent); anything else is counted and left out. When a window
//! appears more than once the last stored one is kept (the others counted):
//! only NATS permissions on `backbeat.*.bar` make the subject trustworthy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use backbeat_schemas::json::{scan_object, Scanned};
use backbeat_schemas::report::{Issue, ISSUE_CODES};
use backbeat_schemas::window::window_id;
use backbeat_schemas::BarReport;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, ListArray, ListBuilder, StringArray, StringBuilder,
    StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::columns::{int64, ms_to_us, time_column, time_field};
use super::spans::WindowSpans;
use super::Table;
use crate::archive::ArchiveView;

/// A bar message larger than this is not a report (a real one, with five
/// samples of 128-character ids for each of the eight issue codes, is far below).
pub const REPORT_BYTES_MAX: usize = 64 * 1024;

/// Every field of SPEC §2, in its order: each must be present.
const REPORT_FIELDS: [&str; 20] = [
    "type",
    "window_id",
    "from_beat",
    "to_beat",
    "agents_reporting",
    "on_time_reviews",
    "help_promises_fulfilled",
    "secret_rotations_ok",
    "tempo_drift_ms",
    "issues",
    "cluster_id",
    "window_index",
    "bar_length",
    "beats_observed",
    "claims_accepted",
    "claims_late",
    "claims_rejected",
    "tempo_bpm",
    "seq_first",
    "seq_last",
];

/// Reads a message on `backbeat.{subject_cluster}.bar` as a BarReport, or says
/// why it is not one.
pub fn parse_report(subject_cluster: &str, payload: &[u8]) -> Result<BarReport, String> {
    if payload.len() > REPORT_BYTES_MAX {
        return Err(format!("larger than {REPORT_BYTES_MAX} bytes"));
    }
    // The strict reader refuses what serde_json would let through (duplicate
    // keys, lone surrogates, too deep) and says which fields are present.
    let members = match scan_object(payload, &REPORT_FIELDS) {
        Ok(Scanned::Object(members)) => members,
        Ok(Scanned::NotObject(kind)) => return Err(format!("not a JSON object but {kind}")),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    if let Some(missing) = (0..REPORT_FIELDS.len()).find(|&i| members.get(i).is_none()) {
        return Err(format!("field {} is absent", REPORT_FIELDS[missing]));
    }
    let report: BarReport = serde_json::from_slice(payload).map_err(|e| format!("not a BarReport: {e}"))?;
    check_consistent(subject_cluster, &report)?;
    Ok(report)
}

/// The rules a report of the fold always keeps (SPEC §2, §4, §6).
fn check_consistent(subject_cluster: &str, report: &BarReport) -> Result<(), String> {
    if report.cluster_id != subject_cluster {
        return Err(format!("cluster_id {:?} is not the subject's", report.cluster_id));
    }
    let length = report.bar_length;
    let from_beat = report.window_index.checked_mul(length).filter(|_| length >= 1);
    let to_beat = from_beat.and_then(|from| from.checked_add(length - 1));
    if from_beat != Some(report.from_beat) || to_beat != Some(report.to_beat) {
        return Err("from_beat/to_beat do not match window_index and bar_length".into());
    }
    if report.window_id != window_id(&report.cluster_id, length, report.window_index) {
        return Err("window_id is not SPEC §4's for its cluster, bar length and window".into());
    }
    let mut last_code: Option<&str> = None;
    for issue in &report.issues {
        if !ISSUE_CODES.contains(&issue.code.as_str()) {
            return Err(format!("unknown issue code {:?}", issue.code));
        }
        if last_code.is_some_and(|last| last >= issue.code.as_str()) {
            return Err("issues are not sorted by code, one per code".into());
        }
        if issue.count == 0 || issue.sample.len() > backbeat_schemas::report::ISSUE_SAMPLE_LEN_MAX {
            return Err(format!("issue {} has a count of 0 or too long a sample", issue.code));
        }
        last_code = Some(&issue.code);
    }
    if report.seq_first > report.seq_last {
        return Err("seq_first is above seq_last".into());
    }
    Ok(())
}

/// A stored report.
#[derive(Debug, Clone)]
pub struct BarRow {
    pub report: BarReport,
    /// The message as stored (what `/api/v1/windows` answers).
    pub json: Box<str>,
    pub stream_seq: u64,
    /// When JetStream stored it, UTC microseconds.
    pub published_at_us: i64,
}

/// The reports held, one per (cluster, window), the oldest stored let go past a limit.
#[derive(Debug)]
pub struct BarReportStore {
    reports: BTreeMap<(String, u64), BarRow>,
    /// The same keys by stream sequence, to let the oldest go.
    by_seq: BTreeMap<u64, (String, u64)>,
    windows_max: usize,
    rows_evicted: u64,
}

/// What [`BarReportStore::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The window was held from an earlier message, now replaced.
    Replaced,
}

impl BarReportStore {
    pub fn new(windows_max: usize) -> Self {
        BarReportStore {
            reports: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            windows_max: windows_max.max(1),
            rows_evicted: 0,
        }
    }

    pub fn insert(&mut self, row: BarRow) -> Inserted {
        let key = (row.report.cluster_id.clone(), row.report.window_index);
        self.by_seq.insert(row.stream_seq, key.clone());
        let inserted = match self.reports.insert(key, row) {
            Some(old) => {
                self.by_seq.remove(&old.stream_seq);
                Inserted::Replaced
            }
            None => Inserted::New,
        };
        while self.reports.len() > self.windows_max {
            let Some((_, key)) = self.by_seq.pop_first() else {
                break;
            };
            self.reports.remove(&key);
            self.rows_evicted += 1;
        }
        inserted
    }

    pub fn rows_held(&self) -> usize {
        self.reports.len()
    }

    pub fn rows_evicted(&self) -> u64 {
        self.rows_evicted
    }

    /// The reports of windows the archive does not hold, by cluster and window.
    pub fn unarchived(&self, archive: &ArchiveView) -> Vec<&BarRow> {
        self.reports
            .iter()
            .filter(|((cluster, window), _)| {
                archive
                    .through(Table::BarReports, cluster)
                    .is_none_or(|through| *window > through)
            })
            .map(|(_, row)| row)
            .collect()
    }

    /// `rows` as one batch of the table.
    pub fn to_batch(rows: &[&BarRow], spans: &WindowSpans) -> RecordBatch {
        let reports = || rows.iter().map(|row| &row.report);
        let int = |f: fn(&BarReport) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(reports().map(|r| int64(f(r)))))
        };
        let span = |r: &BarReport| spans.get(&r.window_id);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(reports().map(|r| &r.window_id))),
            Arc::new(StringArray::from_iter_values(reports().map(|r| &r.cluster_id))),
            int(|r| r.window_index),
            int(|r| r.bar_length),
            int(|r| r.from_beat),
            int(|r| r.to_beat),
            int(|r| r.agents_reporting),
            int(|r| r.on_time_reviews),
            int(|r| r.help_promises_fulfilled),
            Arc::new(BooleanArray::from_iter(reports().map(|r| Some(r.secret_rotations_ok)))),
            Arc::new(Int64Array::from_iter_values(reports().map(|r| r.tempo_drift_ms))),
            issues_column(rows),
            int(|r| r.beats_observed),
            int(|r| r.claims_accepted),
            int(|r| r.claims_late),
            int(|r| r.claims_rejected),
            Arc::new(Int32Array::from_iter_values(
                reports().map(|r| i32::try_from(r.tempo_bpm).unwrap_or(i32::MAX)),
            )),
            int(|r| r.seq_first),
            int(|r| r.seq_last),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|row| int64(row.stream_seq)),
            )),
            time_column(rows.iter().map(|row| Some(row.published_at_us))),
            time_column(reports().map(|r| span(r).map(|s| ms_to_us(s.first_ms)))),
            time_column(reports().map(|r| span(r).map(|s| ms_to_us(s.last_ms)))),
        ];
        RecordBatch::try_new(SCHEMA.clone(), columns).expect("the bar_reports columns fit their schema")
    }
}

/// The table's 64-bit integer columns.
const INT_COLUMNS: [&str; 14] = [
    "window_index",
    "bar_length",
    "from_beat",
    "to_beat",
    "agents_reporting",
    "on_time_reviews",
    "help_promises_fulfilled",
    "tempo_drift_ms",
    "beats_observed",
    "claims_accepted",
    "claims_late",
    "claims_rejected",
    "seq_first",
    "seq_last",
];

/// The BarReports of rows of this table (`SELECT *` over archive and tail),
/// rebuilt from their columns: the inverse of [`BarReportStore::to_batch`].
/// Every SPEC field is a column of its own, so [`BarReport::to_json`] of the
/// result gives the bytes the processor published.
pub fn reports_from_batches(batches: &[RecordBatch]) -> Result<Vec<BarReport>, ArrowError> {
    let mut reports = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        // The archive's scans may hand a column over in another Arrow
        // encoding of the same type (string views): cast to the table's own.
        let column = |name: &str| -> Result<ArrayRef, ArrowError> {
            let field = SCHEMA.field_with_name(name)?;
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("bar_reports: no column {name}")))?;
            cast(array, field.data_type())
        };
        let strings = |name: &str| column(name).map(|a| a.as_string::<i32>().clone());
        let (window_id, cluster_id) = (strings("window_id")?, strings("cluster_id")?);
        let ints = INT_COLUMNS
            .iter()
            .map(|&name| Ok((name, column(name)?.as_primitive::<Int64Type>().clone())))
            .collect::<Result<HashMap<&str, Int64Array>, ArrowError>>()?;
        let signed = |name: &str, row: usize| ints[name].value(row);
        let unsigned = |name: &str, row: usize| u64::try_from(signed(name, row)).unwrap_or(0);
        let secret_rotations_ok = column("secret_rotations_ok")?.as_boolean().clone();
        let tempo_bpm = column("tempo_bpm")?.as_primitive::<Int32Type>().clone();
        let issues = column("issues")?.as_list::<i32>().clone();
        for row in 0..batch.num_rows() {
            let issues = issues.value(row);
            let issues = issues.as_struct();
            let (codes, counts, samples) = (
                issues.column(0).as_string::<i32>(),
                issues.column(1).as_primitive::<Int64Type>(),
                issues.column(2).as_list::<i32>(),
            );
            reports.push(BarReport {
                kind: Default::default(),
                window_id: window_id.value(row).to_string(),
                from_beat: unsigned("from_beat", row),
                to_beat: unsigned("to_beat", row),
                agents_reporting: unsigned("agents_reporting", row),
                on_time_reviews: unsigned("on_time_reviews", row),
                help_promises_fulfilled: unsigned("help_promises_fulfilled", row),
                secret_rotations_ok: secret_rotations_ok.value(row),
                tempo_drift_ms: signed("tempo_drift_ms", row),
                issues: (0..issues.len())
                    .map(|i| Issue {
                        code: codes.value(i).to_string(),
                        count: u64::try_from(counts.value(i)).unwrap_or(0),
                        sample: samples
                            .value(i)
                            .as_string::<i32>()
                            .iter()
                            .map(|id| id.unwrap_or_default().to_string())
                            .collect(),
                    })
                    .collect(),
                cluster_id: cluster_id.value(row).to_string(),
                window_index: unsigned("window_index", row),
                bar_length: unsigned("bar_length", row),
                beats_observed: unsigned("beats_observed", row),
                claims_accepted: unsigned("claims_accepted", row),
                claims_late: unsigned("claims_late", row),
                claims_rejected: unsigned("claims_rejected", row),
                tempo_bpm: u32::try_from(tempo_bpm.value(row)).unwrap_or(0),
                seq_first: unsigned("seq_first", row),
                seq_last: unsigned("seq_last", row),
            });
        }
    }
    Ok(reports)
}

/// The fields of one `issues` element (SPEC §6).
fn issue_fields() -> Fields {
    Fields::from(vec![
        Field::new("code", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("sample", DataType::new_list(DataType::Utf8, true), false),
    ])
}

fn issues_type() -> DataType {
    DataType::new_list(DataType::Struct(issue_fields()), true)
}

fn issues_column(rows: &[&BarRow]) -> ArrayRef {
    let issues = || rows.iter().flat_map(|row| row.report.issues.iter());
    // A flattened iterator has no exact length, which from_iter_values needs.
    let codes = StringArray::from(issues().map(|i| i.code.as_str()).collect::<Vec<_>>());
    let counts = Int64Array::from_iter_values(issues().map(|i| int64(i.count)));
    let mut samples = ListBuilder::new(StringBuilder::new());
    for issue in issues() {
        for id in &issue.sample {
            samples.values().append_value(id);
        }
        samples.append(true);
    }
    let structs = StructArray::new(
        issue_fields(),
        vec![Arc::new(codes), Arc::new(counts), Arc::new(samples.finish())],
        None,
    );
    let DataType::List(element) = issues_type() else {
        unreachable!("issues_type is a list")
    };
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|row| row.report.issues.len()));
    Arc::new(ListArray::new(element, offsets, Arc::new(structs), None))
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        Field::new("window_id", DataType::Utf8, false),
        Field::new("cluster_id", DataType::Utf8, false),
        int("window_index"),
        int("bar_length"),
        int("from_beat"),
        int("to_beat"),
        int("agents_reporting"),
        int("on_time_reviews"),
        int("help_promises_fulfilled"),
        Field::new("secret_rotations_ok", DataType::Boolean, false),
        int("tempo_drift_ms"),
        Field::new("issues", issues_type(), false),
        int("beats_observed"),
        int("claims_accepted"),
        int("claims_late"),
        int("claims_rejected"),
        Field::new("tempo_bpm", DataType::Int32, false),
        int("seq_first"),
        int("seq_last"),
        int("stream_seq"),
        time_field("published_at", false),
        time_field("window_start", true),
        time_field("window_end", true),
    ]))
});

/// The table's schema.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_json(cluster: &str, window: u64, extra_issue: &str) -> String {
        let id = window_id(cluster, 4, window);
        let (from, to) = (window * 4, window * 4 + 3);
        format!(
            r#"{{"type":"backbeat.barreport.v1","window_id":"{id}","from_beat":{from},"to_beat":{to},"agents_reporting":2,"on_time_reviews":1,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":-3,"issues":[{extra_issue}],"cluster_id":"{cluster}","window_index":{window},"bar_length":4,"beats_observed":4,"claims_accepted":3,"claims_late":0,"claims_rejected":0,"tempo_bpm":60,"seq_first":1,"seq_last":9}}"#
        )
    }

    #[test]
    fn a_report_of_the_fold_is_read() {
        let json = report_json("c", 2, r#"{"code":"late_claims","count":2,"sample":["a"]}"#);
        let report = parse_report("c", json.as_bytes()).unwrap();
        assert_eq!(report.to_json(), json);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let good = report_json("c", 2, "");
        let cases: Vec<(String, &str)> = vec![
            ("garbage".into(), "invalid JSON"),
            ("[1]".into(), "not a JSON object"),
            (
                good.replace(r#""seq_last":9"#, r#""seq_last":9,"seq_last":9"#),
                "invalid JSON",
            ),
            (good.replace(r#","seq_last":9"#, ""), "seq_last is absent"),
            (
                good.replace(r#""from_beat":8"#, r#""from_beat":8.0"#),
                "not a BarReport",
            ),
            (good.clone(), "not the subject's"),
            (
                good.replace(r#""window_index":2"#, r#""window_index":3"#),
                "from_beat/to_beat",
            ),
            (
                report_json("c", 2, r#"{"code":"bogus","count":1,"sample":[]}"#),
                "unknown issue code",
            ),
        ];
        for (index, (payload, want)) in cases.iter().enumerate() {
            let cluster = if index == 5 { "d" } else { "c" };
            let error = parse_report(cluster, payload.as_bytes()).unwrap_err();
            assert!(error.contains(want), "case {index}: {error}");
        }
    }

    #[test]
    fn the_last_stored_report_of_a_window_is_kept() {
        let mut store = BarReportStore::new(2);
        let row = |window: u64, seq: u64, drift: i64| {
            let mut report = parse_report("c", report_json("c", window, "").as_bytes()).unwrap();
            report.tempo_drift_ms = drift;
            BarRow {
                json: report.to_json().into(),
                report,
                stream_seq: seq,
                published_at_us: 0,
            }
        };
        assert_eq!(store.insert(row(1, 1, 0)), Inserted::New);
        assert_eq!(store.insert(row(1, 2, 5)), Inserted::Replaced);
        assert_eq!(store.unarchived(&ArchiveView::default())[0].report.tempo_drift_ms, 5);
        store.insert(row(2, 3, 0));
        store.insert(row(3, 4, 0));
        assert_eq!(store.rows_held(), 2);
        assert_eq!(store.rows_evicted(), 1);
        let batch = BarReportStore::to_batch(&store.unarchived(&ArchiveView::default()), &WindowSpans::new(4));
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), schema());
    }

    #[test]
    fn rows_give_back_the_reports_they_were_made_of() {
        let issues = [
            "",
            r#"{"code":"late_claims","count":2,"sample":["a","b\"c"]}"#,
            r#"{"code":"missing_beats","count":1,"sample":[]},{"code":"overdue_tasks","count":7,"sample":["t:1"]}"#,
        ];
        let rows: Vec<BarRow> = issues
            .iter()
            .enumerate()
            .map(|(window, issues)| {
                let json = report_json("c", window as u64, issues);
                BarRow {
                    report: parse_report("c", json.as_bytes()).unwrap(),
                    json: json.into(),
                    stream_seq: window as u64 + 1,
                    published_at_us: 0,
                }
            })
            .collect();
        let batch = BarReportStore::to_batch(&rows.iter().collect::<Vec<_>>(), &WindowSpans::new(4));
        // Split in two batches, as a scan hands them over.
        let batches = [batch.slice(0, 1), batch.slice(1, 2)];
        let reports = reports_from_batches(&batches).unwrap();
        let documents: Vec<String> = reports.iter().map(BarReport::to_json).collect();
        let stored: Vec<String> = rows.iter().map(|row| row.json.to_string()).collect();
        assert_eq!(documents, stored);
    }
}
