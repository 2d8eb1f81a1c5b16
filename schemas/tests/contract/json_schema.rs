//! The JSON Schema documents for other languages (`schemas/json/*.schema.json`)
//! agree with the Rust validator: the original examples and every good
//! document pass, and every bad document whose fault JSON Schema can express fails.

use serde_json::Value;

use crate::corpus::{bad_beats, bad_claims, beat, claim, Case};

fn load(name: &str) -> Value {
    let path = backbeat_tests::workspace_root().join("schemas/json").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema = load(name);
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{name} declares draft 2020-12"
    );
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator.iter_errors(doc).map(|e| e.to_string()).collect()
}

#[test]
fn the_original_examples_validate() {
    for (schema, example) in [
        ("beatframe.schema.json", "beatframe.json"),
        ("statusclaim.schema.json", "statusclaim.json"),
        ("barreport.schema.json", "barreport.json"),
    ] {
        let v = validator(schema);
        let doc = load(&format!("examples/{example}"));
        assert_eq!(errors(&v, &doc), Vec::<String>::new(), "{example} against {schema}");
    }
}

#[test]
fn the_examples_are_copies_of_the_shared_ones() {
    let shared = backbeat_tests::workspace_root().join("../shared/examples");
    for name in ["beatframe.json", "statusclaim.json", "barreport.json"] {
        let ours = load(&format!("examples/{name}"));
        let text = std::fs::read_to_string(shared.join(name))
            .unwrap_or_else(|e| panic!("../shared/examples/{name} must sit beside the repository: {e}"));
        let theirs: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(ours, theirs, "{name} differs from ../shared/examples");
    }
}

#[test]
fn good_documents_validate() {
    let v = validator("beatframe.schema.json");
    assert_eq!(errors(&v, &beat()), Vec::<String>::new());
    let v = validator("statusclaim.schema.json");
    assert_eq!(errors(&v, &claim()), Vec::<String>::new());
}

fn check_bad(schema: &str, cases: Vec<Case>) {
    let v = validator(schema);
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases.iter().filter(|c| c.schema_can_tell) {
        // Bytes that are not a JSON document are refused before any schema applies.
        let Ok(doc) = serde_json::from_slice::<Value>(&case.payload) else {
            continue;
        };
        checked += 1;
        if v.is_valid(&doc) {
            failures.push(format!("{} ({}) passes the schema", case.name, case.reason));
        }
    }
    assert!(checked > 20, "too few cases checked: {checked}");
    assert!(failures.is_empty(), "{schema}:\n{}", failures.join("\n"));
}

#[test]
fn bad_claims_fail_the_schema() {
    check_bad("statusclaim.schema.json", bad_claims());
}

#[test]
fn bad_beats_fail_the_schema() {
    check_bad("beatframe.schema.json", bad_beats());
}

#[test]
fn generated_reports_validate() {
    let v = validator("barreport.schema.json");
    for path in glob_reports() {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let doc: Value = serde_json::from_str(line).unwrap();
            assert_eq!(errors(&v, &doc), Vec::<String>::new(), "{}:{}", path.display(), i + 1);
        }
    }
}

/// Every expected BarReport file of the conformance and golden suites.
fn glob_reports() -> Vec<std::path::PathBuf> {
    let root = backbeat_tests::workspace_root().join("tests");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("conformance")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".expected.jsonl") {
            out.push(path);
        }
    }
    for entry in std::fs::read_dir(root.join("golden")).unwrap() {
        let path = entry.unwrap().path().join("bar_reports.jsonl");
        if path.exists() {
            out.push(path);
        }
    }
    assert!(
        out.len() >= 10,
        "expected the conformance and golden reports, found {}",
        out.len()
    );
    out.sort();
    out
}
