//! What each fuzz target holds, one function per target: each takes the
//! fuzzer's bytes and panics when a rule is broken. Beyond these asserts,
//! libFuzzer itself checks that no input panics, hangs (`-timeout`) or
//! allocates beyond the limits `deploy/fuzz.sh` states (`-rss_limit_mb`,
//! `-malloc_limit_mb`).
//!
//! This file is also compiled on stable by `tests/tests/fuzz_replay.rs`,
//! which runs every committed corpus and regression input through it: it may
//! use only `backbeat-schemas` (feature `tree`), `backbeat-fold`,
//! `backbeat-ingest-core`, `bytes` and `serde_json`.
//!
//! Inputs that need parameters (a cluster, a bar length, limits) carry them
//! in a small header: a selector byte, then a line (up to the first `\n`),
//! then the document. [`split_header`] reads it; the seed generator
//! (`tests/examples/fuzz_seeds.rs`) writes it.

use backbeat_fold::{Fold, FoldConfig};
use backbeat_ingest_core::admission::{admit, Admission, INVALID_CLUSTER_REJECT_SUBJECT};
use backbeat_ingest_core::batch::{declared_too_large, is_ndjson, ndjson_lines, BodyReader, TooManyLines};
use backbeat_ingest_core::dead_letter::{DeadLetterBody, RefusedLine};
use backbeat_schemas::hlc::HLC_PHYSICAL_MAX;
use backbeat_schemas::json::{self, Scanned, Shallow, Value};
use backbeat_schemas::logfile::{format_line, strip_line_end};
use backbeat_schemas::message::MESSAGE_BYTES_MAX;
use backbeat_schemas::names::{is_valid_cluster_id, subject, SubjectKind};
use backbeat_schemas::timestamp::{format_utc_ms, is_valid_deadline, parse_utc_ms};
use backbeat_schemas::window::WindowIdCache;
use backbeat_schemas::{
    validate_beat, validate_beat_fully, validate_beat_tick, validate_beat_with, validate_claim, validate_claim_fully,
    BeatTick, Hlc, HlcClock, LogEntry,
};
use bytes::Bytes;

/// The tree-building validator the scanner replaced, kept by the contract
/// tests as the reference: the fast paths and the scanner must agree with it.
#[path = "../../schemas/tests/contract/reference.rs"]
#[allow(dead_code)]
mod reference;

/// Bar lengths a selector picks from: the small ones of the tests, SPEC's
/// default, and ones near the edges of the window math.
pub const BAR_LENGTHS: [u64; 8] = [1, 2, 3, 4, 8, 16, 120, 1 << 40];

/// The bar length of selector byte `selector` (its low three bits).
pub fn bar_length(selector: u8) -> u64 {
    BAR_LENGTHS[usize::from(selector & 7)]
}

/// Lateness `A` and task time-to-live `T` a selector picks (with the bar
/// length of its low bits): the values the golden and conformance logs use.
pub const LATENESS: [u64; 4] = [0, 1, 2, 5];
pub const TASK_TTLS: [u64; 4] = [10, 0, 1, 3];

/// The fold config of selector byte `selector`: bar length (bits 0-2),
/// lateness (bits 3-4), task time-to-live (bits 5-6), SPEC's other defaults.
pub fn fold_config(selector: u8) -> FoldConfig {
    FoldConfig {
        lateness: LATENESS[usize::from(selector >> 3 & 3)],
        task_ttl: TASK_TTLS[usize::from(selector >> 5 & 3)],
        ..FoldConfig::with_bar_length(bar_length(selector))
    }
}

/// A selector byte, the text up to the first `\n` (lossy UTF-8), and the
/// rest; `None` for an empty input.
pub fn split_header(data: &[u8]) -> Option<(u8, String, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    let (line, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    Some((selector, String::from_utf8_lossy(line).into_owned(), rest))
}

/// Top-level members the scanner is asked for: some of claims, some of
/// beats, the empty name and one no document has.
const NAMES: [&str; 8] = [
    "type",
    "agent_id",
    "beat_index",
    "hlc",
    "cluster_id",
    "window_id",
    "",
    "é",
];

/// `json`: the scanner (`json::scan_object`, what validation reads with)
/// refuses exactly what the tree reader refuses, with the same error, and
/// finds each named top-level member as the tree holds it.
pub fn json(data: &[u8]) {
    let tree = json::parse(data);
    let scanned = json::scan_object(data, &NAMES);
    match (&tree, &scanned) {
        (Ok(Value::Object(members)), Ok(Scanned::Object(found))) => {
            for (index, name) in NAMES.iter().enumerate() {
                let expected = members
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| shallow(value));
                assert_eq!(found.get(index), expected, "member {name}");
            }
        }
        (Ok(value), Ok(Scanned::NotObject(type_name))) => {
            assert_ne!(value.type_name(), "object");
            assert_eq!(value.type_name(), *type_name);
        }
        (Err(tree), Err(scanned)) => assert_eq!(tree, scanned),
        _ => panic!("the scanner and the tree reader disagree: {tree:?} / {scanned:?}"),
    }
}

