//! The hand-worked conformance logs (copied from `../shared/conformance` into
//! `tests/conformance/`): `fold` must print the expected reports byte for byte,
//! through the library and through the `backbeat-processor fold` binary.

use std::process::Command;

use crate::support::{assert_same_lines, config_from_args, fold_to_jsonl, read_log, workspace_root};

const CASES: [&str; 3] = ["basic", "late_and_gaps", "tasks_and_help"];

#[test]
fn library_reproduces_conformance_reports() {
    let dir = workspace_root().join("tests/conformance");
    for case in CASES {
        let args = std::fs::read_to_string(dir.join(format!("{case}.args"))).unwrap();
        let entries = read_log(&dir.join(format!("{case}.log.jsonl")));
        let expected = std::fs::read_to_string(dir.join(format!("{case}.expected.jsonl"))).unwrap();
        assert_same_lines(case, &fold_to_jsonl(config_from_args(&args), &entries), &expected);
    }
}

#[test]
fn binary_reproduces_conformance_reports() {
    let dir = workspace_root().join("tests/conformance");
    for case in CASES {
        let args = std::fs::read_to_string(dir.join(format!("{case}.args"))).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_backbeat-processor"))
            .arg("fold")
            .arg("--log")
            .arg(dir.join(format!("{case}.log.jsonl")))
            .args(args.split_whitespace())
            .output()
            .expect("running backbeat-processor fold");
        assert!(
            output.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected = std::fs::read(dir.join(format!("{case}.expected.jsonl"))).unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(expected).unwrap(),
            "{case}"
        );
    }
}

#[test]
fn copies_match_the_shared_originals_when_present() {
    // CI runs with ../shared beside the clone; elsewhere the copies stand alone.
    let shared = workspace_root().join("../shared/conformance");
    let Ok(entries) = std::fs::read_dir(&shared) else {
        eprintln!(
            "no {} here: the repository's copies are used as they are",
            shared.display()
        );
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let copy = workspace_root()
            .join("tests/conformance")
            .join(path.file_name().unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&copy).unwrap_or_default(),
            "{} differs from its copy {}: copy the new version in",
            path.display(),
            copy.display()
        );
    }
}

#[test]
fn a_bad_log_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("bad.jsonl");
    std::fs::write(
        &log,
        "{\"seq\":1,\"subject\":\"backbeat.a.beat\",\"payload\":\"{}\"}\n\nnot a line\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_backbeat-processor"))
        .args(["fold", "--bar-length", "4", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(output.stdout.is_empty());
}
