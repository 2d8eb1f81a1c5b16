//! The agent client library: what an agent links to take part in a BACKBEAT cluster.
//!
//! - [`BeatFollower`] follows `backbeat.{cluster}.beat` and keeps a local
//!   [`BeatTimer`], so an agent knows the beat sounding *now*, between frames
//!   and when frames stop (it free-runs at the last tempo).
//! - [`Agent`] stamps claims: the beat index from the follower, the HLC from
//!   its own [`HlcClock`] after merging the latest beat's HLC (receive rule).
//! - [`ClaimSender`] sends claims over NATS request/reply or HTTP and retries
//!   what the gateway did not acknowledge. A retry resends the same bytes, so
//!   the SPEC §8 message id is the same and JetStream stores the claim once.
//! - [`BarReports`] reads BarReports of a cluster from `BACKBEAT_BARS`.
//!
//! See `ingest/examples/agent.rs` for a complete agent. An agent's crate
//! depends on `backbeat-ingest` with `default-features = false`: the client
//! without the gateway's server side.
//!
//! What this library must never do: change a claim's bytes between retries,
//! retry a claim the gateway refused (a bad claim stays bad), pull in a server
//! (openraft, axum) or read a clock except through [`Clock`].

pub mod bars;
pub mod beat_timer;
pub mod beats;
pub mod claims;
pub mod clock;
pub mod retry;

use std::borrow::Cow;

use backbeat_schemas::hlc::{Hlc, HlcClock};
use backbeat_schemas::message::{ClaimState, StatusClaim, StatusClaimType};
use bytes::Bytes;

pub use bars::{BarReports, BarsFrom};
pub use beat_timer::{beat_interval, BeatTimer, Observation};
pub use beats::{BeatFollower, BeatNow, FollowerConfig};
pub use claims::{Accepted, ClaimSender, Transport};
pub use clock::{Clock, ManualClock, SystemClock};
pub use retry::RetryPolicy;

/// A name for one of this process's short-lived consumers, unique enough
/// (`{purpose}-{pid}-{nanos}-{count}`; no dots, as a name must be). The
/// library names every consumer it creates: a named consumer is created on
/// `$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}`, a subject NATS
/// permissions can limit to the agent's cluster (an unnamed one is created
/// on `$JS.API.CONSUMER.CREATE.{stream}`, which names no subject).
pub(crate) fn consumer_name(purpose: &str) -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{purpose}-{}-{nanos}-{count}", std::process::id())
}

/// Errors an agent can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused the claim: fix it, do not retry it.
    #[error("claim rejected ({reason}): {message}")]
    Rejected { reason: String, message: String },
    /// The gateway (or JetStream behind it) did not acknowledge in any attempt.
    #[error("claim not acknowledged after {attempts} attempts: {last_error}")]
    Unavailable { attempts: u32, last_error: String },
    /// No beat frame has been seen yet, so a claim cannot be stamped.
    #[error("no beat frame seen yet on {subject}")]
    NoBeatYet { subject: String },
    /// Talking to NATS failed (subscribing, reading a stream).
    #[error("NATS: {0}")]
    Nats(String),
    /// The gateway answered something that is not a reply.
    #[error("unexpected answer from the gateway: {0}")]
    Protocol(String),
}

/// What an agent says in one claim, before it is stamped with a beat and an HLC.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimDraft {
    pub task_id: Option<String>,
    pub state: ClaimState,
    pub beats_left: u32,
    /// 0.0..=1.0; clamped when stamped.
    pub progress: f64,
    pub notes: Option<String>,
}

impl ClaimDraft {
    pub fn new(state: ClaimState) -> Self {
        ClaimDraft {
            task_id: None,
            state,
            beats_left: 0,
            progress: 0.0,
            notes: None,
        }
    }

