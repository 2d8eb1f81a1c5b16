//! Every committed fuzz input through the checks of its fuzz target, on
//! stable: the seed corpora (`fuzz/corpus/{target}/`) and the inputs that
//! once broke a check (`fuzz/regressions/{target}/`, each fixed since). The
//! checks are the fuzz targets' own (`fuzz/src/checks.rs`, compiled here
//! too), so CI, which has no nightly toolchain and no cargo-fuzz, holds every
//! change to what the fuzzer last found. A panic names the input's file.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

/// Every fuzz target and its check (the names of `fuzz/fuzz_targets/`).
const TARGETS: [(&str, Check); 8] = [
    ("json", checks::json),
    ("claim", checks::claim),
    ("beat", checks::beat),
    ("fast_paths", checks::fast_paths),
    ("hlc_timestamp", checks::hlc_timestamp),
    ("log_lines", checks::log_lines),
    ("checkpoint", checks::checkpoint),
    ("gateway", checks::gateway),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("a directory entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    files.retain(|path| path.is_file());
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut count = 0;
    for (target, check) in TARGETS {
        for file in files(&fuzz_dir().join(kind).join(target)) {
            let input = std::fs::read(&file).expect("a fuzz input");
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "{target}: {} broke its check", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_seed_corpus() {
    for (target, _) in TARGETS {
        let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("checks::{target}(")),
            "{} calls its check",
            source.display()
        );
        assert!(
            !files(&fuzz_dir().join("corpus").join(target)).is_empty(),
            "{target} has no seed corpus"
        );
    }
    let targets = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .count();
    assert_eq!(targets, TARGETS.len(), "every fuzz target is replayed here");
}

#[test]
fn the_seed_corpora_pass_the_fuzz_checks() {
    let count = replay("corpus");
    eprintln!("{count} seed inputs replayed");
}

#[test]
fn the_inputs_the_fuzzer_found_pass_the_fuzz_checks() {
    let count = replay("regressions");
    eprintln!("{count} regression inputs replayed");
}
