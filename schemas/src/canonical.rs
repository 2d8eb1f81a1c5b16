//! Admission's fast path: a status claim written the way the client library
//! writes it, and a beat frame written the way the pulse writes it, are read
//! straight off their bytes.
//!
//! "That way" is: compact, `type` first, the members in SPEC §2 order, no
//! unknown members, strings of plain ASCII without escapes, integers without
//! sign, fraction or exponent, and `progress` as `0`, `1` or `0.`/`1.` with at
//! most 15 fraction digits. [`claim`] answers `Some` only for such a claim
//! that is valid, and then with the very claim [`crate::validate_claim`]'s
//! full reader gives (strings borrowed from the payload, the same `f64`). For
//! anything else — whitespace, another order, escapes, a value out of range,
//! an invalid document — it answers `None` and the full reader decides, so
//! the fast path can never change what is accepted or the reason given.
//! The contract tests check this against the reference validator.
//!
//! A beat's form is the same idea: compact, `type` first, the members in
//! SPEC §2 order, plain ASCII strings, plain integers. [`beat`] answers `Some`
//! only for a valid beat of that form whose cluster, downbeat, phase and
//! window id are the ones expected; a rejection is always the full reader's.

use crate::hlc::Hlc;
use crate::json::plain_ascii_len;
use crate::message::{
    BeatFrame, BeatFrameType, BeatTick, ClaimState, StatusClaim, StatusClaimType, BEAT_INDEX_MAX, MESSAGE_BYTES_MAX,
};
use crate::names::is_valid_cluster_id;
use crate::timestamp::is_valid_deadline;
use crate::window::{is_downbeat, phase_of, window_of, Phase, WindowIdCache};