fn shallow<'a>(value: &Value<'a>) -> Shallow<'a> {
    match value {
        Value::Null => Shallow::Null,
        Value::Bool(b) => Shallow::Bool(*b),
        Value::Number(n) => Shallow::Number(*n),
        Value::String(s) => Shallow::String(s.clone()),
        Value::Array(_) => Shallow::Array,
        Value::Object(_) => Shallow::Object,
    }
}

/// `claim`: validation never panics; an accepted claim is at most a
/// message's size, and written back as the library writes claims it is
/// accepted again as the same claim (when that writing is within the size).
pub fn claim(data: &[u8]) {
    let Ok(claim) = validate_claim(data) else {
        return;
    };
    assert!(
        data.len() <= MESSAGE_BYTES_MAX,
        "an accepted claim is at most a message"
    );
    let written = serde_json::to_vec(&claim).expect("a claim serializes");
    match validate_claim(&written) {
        Ok(again) => assert_eq!(again, claim, "{}", String::from_utf8_lossy(&written)),
        // Escapes the library writes (`\u0001` for a control character) may
        // make the same claim longer than a message.
        Err(rejection) => assert!(
            written.len() > MESSAGE_BYTES_MAX,
            "the written claim is refused: {rejection}"
        ),
    }
}

/// `beat`: input = selector (bar length), the subject's cluster, `\n`, the
/// payload. Validation never panics; the beat, its tick (what the fold reads)
/// and a warm window-id cache agree; an accepted beat written back is
/// accepted again as the same beat.
pub fn beat(data: &[u8]) {
    let Some((selector, cluster, payload)) = split_header(data) else {
        return;
    };
    let bar_length = bar_length(selector);
    let frame = validate_beat(payload, &cluster, bar_length);
    // A cache holding another window's id, then one holding this one's.
    let mut cache = WindowIdCache::default();
    cache.window_id(&cluster, bar_length, 7);
    let tick = validate_beat_tick(payload, &cluster, bar_length, &mut cache);
    assert_eq!(tick, frame.as_ref().map(BeatTick::from).map_err(Clone::clone));
    assert_eq!(validate_beat_with(payload, &cluster, bar_length, &mut cache), frame);
    let Ok(frame) = frame else {
        return;
    };
    assert!(
        payload.len() <= MESSAGE_BYTES_MAX,
        "an accepted beat is at most a message"
    );
    assert!(is_valid_cluster_id(&frame.cluster_id) && frame.cluster_id == cluster);
    let written = serde_json::to_vec(&frame).expect("a beat serializes");
    assert_eq!(validate_beat(&written, &cluster, bar_length), Ok(frame));
}

/// `fast_paths` (differential): the fast paths of `canonical.rs` never
/// change a result. Input = selector, cluster line, payload. The claim
/// reader with its fast path, without it (`validate_claim_fully`) and the
/// reference (the tree-building validator) give the same claim or the same
/// rejection (reason and message); the beat readers likewise, for the bar
/// length and cluster of the header. The whole input is also read as a claim.
pub fn fast_paths(data: &[u8]) {
    claim_readers_agree(data);
    let Some((selector, cluster, payload)) = split_header(data) else {
        return;
    };
    claim_readers_agree(payload);
    let bar_length = bar_length(selector);
    let fast = validate_beat_with(payload, &cluster, bar_length, &mut WindowIdCache::default());
    let full = validate_beat_fully(payload, &cluster, bar_length, &mut WindowIdCache::default());
    assert_eq!(fast, full, "the beat fast path changed the result");
    assert_eq!(
        full,
        reference::validate_beat(payload, &cluster, bar_length),
        "the scanner and the reference disagree on a beat"
    );
    let tick = validate_beat_tick(payload, &cluster, bar_length, &mut WindowIdCache::default());
    assert_eq!(tick, full.as_ref().map(BeatTick::from).map_err(Clone::clone));
}

