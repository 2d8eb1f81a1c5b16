//! Admission of beats and claims (SPEC §5 "Validation"), in the stated order:
//! size, JSON, `type`, each field in SPEC §2 order, then (beats) cluster and bar.
//!
//! The first failure is the message's reason. The gateway and the fold call the
//! same functions, so an agent is told at intake exactly what the fold would say.

use std::borrow::Cow;
use std::fmt;

use crate::hlc::Hlc;
use crate::json::{self, Members, Number, Scanned, Shallow};
use crate::message::{
    BeatFrame, BeatFrameType, BeatTick, ClaimState, StatusClaim, StatusClaimType, BEATFRAME_TYPE, BEAT_INDEX_MAX,
    MESSAGE_BYTES_MAX, STATUSCLAIM_TYPE,
};
use crate::names::is_valid_cluster_id;
use crate::timestamp::is_valid_deadline;
use crate::window::{is_downbeat, phase_of, window_of, Phase, WindowIdCache};

/// The SPEC reason a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooLarge,
    InvalidJson,
    WrongType,
    /// `invalid_field:{name}`.
    InvalidField(&'static str),
    ClusterMismatch,
    BarMismatch,
}

impl Reason {
    /// The reason string of SPEC §5, e.g. `invalid_field:progress`.
    pub fn as_str(&self) -> Cow<'static, str> {
        match self {
            Reason::TooLarge => "too_large".into(),
            Reason::InvalidJson => "invalid_json".into(),
            Reason::WrongType => "wrong_type".into(),
            Reason::InvalidField(field) => format!("invalid_field:{field}").into(),
            Reason::ClusterMismatch => "cluster_mismatch".into(),
            Reason::BarMismatch => "bar_mismatch".into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// A refused message: the SPEC reason and a message for people naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

impl Rejection {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }

    fn field(name: &'static str, rule: &str, found: Option<&Shallow<'_>>) -> Self {
        let found = match found {
            None => "it is absent".to_string(),
            Some(Shallow::String(s)) if s.chars().count() <= 40 => format!("got string {s:?}"),
            Some(Shallow::Number(n)) if n.raw.len() <= 40 => format!("got {}", n.raw),
            Some(Shallow::Bool(b)) => format!("got {b}"),
            Some(other) => format!("got {}", other.type_name()),
        };
        Rejection::new(Reason::InvalidField(name), format!("{name} must be {rule}; {found}"))
    }
}

/// A member the checks read: its name, and where it stands in the document's
/// list of names (`BEAT_FIELDS` or `CLAIM_FIELDS`).
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    index: usize,
}