/// `10^k` for the fraction digits of `progress` (all exact in an `f64`).
const POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The claim, when `payload` is a valid claim in the client library's form.
pub(crate) fn claim(payload: &[u8]) -> Option<StatusClaim<'_>> {
    let mut cursor = Cursor::over(payload)?;
    cursor.literal(br#"{"type":"backbeat.statusclaim.v1","agent_id":""#)?;
    let agent_id = cursor.text()?;
    if agent_id.is_empty() || agent_id.len() > 128 {
        return None;
    }
    // `""` is no task, as absent or `null` is.
    let task_id = cursor
        .optional_text(br#","task_id":"#, 128)?
        .filter(|task_id| !task_id.is_empty());
    cursor.literal(br#","beat_index":"#)?;
    let beat_index = cursor.integer(BEAT_INDEX_MAX)?;
    cursor.literal(br#","state":""#)?;
    let state = ClaimState::parse_bytes(cursor.string()?)?;
    cursor.literal(br#","beats_left":"#)?;
    let beats_left = cursor.integer(u64::from(u32::MAX))? as u32;
    cursor.literal(br#","progress":"#)?;
    let progress = cursor.progress()?;
    let notes = cursor.optional_text(br#","notes":"#, 1024)?;
    cursor.literal(br#","hlc":""#)?;
    // The last member: the document ends with its closing quote and `}`, and
    // an HLC holds hex digits and colons only, so no quote comes before.
    let hlc = payload
        .strip_suffix(b"\"}")
        .and_then(|rest| rest.get(cursor.pos..))
        .and_then(Hlc::parse_bytes)?;
    Some(StatusClaim {
        kind: StatusClaimType,
        agent_id: agent_id.into(),
        task_id: task_id.map(Into::into),
        beat_index,
        state,
        beats_left,
        progress,
        notes: notes.map(Into::into),
        hlc,
    })
}

/// A valid beat frame in the pulse's form, its strings borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PulseBeat<'a> {
    pub cluster_id: &'a str,
    pub beat_index: u64,
    pub downbeat: bool,
    pub phase: Phase,
    pub hlc: Hlc,
    pub deadline_at: &'a str,
    pub tempo_bpm: u32,
    pub window_id: &'a str,
}

impl PulseBeat<'_> {
    pub fn to_frame(self) -> BeatFrame {
        BeatFrame {
            kind: BeatFrameType,
            cluster_id: self.cluster_id.to_string(),
            beat_index: self.beat_index,
            downbeat: self.downbeat,
            phase: self.phase,
            hlc: self.hlc,
            deadline_at: self.deadline_at.to_string(),
            tempo_bpm: self.tempo_bpm,
            window_id: self.window_id.to_string(),
        }
    }

    pub fn tick(self) -> BeatTick {
        BeatTick {
            beat_index: self.beat_index,
            tempo_bpm: self.tempo_bpm,
            hlc: self.hlc,
        }
    }
}

/// The beat, when `payload` is a valid beat frame in the pulse's form that
/// belongs on `backbeat.{subject_cluster}.beat` at bar length `bar_length`
/// (the window id of its window taken from `window_ids`).
pub(crate) fn beat<'a>(
    payload: &'a [u8],
    subject_cluster: &str,
    bar_length: u64,
    window_ids: &mut WindowIdCache,
) -> Option<PulseBeat<'a>> {
    if bar_length == 0 {
        return None;
    }
    let mut cursor = Cursor::over(payload)?;
    cursor.literal(br#"{"type":"backbeat.beatframe.v1","cluster_id":""#)?;
    let cluster_id = cursor.text()?;
    if cluster_id != subject_cluster || !is_valid_cluster_id(cluster_id) {
        return None;
    }
    cursor.literal(br#","beat_index":"#)?;
    let beat_index = cursor.integer(BEAT_INDEX_MAX)?;
    cursor.literal(br#","downbeat":"#)?;
    let downbeat = if cursor.eat(b"true") {
        true
    } else {
        cursor.literal(b"false")?;
        false
    };
    cursor.literal(br#","phase":""#)?;
    let phase = Phase::parse(cursor.text()?)?;
    cursor.literal(br#","hlc":""#)?;
    let hlc = Hlc::parse_bytes(cursor.string()?)?;
    cursor.literal(br#","deadline_at":""#)?;
    let deadline_at = cursor.text()?;
    if !is_valid_deadline(deadline_at) {
        return None;
    }
    cursor.literal(br#","tempo_bpm":"#)?;
    let tempo_bpm = cursor.integer(1000)? as u32;
    if tempo_bpm == 0 {
        return None;
    }
    cursor.literal(br#","window_id":""#)?;
    let window_id = cursor.text()?;
    cursor.literal(b"}")?;
    let expected = cursor.pos == payload.len()
        && downbeat == is_downbeat(beat_index, bar_length)
        && phase == phase_of(beat_index, bar_length)
        && window_id == window_ids.window_id(cluster_id, bar_length, window_of(beat_index, bar_length));
    expected.then_some(PulseBeat {
        cluster_id,
        beat_index,
        downbeat,
        phase,
        hlc,
        deadline_at,
        tempo_bpm,
        window_id,
    })
}

/// Whether `found` (of length `N`) is `expected`: eight bytes at a time, the
/// last eight overlapping, so that a literal costs a few compares and no call.
#[inline(always)]
fn same_bytes<const N: usize>(found: &[u8], expected: &[u8; N]) -> bool {
    fn word(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
    }
    if N < 8 {
        return found.iter().zip(expected).all(|(a, b)| a == b);
    }
    let mut diff = word(found, N - 8) ^ word(expected, N - 8);
    let mut at = 0;
    while at + 8 < N {
        diff |= word(found, at) ^ word(expected, at);
        at += 8;
    }
    diff == 0
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `payload`, when it is of a message's size and
    /// UTF-8. One check for the whole document (fast for ASCII, and cheaper
    /// than one per string) lets the strings be sliced without another.
    fn over(payload: &'a [u8]) -> Option<Self> {
        if payload.len() > MESSAGE_BYTES_MAX {
            return None;
        }
        Some(Cursor {
            text: std::str::from_utf8(payload).ok()?,
            bytes: payload,
            pos: 0,
        })
    }

    /// Consumes `expected` when the bytes at the cursor are exactly it.
    #[inline(always)]
    fn eat<const N: usize>(&mut self, expected: &[u8; N]) -> bool {
        let found = self
            .bytes
            .get(self.pos..self.pos + N)
            .is_some_and(|bytes| same_bytes(bytes, expected));
        if found {
            self.pos += N;
        }
        found
    }

    #[inline(always)]
    fn literal<const N: usize>(&mut self, expected: &[u8; N]) -> Option<()> {
        self.eat(expected).then_some(())
    }

    /// A string's plain-ASCII content up to its closing quote (the opening one
    /// is already read); `None` at an escape, a control or non-ASCII character.
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = &self.bytes[self.pos..];
        let len = plain_ascii_len(rest);
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.pos += len + 1;
        Some(&rest[..len])
    }

    /// [`Cursor::string`] as text.
    fn text(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let len = self.string()?.len();
        // All ASCII, so on character boundaries.
        self.text.get(start..start + len)
    }

    /// An optional string member `key` (its comma, name and colon): `Some(None)`
    /// when it is absent or `null`, `Some(Some(text))` for a string of at most
    /// `max_len` bytes, `None` for anything else.
    fn optional_text<const N: usize>(&mut self, key: &[u8; N], max_len: usize) -> Option<Option<&'a str>> {
        if !self.eat(key) || self.eat(b"null") {
            return Some(None);
        }
        self.literal(b"\"")?;
        let text = self.text()?;
        (text.len() <= max_len).then_some(Some(text))
    }

    /// Decimal digits: `0` or a non-zero digit then digits, at most 19 (no overflow).
    fn digits(&mut self) -> Option<(u64, usize)> {
        let rest = &self.bytes[self.pos..];
        let mut value = 0u64;
        let mut count = 0;
        while count < rest.len().min(19) {
            let digit = rest[count].wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            value = value * 10 + u64::from(digit);
            count += 1;
        }
        if count == 0 || (count > 1 && rest[0] == b'0') {
            return None;
        }
        self.pos += count;
        Some((value, count))
    }

    /// A JSON integer from 0 to `max` (what follows must not continue the
    /// number: the caller's next literal checks that).
    fn integer(&mut self, max: u64) -> Option<u64> {
        let (value, _) = self.digits()?;
        (value <= max).then_some(value)
    }

    /// `progress`: `0` or `1`, with an optional fraction of 1 to 15 digits,
    /// from 0.0 to 1.0. The integer `m` of its digits is below 2^53 and
    /// `10^k` is exact, so `m / 10^k` is the correctly rounded value, the one
    /// `str::parse::<f64>` gives (Clinger's fast path).
    fn progress(&mut self) -> Option<f64> {
        let whole = match self.bytes.get(self.pos) {
            Some(b'0') => 0u64,
            Some(b'1') => 1,
            _ => return None,
        };
        self.pos += 1;
        let value = if self.eat(b".") {
            let rest = &self.bytes[self.pos..];
            let mut fraction = 0u64;
            let mut digits = 0;
            while digits < rest.len() {
                let digit = rest[digits].wrapping_sub(b'0');
                if digit > 9 {
                    break;
                }
                fraction = fraction * 10 + u64::from(digit);
                digits += 1;
                if digits > 15 {
                    return None;
                }
            }
            if digits == 0 {
                return None;
            }
            self.pos += digits;
            let scale = POWERS_OF_TEN[digits];
            (whole as f64 * scale + fraction as f64) / scale
        } else {
            whole as f64
        };
        (0.0..=1.0).contains(&value).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_form_is_read_and_anything_else_left_to_the_full_reader() {
        fn read(doc: &str) -> Option<StatusClaim<'_>> {
            claim(doc.as_bytes())
        }
        let c = read(r#"{"type":"backbeat.statusclaim.v1","agent_id":"a-1","task_id":"build:3","beat_index":12,"state":"done","beats_left":4,"progress":0.25,"notes":"ok","hlc":"1f:0000:0002"}"#)
            .expect("the client form");
        assert_eq!(
            (&*c.agent_id, c.task_id.as_deref(), c.beat_index),
            ("a-1", Some("build:3"), 12)
        );
        assert_eq!(
            (c.state, c.beats_left, c.progress, c.notes.as_deref()),
            (ClaimState::Done, 4, 0.25, Some("ok"))
        );
        let c = read(r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","task_id":"","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#)
            .expect("the client form without notes");
        assert_eq!((c.task_id, c.progress), (None, 1.0));
        for state in ClaimState::ALL {
            let doc = format!(
                r#"{{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"{state}","beats_left":0,"progress":1,"hlc":"0:0000:0000"}}"#
            );
            assert_eq!(read(&doc).map(|c| c.state), Some(state), "{doc}");
        }
        for other in [
            // Whitespace, another order, an escape, non-ASCII, an odd number, a bad value.
            r#"{"type":"backbeat.statusclaim.v1", "agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#,
            r#"{"agent_id":"a","type":"backbeat.statusclaim.v1","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"\u0061","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"é","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":-0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1e0,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1.5,"hlc":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000"} "#,
            // The end: a quote inside the HLC, a member after it, a missing brace.
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000","x":"0:0000:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000"}:0000"}"#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"0:0000:0000""#,
            r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":0,"progress":1,"hlc":"}"#,
        ] {
            assert_eq!(read(other), None, "{other}");
        }
    }

    #[test]
    fn beats_as_the_pulse_writes_them_are_read_and_anything_else_left_to_the_full_reader() {
        use crate::window::window_id;
        let mut window_ids = WindowIdCache::default();
        for (beat_index, bar_length, tempo_bpm, deadline_at) in [
            (0, 4, 120, "1970-01-01T00:16:40.500Z"),
            (5, 4, 1, "2024-02-29T23:59:59Z"),
            (9_007_199_254_740_991, 120, 1000, "2024-01-15T10:30:00.123456789Z"),
            (119, 120, 60, "0000-01-01T00:00:00Z"),
        ] {
            let frame = BeatFrame {
                kind: BeatFrameType,
                cluster_id: "alpha_1-x".to_string(),
                beat_index,
                downbeat: is_downbeat(beat_index, bar_length),
                phase: phase_of(beat_index, bar_length),
                hlc: "18d0e6a3b40:0000:0001".parse().unwrap(),
                deadline_at: deadline_at.to_string(),
                tempo_bpm,
                window_id: window_id("alpha_1-x", bar_length, window_of(beat_index, bar_length)),
            };
            let payload = serde_json::to_vec(&frame).unwrap();
            let text = String::from_utf8(payload.clone()).unwrap();
            let read = beat(&payload, "alpha_1-x", bar_length, &mut window_ids).expect("the pulse's form");
            assert_eq!(read.to_frame(), frame, "{text}");
            assert_eq!(read.tick(), BeatTick::from(&frame), "{text}");
            // Another cluster or bar length, or a change of form: the full reader's.
            assert_eq!(beat(&payload, "alpha", bar_length, &mut window_ids), None, "{text}");
            assert_eq!(
                beat(&payload, "alpha_1-x", bar_length + 1, &mut window_ids),
                None,
                "{text}"
            );
            for other in [
                text.replacen(',', ", ", 1),
                text.replacen("\"tempo_bpm\"", "\"t\\u0065mpo_bpm\"", 1),
                format!("{text} "),
                text.replacen("Z\"", "z\"", 1),
                text.replacen(&format!(":{tempo_bpm},"), ":0,", 1),
                text.replacen("\"phase\":\"", "\"phase\":\"x", 1),
            ] {
                assert_eq!(
                    beat(other.as_bytes(), "alpha_1-x", bar_length, &mut window_ids),
                    None,
                    "{other}"
                );
            }
        }
    }
}