fn claim_readers_agree(payload: &[u8]) {
    let fast = validate_claim(payload);
    let full = validate_claim_fully(payload);
    assert_eq!(fast, full, "the claim fast path changed the result");
    assert_eq!(
        full,
        reference::validate_claim(payload),
        "the scanner and the reference disagree on a claim"
    );
}

/// `hlc_timestamp`: the HLC reader of bytes and of text agree, and an HLC
/// has one spelling (it displays as the bytes it was read from); a
/// `deadline_at` read as milliseconds formats and reads back to them; and
/// the clock, driven by sends and receives taken from the input (16 bytes
/// each), never goes back, and moves strictly forward below its largest value.
pub fn hlc_timestamp(data: &[u8]) {
    let parsed = Hlc::parse_bytes(data);
    if let Some(hlc) = parsed {
        assert_eq!(hlc.to_string().as_bytes(), data, "one spelling per HLC");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(text.parse::<Hlc>().ok(), parsed);
        let ms = parse_utc_ms(text);
        assert_eq!(is_valid_deadline(text), ms.is_some());
        if let Some(ms) = ms {
            let formatted = format_utc_ms(ms);
            assert_eq!(parse_utc_ms(&formatted), Some(ms), "{formatted}");
            assert_eq!(formatted[..19], text[..19], "the same second");
        }
    }
    let mut clock = HlcClock::new(u16::from_le_bytes([data.first().copied().unwrap_or(0), 0]));
    let mut previous = clock.last();
    for op in data.chunks_exact(16) {
        let wall = u64::from_le_bytes(op[0..8].try_into().expect("8 bytes")) >> (op[15] & 63);
        let next = if op[8] & 1 == 0 {
            clock.send(wall)
        } else {
            let physical = u64::from_le_bytes([op[9], op[10], op[11], op[12], op[13], op[14], 0, 0]);
            let remote = Hlc::new(
                physical.min(HLC_PHYSICAL_MAX),
                u16::from(op[14]) << 8 | u16::from(op[15]),
                1,
            );
            let merged = clock.receive(remote, wall);
            assert!(
                (merged.physical_ms, merged.logical) >= (remote.physical_ms, remote.logical),
                "a merged HLC is below the remote one"
            );
            merged
        };
        assert!(
            next.physical_ms >= wall.min(HLC_PHYSICAL_MAX),
            "the HLC is behind the wall clock"
        );
        if previous.physical_ms == HLC_PHYSICAL_MAX && previous.logical == u16::MAX {
            assert_eq!(next, previous, "the largest HLC stays");
        } else {
            assert!(next > previous, "the HLC did not move forward: {previous} then {next}");
        }
        previous = next;
    }
}

/// `log_lines`: input = selector ([`fold_config`]), then a SPEC §7 log file, read
/// as `backbeat-processor fold --log` reads it (lines split at `\n`, the line
/// end stripped with `logfile::strip_line_end`, UTF-8, then
/// `LogEntry::parse_line_into` into reused buffers) and folded. The direct
/// reading of the written form and the full reader agree on every line; an
/// entry written back (`format_line`) reads as the same entry; the fold
/// takes every event without panicking (its debug assertions hold), and its
/// checkpoint at the end reads back to the same bytes.
pub fn log_lines(data: &[u8]) {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let mut fold = Fold::new(fold_config(selector));
    let mut reports = Vec::new();
    let (mut subject, mut payload) = (String::from("left over"), b"left over".to_vec());
    for (index, raw) in file.split_inclusive(|&b| b == b'\n').enumerate() {
        let number = index as u64 + 1;
        let Ok(text) = std::str::from_utf8(strip_line_end(raw)) else {
            break;
        };
        let plain = LogEntry::parse_line(text, number);
        let into = LogEntry::parse_line_into(text, number, &mut subject, &mut payload);
        match (&plain, into) {
            (Ok(None), Ok(None)) => continue,
            (Ok(Some(entry)), Ok(Some(seq))) => {
                assert_eq!((entry.seq, &entry.subject, &entry.payload), (seq, &subject, &payload));
                let written = format_line(seq, &subject, &payload);
                assert_eq!(LogEntry::parse_line(&written, 1).as_ref(), Ok(&Some(entry.clone())));
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, &b);
                // `fold --log` stops at a line that is not a log line.
                break;
            }
            (plain, into) => panic!("line {number}: {plain:?} but {into:?}"),
        }
        let last = fold.last_seq();
        fold.apply(
            plain.expect("ok").expect("an entry").seq,
            &subject,
            &payload,
            &mut reports,
        );
        assert!(fold.last_seq() >= last);
    }
    let bytes = fold.to_checkpoint();
    let resumed = Fold::from_checkpoint(&bytes).expect("a fold's own checkpoint reads back");
    assert_eq!(resumed.to_checkpoint(), bytes);
}

