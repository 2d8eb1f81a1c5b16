//! The single-pass validator against the reference (the tree-building one it
//! replaced, `reference.rs`): on random mutations of valid claims and beats
//! (byte flips, truncations, inserted duplicate keys, deep nesting, escapes,
//! odd numbers) both must give the same result: the same claim or beat (strings
//! borrowed or owned alike), or the same reason with the same message.

use std::borrow::Cow;

use backbeat_schemas::json;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of, WindowIdCache};
use backbeat_schemas::{validate_beat, validate_beat_tick, validate_beat_with, validate_claim, BeatTick, StatusClaim};
use proptest::prelude::*;

use crate::reference;

const CLUSTER: &str = "c1";

/// Valid claims written in different ways: compact, spaced, escaped, with
/// unknown members (nested ones too), null optionals, unusual number forms.
const CLAIMS: &[&str] = &[
    r#"{"type":"backbeat.statusclaim.v1","agent_id":"agent-1","task_id":"secret-rotation:42","beat_index":9,"state":"executing","beats_left":3,"progress":0.5,"notes":"fetching inputs","hlc":"18d0e6a3b40:0000:0001"}"#,
    r#" { "type" : "backbeat.statusclaim.v1" , "agent_id" : "a\u00e9\n\"q\"" , "beat_index" : -0 , "state" : "done" , "beats_left" : 0 , "progress" : 1 , "hlc" : "0:0000:0000" } "#,
    r#"{"type":"backbeat.statusclaim.v1","agent_id":"\ud83d\ude00 \/ ok","task_id":null,"beat_index":9007199254740991,"state":"helping","beats_left":4294967295,"progress":1e-1,"notes":null,"hlc":"ffffffffffff:ffff:ffff"}"#,
    r#"{"extra":{"a":[1,{"b":null,"c":[true,false]}],"d":"e"},"type":"backbeat.statusclaim.v1","agent_id":"x","task_id":"","beat_index":1,"state":"idle","beats_left":2,"progress":0.0,"notes":"Ω","hlc":"1:0000:0000","more":[[],{}]}"#,
    "{\"type\":\"backbeat.statusclaim.v1\",\"agent_id\":\"é漢\",\"beat_index\":12,\"state\":\"waiting\",\"beats_left\":7,\"progress\":0.25E0,\"notes\":\"line\\tbreak\\u0041\",\"hlc\":\"abc:0001:0002\"}",
    r#"{"\u0074ype":"backbeat.statusclaim.v1","agent_\u0069d":"a","beat_index":3,"state":"blocked","beats_left":1,"progress":0.75,"hlc":"18d0e6a3b40:0000:0001"}"#,
    // The client library's form (admission's fast path), with and without the optionals.
    r#"{"type":"backbeat.statusclaim.v1","agent_id":"agent-7","task_id":"build:3","beat_index":1200,"state":"reviewing","beats_left":0,"progress":1.0,"hlc":"18d0e6a3b40:0000:0001"}"#,
    r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":0,"state":"idle","beats_left":4294967295,"progress":0,"notes":"n","hlc":"0:0000:0000"}"#,
    r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","task_id":null,"beat_index":9007199254740991,"state":"failed","beats_left":7,"progress":0.123456789012345,"notes":null,"hlc":"ffffffffffff:ffff:ffff"}"#,
];

