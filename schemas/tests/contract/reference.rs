//! The validator as it was before the single-pass scanner (commit ca32eff):
//! `json::parse` builds the whole tree, then the fields are looked up in it.
//! Kept here, unchanged but for reaching `Rejection` from outside the crate,
//! as the reference the differential tests hold the fast path to.

use std::borrow::Cow;

use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::json::{self, Number, Value};
use backbeat_schemas::message::{
    BeatFrame, BeatFrameType, ClaimState, StatusClaim, StatusClaimType, BEATFRAME_TYPE, BEAT_INDEX_MAX,
    MESSAGE_BYTES_MAX, STATUSCLAIM_TYPE,
};
use backbeat_schemas::names::is_valid_cluster_id;
use backbeat_schemas::timestamp::is_valid_deadline;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of, Phase};
use backbeat_schemas::{Reason, Rejection};

fn rejection(reason: Reason, message: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        message: message.into(),
    }
}

fn field_rejection(name: &'static str, rule: &str, found: Option<&Value<'_>>) -> Rejection {
    let found = match found {
        None => "it is absent".to_string(),
        Some(Value::String(s)) if s.chars().count() <= 40 => format!("got string {s:?}"),
        Some(Value::Number(n)) if n.raw.len() <= 40 => format!("got {}", n.raw),
        Some(Value::Bool(b)) => format!("got {b}"),
        Some(other) => format!("got {}", other.type_name()),
    };
    rejection(Reason::InvalidField(name), format!("{name} must be {rule}; {found}"))
}

/// Checks a beat frame published on `backbeat.{subject_cluster}.beat` against
/// SPEC §2 and §4 for bar length `bar_length` (at least 1).
pub fn validate_beat(payload: &[u8], subject_cluster: &str, bar_length: u64) -> Result<BeatFrame, Rejection> {
    assert!(bar_length >= 1, "bar length must be at least 1");
    let members = parse_document(payload, BEATFRAME_TYPE)?;
    let fields = Fields(&members);

    let cluster_id = fields.string("cluster_id", "a string matching [A-Za-z0-9_-]{1,64}", |s| {
        is_valid_cluster_id(s)
    })?;
    let beat_index = fields.integer("beat_index", "an integer from 0 to 2^53-1", 0, BEAT_INDEX_MAX)?;
    let downbeat = match fields.get("downbeat") {
        Some(Value::Bool(b)) => *b,
        other => return Err(field_rejection("downbeat", "a boolean", other)),
    };
    let phase = fields.string("phase", "one of plan, execution, review", |s| Phase::parse(s).is_some())?;
    let hlc = fields.hlc()?;
    let deadline_at = fields.string(
        "deadline_at",
        "a real UTC time written YYYY-MM-DDTHH:MM:SS[.1-9 digits]Z",
        is_valid_deadline,
    )?;
    let tempo_bpm = fields.integer("tempo_bpm", "an integer from 1 to 1000", 1, 1000)? as u32;
    let window = match fields.get("window_id") {
        Some(Value::String(s)) => s,
        other => return Err(field_rejection("window_id", "a string", other)),
    };

    if cluster_id != subject_cluster {
        return Err(rejection(
            Reason::ClusterMismatch,
            format!("cluster_id {cluster_id:?} differs from the subject's cluster {subject_cluster:?}"),
        ));
    }
    let phase = Phase::parse(phase).expect("checked above");
    let expected_phase = phase_of(beat_index, bar_length);
    let expected_downbeat = is_downbeat(beat_index, bar_length);
    let expected_window_id = window_id(cluster_id, bar_length, window_of(beat_index, bar_length));
    if downbeat != expected_downbeat || phase != expected_phase || **window != expected_window_id {
        return Err(rejection(
            Reason::BarMismatch,
            format!(
                "beat {beat_index} with bar length {bar_length} must have downbeat {expected_downbeat}, \
                 phase {expected_phase} and window_id {expected_window_id}; got downbeat {downbeat}, phase {phase}, window_id {window:?}"
            ),
        ));
    }
    Ok(BeatFrame {
        kind: BeatFrameType,
        cluster_id: cluster_id.to_string(),
        beat_index,
        downbeat,
        phase,
        hlc,
        deadline_at: deadline_at.to_string(),
        tempo_bpm,
        window_id: expected_window_id,
    })
}