/// `checkpoint`: any bytes given to `Fold::from_checkpoint` are refused or
/// read without panicking or allocating past the limit; a state that is read
/// writes back to bytes that read back to the same bytes, and takes events
/// (beats and claims of its own clusters and of a new one, at its next
/// sequences) without panicking.
pub fn checkpoint(data: &[u8]) {
    let Ok(mut fold) = Fold::from_checkpoint(data) else {
        return;
    };
    let bytes = fold.to_checkpoint();
    let again = Fold::from_checkpoint(&bytes).expect("a fold's own checkpoint reads back");
    assert_eq!(again.to_checkpoint(), bytes);
    let bar_length = fold.config().bar_length;
    let mut clusters: Vec<String> = fold.cluster_ids().take(4).map(str::to_string).collect();
    clusters.push("fuzz-new".into());
    let mut reports = Vec::new();
    let mut seq = fold.last_seq();
    for cluster in &clusters {
        let status = fold.cluster_status(cluster);
        let next = status
            .as_ref()
            .and_then(|status| status.current_beat)
            .map_or(0, |beat| beat.saturating_add(1));
        for beat_index in [next, next.saturating_add(1), next.saturating_add(bar_length)] {
            for (kind, payload) in [
                (SubjectKind::Beat, beat_payload(cluster, beat_index, bar_length)),
                (SubjectKind::Claim, claim_payload("a1", beat_index)),
                (SubjectKind::Claim, claim_payload("fuzz-agent", beat_index)),
            ] {
                let Some(next_seq) = seq.checked_add(1) else {
                    return;
                };
                seq = next_seq;
                // Not `names::subject`: a damaged state's cluster id may not be valid.
                let subject = format!("backbeat.{cluster}.{}", kind.as_str());
                fold.apply(seq, &subject, payload.as_bytes(), &mut reports);
            }
        }
    }
    let bytes = fold.to_checkpoint();
    Fold::from_checkpoint(&bytes).expect("a fold's own checkpoint reads back");
}

/// A valid beat of `cluster` in the pulse's form (beat indexes beyond SPEC's
/// range are written anyway: the fold refuses them).
fn beat_payload(cluster: &str, beat_index: u64, bar_length: u64) -> String {
    use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{beat_index},"downbeat":{},"phase":"{}","hlc":"f4240:0000:0001","deadline_at":"2024-01-15T10:30:00.5Z","tempo_bpm":120,"window_id":"{}"}}"#,
        is_downbeat(beat_index, bar_length),
        phase_of(beat_index, bar_length),
        window_id(cluster, bar_length, window_of(beat_index, bar_length)),
    )
}

fn claim_payload(agent_id: &str, beat_index: u64) -> String {
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent_id}","task_id":"build:1","beat_index":{beat_index},"state":"reviewing","beats_left":2,"progress":0.5,"hlc":"f4240:0000:00a1"}}"#
    )
}

/// The gateway's limits a selector picks: (body limit `--batch-bytes-max`,
/// lines `--batch-lines-max`, dead letter bytes `--dead-letter-bytes-max`,
/// the size of the chunks the body arrives in). The defaults are 1 MiB,
/// 10,000 lines and 64 KiB; the small ones reach the limits with small inputs.
fn gateway_limits(selector: u8) -> (usize, usize, usize, usize) {
    let body = [1 << 20, 64, 1024, 8192][usize::from(selector & 3)];
    let lines = [10_000, 1, 2, 16][usize::from(selector >> 2 & 3)];
    let dead_letter = [64 * 1024, 8192][usize::from(selector >> 4 & 1)];
    let chunk = [4096, 1, 7, 1 << 16][usize::from(selector >> 5 & 3)];
    (body, lines, dead_letter, chunk)
}