/// Beat frames (cluster `c1`, L = 8) written in different ways. The first
/// three are valid; the last three are the same beats with the window id of
/// an older draft (`c1:8:n`), so a bar mismatch.
const BEATS: &[&str] = &[
    r#"{"type":"backbeat.beatframe.v1","cluster_id":"c1","beat_index":9,"downbeat":false,"phase":"plan","hlc":"18d0e6a3b40:0000:0001","deadline_at":"2024-01-15T10:30:00.5Z","tempo_bpm":120,"window_id":"7a7e4801b1edf5860d62bc313b070c7b"}"#,
    r#" {"type" : "backbeat.beatframe.v1", "cluster_id":"c\u0031","beat_index":16,"downbeat":true,"phase":"plan","hlc":"1:0000:0000","deadline_at":"2024-02-29T23:59:59Z","tempo_bpm":1000,"window_id":"176a3d4ae8d28113c47b5c6f0deb9269","x":{"y":[1.5e3,-0.0]}} "#,
    r#"{"window_id":"4fe0771515911f0c2d6bfd2da4813b98","tempo_bpm":1,"deadline_at":"2024-01-15T10:30:00.123456789Z","hlc":"2:0000:0000","phase":"review","downbeat":false,"beat_index":7,"cluster_id":"c1","type":"backbeat.beatframe.v1"}"#,
    r#"{"type":"backbeat.beatframe.v1","cluster_id":"c1","beat_index":9,"downbeat":false,"phase":"plan","hlc":"18d0e6a3b40:0000:0001","deadline_at":"2024-01-15T10:30:00.5Z","tempo_bpm":120,"window_id":"c1:8:1"}"#,
    r#" {"type" : "backbeat.beatframe.v1", "cluster_id":"c\u0031","beat_index":16,"downbeat":true,"phase":"plan","hlc":"1:0000:0000","deadline_at":"2024-02-29T23:59:59Z","tempo_bpm":1000,"window_id":"c1:8:2","x":{"y":[1.5e3,-0.0]}} "#,
    r#"{"window_id":"c1:8:0","tempo_bpm":1,"deadline_at":"2024-01-15T10:30:00.123456789Z","hlc":"2:0000:0000","phase":"review","downbeat":false,"beat_index":7,"cluster_id":"c1","type":"backbeat.beatframe.v1"}"#,
];

/// Pieces inserted at random places: structure, duplicate keys, escapes
/// (lone surrogates too), odd numbers, literals, bytes that are not UTF-8.
const FRAGMENTS: &[&str] = &[
    ",",
    ":",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "\\",
    " ",
    "\t\n\r",
    r#","type":"backbeat.statusclaim.v1""#,
    r#","type":"backbeat.beatframe.v1""#,
    r#","agent_id":"dup""#,
    r#","beat_index":1"#,
    r#","hlc":null"#,
    r#","notes":null"#,
    r#","u":1,"u":2"#,
    r#","u":{"v":1,"v":2}"#,
    r#","u":[{"v":1},{"v":1,"w":{"v":3,"\u0076":4}}]"#,
    r#"{"a":1,"\u0061":2}"#,
    r#""\ud800""#,
    r#""\udc00x""#,
    r#""\ud83d\ude00""#,
    r#""\ud83dx""#,
    r#""\u00zz""#,
    r#""\x""#,
    "\\u0000",
    "\\ud800",
    "\\n",
    "\u{1}",
    "é",
    "😀",
    "-0",
    "0",
    "01",
    "1.",
    ".5",
    "3.0",
    "3e0",
    "1E+2",
    "1e-400",
    "1e400",
    "-1e309",
    "18446744073709551616",
    "9007199254740992",
    "0.5e-1",
    "NaN",
    "Infinity",
    "-",
    "true",
    "false",
    "null",
    "nul",
    "tru",
];

