//! Good documents and a corpus of bad ones, each with the SPEC §5 reason it
//! must be refused with. Shared by the rule tests and the JSON Schema tests.

use serde_json::{json, Value};

pub const CLUSTER: &str = "c1";
pub const BAR: u64 = 8;

/// A valid beat frame for beat 9 of cluster `c1` with `L = 8`.
pub fn beat() -> Value {
    json!({
        "type": "backbeat.beatframe.v1",
        "cluster_id": CLUSTER,
        "beat_index": 9,
        "downbeat": false,
        "phase": "plan",
        "hlc": "18d0e6a3b40:0000:0001",
        "deadline_at": "2024-01-15T10:30:00.5Z",
        "tempo_bpm": 120,
        "window_id": backbeat_schemas::window::window_id(CLUSTER, BAR, 1),
    })
}

/// A valid status claim.
pub fn claim() -> Value {
    json!({
        "type": "backbeat.statusclaim.v1",
        "agent_id": "agent-1",
        "task_id": "secret-rotation:42",
        "beat_index": 9,
        "state": "executing",
        "beats_left": 3,
        "progress": 0.5,
        "notes": "fetching inputs",
        "hlc": "18d0e6a3b40:0000:0001",
    })
}

/// `doc` with `field` set to `value`, or removed when `value` is `None`,
/// written by hand so that values serde_json cannot hold (`1e400`, `-0`)
/// appear exactly as given.
pub fn with(doc: &Value, field: &str, raw_value: Option<&str>) -> Vec<u8> {
    let mut out = String::from("{");
    let mut first = true;
    let mut seen = false;
    let object = doc.as_object().expect("an object");
    for (key, value) in object {
        let text = if key == field {
            seen = true;
            match raw_value {
                Some(raw) => raw.to_string(),
                None => continue,
            }
        } else {
            value.to_string()
        };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&format!("{}:{text}", Value::String(key.clone())));
    }
    if !seen {
        if let Some(raw) = raw_value {
            out.push_str(&format!(",{}:{raw}", Value::String(field.to_string())));
        }
    }
    out.push('}');
    out.into_bytes()
}

/// One bad document: what it is, its bytes, the reason SPEC §5 gives it, and
/// whether a JSON Schema validator can tell (size, duplicate keys, integer
/// spelling and the cross-field bar rules are beyond JSON Schema).
pub struct Case {
    pub name: String,
    pub payload: Vec<u8>,
    pub reason: &'static str,
    pub schema_can_tell: bool,
}

fn case(name: &str, payload: Vec<u8>, reason: &'static str, schema_can_tell: bool) -> Case {
    Case {
        name: name.to_string(),
        payload,
        reason,
        schema_can_tell,
    }
}

/// Bad inputs every document kind shares: size, JSON, `type`.
fn envelope_cases(good: &Value, other_type: &str) -> Vec<Case> {
    let mut padded = good.clone();
    padded["pad"] = Value::String("x".repeat(8200));
    let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let mut deep_doc = good.clone();
    deep_doc["extra"] = serde_json::from_str("0").unwrap();
    let deep_doc = with(&deep_doc, "extra", Some(&deep));
    vec![
        case(
            "larger than 8 KiB",
            serde_json::to_vec(&padded).unwrap(),
            "too_large",
            false,
        ),
        case(
            "oversize garbage is too_large, not invalid_json",
            vec![b'x'; 9000],
            "too_large",
            false,
        ),
        case("not JSON", b"hello".to_vec(), "invalid_json", true),
        case("an array, not an object", b"[1,2]".to_vec(), "invalid_json", true),
        case(
            "trailing garbage",
            [serde_json::to_vec(good).unwrap(), b"x".to_vec()].concat(),
            "invalid_json",
            true,
        ),
        case(
            "duplicate key",
            with(good, "type", Some("\"a\",\"type\":\"b\"")),
            "invalid_json",
            false,
        ),
        case("NaN", with(good, "beat_index", Some("NaN")), "invalid_json", true),
        case(
            "beyond the f64 range",
            with(good, "beat_index", Some("1e400")),
            "invalid_json",
            false,
        ),
        case(
            "lone surrogate",
            with(good, "hlc", Some("\"\\ud800\"")),
            "invalid_json",
            false,
        ),
        case("nesting deeper than 128", deep_doc, "invalid_json", false),
        case(
            "not UTF-8",
            [b"{\"type\":\"\xff\"}".as_slice()].concat(),
            "invalid_json",
            true,
        ),
        case("type absent", with(good, "type", None), "wrong_type", true),
        case(
            "type of the other document",
            with(good, "type", Some(&format!("{other_type:?}"))),
            "wrong_type",
            true,
        ),
        case("type not a string", with(good, "type", Some("1")), "wrong_type", true),
    ]
}

