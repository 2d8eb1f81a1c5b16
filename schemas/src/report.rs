//! The BarReport (INT-C, SPEC §2 and §6): the account of one window.
//!
//! A report is a pure function of the log: it holds no wall-clock time of its
//! processing, so the live run and every replay serialize it to the same bytes.

use serde::{Deserialize, Serialize};

use crate::message::BarReportType;

/// The issue codes of SPEC §6, in their sorted (report) order.
pub const ISSUE_CODES: [&str; 8] = [
    "late_claims",
    "missing_beats",
    "overdue_tasks",
    "rejected_beats",
    "rejected_claims",
    "secret_rotation_failed",
    "stale_beats",
    "tempo_changes",
];

/// How many distinct ids an issue's `sample` keeps.
pub const ISSUE_SAMPLE_LEN_MAX: usize = 5;

/// One kind of trouble in a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub code: String,
    /// Occurrences (events or beats), not distinct ids.
    pub count: u64,
    /// The first five distinct ids in the order the fold met them.
    pub sample: Vec<String>,
}

/// The report of one window. Fields after `issues` are SPEC §2's additive fields;
/// a reader of older reports gets their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarReport {
    #[serde(rename = "type")]
    pub kind: BarReportType,
    pub window_id: String,
    pub from_beat: u64,
    pub to_beat: u64,
    pub agents_reporting: u64,
    pub on_time_reviews: u64,
    pub help_promises_fulfilled: u64,
    pub secret_rotations_ok: bool,
    pub tempo_drift_ms: i64,
    pub issues: Vec<Issue>,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub window_index: u64,
    #[serde(default)]
    pub bar_length: u64,
    #[serde(default)]
    pub beats_observed: u64,
    #[serde(default)]
    pub claims_accepted: u64,
    #[serde(default)]
    pub claims_late: u64,
    #[serde(default)]
    pub claims_rejected: u64,
    #[serde(default)]
    pub tempo_bpm: u32,
    #[serde(default)]
    pub seq_first: u64,
    #[serde(default)]
    pub seq_last: u64,
}

impl BarReport {
    /// The report's one serialized form: compact JSON, SPEC field order, no newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a BarReport always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted() {
        let mut sorted = ISSUE_CODES;
        sorted.sort_unstable();
        assert_eq!(sorted, ISSUE_CODES);
    }

    #[test]
    fn the_original_example_parses() {
        let text = include_str!("../json/examples/barreport.json");
        let report: BarReport = serde_json::from_str(text).unwrap();
        assert_eq!(report.from_beat, 240);
        assert_eq!(report.tempo_drift_ms, 7);
        assert_eq!(report.cluster_id, "");
    }

    #[test]
    fn serializes_type_first_and_escapes_like_spec() {
        let report = BarReport {
            kind: BarReportType,
            window_id: "w".into(),
            from_beat: 0,
            to_beat: 3,
            agents_reporting: 0,
            on_time_reviews: 0,
            help_promises_fulfilled: 0,
            secret_rotations_ok: true,
            tempo_drift_ms: -3,
            issues: vec![Issue {
                code: "late_claims".into(),
                count: 1,
                sample: vec!["é\n\u{1}\"\\/".into()],
            }],
            cluster_id: "c".into(),
            window_index: 0,
            bar_length: 4,
            beats_observed: 0,
            claims_accepted: 0,
            claims_late: 1,
            claims_rejected: 0,
            tempo_bpm: 0,
            seq_first: 0,
            seq_last: 0,
        };
        let json = report.to_json();
        assert!(
            json.starts_with(r#"{"type":"backbeat.barreport.v1","window_id":"w","#),
            "{json}"
        );
        assert!(json.contains(r#""sample":["é\n\u0001\"\\/"]"#), "{json}");
        assert_eq!(serde_json::from_str::<BarReport>(&json).unwrap(), report);
    }
}
