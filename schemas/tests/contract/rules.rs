//! SPEC §5 "Validation": each rule gives its reason, the first failure wins,
//! and the human message names the field and the rule.

use backbeat_schemas::{validate_beat, validate_claim, Rejection};
use serde_json::json;

use crate::corpus::{bad_beats, bad_claims, beat, claim, with, Case, BAR, CLUSTER};

/// Runs `validate` on every case; lists each one accepted or given another reason.
fn wrong_reasons(cases: Vec<Case>, validate: impl Fn(&[u8]) -> Result<(), Rejection>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        match validate(&case.payload) {
            Ok(()) => failures.push(format!("{}: accepted", case.name)),
            Err(e) if e.reason.as_str() != case.reason => failures.push(format!(
                "{}: got {} ({}), want {}",
                case.name, e.reason, e.message, case.reason
            )),
            Err(_) => {}
        }
    }
    failures
}

#[test]
fn every_bad_claim_gets_its_reason() {
    let failures = wrong_reasons(bad_claims(), |p| validate_claim(p).map(drop));
    assert!(failures.is_empty(), "claims:\n{}", failures.join("\n"));
}

#[test]
fn every_bad_beat_gets_its_reason() {
    let failures = wrong_reasons(bad_beats(), |p| validate_beat(p, CLUSTER, BAR).map(drop));
    assert!(failures.is_empty(), "beats:\n{}", failures.join("\n"));
}

#[test]
fn a_beat_on_another_clusters_subject_is_a_cluster_mismatch() {
    let payload = serde_json::to_vec(&beat()).unwrap();
    let err = validate_beat(&payload, "c2", BAR).unwrap_err();
    assert_eq!(err.reason.as_str(), "cluster_mismatch");
    assert!(err.message.contains("c2"), "{}", err.message);
}

#[test]
fn field_errors_name_the_field_the_rule_and_what_was_found() {
    let err = validate_claim(&with(&claim(), "progress", Some("1.5"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid_field:progress: progress must be a finite number from 0.0 to 1.0; got 1.5"
    );
    let err = validate_claim(&with(&claim(), "agent_id", None)).unwrap_err();
    assert!(
        err.message.starts_with("agent_id must be") && err.message.ends_with("it is absent"),
        "{}",
        err.message
    );
    let err = validate_beat(&with(&beat(), "downbeat", Some("true")), CLUSTER, BAR).unwrap_err();
    assert!(err.message.contains("downbeat false"), "{}", err.message);
}

#[test]
fn the_edges_of_each_range_pass() {
    let c = claim();
    let good = [
        ("agent_id", format!("{:?}", "é".repeat(128))),
        ("task_id", format!("{:?}", "é".repeat(128))),
        ("task_id", "null".into()),
        ("task_id", "\"\"".into()),
        ("beat_index", "9007199254740991".into()),
        ("beat_index", "-0".into()),
        ("beats_left", "4294967295".into()),
        ("progress", "0".into()),
        ("progress", "1".into()),
        ("progress", "1e0".into()),
        ("notes", format!("{:?}", "é".repeat(1024))),
        ("notes", "null".into()),
        ("hlc", "\"0:0000:0000\"".into()),
        ("hlc", "\"ffffffffffff:ffff:ffff\"".into()),
    ];
    for (field, raw) in good {
        let payload = with(&c, field, Some(&raw));
        if let Err(e) = validate_claim(&payload) {
            panic!("{field} = {raw} must pass: {e}");
        }
    }
    // An empty task_id is absent.
    let claim = validate_claim(&with(&c, "task_id", Some("\"\""))).unwrap().into_owned();
    assert_eq!(claim.task_id, None);
    // -0 is 0.
    assert_eq!(
        validate_claim(&with(&c, "beat_index", Some("-0"))).unwrap().beat_index,
        0
    );

    let b = beat();
    for (field, raw) in [
        ("tempo_bpm", "1"),
        ("tempo_bpm", "1000"),
        ("deadline_at", "\"2024-02-29T23:59:59.123456789Z\""),
        ("deadline_at", "\"2000-02-29T00:00:00Z\""),
        ("cluster_id", "\"c1\""),
    ] {
        let payload = with(&b, field, Some(raw));
        if let Err(e) = validate_beat(&payload, CLUSTER, BAR) {
            panic!("{field} = {raw} must pass: {e}");
        }
    }
}

#[test]
fn exactly_8192_bytes_pass_and_8193_do_not() {
    let mut doc = claim();
    doc["pad"] = json!("");
    let base = serde_json::to_vec(&doc).unwrap().len();
    doc["pad"] = json!("x".repeat(8192 - base));
    let payload = serde_json::to_vec(&doc).unwrap();
    assert_eq!(payload.len(), 8192);
    validate_claim(&payload).expect("8192 bytes pass");
    doc["pad"] = json!("x".repeat(8193 - base));
    let payload = serde_json::to_vec(&doc).unwrap();
    assert_eq!(validate_claim(&payload).unwrap_err().reason.as_str(), "too_large");
}

#[test]
fn unknown_fields_are_ignored() {
    let mut c = claim();
    c["future_field"] = json!({"nested": [1, 2, 3]});
    validate_claim(&serde_json::to_vec(&c).unwrap()).expect("v1 readers ignore unknown fields");
    let mut b = beat();
    b["future_field"] = json!(null);
    validate_beat(&serde_json::to_vec(&b).unwrap(), CLUSTER, BAR).expect("v1 readers ignore unknown fields");
}

#[test]
fn phases_follow_the_bar() {
    // L = 8: positions 0-1 plan, 2-5 execution, 6-7 review.
    for (index, phase, downbeat) in [
        (8, "plan", true),
        (9, "plan", false),
        (10, "execution", false),
        (13, "execution", false),
        (14, "review", false),
        (15, "review", false),
    ] {
        let mut b = beat();
        b["beat_index"] = json!(index);
        b["phase"] = json!(phase);
        b["downbeat"] = json!(downbeat);
        validate_beat(&serde_json::to_vec(&b).unwrap(), CLUSTER, BAR)
            .unwrap_or_else(|e| panic!("beat {index} as {phase}: {e}"));
    }
}