impl Field {
    /// `name` in `names`; evaluated at compile time (see [`field!`]), so a
    /// name missing from the list does not compile.
    const fn new(names: &[&'static str], name: &'static str) -> Field {
        let mut index = 0;
        while index < names.len() {
            if const_str_eq(names[index], name) {
                return Field { name, index };
            }
            index += 1;
        }
        panic!("not one of the fields read");
    }
}

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The [`Field`] `$name` of the list `$names`, found at compile time.
macro_rules! field {
    ($names:ident, $name:literal) => {
        const { Field::new(&$names, $name) }
    };
}

/// Checks a beat frame published on `backbeat.{subject_cluster}.beat` against
/// SPEC §2 and §4 for bar length `bar_length` (at least 1).
pub fn validate_beat(payload: &[u8], subject_cluster: &str, bar_length: u64) -> Result<BeatFrame, Rejection> {
    validate_beat_with(payload, subject_cluster, bar_length, &mut WindowIdCache::default())
}

/// [`validate_beat`] with the window id of the last beat's window kept in
/// `window_ids` (the fold validates a cluster's beats one after another).
pub fn validate_beat_with(
    payload: &[u8],
    subject_cluster: &str,
    bar_length: u64,
    window_ids: &mut WindowIdCache,
) -> Result<BeatFrame, Rejection> {
    // Beats as the pulse writes them are read straight off their bytes; every
    // other document (and every invalid one) takes the full reader.
    match crate::canonical::beat(payload, subject_cluster, bar_length, window_ids) {
        Some(beat) => Ok(beat.to_frame()),
        None => validate_beat_fully(payload, subject_cluster, bar_length, window_ids),
    }
}

/// [`validate_beat_with`], keeping only what the fold reads of the beat: a
/// beat in the pulse's form is checked without allocating.
pub fn validate_beat_tick(
    payload: &[u8],
    subject_cluster: &str,
    bar_length: u64,
    window_ids: &mut WindowIdCache,
) -> Result<BeatTick, Rejection> {
    match crate::canonical::beat(payload, subject_cluster, bar_length, window_ids) {
        Some(beat) => Ok(beat.tick()),
        None => {
            validate_beat_fully(payload, subject_cluster, bar_length, window_ids).map(|frame| BeatTick::from(&frame))
        }
    }
}

/// [`validate_beat_with`] without its fast path: what decides every document.
pub fn validate_beat_fully(
    payload: &[u8],
    subject_cluster: &str,
    bar_length: u64,
    window_ids: &mut WindowIdCache,
) -> Result<BeatFrame, Rejection> {
    assert!(bar_length >= 1, "bar length must be at least 1");
    let members = parse_document(payload, BEATFRAME_TYPE, &BEAT_FIELDS)?;
    let fields = Fields { members: &members };

    let cluster_id = fields.string(
        field!(BEAT_FIELDS, "cluster_id"),
        "a string matching [A-Za-z0-9_-]{1,64}",
        is_valid_cluster_id,
    )?;
    let beat_index = fields.integer(
        field!(BEAT_FIELDS, "beat_index"),
        "an integer from 0 to 2^53-1",
        0,
        BEAT_INDEX_MAX,
    )?;
    let downbeat = match fields.get(field!(BEAT_FIELDS, "downbeat")) {
        Some(Shallow::Bool(b)) => b,
        other => return Err(Rejection::field("downbeat", "a boolean", other.as_ref())),
    };
    let phase = fields.parsed(
        field!(BEAT_FIELDS, "phase"),
        "one of plan, execution, review",
        Phase::parse,
    )?;
    let hlc = fields.hlc(field!(BEAT_FIELDS, "hlc"))?;
    let deadline_at = fields.string(
        field!(BEAT_FIELDS, "deadline_at"),
        "a real UTC time written YYYY-MM-DDTHH:MM:SS[.1-9 digits]Z",
        is_valid_deadline,
    )?;
    let tempo_bpm = fields.integer(field!(BEAT_FIELDS, "tempo_bpm"), "an integer from 1 to 1000", 1, 1000)? as u32;
    let window = match fields.get(field!(BEAT_FIELDS, "window_id")) {
        Some(Shallow::String(s)) => s,
        other => return Err(Rejection::field("window_id", "a string", other.as_ref())),
    };

    if cluster_id != subject_cluster {
        return Err(Rejection::new(
            Reason::ClusterMismatch,
            format!("cluster_id {cluster_id:?} differs from the subject's cluster {subject_cluster:?}"),
        ));
    }
    let expected_phase = phase_of(beat_index, bar_length);
    let expected_downbeat = is_downbeat(beat_index, bar_length);
    let expected_window_id = window_ids.window_id(&cluster_id, bar_length, window_of(beat_index, bar_length));
    if downbeat != expected_downbeat || phase != expected_phase || *window != *expected_window_id {
        return Err(Rejection::new(
            Reason::BarMismatch,
            format!(
                "beat {beat_index} with bar length {bar_length} must have downbeat {expected_downbeat}, \
                 phase {expected_phase} and window_id {expected_window_id}; got downbeat {downbeat}, phase {phase}, window_id {window:?}"
            ),
        ));
    }
    Ok(BeatFrame {
        kind: BeatFrameType,
        cluster_id: cluster_id.into_owned(),
        beat_index,
        downbeat,
        phase,
        hlc,
        deadline_at: deadline_at.into_owned(),
        tempo_bpm,
        window_id: expected_window_id.to_string(),
    })
}

/// Checks a status claim against SPEC §2. The claim borrows from `payload`.
pub fn validate_claim(payload: &[u8]) -> Result<StatusClaim<'_>, Rejection> {
    // Claims as the client library writes them are read straight off their
    // bytes; every other document (and every invalid one) takes the full reader.
    match crate::canonical::claim(payload) {
        Some(claim) => Ok(claim),
        None => validate_claim_fully(payload),
    }
}

/// [`validate_claim`] without its fast path: what decides every document.
pub fn validate_claim_fully(payload: &[u8]) -> Result<StatusClaim<'_>, Rejection> {
    let members = parse_document(payload, STATUSCLAIM_TYPE, &CLAIM_FIELDS)?;
    let fields = Fields { members: &members };

    let agent_id_len_ok = |s: &str| !s.is_empty() && at_most_chars(s, 128);
    let agent_id = fields.string(
        field!(CLAIM_FIELDS, "agent_id"),
        "a string of 1 to 128 characters",
        agent_id_len_ok,
    )?;
    let task_id = match fields.get(field!(CLAIM_FIELDS, "task_id")) {
        None => None,
        Some(Shallow::String(s)) if s.is_empty() => None,
        Some(Shallow::String(s)) if at_most_chars(&s, 128) => Some(s),
        other => {
            return Err(Rejection::field(
                "task_id",
                "absent, null or a string of at most 128 characters",
                other.as_ref(),
            ))
        }
    };
    let beat_index = fields.integer(
        field!(CLAIM_FIELDS, "beat_index"),
        "an integer from 0 to 2^53-1",
        0,
        BEAT_INDEX_MAX,
    )?;
    let state = fields.parsed(
        field!(CLAIM_FIELDS, "state"),
        "one of idle, planning, executing, reviewing, helping, waiting, blocked, done, failed",
        ClaimState::parse,
    )?;
    let beats_left = fields.integer(
        field!(CLAIM_FIELDS, "beats_left"),
        "an integer from 0 to 4294967295",
        0,
        u64::from(u32::MAX),
    )? as u32;
    let progress_rule = "a finite number from 0.0 to 1.0";
    let progress = match fields.get(field!(CLAIM_FIELDS, "progress")) {
        Some(Shallow::Number(n)) => match n.as_f64() {
            value if (0.0..=1.0).contains(&value) => value,
            _ => return Err(Rejection::field("progress", progress_rule, Some(&Shallow::Number(n)))),
        },
        other => return Err(Rejection::field("progress", progress_rule, other.as_ref())),
    };
    let notes = match fields.get(field!(CLAIM_FIELDS, "notes")) {
        None => None,
        Some(Shallow::String(s)) if at_most_chars(&s, 1024) => Some(s),
        other => {
            return Err(Rejection::field(
                "notes",
                "absent, null or a string of at most 1024 characters",
                other.as_ref(),
            ))
        }
    };
    let hlc = fields.hlc(field!(CLAIM_FIELDS, "hlc"))?;
    Ok(StatusClaim {
        kind: StatusClaimType,
        agent_id,
        task_id,
        beat_index,
        state,
        beats_left,
        progress,
        notes,
        hlc,
    })
}