/// Bad claims, one or more per rule, in SPEC §2 field order.
#[rustfmt::skip]
pub fn bad_claims() -> Vec<Case> {
    let c = claim();
    let mut cases = envelope_cases(&c, "backbeat.beatframe.v1");
    let f = |name: &str, field: &str, raw: Option<&str>, reason: &'static str, schema: bool| {
        case(name, with(&c, field, raw), reason, schema)
    };
    let long = |n: usize| format!("{:?}", "é".repeat(n));
    cases.extend([
        f("agent_id absent", "agent_id", None, "invalid_field:agent_id", true),
        f("agent_id empty", "agent_id", Some("\"\""), "invalid_field:agent_id", true),
        f("agent_id of 129 code points", "agent_id", Some(&long(129)), "invalid_field:agent_id", true),
        f("agent_id a number", "agent_id", Some("7"), "invalid_field:agent_id", true),
        f("agent_id null", "agent_id", Some("null"), "invalid_field:agent_id", true),
        f("task_id of 129 code points", "task_id", Some(&long(129)), "invalid_field:task_id", true),
        f("task_id a number", "task_id", Some("7"), "invalid_field:task_id", true),
        f("beat_index absent", "beat_index", None, "invalid_field:beat_index", true),
        f("beat_index negative", "beat_index", Some("-1"), "invalid_field:beat_index", true),
        f("beat_index 2^53", "beat_index", Some("9007199254740992"), "invalid_field:beat_index", true),
        f("beat_index with a fraction", "beat_index", Some("9.5"), "invalid_field:beat_index", true),
        f("beat_index written 9.0", "beat_index", Some("9.0"), "invalid_field:beat_index", false),
        f("beat_index written 9e0", "beat_index", Some("9e0"), "invalid_field:beat_index", false),
        f("beat_index a boolean", "beat_index", Some("true"), "invalid_field:beat_index", true),
        f("beat_index a string", "beat_index", Some("\"9\""), "invalid_field:beat_index", true),
        f("state unknown", "state", Some("\"running\""), "invalid_field:state", true),
        f("state absent", "state", None, "invalid_field:state", true),
        f("beats_left beyond u32", "beats_left", Some("4294967296"), "invalid_field:beats_left", true),
        f("beats_left negative", "beats_left", Some("-1"), "invalid_field:beats_left", true),
        f("beats_left with a fraction", "beats_left", Some("0.5"), "invalid_field:beats_left", true),
        f("progress above 1", "progress", Some("1.0000001"), "invalid_field:progress", true),
        f("progress below 0", "progress", Some("-0.1"), "invalid_field:progress", true),
        f("progress a string", "progress", Some("\"0.5\""), "invalid_field:progress", true),
        f("progress absent", "progress", None, "invalid_field:progress", true),
        f("notes of 1025 code points", "notes", Some(&long(1025)), "invalid_field:notes", true),
        f("notes a number", "notes", Some("5"), "invalid_field:notes", true),
        f("hlc absent", "hlc", None, "invalid_field:hlc", true),
        f("hlc malformed", "hlc", Some("\"abc\""), "invalid_field:hlc", true),
        f("hlc physical with a leading zero", "hlc", Some("\"01:0000:0000\""), "invalid_field:hlc", true),
        f("hlc uppercase", "hlc", Some("\"1A:0000:0000\""), "invalid_field:hlc", true),
        f("hlc short counter", "hlc", Some("\"1:0:0\""), "invalid_field:hlc", true),
        f("hlc physical of 13 digits", "hlc", Some("\"1000000000000:0000:0000\""), "invalid_field:hlc", true),
    ]);
    // The first failing field in SPEC §2 order is the reason.
    let mut two_bad = c.clone();
    two_bad["progress"] = json!(7);
    cases.push(case(
        "agent_id before progress",
        with(&two_bad, "agent_id", Some("\"\"")),
        "invalid_field:agent_id",
        false,
    ));
    cases.push(case(
        "type before fields",
        with(
            &serde_json::from_slice(&with(&c, "type", Some("\"x\""))).unwrap(),
            "progress",
            Some("7"),
        ),
        "wrong_type",
        false,
    ));
    cases
}