/// Checks a status claim against SPEC §2. The claim borrows from `payload`.
pub fn validate_claim(payload: &[u8]) -> Result<StatusClaim<'_>, Rejection> {
    let mut members = parse_document(payload, STATUSCLAIM_TYPE)?;
    let fields = Fields(&members);

    let agent_id_len_ok = |s: &str| (1..=128).contains(&s.chars().count());
    fields.string("agent_id", "a string of 1 to 128 characters", agent_id_len_ok)?;
    let has_task = match fields.get("task_id") {
        None => false,
        Some(Value::String(s)) if s.is_empty() => false,
        Some(Value::String(s)) if s.chars().count() <= 128 => true,
        other => {
            return Err(field_rejection(
                "task_id",
                "absent, null or a string of at most 128 characters",
                other,
            ))
        }
    };
    let beat_index = fields.integer("beat_index", "an integer from 0 to 2^53-1", 0, BEAT_INDEX_MAX)?;
    let state = fields.string(
        "state",
        "one of idle, planning, executing, reviewing, helping, waiting, blocked, done, failed",
        |s| ClaimState::parse(s).is_some(),
    )?;
    let state = ClaimState::parse(state).expect("checked above");
    let beats_left = fields.integer("beats_left", "an integer from 0 to 4294967295", 0, u64::from(u32::MAX))? as u32;
    let progress = match fields.get("progress") {
        Some(Value::Number(n)) if (0.0..=1.0).contains(&n.as_f64()) => n.as_f64(),
        other => return Err(field_rejection("progress", "a finite number from 0.0 to 1.0", other)),
    };
    let has_notes = match fields.get("notes") {
        None => false,
        Some(Value::String(s)) if s.chars().count() <= 1024 => true,
        other => {
            return Err(field_rejection(
                "notes",
                "absent, null or a string of at most 1024 characters",
                other,
            ))
        }
    };
    let hlc = fields.hlc()?;

    // Every check passed: move the strings out without copying them.
    let mut take = |name: &str| -> Option<Cow<'_, str>> {
        let member = members.iter_mut().find(|(key, _)| key == name)?;
        match std::mem::replace(&mut member.1, Value::Null) {
            Value::String(s) => Some(s),
            _ => None,
        }
    };
    let agent_id = take("agent_id").expect("checked above");
    let task_id = if has_task { take("task_id") } else { None };
    let notes = if has_notes { take("notes") } else { None };
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

/// Size, JSON and `type`: the checks common to both documents.
fn parse_document<'a>(payload: &'a [u8], expected_type: &str) -> Result<Vec<(Cow<'a, str>, Value<'a>)>, Rejection> {
    if payload.len() > MESSAGE_BYTES_MAX {
        return Err(rejection(
            Reason::TooLarge,
            format!("a message is at most {MESSAGE_BYTES_MAX} bytes; got {}", payload.len()),
        ));
    }
    let members = match json::parse(payload) {
        Ok(Value::Object(members)) => members,
        Ok(other) => {
            return Err(rejection(
                Reason::InvalidJson,
                format!("a message must be a JSON object; got {}", other.type_name()),
            ))
        }
        Err(e) => return Err(rejection(Reason::InvalidJson, format!("not valid JSON: {e}"))),
    };
    let type_ok = members
        .iter()
        .find(|(key, _)| key == "type")
        .is_some_and(|(_, v)| matches!(v, Value::String(s) if s == expected_type));
    if !type_ok {
        return Err(rejection(
            Reason::WrongType,
            format!("type must be \"{expected_type}\""),
        ));
    }
    Ok(members)
}

/// Field look-up over an object's members; `null` counts as absent.
struct Fields<'m, 'a>(&'m [(Cow<'a, str>, Value<'a>)]);

impl<'m, 'a> Fields<'m, 'a> {
    fn get(&self, name: &str) -> Option<&'m Value<'a>> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .filter(|value| !matches!(value, Value::Null))
    }

    fn string(&self, name: &'static str, rule: &str, ok: impl Fn(&str) -> bool) -> Result<&'m str, Rejection> {
        match self.get(name) {
            Some(Value::String(s)) if ok(s) => Ok(s),
            other => Err(field_rejection(name, rule, other)),
        }
    }

    fn integer(&self, name: &'static str, rule: &str, min: u64, max: u64) -> Result<u64, Rejection> {
        match self.get(name) {
            Some(Value::Number(n)) => match Number::as_u64(n) {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(field_rejection(name, rule, Some(&Value::Number(*n)))),
            },
            other => Err(field_rejection(name, rule, other)),
        }
    }

    fn hlc(&self) -> Result<Hlc, Rejection> {
        let rule = "{physical}:{logical}:{node}: physical 1-12 lowercase hex digits without leading zeros, logical and node 4 lowercase hex digits";
        match self.get("hlc") {
            Some(Value::String(s)) => s.parse().map_err(|_| field_rejection("hlc", rule, self.get("hlc"))),
            other => Err(field_rejection("hlc", rule, other)),
        }
    }
}
