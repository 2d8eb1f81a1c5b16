//! Reading scenario directories and fold flags.

use std::path::Path;

use backbeat_processor::FoldConfig;
use backbeat_schemas::{parse_log, LogEntry};

pub use backbeat_tests::workspace_root;

/// Parses fold flags as the CLI takes them (`--bar-length 4 --lateness 1`).
pub fn config_from_args(args: &str) -> FoldConfig {
    let words: Vec<&str> = args.split_whitespace().collect();
    let value = |flag: &str| -> Option<u64> {
        words.iter().position(|w| *w == flag).map(|i| {
            words[i + 1]
                .parse()
                .unwrap_or_else(|_| panic!("bad value for {flag} in {args:?}"))
        })
    };
    for word in words.iter().filter(|w| w.starts_with("--")) {
        assert!(
            [
                "--bar-length",
                "--lateness",
                "--future",
                "--max-jump",
                "--task-ttl",
                "--max-tasks-per-agent",
                "--max-agents-per-cluster"
            ]
            .contains(word),
            "unknown flag {word} in {args:?}"
        );
    }
    let mut config = FoldConfig::with_bar_length(value("--bar-length").unwrap_or(120));
    config.lateness = value("--lateness").unwrap_or(config.lateness);
    config.future = value("--future").unwrap_or(config.future);
    config.max_jump = value("--max-jump").unwrap_or(config.max_jump);
    config.task_ttl = value("--task-ttl").unwrap_or(config.task_ttl);
    config.max_tasks_per_agent = value("--max-tasks-per-agent").unwrap_or(config.max_tasks_per_agent);
    config.max_agents_per_cluster = value("--max-agents-per-cluster").unwrap_or(config.max_agents_per_cluster);
    config
}

pub fn read_log(path: &Path) -> Vec<LogEntry> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_log(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Folds `entries` and returns the reports as JSON Lines.
pub fn fold_to_jsonl(config: FoldConfig, entries: &[LogEntry]) -> String {
    let reports = backbeat_processor::fold_all(
        config,
        entries
            .iter()
            .map(|e| (e.seq, e.subject.as_str(), e.payload.as_slice())),
    );
    reports.iter().map(|r| r.to_json() + "\n").collect()
}

/// Shows the first differing line of two JSON Lines texts.
pub fn assert_same_lines(name: &str, actual: &str, expected: &str) {
    if actual == expected {
        return;
    }
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    for i in 0..a.len().max(e.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or("<none>"),
            e.get(i).copied().unwrap_or("<none>"),
        );
        if x != y {
            panic!(
                "{name}: report line {} differs\n  actual:   {x}\n  expected: {y}",
                i + 1
            );
        }
    }
    panic!("{name}: output differs (trailing newline?)");
}