/// A mutation of a document.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at (index mod length) with this byte.
    Flip(usize, u8),
    /// Remove the bytes from (index mod length), this many.
    Delete(usize, usize),
    /// Keep only the first (index mod length + 1) bytes.
    Truncate(usize),
    /// Insert the fragment at (index mod length + 1).
    Insert(usize, &'static str),
    /// Insert this many nested arrays or objects as a new member before the last byte.
    Nest(usize, bool),
    /// Replace the value after the (n mod count)-th `:` by this many nested arrays or objects.
    NestValue(usize, usize, bool),
    /// Insert `,"{key}":{value}` before the last byte, the key and value taken
    /// from the document itself (a duplicate key) or a fragment.
    Repeat(usize, usize),
    /// Replace the value after the (n mod count)-th `:` by a fragment.
    Replace(usize, &'static str),
    /// Insert raw bytes that are not always valid UTF-8.
    Bytes(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let fragment = proptest::sample::select(FRAGMENTS);
    let interesting_byte = prop_oneof![
        proptest::sample::select(b"{}[]\",:\\ 0123456789eE.-+untfal\x00\x1f\x7f".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), interesting_byte).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), 1usize..4).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), fragment.clone()).prop_map(|(i, f)| Mutation::Insert(i, f)),
        (prop_oneof![1usize..6, 120usize..135], any::<bool>()).prop_map(|(n, o)| Mutation::Nest(n, o)),
        (any::<usize>(), prop_oneof![1usize..6, 120usize..135], any::<bool>())
            .prop_map(|(i, n, o)| Mutation::NestValue(i, n, o)),
        (any::<usize>(), any::<usize>()).prop_map(|(k, v)| Mutation::Repeat(k, v)),
        (any::<usize>(), fragment).prop_map(|(i, f)| Mutation::Replace(i, f)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..4)).prop_map(|(i, b)| Mutation::Bytes(i, b)),
    ]
}

