//! Golden scenarios: `tests/golden/NAME/{events.jsonl,args,bar_reports.jsonl}`,
//! one per rule of SPEC §5–§6. `UPDATE_GOLDEN=1` rewrites `bar_reports.jsonl`
//! (then read the diff against the rule in `about` before committing).

use backbeat_processor::Fold;

use crate::support::{assert_same_lines, config_from_args, fold_to_jsonl, read_log, workspace_root};

fn scenarios() -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(workspace_root().join("tests/golden"))
        .expect("tests/golden exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 10, "expected the golden scenarios, found {dirs:?}");
    dirs
}

#[test]
fn scenarios_give_their_golden_reports() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    for dir in scenarios() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let config = config_from_args(&std::fs::read_to_string(dir.join("args")).unwrap());
        let actual = fold_to_jsonl(config, &read_log(&dir.join("events.jsonl")));
        let golden = dir.join("bar_reports.jsonl");
        if update {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display()));
        assert_same_lines(&name, &actual, &expected);
        assert!(!actual.is_empty(), "{name}: a scenario must close at least one window");
    }
}

/// Stop after event k, checkpoint, resume from the bytes: the same reports, for every k.
#[test]
fn every_scenario_resumes_from_a_checkpoint_after_any_event() {
    for dir in scenarios() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let config = config_from_args(&std::fs::read_to_string(dir.join("args")).unwrap());
        let entries = read_log(&dir.join("events.jsonl"));
        let uninterrupted = fold_to_jsonl(config, &entries);
        for k in 0..=entries.len() {
            let mut out = Vec::new();
            let mut fold = Fold::new(config);
            for e in &entries[..k] {
                fold.apply(e.seq, &e.subject, &e.payload, &mut out);
            }
            let mut resumed = Fold::from_checkpoint(&fold.to_checkpoint()).expect("checkpoint reads back");
            drop(fold);
            for e in &entries[k..] {
                resumed.apply(e.seq, &e.subject, &e.payload, &mut out);
            }
            let text: String = out.iter().map(|r| r.to_json() + "\n").collect();
            assert_eq!(text, uninterrupted, "{name}: resumed after event {k} differs");
        }
    }
}
