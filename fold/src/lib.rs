//! The fold of SPEC §5–§6: a pure, synchronous state machine from stream events
//! to BarReports.
//!
//! No async, no clock, no I/O, no randomness, and no hash-map iteration reaches
//! an output: the same events in the same order always give the same reports,
//! byte for byte. The state serializes ([`Fold::to_checkpoint`]) so a fold can
//! stop after any event and resume with the same results.
//!
//! This crate must never depend on an async runtime, NATS, HTTP or logging:
//! its dependencies are `backbeat-schemas` and pure data crates, so the rules
//! above are kept by Cargo, not by convention. Where the events come from and
//! where the reports go is the shell's business (`backbeat-processor`).

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
    /// Cap (an extension of SPEC §5): task entries one agent may hold. A
    /// claim that would add one more is rejected (`too_many_tasks`).
    #[serde(default = "default_max_tasks_per_agent")]
    pub max_tasks_per_agent: u64,
    /// Cap (an extension of SPEC §5): agents one cluster's state may hold. A
    /// claim of an agent not held that would add one more is rejected
    /// (`too_many_agents`).
    #[serde(default = "default_max_agents_per_cluster")]
    pub max_agents_per_cluster: u64,
}

/// Far above an honest agent's live tasks, and above every golden and
/// conformance log: only a client that mints task ids meets it.
pub const MAX_TASKS_PER_AGENT_DEFAULT: u64 = 1024;
/// Far above any fleet the system is sized for (its benchmarks fold 100,000 agents).
pub const MAX_AGENTS_PER_CLUSTER_DEFAULT: u64 = 1_000_000;

fn default_max_tasks_per_agent() -> u64 {
    MAX_TASKS_PER_AGENT_DEFAULT
}

fn default_max_agents_per_cluster() -> u64 {
    MAX_AGENTS_PER_CLUSTER_DEFAULT
}