/// True when `s` has at most `max` code points (a string has at least as many
/// bytes as code points, so a short one need not be counted).
fn at_most_chars(s: &str, max: usize) -> bool {
    s.len() <= max || s.chars().count() <= max
}

/// Size, JSON and `type`: the checks common to both documents. `names` starts
/// with `type`; the result holds the members of each name, in the same order.
fn parse_document<'a, const N: usize>(
    payload: &'a [u8],
    expected_type: &str,
    names: &[&'static str; N],
) -> Result<Members<'a, N>, Rejection> {
    assert_eq!(names[0], "type", "the type is checked first");
    if payload.len() > MESSAGE_BYTES_MAX {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("a message is at most {MESSAGE_BYTES_MAX} bytes; got {}", payload.len()),
        ));
    }
    let members = match json::scan_object(payload, names) {
        Ok(Scanned::Object(members)) => members,
        Ok(Scanned::NotObject(type_name)) => {
            return Err(Rejection::new(
                Reason::InvalidJson,
                format!("a message must be a JSON object; got {type_name}"),
            ))
        }
        Err(e) => return Err(Rejection::new(Reason::InvalidJson, format!("not valid JSON: {e}"))),
    };
    if !matches!(members.get(0), Some(Shallow::String(s)) if s == expected_type) {
        return Err(Rejection::new(
            Reason::WrongType,
            format!("type must be \"{expected_type}\""),
        ));
    }
    Ok(members)
}

/// The members a beat frame's checks read: `type`, then SPEC §2's fields.
const BEAT_FIELDS: [&str; 9] = [
    "type",
    "cluster_id",
    "beat_index",
    "downbeat",
    "phase",
    "hlc",
    "deadline_at",
    "tempo_bpm",
    "window_id",
];

/// The members a status claim's checks read: `type`, then SPEC §2's fields.
const CLAIM_FIELDS: [&str; 9] = [
    "type",
    "agent_id",
    "task_id",
    "beat_index",
    "state",
    "beats_left",
    "progress",
    "notes",
    "hlc",
];

/// Field look-up over the members a document's checks read; `null` counts as absent.
struct Fields<'m, 'a, const N: usize> {
    members: &'m Members<'a, N>,
}

impl<'a, const N: usize> Fields<'_, 'a, N> {
    fn get(&self, field: Field) -> Option<Shallow<'a>> {
        self.members
            .get(field.index)
            .filter(|value| !matches!(value, Shallow::Null))
    }

    fn string(&self, field: Field, rule: &str, ok: impl Fn(&str) -> bool) -> Result<Cow<'a, str>, Rejection> {
        match self.get(field) {
            Some(Shallow::String(s)) if ok(&s) => Ok(s),
            other => Err(Rejection::field(field.name, rule, other.as_ref())),
        }
    }

    /// A string member that `parse` reads (`None`: the rule is broken).
    fn parsed<T>(&self, field: Field, rule: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, Rejection> {
        match self.get(field) {
            Some(Shallow::String(s)) => match parse(&s) {
                Some(value) => Ok(value),
                None => Err(Rejection::field(field.name, rule, Some(&Shallow::String(s)))),
            },
            other => Err(Rejection::field(field.name, rule, other.as_ref())),
        }
    }

    fn integer(&self, field: Field, rule: &str, min: u64, max: u64) -> Result<u64, Rejection> {
        match self.get(field) {
            Some(Shallow::Number(n)) => match Number::as_u64(&n) {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(Rejection::field(field.name, rule, Some(&Shallow::Number(n)))),
            },
            other => Err(Rejection::field(field.name, rule, other.as_ref())),
        }
    }

    /// `hlc`, at `field` (its place differs between beats and claims).
    fn hlc(&self, field: Field) -> Result<Hlc, Rejection> {
        let rule = "{physical}:{logical}:{node}: physical 1-12 lowercase hex digits without leading zeros, logical and node 4 lowercase hex digits";
        self.parsed(field, rule, |s| s.parse().ok())
    }
}
