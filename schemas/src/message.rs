//! The wire documents agents and the pulse send (SPEC §2): BeatFrame and StatusClaim.
//!
//! Serialization writes `type` first and the fields in SPEC §2 order, compact.
//! Parsing for admission goes through [`crate::validate`], never through
//! `serde` alone: serde would accept documents SPEC §2 refuses.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::window::Phase;

/// `type` of a BeatFrame.
pub const BEATFRAME_TYPE: &str = "backbeat.beatframe.v1";
/// `type` of a StatusClaim.
pub const STATUSCLAIM_TYPE: &str = "backbeat.statusclaim.v1";
/// `type` of a BarReport.
pub const BARREPORT_TYPE: &str = "backbeat.barreport.v1";
/// Every message (beat or claim) is at most this many bytes.
pub const MESSAGE_BYTES_MAX: usize = 8192;
/// `beat_index` is at most 2^53 − 1.
pub const BEAT_INDEX_MAX: u64 = (1 << 53) - 1;

macro_rules! type_tag {
    ($name:ident, $value:expr) => {
        #[doc = concat!("The `type` field: always `", $value, "`.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
        pub struct $name;

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str($value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(deserializer)?;
                if s == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(concat!("type must be ", $value)))
                }
            }
        }
    };
}

type_tag!(BeatFrameType, "backbeat.beatframe.v1");
type_tag!(StatusClaimType, "backbeat.statusclaim.v1");
type_tag!(BarReportType, "backbeat.barreport.v1");

/// A beat of the pulse (INT-A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatFrame {
    #[serde(rename = "type")]
    pub kind: BeatFrameType,
    pub cluster_id: String,
    pub beat_index: u64,
    pub downbeat: bool,
    pub phase: Phase,
    pub hlc: Hlc,
    /// When the next beat is due: `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    pub deadline_at: String,
    pub tempo_bpm: u32,
    pub window_id: String,
}

/// What the fold reads of a valid beat frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeatTick {
    pub beat_index: u64,
    pub tempo_bpm: u32,
    pub hlc: Hlc,
}

impl From<&BeatFrame> for BeatTick {
    fn from(frame: &BeatFrame) -> Self {
        BeatTick {
            beat_index: frame.beat_index,
            tempo_bpm: frame.tempo_bpm,
            hlc: frame.hlc,
        }
    }
}

/// What an agent says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClaimState {
    Idle,
    Planning,
    Executing,
    Reviewing,
    Helping,
    Waiting,
    Blocked,
    Done,
    Failed,
}

impl ClaimState {
    pub const ALL: [ClaimState; 9] = [
        ClaimState::Idle,
        ClaimState::Planning,
        ClaimState::Executing,
        ClaimState::Reviewing,
        ClaimState::Helping,
        ClaimState::Waiting,
        ClaimState::Blocked,
        ClaimState::Done,
        ClaimState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Idle => "idle",
            ClaimState::Planning => "planning",
            ClaimState::Executing => "executing",
            ClaimState::Reviewing => "reviewing",
            ClaimState::Helping => "helping",
            ClaimState::Waiting => "waiting",
            ClaimState::Blocked => "blocked",
            ClaimState::Done => "done",
            ClaimState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<ClaimState> {
        ClaimState::parse_bytes(s.as_bytes())
    }

    /// [`ClaimState::parse`] of bytes.
    pub fn parse_bytes(s: &[u8]) -> Option<ClaimState> {
        Some(match s {
            b"idle" => ClaimState::Idle,
            b"planning" => ClaimState::Planning,
            b"executing" => ClaimState::Executing,
            b"reviewing" => ClaimState::Reviewing,
            b"helping" => ClaimState::Helping,
            b"waiting" => ClaimState::Waiting,
            b"blocked" => ClaimState::Blocked,
            b"done" => ClaimState::Done,
            b"failed" => ClaimState::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for ClaimState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ClaimState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ClaimState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(deserializer)?;
        ClaimState::parse(&s).ok_or_else(|| serde::de::Error::custom("unknown claim state"))
    }
}

/// A status claim (INT-B), borrowing its strings from the payload it was read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusClaim<'a> {
    #[serde(rename = "type")]
    pub kind: StatusClaimType,
    #[serde(borrow)]
    pub agent_id: Cow<'a, str>,
    /// Absent when the document has no `task_id`, `null`, or `""`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<Cow<'a, str>>,
    pub beat_index: u64,
    pub state: ClaimState,
    pub beats_left: u32,
    pub progress: f64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<Cow<'a, str>>,
    pub hlc: Hlc,
}

impl StatusClaim<'_> {
    /// The same claim owning its strings.
    pub fn into_owned(self) -> StatusClaim<'static> {
        StatusClaim {
            kind: self.kind,
            agent_id: Cow::Owned(self.agent_id.into_owned()),
            task_id: self.task_id.map(|t| Cow::Owned(t.into_owned())),
            beat_index: self.beat_index,
            state: self.state,
            beats_left: self.beats_left,
            progress: self.progress,
            notes: self.notes.map(|n| Cow::Owned(n.into_owned())),
            hlc: self.hlc,
        }
    }

    /// The kind of the task: `task_id` up to its first `:`, or all of it.
    pub fn task_kind(&self) -> Option<&str> {
        self.task_id.as_deref().map(task_kind)
    }
}

/// The kind of a task id: the part before the first `:`, or all of it.
pub fn task_kind(task_id: &str) -> &str {
    task_id.split_once(':').map_or(task_id, |(kind, _)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_states_parse_their_own_names_only() {
        for state in ClaimState::ALL {
            assert_eq!(ClaimState::parse(state.as_str()), Some(state));
            assert_eq!(ClaimState::parse(&state.as_str().to_uppercase()), None);
            assert_eq!(ClaimState::parse(&format!("{} ", state.as_str())), None);
        }
        assert_eq!(ClaimState::parse(""), None);
    }

    #[test]
    fn task_kinds() {
        assert_eq!(task_kind("secret-rotation:db"), "secret-rotation");
        assert_eq!(task_kind("secret-rotation"), "secret-rotation");
        assert_eq!(task_kind("a:b:c"), "a");
        assert_eq!(task_kind(":x"), "");
    }

    #[test]
    fn beat_serializes_type_first_in_spec_order() {
        let beat = BeatFrame {
            kind: BeatFrameType,
            cluster_id: "alpha".into(),
            beat_index: 0,
            downbeat: true,
            phase: Phase::Plan,
            hlc: "f4240:0000:0001".parse().unwrap(),
            deadline_at: "1970-01-01T00:16:40.500Z".into(),
            tempo_bpm: 120,
            window_id: "ce8b2c18062421130c891884a283f8cc".into(),
        };
        assert_eq!(
            serde_json::to_string(&beat).unwrap(),
            r#"{"type":"backbeat.beatframe.v1","cluster_id":"alpha","beat_index":0,"downbeat":true,"phase":"plan","hlc":"f4240:0000:0001","deadline_at":"1970-01-01T00:16:40.500Z","tempo_bpm":120,"window_id":"ce8b2c18062421130c891884a283f8cc"}"#
        );
    }
}