/// A checkpoint the fold cannot resume from.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The bytes are not a fold state of this version.
    #[error("the fold state is not readable: {0}")]
    Unreadable(#[source] postcard::Error),
    /// The state is readable but its configuration is not one the fold can
    /// run with (it was not written by a fold, or was damaged).
    #[error("the fold state holds an invalid configuration: {0}")]
    InvalidConfig(#[source] ConfigError),
    /// The state is readable but is not one a fold can reach (it was
    /// damaged): resuming from it would report windows no log produced.
    #[error("the fold state of cluster {cluster_id} is inconsistent: {rule}")]
    Inconsistent { cluster_id: String, rule: &'static str },
}

/// A configuration the fold cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("bar length must be at least 1 (SPEC §5: L >= 1)")]
    BarLength,
    #[error("max jump must be at least 1 (SPEC §5: J >= 1)")]
    MaxJump,
    #[error("max tasks per agent must be at least 1")]
    MaxTasksPerAgent,
    #[error("max agents per cluster must be at least 1")]
    MaxAgentsPerCluster,
}

impl FoldConfig {
    /// SPEC §5 defaults for bar length `L`: A = 0, F = 2, J = 10·L, T = 10,
    /// and the default caps.
    pub fn with_bar_length(bar_length: u64) -> Self {
        FoldConfig {
            bar_length,
            lateness: 0,
            future: 2,
            max_jump: bar_length.saturating_mul(10),
            task_ttl: 10,
            max_tasks_per_agent: MAX_TASKS_PER_AGENT_DEFAULT,
            max_agents_per_cluster: MAX_AGENTS_PER_CLUSTER_DEFAULT,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bar_length < 1 {
            return Err(ConfigError::BarLength);
        }
        if self.max_jump < 1 {
            return Err(ConfigError::MaxJump);
        }
        if self.max_tasks_per_agent < 1 {
            return Err(ConfigError::MaxTasksPerAgent);
        }
        if self.max_agents_per_cluster < 1 {
            return Err(ConfigError::MaxAgentsPerCluster);
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
    /// An event of a cluster beyond [`Fold::set_max_clusters`]: not folded.
    ClusterRefused,
    /// An event at or below the last applied sequence (a redelivery, a
    /// repeated log line): skipped, nothing changed.
    AlreadyApplied,
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 9] = [
        Outcome::Ignored,
        Outcome::BeatApplied,
        Outcome::BeatStale,
        Outcome::BeatRejected,
        Outcome::ClaimApplied,
        Outcome::ClaimLate,
        Outcome::ClaimRejected,
        Outcome::ClusterRefused,
        Outcome::AlreadyApplied,
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
            Outcome::ClusterRefused => "cluster_refused",
            Outcome::AlreadyApplied => "already_applied",
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
    /// Clusters held at most: an event of another cluster is refused once
    /// this many are held (`run --max-clusters`). A limit of the process,
    /// not of the fold's rules: not part of the state or the config.
    #[serde(skip, default = "no_cluster_limit")]
    max_clusters: usize,
}

fn no_cluster_limit() -> usize {
    usize::MAX
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
            max_clusters: usize::MAX,
        }
    }

    /// Holds at most `max_clusters` clusters: events of a cluster not held
    /// once that many are held are [`Outcome::ClusterRefused`] (not folded).
    /// Clusters already held stay, whatever the limit.
    pub fn set_max_clusters(&mut self, max_clusters: usize) {
        self.max_clusters = max_clusters;
    }

    /// How many clusters the fold holds.
    pub fn cluster_count(&self) -> usize {
        self.clusters.len()
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
    ///
    /// An event at or below the last applied sequence is skipped
    /// ([`Outcome::AlreadyApplied`]): every shell (the live run, a log file,
    /// a replay) gets the same answer for a repeated or redelivered event.
    pub fn apply(&mut self, seq: u64, subject: &str, payload: &[u8], out: &mut Vec<BarReport>) -> Outcome {
        if seq <= self.last_seq {
            return Outcome::AlreadyApplied;
        }
        self.last_seq = seq;
        let (index, kind) = match &self.last_subject {
            // `backbeat.{cluster}.{kind}`, already checked and found.
            Some((last, kind, index)) if last == subject => (*index, *kind),
            _ => match parse_subject(subject) {
                Some((cluster_id, kind @ (SubjectKind::Beat | SubjectKind::Claim))) => {
                    let index = match self.find_cluster(cluster_id) {
                        Ok(index) => index,
                        Err(_) if self.clusters.len() >= self.max_clusters => return Outcome::ClusterRefused,
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
        let (next_before, reports_before) = (cluster.next_to_close(), out.len());
        let outcome = match kind {
            SubjectKind::Beat => cluster.apply_beat(&self.config, seq, payload, out),
            _ => cluster.apply_claim(&self.config, seq, payload),
        };
        // The fold's invariants, checked in debug builds: windows close in
        // order, each once, and `next_to_close` never moves back.
        debug_assert!(cluster.next_to_close() >= next_before, "next_to_close moved back");
        debug_assert!(
            out[reports_before..].iter().all(|report| report.seq_last <= seq),
            "a report holds no event after the one that closed it"
        );
        debug_assert!(
            out[reports_before..]
                .iter()
                .zip(out[reports_before..].iter().skip(1))
                .all(|(a, b)| a.window_index + 1 == b.window_index),
            "reports of one event are consecutive windows"
        );
        debug_assert!(
            out[reports_before..]
                .last()
                .is_none_or(|last| last.window_index + 1 == cluster.next_to_close()),
            "the last report closed is the window before next_to_close"
        );
        outcome
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

    /// A fold resumed from [`Fold::to_checkpoint`] bytes. The configuration
    /// inside is validated as [`Fold::new`] validates it: a state with a bar
    /// length of 0 is refused here, not divided by later. So is a state no
    /// fold can reach (a window holding an event after the last sequence
    /// applied, an open window below the next one to close): the fuzz target
    /// `checkpoint` found that one breaking the fold's invariants.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let fold: Fold = postcard::from_bytes(bytes).map_err(CheckpointError::Unreadable)?;
        fold.config.validate().map_err(CheckpointError::InvalidConfig)?;
        for cluster in &fold.clusters {
            if let Some(rule) = cluster.inconsistency(&fold.config, fold.last_seq) {
                return Err(CheckpointError::Inconsistent {
                    cluster_id: cluster.id().to_string(),
                    rule,
                });
            }
        }
        Ok(fold)
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
    /// Agents the cluster's state holds (bounded by the cap on agents per cluster).
    pub agents: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};

    const BAR: u64 = 4;

    fn beat(cluster: &str, index: u64) -> Vec<u8> {
        format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{:x}:0000:0001","deadline_at":"2023-11-14T22:13:20.500Z","tempo_bpm":120,"window_id":"{}"}}"#,
            is_downbeat(index, BAR),
            phase_of(index, BAR).as_str(),
            1_700_000_000_000 + index * 500,
            window_id(cluster, BAR, window_of(index, BAR))
        )
        .into_bytes()
    }

    fn claim(agent: &str, task: &str, beat_index: u64) -> Vec<u8> {
        format!(
            r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}","task_id":"{task}","beat_index":{beat_index},"state":"executing","beats_left":1,"progress":0.5,"hlc":"1:0000:0001"}}"#
        )
        .into_bytes()
    }

    /// `report`'s issues hold `issue` (a JSON prefix of one).
    fn assert_issue(report: &BarReport, issue: &str) {
        let issues = serde_json::to_string(&report.issues).unwrap();
        assert!(issues.contains(issue), "{issue} not in {issues}");
    }

    /// Folds one beat, then `claims` (agent, task) at beat 0, then the beat
    /// closing window 0: the first report, and the fold.
    fn fold_claims(config: FoldConfig, claims: &[(String, String)]) -> (BarReport, Fold) {
        let mut fold = Fold::new(config);
        let mut out = Vec::new();
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        fold.apply(next(), "backbeat.c.beat", &beat("c", 0), &mut out);
        for (agent, task) in claims {
            fold.apply(next(), "backbeat.c.claim", &claim(agent, task, 0), &mut out);
        }
        fold.apply(next(), "backbeat.c.beat", &beat("c", BAR), &mut out);
        assert_eq!(out.len(), 1);
        (out.remove(0), fold)
    }

    #[test]
    fn a_claim_over_the_tasks_per_agent_cap_is_rejected_and_counted() {
        let mut config = FoldConfig::with_bar_length(BAR);
        config.max_tasks_per_agent = 3;
        // Ten new tasks of one agent, then its first task again (at the cap, still applied).
        let claims: Vec<(String, String)> = (0..10).chain([0]).map(|t| ("a".to_string(), format!("t{t}"))).collect();
        let (report, fold) = fold_claims(config, &claims);
        assert_eq!(report.claims_accepted, 4);
        assert_eq!(report.claims_rejected, 7);
        assert_issue(
            &report,
            r#"{"code":"rejected_claims","count":7,"sample":["too_many_tasks"]}"#,
        );
        // Overdue: the three tasks held, not the ones refused.
        assert_issue(&report, r#"{"code":"overdue_tasks","count":3,"#);
        assert_eq!(report.agents_reporting, 1);
        let status = fold.cluster_status("c").unwrap();
        assert_eq!((status.tasks, status.agents), (3, 1), "the state stays at the cap");

        // Under the cap the report is the one without caps, byte for byte.
        let mut uncapped = FoldConfig::with_bar_length(BAR);
        uncapped.max_tasks_per_agent = 11;
        let under: Vec<(String, String)> = claims[..3].to_vec();
        assert_eq!(
            fold_claims(config, &under).0.to_json(),
            fold_claims(uncapped, &under).0.to_json()
        );
    }

    #[test]
    fn a_claim_over_the_agents_per_cluster_cap_is_rejected_and_counted() {
        let mut config = FoldConfig::with_bar_length(BAR);
        config.max_agents_per_cluster = 2;
        let claims: Vec<(String, String)> = ["a", "b", "c", "d", "a", "e"]
            .iter()
            .map(|a| (a.to_string(), "t".to_string()))
            .collect();
        let (report, fold) = fold_claims(config, &claims);
        assert_eq!(report.claims_accepted, 3);
        assert_eq!(report.agents_reporting, 2);
        assert_issue(
            &report,
            r#"{"code":"rejected_claims","count":3,"sample":["too_many_agents"]}"#,
        );
        assert_eq!(
            fold.cluster_status("c").unwrap().agents,
            2,
            "the state stays at the cap"
        );
    }

    #[test]
    fn a_client_minting_ids_cannot_grow_the_state_past_the_caps() {
        let mut config = FoldConfig::with_bar_length(BAR);
        config.max_tasks_per_agent = 3;
        config.max_agents_per_cluster = 2;
        let minted: Vec<(String, String)> = (0..5_000)
            .map(|t| ("a".to_string(), format!("task-{t}")))
            .chain((0..5_000).map(|a| (format!("agent-{a}"), "t".to_string())))
            .collect();
        let (report, fold) = fold_claims(config, &minted);
        assert_eq!(report.claims_accepted, 4, "a's first three tasks, agent-0's first");
        assert_eq!(report.claims_rejected, 9_996);
        assert_issue(
            &report,
            r#"{"code":"rejected_claims","count":9996,"sample":["too_many_tasks","too_many_agents"]}"#,
        );
        let status = fold.cluster_status("c").unwrap();
        assert_eq!((status.agents, status.tasks), (2, 4));
        // The state is that of the four claims applied (but for the sequence numbers' width).
        let accepted = [&minted[..3], &minted[5_000..5_001]].concat();
        let (_, bounded) = fold_claims(config, &accepted);
        let (capped_bytes, bounded_bytes) = (fold.to_checkpoint().len(), bounded.to_checkpoint().len());
        assert!(
            capped_bytes <= bounded_bytes + 8,
            "{capped_bytes} vs {bounded_bytes} bytes"
        );
    }

    #[test]
    fn caps_below_one_are_refused() {
        let mut config = FoldConfig::with_bar_length(BAR);
        config.max_tasks_per_agent = 0;
        assert_eq!(config.validate(), Err(ConfigError::MaxTasksPerAgent));
        config.max_tasks_per_agent = 1;
        config.max_agents_per_cluster = 0;
        assert_eq!(config.validate(), Err(ConfigError::MaxAgentsPerCluster));
    }

    #[test]
    fn an_event_at_or_below_the_last_applied_sequence_is_skipped() {
        let events: Vec<(u64, &str, Vec<u8>)> = vec![
            (1, "backbeat.c.beat", beat("c", 0)),
            (2, "backbeat.c.claim", claim("a", "t", 0)),
            (3, "backbeat.c.beat", beat("c", 1)),
            (5, "backbeat.c.beat", beat("c", BAR)),
        ];
        let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
        let mut out = Vec::new();
        for (seq, subject, payload) in &events[..3] {
            fold.apply(*seq, subject, payload, &mut out);
        }
        // Again at its own sequence and below it, even with other contents:
        // nothing changes, not even the position.
        for seq in [3, 2, 0] {
            let outcome = fold.apply(seq, "backbeat.c.claim", &claim("b", "u", 1), &mut out);
            assert_eq!(outcome, Outcome::AlreadyApplied, "seq {seq}");
            assert_eq!(fold.last_seq(), 3);
        }
        let (seq, subject, payload) = &events[3];
        fold.apply(*seq, subject, payload, &mut out);
        let once = fold_all(
            FoldConfig::with_bar_length(BAR),
            events
                .iter()
                .map(|(seq, subject, payload)| (*seq, *subject, payload.as_slice())),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_json(), once[0].to_json());
        assert_eq!(out[0].agents_reporting, 1, "only agent a");
    }

    #[test]
    fn a_checkpoint_with_an_invalid_config_is_refused() {
        let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
        let mut out = Vec::new();
        fold.apply(1, "backbeat.c.beat", &beat("c", 0), &mut out);
        // A bar length of 0 is an error here, not a division by zero at the next beat.
        type Spoil = fn(&mut FoldConfig);
        let invalid: [(Spoil, ConfigError); 2] = [
            (|config| config.bar_length = 0, ConfigError::BarLength),
            (|config| config.max_jump = 0, ConfigError::MaxJump),
        ];
        for (spoil, error) in invalid {
            let mut spoiled = fold.clone();
            spoil(&mut spoiled.config);
            match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
                Err(CheckpointError::InvalidConfig(refused)) => assert_eq!(refused, error),
                other => panic!("{error:?}: {other:?}"),
            }
        }
        let unreadable = Fold::from_checkpoint(&[0xff; 3]).unwrap_err();
        assert!(matches!(unreadable, CheckpointError::Unreadable(_)), "{unreadable:?}");
    }

    #[test]
    fn a_checkpoint_no_fold_can_reach_is_refused() {
        // Found by the `checkpoint` fuzz target (fuzz/regressions/checkpoint/):
        // a damaged state whose open window held an event after the last
        // sequence applied, which the next beat reported as closed by it.
        let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
        let mut out = Vec::new();
        fold.apply(1, "backbeat.c.beat", &beat("c", 0), &mut out);
        fold.apply(5, "backbeat.c.beat", &beat("c", 1), &mut out);
        assert!(Fold::from_checkpoint(&fold.to_checkpoint()).is_ok());
        let mut spoiled = fold.clone();
        spoiled.last_seq = 4;
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { cluster_id, rule }) => {
                assert_eq!(cluster_id, "c");
                assert!(rule.contains("after the last sequence"), "{rule}");
            }
            other => panic!("{other:?}"),
        }
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_next_to_close(BAR + 1);
        assert!(matches!(
            Fold::from_checkpoint(&spoiled.to_checkpoint()),
            Err(CheckpointError::Inconsistent { .. })
        ));
        // Recent beats out of order: the drift of the next closed window
        // subtracted a larger index from a smaller one.
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_recent_beats_order();
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("ascend"), "{rule}"),
            other => panic!("{other:?}"),
        }
        // Windows the current beat closed still open: the next beat would
        // close them all (here 2^40 of them).
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_current_beat(Some(1 << 42));
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("closed"), "{rule}"),
            other => panic!("{other:?}"),
        }
        // Open windows before the first beat: the first beat would open one
        // above them.
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_current_beat(None);
        spoiled.clusters[0].spoil_recent_beats_clear();
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("first beat"), "{rule}"),
            other => panic!("{other:?}"),
        }
        // The next window to close above the current beat: the next beat
        // would open a window below it.
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_next_to_close(5);
        spoiled.clusters[0].spoil_current_beat(Some(5 * BAR - 1));
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("above the current"), "{rule}"),
            other => panic!("{other:?}"),
        }
        // A window closed before the first beat: the first beat would move
        // the next window to close back.
        let mut spoiled = Fold::new(FoldConfig::with_bar_length(BAR));
        spoiled.apply(1, "backbeat.c.claim", b"{}", &mut out);
        spoiled.clusters[0].spoil_next_to_close(3);
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("before the first"), "{rule}"),
            other => panic!("{other:?}"),
        }
        // A recent beat above the current one: the next beat would go below it.
        let mut spoiled = fold.clone();
        spoiled.clusters[0].spoil_current_beat(Some(0));
        match Fold::from_checkpoint(&spoiled.to_checkpoint()) {
            Err(CheckpointError::Inconsistent { rule, .. }) => assert!(rule.contains("above"), "{rule}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn events_of_clusters_beyond_the_limit_are_refused_and_the_held_ones_folded() {
        let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
        fold.set_max_clusters(2);
        let mut out = Vec::new();
        for (seq, cluster) in ["a", "b", "c", "a", "d", "b"].iter().enumerate() {
            let subject = format!("backbeat.{cluster}.beat");
            let outcome = fold.apply(seq as u64 + 1, &subject, &beat(cluster, seq as u64), &mut out);
            let refused = matches!(*cluster, "c" | "d");
            assert_eq!(outcome == Outcome::ClusterRefused, refused, "{cluster}");
        }
        assert_eq!(fold.cluster_ids().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fold.last_seq(), 6);
        // A checkpoint does not hold the limit: the process sets it.
        let mut resumed = Fold::from_checkpoint(&fold.to_checkpoint()).unwrap();
        assert_eq!(
            resumed.apply(7, "backbeat.c.beat", &beat("c", 7), &mut out),
            Outcome::BeatApplied
        );
    }
}
