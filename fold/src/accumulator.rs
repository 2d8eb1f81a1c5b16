//! What a window accumulates until its report (SPEC §5–§6).

use backbeat_schemas::report::{Issue, ISSUE_CODES, ISSUE_SAMPLE_LEN_MAX};
use serde::{Deserialize, Serialize};

/// The issue codes of SPEC §6, indexing [`WindowAccumulator::issues`] in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    LateClaims = 0,
    MissingBeats = 1,
    OverdueTasks = 2,
    RejectedBeats = 3,
    RejectedClaims = 4,
    SecretRotationFailed = 5,
    StaleBeats = 6,
    TempoChanges = 7,
}

/// One issue's count and its first distinct ids.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssueAccumulator {
    pub count: u64,
    pub sample: Vec<String>,
}

impl IssueAccumulator {
    /// One occurrence of `id`; the sample keeps the first five distinct ids.
    pub fn add(&mut self, id: &str) {
        self.count += 1;
        if self.sample.len() < ISSUE_SAMPLE_LEN_MAX && !self.sample.iter().any(|s| s == id) {
            self.sample.push(id.to_string());
        }
    }

    /// `n` occurrences of ids made by `ids` (only as many made as the sample can use).
    pub fn add_many(&mut self, n: u64, ids: impl Iterator<Item = String>) {
        self.count += n;
        for id in ids {
            if self.sample.len() >= ISSUE_SAMPLE_LEN_MAX {
                break;
            }
            if !self.sample.contains(&id) {
                self.sample.push(id);
            }
        }
    }
}

/// A window's running totals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowAccumulator {
    /// Distinct agents with a claim applied here (counted by the cluster's agent table).
    pub agents_reporting: u64,
    pub on_time_reviews: u64,
    pub help_promises_fulfilled: u64,
    pub secret_rotations_ok: bool,
    pub issues: [IssueAccumulator; 8],
    pub beats_observed: u64,
    pub claims_accepted: u64,
    pub claims_late: u64,
    pub claims_rejected: u64,
    /// Lowest and highest stream sequence of the events applied; (0, 0) when none.
    pub seq_first: u64,
    pub seq_last: u64,
}

impl Default for WindowAccumulator {
    fn default() -> Self {
        WindowAccumulator {
            agents_reporting: 0,
            on_time_reviews: 0,
            help_promises_fulfilled: 0,
            secret_rotations_ok: true,
            issues: Default::default(),
            beats_observed: 0,
            claims_accepted: 0,
            claims_late: 0,
            claims_rejected: 0,
            seq_first: 0,
            seq_last: 0,
        }
    }
}

impl WindowAccumulator {
    pub fn issue(&mut self, code: IssueCode) -> &mut IssueAccumulator {
        &mut self.issues[code as usize]
    }

    /// An event with stream sequence `seq` was applied to this window. Call it
    /// after counting the event in `beats_observed` or `claims_accepted`.
    pub fn applied(&mut self, seq: u64) {
        if self.beats_observed + self.claims_accepted == 1 {
            self.seq_first = seq;
            self.seq_last = seq;
        } else {
            self.seq_first = self.seq_first.min(seq);
            self.seq_last = self.seq_last.max(seq);
        }
    }

    /// The report's `issues`: one per code with a count, in code order.
    pub fn issue_list(&self) -> Vec<Issue> {
        ISSUE_CODES
            .iter()
            .zip(&self.issues)
            .filter(|(_, acc)| acc.count > 0)
            .map(|(code, acc)| Issue {
                code: code.to_string(),
                count: acc.count,
                sample: acc.sample.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_first_five_distinct() {
        let mut acc = IssueAccumulator::default();
        for id in ["b", "a", "b", "c", "d", "e", "f", "a"] {
            acc.add(id);
        }
        assert_eq!(acc.count, 8);
        assert_eq!(acc.sample, ["b", "a", "c", "d", "e"]);
    }
}
