//! What the admin endpoints show: a snapshot the fold loop refreshes, never the
//! fold itself (HTTP never waits on the fold, and the fold never waits on HTTP).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use backbeat_schemas::window::{from_beat, to_beat, window_id};
use backbeat_schemas::BarReport;
use serde::Serialize;

use backbeat_fold::{ClusterStatus, Fold};
use backbeat_service::lease::{Holder, LeaseState};

/// Refused clusters the status names at most (all are counted).
pub const REFUSED_CLUSTERS_SHOWN: usize = 32;

/// How many recent reports each cluster keeps for `/api/v1/windows`.
pub const RECENT_REPORTS_MAX: usize = 32;

#[derive(Debug, Clone, Serialize, Default)]
pub struct OpenWindow {
    pub window_index: u64,
    pub window_id: String,
    pub from_beat: u64,
    pub to_beat: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterView {
    pub cluster_id: String,
    pub current_beat: Option<u64>,
    pub next_to_close: Option<u64>,
    pub open_windows: Vec<OpenWindow>,
    pub tasks: u64,
    pub agents: u64,
    pub recent_reports: VecDeque<BarReport>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessorStatus {
    pub name: String,
    pub clusters_filter: Vec<String>,
    pub bar_length: u64,
    pub last_seq: u64,
    pub consumer_lag: u64,
    pub caught_up: bool,
    pub checkpoint_seq: u64,
    pub checkpoint_generation: u64,
    /// Stream sequences of the checkpoints kept for `replay`, oldest first.
    pub kept_checkpoint_seqs: Vec<u64>,
    pub reports_published: u64,
    pub started: bool,
    pub error: Option<String>,
    /// The single-writer lease of this name ([`crate::lease`] copies it here).
    pub lease: LeaseStatus,
    /// While reports cannot be published: why (then `/ready` answers 503).
    pub publish_error: Option<String>,
    /// Messages on bar subjects that are not this processor's reports (counted, skipped).
    pub foreign_bars: u64,
    /// Reports published without their message id (a foreign message held it).
    pub report_msg_ids_taken: u64,
    /// `--max-clusters`: clusters the fold holds at most.
    pub max_clusters: u64,
    /// Clusters the fold holds.
    pub clusters_held: u64,
    /// Events of clusters beyond `--max-clusters` (not folded).
    pub cluster_cap_events: u64,
    /// The first clusters refused by `--max-clusters` (at most [`REFUSED_CLUSTERS_SHOWN`]).
    pub refused_clusters: Vec<String>,
    pub clusters: BTreeMap<String, ClusterView>,
}

/// What `/api/v1/status` shows about the lease.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LeaseStatus {
    /// `acquiring`, `waiting`, `held`, `released` or `lost` ([`LeaseState::name`]).
    pub state: String,
    pub bucket: String,
    pub key: String,
    /// The TTL in force (the bucket's `max_age`).
    pub ttl_ms: u64,
    /// This process.
    pub holder: Option<Holder>,
    /// While waiting: who holds it.
    pub held_by: Option<Holder>,
    /// The key's revision while held.
    pub revision: u64,
    /// While lost: why.
    pub lost: Option<String>,
}

impl LeaseStatus {
    /// Takes in what the lease says now.
    pub fn copy(&mut self, state: &LeaseState) {
        self.state = state.name().to_string();
        match state {
            LeaseState::Acquiring | LeaseState::Released => {}
            LeaseState::Waiting { held_by } => self.held_by = held_by.clone(),
            LeaseState::Held { revision } => {
                self.held_by = None;
                self.revision = *revision;
            }
            LeaseState::Lost { reason } => self.lost = Some(reason.clone()),
        }
    }

    /// The `/ready` answer while the lease is not held (None when it is).
    pub fn not_ready_reason(&self) -> Option<String> {
        match self.state.as_str() {
            "held" | "released" | "" => None,
            "waiting" => Some(match &self.held_by {
                Some(holder) => format!("waiting for lease {}/{} held by {holder}", self.bucket, self.key),
                None => format!("waiting for lease {}/{}", self.bucket, self.key),
            }),
            "lost" => Some(format!(
                "lost lease {}/{}: {}",
                self.bucket,
                self.key,
                self.lost.as_deref().unwrap_or("")
            )),
            _ => Some(format!("acquiring lease {}/{}", self.bucket, self.key)),
        }
    }
}

/// Shared between the fold loop (writer) and HTTP handlers (readers).
#[derive(Clone, Default)]
pub struct SharedStatus(Arc<Mutex<ProcessorStatus>>);

impl SharedStatus {
    pub fn update(&self, f: impl FnOnce(&mut ProcessorStatus)) {
        f(&mut self.0.lock().expect("status lock"));
    }

    pub fn get(&self) -> ProcessorStatus {
        self.0.lock().expect("status lock").clone()
    }

    /// Refreshes the clusters' positions from the fold.
    pub fn refresh_from(&self, fold: &Fold) {
        let views: Vec<ClusterStatus> = fold.cluster_ids().filter_map(|id| fold.cluster_status(id)).collect();
        self.refresh(fold.last_seq(), fold.config().bar_length, views);
    }

    /// Refreshes the position and the clusters' views (made by the fold's thread).
    pub fn refresh(&self, last_seq: u64, bar_length: u64, views: Vec<ClusterStatus>) {
        self.update(|status| {
            status.last_seq = last_seq;
            for view in views {
                let entry = status.clusters.entry(view.cluster_id.clone()).or_default();
                entry.cluster_id = view.cluster_id.clone();
                entry.current_beat = view.current_beat;
                entry.next_to_close = view.next_to_close;
                entry.tasks = view.tasks;
                entry.agents = view.agents;
                entry.open_windows = view
                    .open_windows
                    .iter()
                    .map(|&w| OpenWindow {
                        window_index: w,
                        window_id: window_id(&view.cluster_id, bar_length, w),
                        from_beat: from_beat(w, bar_length),
                        to_beat: to_beat(w, bar_length),
                    })
                    .collect();
            }
        });
    }

    pub fn record_report(&self, report: &BarReport) {
        self.update(|status| {
            let entry = status.clusters.entry(report.cluster_id.clone()).or_default();
            entry.cluster_id = report.cluster_id.clone();
            if entry.recent_reports.len() == RECENT_REPORTS_MAX {
                entry.recent_reports.pop_front();
            }
            entry.recent_reports.push_back(report.clone());
        });
    }
}