/// Bad beats, one or more per rule.
#[rustfmt::skip]
pub fn bad_beats() -> Vec<Case> {
    let b = beat();
    let mut cases = envelope_cases(&b, "backbeat.statusclaim.v1");
    let f = |name: &str, field: &str, raw: Option<&str>, reason: &'static str, schema: bool| {
        case(name, with(&b, field, raw), reason, schema)
    };
    cases.extend([
        f("cluster_id with a dot", "cluster_id", Some("\"c.1\""), "invalid_field:cluster_id", true),
        f("cluster_id of 65 chars", "cluster_id", Some(&format!("{:?}", "c".repeat(65))), "invalid_field:cluster_id", true),
        f("cluster_id empty", "cluster_id", Some("\"\""), "invalid_field:cluster_id", true),
        f("beat_index negative", "beat_index", Some("-9"), "invalid_field:beat_index", true),
        f("beat_index written 9.0", "beat_index", Some("9.0"), "invalid_field:beat_index", false),
        f("downbeat a string", "downbeat", Some("\"false\""), "invalid_field:downbeat", true),
        f("downbeat absent", "downbeat", None, "invalid_field:downbeat", true),
        f("phase unknown", "phase", Some("\"planning\""), "invalid_field:phase", true),
        f("hlc malformed", "hlc", Some("\"x:y:z\""), "invalid_field:hlc", true),
        f("deadline_at not a date", "deadline_at", Some("\"tomorrow\""), "invalid_field:deadline_at", true),
        f("deadline_at 30 February", "deadline_at", Some("\"2024-02-30T00:00:00Z\""), "invalid_field:deadline_at", true),
        f("deadline_at 29 February of a common year", "deadline_at", Some("\"2023-02-29T00:00:00Z\""), "invalid_field:deadline_at", true),
        f("deadline_at leap second", "deadline_at", Some("\"2016-12-31T23:59:60Z\""), "invalid_field:deadline_at", true),
        f("deadline_at without Z", "deadline_at", Some("\"2024-01-15T10:30:00\""), "invalid_field:deadline_at", true),
        f("deadline_at with an offset", "deadline_at", Some("\"2024-01-15T10:30:00+01:00\""), "invalid_field:deadline_at", true),
        f("deadline_at with 10 fraction digits", "deadline_at", Some("\"2024-01-15T10:30:00.1234567891Z\""), "invalid_field:deadline_at", true),
        f("deadline_at hour 24", "deadline_at", Some("\"2024-01-15T24:00:00Z\""), "invalid_field:deadline_at", true),
        f("tempo_bpm 0", "tempo_bpm", Some("0"), "invalid_field:tempo_bpm", true),
        f("tempo_bpm 1001", "tempo_bpm", Some("1001"), "invalid_field:tempo_bpm", true),
        f("tempo_bpm with a fraction", "tempo_bpm", Some("120.5"), "invalid_field:tempo_bpm", true),
        f("window_id a number", "window_id", Some("5"), "invalid_field:window_id", true),
        f("window_id absent", "window_id", None, "invalid_field:window_id", true),
        f("window_id of another window", "window_id", Some(&format!("{:?}", backbeat_schemas::window::window_id(CLUSTER, BAR, 2))), "bar_mismatch", false),
        f("window_id of another bar length", "window_id", Some(&format!("{:?}", backbeat_schemas::window::window_id(CLUSTER, 9, 1))), "bar_mismatch", false),
        f("window_id not hex", "window_id", Some("\"not-a-window\""), "bar_mismatch", true),
        f("downbeat wrong for L", "downbeat", Some("true"), "bar_mismatch", false),
        f("phase wrong for L", "phase", Some("\"review\""), "bar_mismatch", false),
    ]);
    cases
}