    pub fn task(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    pub fn beats_left(mut self, beats_left: u32) -> Self {
        self.beats_left = beats_left;
        self
    }

    pub fn progress(mut self, progress: f64) -> Self {
        self.progress = progress;
        self
    }

    pub fn notes(mut self, notes: impl Into<String>) -> Self {
        self.notes = Some(notes.into());
        self
    }
}

/// One agent's identity and hybrid logical clock.
#[derive(Debug, Clone)]
pub struct Agent {
    agent_id: String,
    hlc: HlcClock,
    /// The latest beat HLC merged into `hlc`, so each frame is received once.
    merged_beat_hlc: Option<Hlc>,
}

impl Agent {
    /// `agent_id` must be 1..=128 characters (SPEC §2); `node` is the HLC node id.
    pub fn new(agent_id: impl Into<String>, node: u16) -> Self {
        let agent_id = agent_id.into();
        assert!(
            (1..=128).contains(&agent_id.chars().count()),
            "agent_id must be 1 to 128 characters"
        );
        Agent {
            agent_id,
            hlc: HlcClock::new(node),
            merged_beat_hlc: None,
        }
    }

    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The last HLC this agent issued or merged.
    pub fn hlc(&self) -> Hlc {
        self.hlc.last()
    }

    /// Merges a received timestamp (a beat frame's, another agent's) into the clock.
    pub fn receive(&mut self, remote: Hlc, wall_ms: u64) -> Hlc {
        self.hlc.receive(remote, wall_ms)
    }

    /// The claim's bytes: `draft` at beat `beat.beat_index`, with a fresh HLC
    /// (the latest beat frame's HLC is merged first). Send these bytes, and
    /// only these, in every attempt.
    pub fn stamp(&mut self, draft: &ClaimDraft, beat: &BeatNow, wall_ms: u64) -> Bytes {
        if let Some(frame_hlc) = beat.frame_hlc {
            if self.merged_beat_hlc.is_none_or(|merged| frame_hlc > merged) {
                self.hlc.receive(frame_hlc, wall_ms);
                self.merged_beat_hlc = Some(frame_hlc);
            }
        }
        let hlc = self.hlc.send(wall_ms);
        let progress = if draft.progress.is_finite() {
            draft.progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let claim = StatusClaim {
            kind: StatusClaimType,
            agent_id: Cow::Borrowed(&self.agent_id),
            task_id: draft.task_id.as_deref().filter(|t| !t.is_empty()).map(Cow::Borrowed),
            beat_index: beat.beat_index,
            state: draft.state,
            beats_left: draft.beats_left,
            progress,
            notes: draft.notes.as_deref().map(Cow::Borrowed),
            hlc,
        };
        Bytes::from(serde_json::to_vec(&claim).expect("a claim always serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbeat_schemas::validate_claim;

    fn beat(index: u64, frame_hlc: Option<Hlc>) -> BeatNow {
        BeatNow {
            beat_index: index,
            window_index: index / 120,
            window_id: String::new(),
            tempo_bpm: 120,
            phase: backbeat_schemas::Phase::Plan,
            frame_hlc,
            free_running: false,
        }
    }

    #[test]
    fn stamped_claims_are_valid_and_follow_the_beat_hlc() {
        let mut agent = Agent::new("agent-1", 7);
        let draft = ClaimDraft::new(ClaimState::Executing)
            .task("build:1")
            .beats_left(4)
            .progress(1.5)
            .notes("line\n\"quoted\"");
        // The beat's HLC is ahead of our wall clock: the claim's HLC follows it.
        let frame = Hlc::new(5_000, 3, 1);
        let bytes = agent.stamp(&draft, &beat(42, Some(frame)), 1_000);
        let claim = validate_claim(&bytes).expect("valid claim");
        assert_eq!(claim.beat_index, 42);
        assert_eq!(claim.progress, 1.0);
        assert!(claim.hlc > frame, "{} after {}", claim.hlc, frame);
        assert_eq!(claim.hlc.node, 7);
        // Every stamp is a new HLC, so two claims at one beat have two ids.
        let again = agent.stamp(&draft, &beat(42, Some(frame)), 1_000);
        assert!(validate_claim(&again).unwrap().hlc > claim.hlc);
        // An empty task id is left out.
        let idle = agent.stamp(&ClaimDraft::new(ClaimState::Idle).task(""), &beat(43, None), 9_000);
        assert!(!String::from_utf8_lossy(&idle).contains("task_id"));
        assert!(validate_claim(&idle).is_ok());
    }
}
