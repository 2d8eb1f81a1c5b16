//! The fault suite's figures: each fault test states what it injected, what
//! it checked and what it measured as one [`FaultRecord`], which
//! `deploy/faults.sh` gathers into its table. A record is one JSON line
//! appended to the file named by `BACKBEAT_FAULT_REPORT` (when set; lines of
//! concurrent tests do not interleave: each is one `write` in append mode) and
//! always printed to stderr, so a plain `cargo test` shows it too.

use std::io::Write;

/// The environment variable naming the file the records are appended to.
pub const FAULT_REPORT_ENV: &str = "BACKBEAT_FAULT_REPORT";

/// One row of the fault table. Figures a fault does not measure stay `None`
/// (shown as "–").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRecord {
    /// What was done, e.g. "kill -9 of the BACKBEAT_EVENTS leader (R3)".
    pub fault: String,
    /// How many times it was injected in this run.
    pub injected: u64,
    /// What was checked, in a few words.
    pub checked: String,
    /// Claims (or messages) acknowledged as stored and then not found.
    pub acked_lost: Option<u64>,
    /// Messages found more than once.
    pub duplicated: Option<u64>,
    /// BarReports that differ from the offline fold of the exported log.
    pub differing_reports: Option<u64>,
    /// The longest time the system refused or could not take work, ms.
    pub longest_unavailable_ms: Option<f64>,
    /// The same for raw JetStream publishes, measured in the same run, ms.
    pub reference_unavailable_ms: Option<f64>,
    /// Anything else worth a reader's eye.
    pub notes: String,
}

impl FaultRecord {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "fault": self.fault,
            "injected": self.injected,
            "checked": self.checked,
            "acked_lost": self.acked_lost,
            "duplicated": self.duplicated,
            "differing_reports": self.differing_reports,
            "longest_unavailable_ms": self.longest_unavailable_ms,
            "reference_unavailable_ms": self.reference_unavailable_ms,
            "notes": self.notes,
        })
        .to_string()
    }

    /// Prints the record to stderr and appends it to `$BACKBEAT_FAULT_REPORT`.
    pub fn record(&self) -> anyhow::Result<()> {
        let line = self.to_json();
        eprintln!("fault record: {line}");
        if let Some(path) = std::env::var_os(FAULT_REPORT_ENV) {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(format!("{line}\n").as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_with_every_field() {
        let record = FaultRecord {
            fault: "kill -9 \"x\"".into(),
            injected: 2,
            acked_lost: Some(0),
            longest_unavailable_ms: Some(1.5),
            ..FaultRecord::default()
        };
        let line = record.to_json();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["fault"], "kill -9 \"x\"");
        assert_eq!(value["acked_lost"], 0);
        assert!(value["duplicated"].is_null());
        assert_eq!(value.as_object().unwrap().len(), 9);
    }
}