/// Positions just after each `"key":` in `doc`, with the key's text (quotes included).
fn member_keys(doc: &[u8]) -> Vec<(std::ops::Range<usize>, usize)> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < doc.len() {
        if doc[i] == b'"' {
            let start = i;
            i += 1;
            while i < doc.len() && doc[i] != b'"' {
                i += if doc[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(doc.len());
            let mut j = end;
            while j < doc.len() && doc[j] == b' ' {
                j += 1;
            }
            if j < doc.len() && doc[j] == b':' {
                keys.push((start..end, j + 1));
            }
        }
        i += 1;
    }
    keys
}

/// The text of the value starting at `at`, up to the next `,` or `}` at the same level (roughly).
fn value_text(doc: &[u8], at: usize) -> &[u8] {
    let mut depth = 0i32;
    let mut in_string = false;
    let mut i = at;
    while i < doc.len() {
        match doc[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'{' | b'[' if !in_string => depth += 1,
            b'}' | b']' if !in_string => {
                if depth == 0 {
                    break;
                }
                depth -= 1
            }
            b',' if !in_string && depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    &doc[at..i.min(doc.len())]
}

/// `n` nested arrays, or objects of one member `k` around a `1`.
fn nested(n: usize, objects: bool) -> String {
    if objects {
        "{\"k\":".repeat(n) + "1" + &"}".repeat(n)
    } else {
        "[".repeat(n) + &"]".repeat(n)
    }
}

fn apply(doc: &mut Vec<u8>, mutation: &Mutation) {
    let len = doc.len().max(1);
    let before_last = doc.len().saturating_sub(1);
    match mutation {
        Mutation::Flip(i, b) => {
            if !doc.is_empty() {
                doc[i % len] = *b;
            }
        }
        Mutation::Delete(i, n) => {
            let start = (i % len).min(doc.len());
            let end = (start + n).min(doc.len());
            doc.drain(start..end);
        }
        Mutation::Truncate(i) => doc.truncate(i % len + 1),
        Mutation::Insert(i, fragment) => {
            let at = (i % len + 1).min(doc.len());
            doc.splice(at..at, fragment.bytes());
        }
        Mutation::Nest(n, objects) => {
            let member = format!(",\"deep\":{}", nested(*n, *objects));
            doc.splice(before_last..before_last, member.bytes());
        }
        Mutation::NestValue(i, n, objects) => {
            let keys = member_keys(doc);
            if keys.is_empty() {
                return;
            }
            let (_, at) = keys[i % keys.len()];
            let end = at + value_text(doc, at).len();
            doc.splice(at..end, nested(*n, *objects).into_bytes());
        }
        Mutation::Repeat(k, v) => {
            let keys = member_keys(doc);
            if keys.is_empty() {
                return;
            }
            let (key, _) = &keys[k % keys.len()];
            let (_, value_at) = &keys[v % keys.len()];
            let mut member = b",".to_vec();
            member.extend_from_slice(&doc[key.clone()]);
            member.push(b':');
            member.extend_from_slice(value_text(doc, *value_at));
            doc.splice(before_last..before_last, member);
        }
        Mutation::Replace(i, fragment) => {
            let keys = member_keys(doc);
            if keys.is_empty() {
                return;
            }
            let (_, at) = keys[i % keys.len()];
            let end = at + value_text(doc, at).len();
            doc.splice(at..end, fragment.bytes());
        }
        Mutation::Bytes(i, bytes) => {
            let at = (i % len).min(doc.len());
            doc.splice(at..at, bytes.iter().copied());
        }
    }
}

fn mutated(templates: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(templates),
        proptest::collection::vec(mutation(), 0..4),
    )
        .prop_map(|(template, mutations)| {
            let mut doc = template.as_bytes().to_vec();
            for m in &mutations {
                apply(&mut doc, m);
            }
            doc
        })
}

fn is_borrowed(s: &Option<Cow<'_, str>>) -> Option<bool> {
    s.as_ref().map(|s| matches!(s, Cow::Borrowed(_)))
}

fn same_claim(new: &StatusClaim<'_>, old: &StatusClaim<'_>) -> bool {
    new == old
        && new.progress.to_bits() == old.progress.to_bits()
        && matches!(new.agent_id, Cow::Borrowed(_)) == matches!(old.agent_id, Cow::Borrowed(_))
        && is_borrowed(&new.task_id) == is_borrowed(&old.task_id)
        && is_borrowed(&new.notes) == is_borrowed(&old.notes)
}

fn check_claim(doc: &[u8]) -> Result<(), TestCaseError> {
    let new = validate_claim(doc);
    let old = reference::validate_claim(doc);
    let text = String::from_utf8_lossy(doc);
    match (&new, &old) {
        (Ok(n), Ok(o)) => prop_assert!(same_claim(n, o), "{text}\nnew {n:?}\nold {o:?}"),
        _ => prop_assert_eq!(&new, &old, "{}", text),
    }
    // The scanner and the tree refuse the same documents with the same error.
    prop_assert_eq!(
        json::scan_object(doc, &["type"]).err(),
        json::parse(doc).err(),
        "{}",
        text
    );
    check_grammar(doc)
}

/// The refusals of the scanner that are SPEC §2's rules beyond JSON's grammar,
/// which serde_json does not apply while it skips a value.
const SPEC_ONLY_REFUSALS: &[&str] = &[
    "duplicate key",
    "lone surrogate in \\u escape",
    "number beyond the 64-bit float range",
    "nesting deeper than 128 levels",
    "not valid UTF-8",
];

/// JSON's grammar (RFC 8259: structure, literals, number and string syntax,
/// escapes, control characters, trailing bytes), held to serde_json's reader,
/// which shares no code with the scanner: a bug in a helper the scanner and
/// the tree share cannot hide from this check. serde_json reads the document
/// into `IgnoredAny`, so it applies the grammar only; the documents the scanner
/// refuses under a SPEC-only rule are left out.
fn check_grammar(doc: &[u8]) -> Result<(), TestCaseError> {
    let ours = json::scan_object(doc, &["type"]).map(drop);
    if let Err(e) = &ours {
        if SPEC_ONLY_REFUSALS.contains(&e.message) {
            return Ok(());
        }
    }
    let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(doc).map(drop);
    if let Err(e) = &theirs {
        // serde_json's own depth limit (128 levels, counted its way) is not the grammar.
        if ours.is_ok() && e.to_string().contains("recursion limit exceeded") {
            return Ok(());
        }
    }
    prop_assert_eq!(
        ours.is_ok(),
        theirs.is_ok(),
        "{}\nscanner: {:?}\nserde_json: {:?}",
        String::from_utf8_lossy(doc),
        ours,
        theirs.map_err(|e| e.to_string())
    );
    Ok(())
}

thread_local! {
    /// One window id cache for every beat a test thread checks: whatever it
    /// holds, a beat must read the same through it.
    static WINDOW_IDS: std::cell::RefCell<WindowIdCache> = std::cell::RefCell::default();
}

fn check_beat(doc: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(doc);
    for (cluster, bar_length) in [(CLUSTER, 8), (CLUSTER, 3), ("c2", 8)] {
        let read = validate_beat(doc, cluster, bar_length);
        prop_assert_eq!(
            &read,
            &reference::validate_beat(doc, cluster, bar_length),
            "{} (cluster {}, L {})",
            text,
            cluster,
            bar_length
        );
        let cached = WINDOW_IDS.with(|ids| validate_beat_with(doc, cluster, bar_length, &mut ids.borrow_mut()));
        prop_assert_eq!(
            &cached,
            &read,
            "{} through the cache (cluster {}, L {})",
            text,
            cluster,
            bar_length
        );
        let tick = WINDOW_IDS.with(|ids| validate_beat_tick(doc, cluster, bar_length, &mut ids.borrow_mut()));
        prop_assert_eq!(
            &tick,
            &read.map(|frame| BeatTick::from(&frame)),
            "{} as a tick (cluster {}, L {})",
            text,
            cluster,
            bar_length
        );
    }
    check_grammar(doc)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn claims_agree_with_the_reference(doc in mutated(CLAIMS)) {
        check_claim(&doc)?;
    }

    #[test]
    fn beats_agree_with_the_reference(doc in mutated(BEATS)) {
        check_beat(&doc)?;
    }

    #[test]
    fn beats_read_as_claims_and_claims_as_beats_agree(doc in mutated(BEATS), other in mutated(CLAIMS)) {
        check_claim(&doc)?;
        check_beat(&other)?;
    }
}

/// A claim in the client library's member order and layout, from values
/// that are often at or past a rule's edge: the fast path must agree with the
/// reference on each (accept the same claim, or leave it to the full reader).
fn canonical_claim() -> impl Strategy<Value = Vec<u8>> {
    let text = |max: usize| {
        prop_oneof![
            4 => proptest::string::string_regex(&format!("[a-z0-9:._-]{{0,{max}}}")).unwrap(),
            1 => Just("x".repeat(max)),
            1 => Just("x".repeat(max + 1)),
            1 => Just("é".repeat(max)),
            1 => proptest::string::string_regex("[a-z\\\"\u{1}\u{7f}é😀/]{0,6}").unwrap(),
        ]
    };
    let optional = |max: usize| {
        prop_oneof![
            Just(None),
            Just(Some("null".to_string())),
            text(max).prop_map(|t| Some(format!("\"{t}\""))),
        ]
    };
    let integer = prop_oneof![
        Just("0".to_string()),
        Just("9007199254740991".to_string()),
        Just("9007199254740992".to_string()),
        Just("4294967295".to_string()),
        Just("4294967296".to_string()),
        Just("99999999999999999999".to_string()),
        Just("00".to_string()),
        Just("-0".to_string()),
        Just("1.0".to_string()),
        Just("1e2".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
    ];
    let progress = prop_oneof![
        proptest::sample::select(vec![
            "0",
            "1",
            "0.0",
            "1.0",
            "0.5",
            "1.5",
            "2",
            "01",
            "0.",
            "-0",
            "-0.5",
            "0.5e0",
            "1.0000000000000001",
            "0.30000000000000004",
            "0.999999999999999",
            "0.9999999999999999",
            "0.1234567890123456",
            "1.000000000000000",
        ])
        .prop_map(str::to_string),
        ("[01]", "[0-9]{1,17}").prop_map(|(w, f)| format!("{w}.{f}")),
    ];
    let state = proptest::sample::select(vec![
        "idle",
        "planning",
        "executing",
        "reviewing",
        "helping",
        "waiting",
        "blocked",
        "done",
        "failed",
        "Done",
        "",
        "don",
        "doneX",
        "executin",
        "executing2",
        "i",
        "idle ",
        "xdone",
        "d\\u006fne",
    ]);
    let hlc = proptest::sample::select(vec![
        "18d0e6a3b40:0000:0001",
        "0:0000:0000",
        "ffffffffffff:ffff:ffff",
        "01:0000:0000",
        "1:000:0000",
        "1:0000:0000:0",
        "G:0000:0000",
        "1ffffffffffff:0000:0000",
        "fffffffffffff:0000:0000",
        "A:0000:0000",
        "1:0000:000g",
        "1:0000:000F",
        ":0000:0000",
        "1:0000:00000",
        "1:00000:0000",
        "1::0000:0000",
        "1:0000:0000 ",
        "0:0000:0000:",
        "1:0000:00\\u0030",
        "abc:ffff:0000",
    ]);
    (
        text(128),
        optional(128),
        integer.clone(),
        state,
        integer,
        progress,
        optional(1024),
        hlc,
        proptest::sample::select(vec!["", " ", "\n", "x"]),
    )
        .prop_map(|(agent, task, beat, state, left, progress, notes, hlc, tail)| {
            let mut doc = format!(r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}""#);
            if let Some(task) = task {
                doc.push_str(&format!(r#","task_id":{task}"#));
            }
            doc.push_str(&format!(
                r#","beat_index":{beat},"state":"{state}","beats_left":{left},"progress":{progress}"#
            ));
            if let Some(notes) = notes {
                doc.push_str(&format!(r#","notes":{notes}"#));
            }
            doc.push_str(&format!(r#","hlc":"{hlc}"}}{tail}"#));
            doc.into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn claims_in_the_client_form_agree_with_the_reference(doc in canonical_claim()) {
        check_claim(&doc)?;
    }
}

/// A beat in the pulse's member order and layout (cluster `c1` or `c2`,
/// L = 8), its values often at or past a rule's edge and its downbeat, phase
/// and window id mostly the expected ones: the fast path must agree with the
/// reference on each (accept the same beat, or leave it to the full reader).
fn canonical_beat() -> impl Strategy<Value = Vec<u8>> {
    const L: u64 = 8;
    // Each part is mostly valid, so that about half the beats are accepted.
    let usual_or_edge = |usual: Vec<&'static str>, edge: Vec<&'static str>| {
        prop_oneof![
            12 => proptest::sample::select(usual),
            1 => proptest::sample::select(edge),
        ]
    };
    let cluster = usual_or_edge(vec!["c1", "c2"], vec!["", "c\\u0031", "c 1", "c1\"", "é"]);
    let beat_index = prop_oneof![
        12 => (0u64..64).prop_map(|n| n.to_string()),
        1 => Just("9007199254740991".to_string()),
        1 => Just("9007199254740992".to_string()),
        1 => Just("99999999999999999999".to_string()),
        1 => proptest::sample::select(vec!["00", "-0", "1.0", "1e1", "-1", "08"]).prop_map(str::to_string),
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ];
    // `None`: the expected value; `Some`: this text instead.
    let downbeat = prop_oneof![
        12 => Just(None),
        1 => proptest::sample::select(vec!["true", "false", "1", "null", "\"true\"", "tru", "falsey"]).prop_map(Some),
    ];
    let phase = prop_oneof![
        12 => Just(None),
        1 => proptest::sample::select(vec!["plan", "execution", "review", "Plan", "", "planx", "p\\u006can"]).prop_map(Some),
    ];
    let hlc = usual_or_edge(
        vec![
            "18d0e6a3b40:0000:0001",
            "0:0000:0000",
            "ffffffffffff:ffff:ffff",
            "abc:ffff:0000",
        ],
        vec![
            "01:0000:0000",
            "1:000:0000",
            "1ffffffffffff:0000:0000",
            "A:0000:0000",
            "1:0000:00\\u0030",
        ],
    );
    let deadline = usual_or_edge(
        vec![
            "2024-01-15T10:30:00.5Z",
            "2024-02-29T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "1970-01-01T00:16:40.500Z",
        ],
        vec![
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-12-31T23:59:60Z",
            "2024-01-15T10:30:00.1234567890Z",
            "2024-01-15T10:30:00.Z",
            "2024-01-15T10:30:00z",
            "2024-01-15T10:30:00",
            "2024-01-15 10:30:00Z",
            "2024-01-15T24:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-10T00:00:00Z",
            "+2024-01-15T10:30:00Z",
            "2024-01-15T10:30:00\\u005a",
            "",
        ],
    );
    let tempo = usual_or_edge(
        vec!["120", "1", "1000", "60"],
        vec!["0", "1001", "01", "-1", "1.0", "1e2", "4294967416"],
    );
    let window = prop_oneof![
        12 => Just(None),
        1 => proptest::sample::select(vec!["", "c1:8:0", "4fe0771515911f0c2d6bfd2da4813b98", "7A7E4801B1EDF5860D62BC313B070C7B"]).prop_map(Some),
    ];
    let tail = usual_or_edge(vec![""], vec![" ", "\n", "x", "}", ",\"x\":1}"]);
    (cluster, beat_index, downbeat, phase, hlc, deadline, tempo, window, tail).prop_map(
        |(cluster, beat, downbeat, phase, hlc, deadline, tempo, window, tail)| {
            let index: Option<u64> = beat.parse().ok();
            let expected_downbeat = index.map_or("false".to_string(), |i| is_downbeat(i, L).to_string());
            let expected_phase = index.map_or("plan".to_string(), |i| phase_of(i, L).to_string());
            let expected_window_id = index.map_or(String::new(), |i| window_id(cluster, L, window_of(i, L)));
            let downbeat = downbeat.map_or(expected_downbeat, str::to_string);
            let phase = phase.map_or(expected_phase, str::to_string);
            let window = window.map_or(expected_window_id, str::to_string);
            let mut doc = format!(
                r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{beat},"downbeat":{downbeat},"phase":"{phase}","hlc":"{hlc}","deadline_at":"{deadline}","tempo_bpm":{tempo},"window_id":"{window}"}}"#
            );
            // A tail that continues the object replaces the closing brace.
            if tail.starts_with(',') {
                doc.pop();
            }
            doc.push_str(tail);
            doc.into_bytes()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn beats_in_the_pulse_form_agree_with_the_reference(doc in canonical_beat()) {
        check_beat(&doc)?;
    }
}

/// Cases worth keeping whatever the random draw: each rule's edge, once.
#[test]
fn chosen_cases_agree_with_the_reference() {
    let mut docs: Vec<Vec<u8>> = Vec::new();
    for template in CLAIMS.iter().chain(BEATS) {
        docs.push(template.as_bytes().to_vec());
        for fragment in FRAGMENTS {
            for at in 0..template.len() {
                let mut doc = template.as_bytes().to_vec();
                apply(&mut doc, &Mutation::Insert(at, fragment));
                docs.push(doc);
            }
        }
        for n in [126, 127, 128, 129] {
            for objects in [false, true] {
                let mut doc = template.as_bytes().to_vec();
                apply(&mut doc, &Mutation::Nest(n, objects));
                docs.push(doc);
                for k in 0..12 {
                    let mut doc = template.as_bytes().to_vec();
                    apply(&mut doc, &Mutation::NestValue(k, n, objects));
                    docs.push(doc);
                }
            }
        }
        for k in 0..12 {
            for v in 0..12 {
                let mut doc = template.as_bytes().to_vec();
                apply(&mut doc, &Mutation::Repeat(k, v));
                docs.push(doc);
            }
            for fragment in FRAGMENTS {
                let mut doc = template.as_bytes().to_vec();
                apply(&mut doc, &Mutation::Replace(k, fragment));
                docs.push(doc);
            }
        }
        for end in 0..template.len() {
            docs.push(template.as_bytes()[..end].to_vec());
        }
    }
    docs.push(vec![b' '; 8193]);
    docs.push([b"[".repeat(5000), b"]".repeat(5000)].concat());
    for doc in &docs {
        check_claim(doc).unwrap_or_else(|e| panic!("{e}"));
        check_beat(doc).unwrap_or_else(|e| panic!("{e}"));
    }
}