/// `gateway`: the HTTP claims route's handling of a body, without the
/// server. Input = selector (limits), a header line
/// `{cluster}\t{content type}\t{content length}`, then the body. The body is
/// read in chunks within its limit (never more kept than the limit; whole
/// when within it); a batch (by its content type) is split into non-blank
/// lines (numbered, in order, within `--batch-lines-max`, or refused only
/// when it has more), each line admitted or refused as a single claim would
/// be, and the refused lines make one dead letter within its size; a single
/// claim likewise.
pub fn gateway(data: &[u8]) {
    let Some((selector, header, body)) = split_header(data) else {
        return;
    };
    let (limit, lines_max, dead_letter_max, chunk) = gateway_limits(selector);
    let mut fields = header.split('\t');
    let cluster = fields.next().unwrap_or_default();
    let content_type = fields.next().unwrap_or_default();
    let content_length = fields.next();
    if declared_too_large(content_length, limit) {
        let declared: u64 = content_length.and_then(|v| v.parse().ok()).expect("a number");
        assert!(declared > limit as u64);
        return;
    }
    let discard_max = backbeat_ingest_core::batch::body_bytes_read_max(limit);
    let mut reader = BodyReader::new(limit, discard_max);
    let mut read_all = true;
    for piece in body.chunks(chunk) {
        if !reader.chunk(piece) {
            read_all = false;
            break;
        }
        assert!(reader.kept() <= limit, "more of the body kept than its limit");
    }
    let Some(body) = reader.finish() else {
        assert!(body.len() > limit, "a body within its limit was refused");
        return;
    };
    assert!(read_all && body.len() <= limit);
    if !is_ndjson(content_type) {
        single(cluster, body, dead_letter_max);
        return;
    }
    let expected: Vec<(u64, &[u8])> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, line)| (index as u64 + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let lines = match ndjson_lines(&body, lines_max) {
        Ok(lines) => lines,
        Err(TooManyLines { lines_max: passed }) => {
            assert_eq!(passed, lines_max);
            assert!(expected.len() > lines_max, "a batch within its line limit was refused");
            return;
        }
    };
    assert_eq!(lines.len(), expected.len());
    for ((number, line), (expected_number, expected_line)) in lines.iter().zip(&expected) {
        assert_eq!((number, line.as_ref()), (expected_number, *expected_line));
    }
    let mut refused = Vec::new();
    for (number, line) in lines {
        if let Some((reason, message)) = admitted(cluster, &line) {
            refused.push(RefusedLine {
                line: number,
                payload: line,
                reason,
                message,
            });
        }
    }
    if refused.is_empty() {
        return;
    }
    let letter = DeadLetterBody::batch(&refused, dead_letter_max);
    let listed = letter.lines.as_ref().expect("a batch's dead letter lists its lines");
    assert_eq!(listed.refused, refused.len());
    assert!(
        letter.payload.len() + listed.listed.len() <= dead_letter_max,
        "a dead letter past its size"
    );
    let whole: Vec<u8> = refused
        .iter()
        .map(|line| line.payload.as_ref())
        .collect::<Vec<_>>()
        .join(&b'\n');
    assert!(
        whole.starts_with(&letter.payload),
        "a dead letter holds the refused lines as sent"
    );
    assert_eq!(
        letter.truncated_from_bytes,
        (letter.payload.len() < whole.len()).then_some(whole.len())
    );
}

/// One claim's admission: `None` when accepted (checked against validation
/// and the cluster's claim subject), else the reason and message.
fn admitted(cluster: &str, payload: &[u8]) -> Option<(String, String)> {
    match admit(cluster, payload) {
        Admission::Accept { claim_subject, msg_id } => {
            assert!(validate_claim(payload).is_ok(), "an invalid claim was admitted");
            assert_eq!(claim_subject, subject(cluster, SubjectKind::Claim));
            assert!(!msg_id.is_empty());
            None
        }
        Admission::Reject {
            reject_subject,
            reason,
            message,
        } => {
            if is_valid_cluster_id(cluster) {
                assert_eq!(reject_subject, subject(cluster, SubjectKind::Reject));
                let rejection = validate_claim(payload).expect_err("a valid claim was refused");
                assert_eq!(
                    (reason.as_str(), &message),
                    (&*rejection.reason.as_str(), &rejection.message)
                );
            } else {
                assert_eq!(reject_subject, INVALID_CLUSTER_REJECT_SUBJECT);
            }
            Some((reason, message))
        }
    }
}

fn single(cluster: &str, body: Bytes, dead_letter_max: usize) {
    if admitted(cluster, &body).is_none() {
        return;
    }
    let letter = DeadLetterBody::single(body.clone(), dead_letter_max);
    assert!(letter.payload.len() <= dead_letter_max && body.starts_with(&letter.payload));
    assert_eq!(
        letter.truncated_from_bytes,
        (body.len() > dead_letter_max).then_some(body.len())
    );
    assert!(letter.lines.is_none());
}
