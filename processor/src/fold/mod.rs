//! The fold of SPEC §5–§6: a pure, synchronous state machine from stream events
//! to BarReports.
//!
//! No async, no clock, no I/O, no randomness, and no hash-map iteration reaches
//! an output: the same events in the same order always give the same reports,
//! byte for byte. The state serializes ([`Fold::to_checkpoint`]) so a fold can
//! stop after any event and resume with the same results.

mod accumulator;
mod cluster;
mod roster;

use backbeat_schemas::names::{parse_subject, SubjectKind};
use backbeat_schemas::BarReport;
use serde::{Deserialize, Serialize};

use cluster::ClusterFold;

/// The fold's configuration (SPEC §5). The same on every subcommand, and part of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldConfig {
    /// `L`: beats per window.
    pub bar_length: u64,
    /// `A`: beats a window stays open after its last beat.
    pub lateness: u64,
    /// `F`: how far past the current beat a claim may be.
    pub future: u64,
    /// `J`: the largest forward jump of a beat index.
    pub max_jump: u64,
    /// `T`: windows a task entry lives without a claim.
    pub task_ttl: u64,
}

/// A configuration the fold cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("bar length must be at least 1 (SPEC §5: L >= 1)")]
    BarLength,
    #[error("max jump must be at least 1 (SPEC §5: J >= 1)")]
    MaxJump,
}

impl FoldConfig {
    /// SPEC §5 defaults for bar length `L`: A = 0, F = 2, J = 10·L, T = 10.
    pub fn with_bar_length(bar_length: u64) -> Self {
        FoldConfig {
            bar_length,
            lateness: 0,
            future: 2,
            max_jump: bar_length.saturating_mul(10),
            task_ttl: 10,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bar_length < 1 {
            return Err(ConfigError::BarLength);
        }
        if self.max_jump < 1 {
            return Err(ConfigError::MaxJump);
        }
        Ok(())
    }
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig::with_bar_length(120)
    }
}

/// What one event did, for metrics (`backbeat_reverb_claims_processed_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Not a beat or claim subject of a valid cluster: ignored.
    Ignored,
    BeatApplied,
    BeatStale,
    BeatRejected,
    ClaimApplied,
    ClaimLate,
    ClaimRejected,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 7] = [
        Outcome::Ignored,
        Outcome::BeatApplied,
        Outcome::BeatStale,
        Outcome::BeatRejected,
        Outcome::ClaimApplied,
        Outcome::ClaimLate,
        Outcome::ClaimRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ignored => "ignored",
            Outcome::BeatApplied => "beat_applied",
            Outcome::BeatStale => "beat_stale",
            Outcome::BeatRejected => "beat_rejected",
            Outcome::ClaimApplied => "applied",
            Outcome::ClaimLate => "late",
            Outcome::ClaimRejected => "rejected",
        }
    }
}

/// The fold over every cluster of a stream; each cluster is folded on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fold {
    config: FoldConfig,
    /// Sorted by cluster id, each id once.
    #[serde(deserialize_with = "sorted_clusters")]
    clusters: Vec<ClusterFold>,
    /// The highest stream sequence applied (0 before any event).
    last_seq: u64,
    /// The last beat or claim subject read, its kind and its cluster's
    /// place in `clusters`: a run of one cluster's events reads its subject
    /// and finds its cluster once. Not part of the state.
    #[serde(skip)]
    last_subject: Option<(String, SubjectKind, usize)>,
}

/// Clusters of a checkpoint, sorted by id (each id once), as `Fold` keeps them.
fn sorted_clusters<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<ClusterFold>, D::Error> {
    let mut clusters = Vec::<ClusterFold>::deserialize(deserializer)?;
    clusters.sort_by(|a, b| a.id().cmp(b.id()));
    if clusters.windows(2).any(|pair| pair[0].id() == pair[1].id()) {
        return Err(serde::de::Error::custom("a cluster appears twice in the fold state"));
    }
    Ok(clusters)
}

impl Fold {
    /// A fold with no history. Panics on an invalid config: validate it first.
    pub fn new(config: FoldConfig) -> Self {
        config.validate().expect("fold config must be validated before use");
        Fold {
            config,
            clusters: Vec::new(),
            last_seq: 0,
            last_subject: None,
        }
    }

    pub fn config(&self) -> &FoldConfig {
        &self.config
    }

    /// The sequence of the last event applied (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Takes one message of the stream, in stream order. Reports it closes are
    /// appended to `out`, ascending by window.
    pub fn apply(&mut self, seq: u64, subject: &str, payload: &[u8], out: &mut Vec<BarReport>) -> Outcome {
        self.last_seq = seq;
        let (index, kind) = match &self.last_subject {
            // `backbeat.{cluster}.{kind}`, already checked and found.
            Some((last, kind, index)) if last == subject => (*index, *kind),
            _ => match parse_subject(subject) {
                Some((cluster_id, kind @ (SubjectKind::Beat | SubjectKind::Claim))) => {
                    let index = match self.find_cluster(cluster_id) {
                        Ok(index) => index,
                        Err(index) => {
                            self.clusters.insert(index, ClusterFold::new(cluster_id.to_string()));
                            index
                        }
                    };
                    self.last_subject = Some((subject.to_string(), kind, index));
                    (index, kind)
                }
                _ => return Outcome::Ignored,
            },
        };
        let cluster = &mut self.clusters[index];
        match kind {
            SubjectKind::Beat => cluster.apply_beat(&self.config, seq, payload, out),
            _ => cluster.apply_claim(&self.config, seq, payload),
        }
    }

    /// Where cluster `cluster_id` is in `clusters`, or where it would go.
    fn find_cluster(&self, cluster_id: &str) -> Result<usize, usize> {
        self.clusters.binary_search_by(|cluster| cluster.id().cmp(cluster_id))
    }

    /// Forgets every cluster but `cluster_id` (a replay of one cluster from a
    /// checkpoint of many: the others' events are not read).
    pub fn keep_only(&mut self, cluster_id: &str) {
        self.clusters.retain(|cluster| cluster.id() == cluster_id);
        self.last_subject = None;
    }

    /// The clusters seen so far.
    pub fn cluster_ids(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(ClusterFold::id)
    }

    /// A cluster's view for status endpoints.
    pub fn cluster_status(&self, cluster_id: &str) -> Option<ClusterStatus> {
        self.find_cluster(cluster_id)
            .ok()
            .map(|index| self.clusters[index].status())
    }

    /// The state as bytes; [`Fold::from_checkpoint`] gives it back.
    pub fn to_checkpoint(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("fold state always serializes")
    }

    /// A fold resumed from [`Fold::to_checkpoint`] bytes.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Where one cluster's fold stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub current_beat: Option<u64>,
    pub next_to_close: Option<u64>,
    /// Windows with accumulated events, not yet reported.
    pub open_windows: Vec<u64>,
    pub tasks: u64,
}

/// Folds a whole log, in order, and returns every report it closes.
pub fn fold_all<'a>(config: FoldConfig, events: impl IntoIterator<Item = (u64, &'a str, &'a [u8])>) -> Vec<BarReport> {
    let mut fold = Fold::new(config);
    let mut out = Vec::new();
    for (seq, subject, payload) in events {
        fold.apply(seq, subject, payload, &mut out);
    }
    out
}
