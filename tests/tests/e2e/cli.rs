//! DESIGN "Binaries: one set of conventions": every flag of every binary is
//! described in `--help` and reads an environment variable `BACKBEAT_…`.

use std::process::Command;

use backbeat_tests::bin_path;

/// The option entries of a clap `--help` text: each starts at a line whose
/// first non-blank characters are `-x, --flag` or `--flag`.
fn option_entries(help: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_options = line == "Options:";
            continue;
        }
        if !in_options {
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || (trimmed.starts_with('-') && trimmed.get(2..4) == Some(", ")) {
            entries.push(trimmed.to_string());
        } else if let Some(last) = entries.last_mut() {
            last.push(' ');
            last.push_str(trimmed);
        }
    }
    entries
}

#[test]
fn every_flag_of_every_binary_is_described_and_reads_an_environment_variable() {
    let commands: [(&str, &[&str]); 7] = [
        ("backbeat-pulse", &[]),
        ("backbeat-ingest", &[]),
        ("backbeat-agent-sim", &[]),
        ("backbeat-processor", &["fold"]),
        ("backbeat-processor", &["run"]),
        ("backbeat-processor", &["export"]),
        ("backbeat-processor", &["replay"]),
    ];
    let mut failures = Vec::new();
    for (binary, args) in commands {
        let output = Command::new(bin_path(binary))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(output.status.success(), "{binary} {args:?} --help failed");
        let help = String::from_utf8(output.stdout).unwrap();
        let entries = option_entries(&help);
        assert!(entries.len() >= 3, "{binary} {args:?}: no options found in\n{help}");
        for entry in entries {
            let flag = entry
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .unwrap_or("?")
                .to_string();
            if flag == "--help" || flag == "--version" {
                continue;
            }
            if !entry.contains("[env: BACKBEAT_") {
                failures.push(format!("{binary} {args:?} {flag}: no BACKBEAT_ environment variable"));
            }
            let description = entry.split("[env:").next().unwrap_or("");
            // Beyond the flag and its value name, some words of explanation.
            if description
                .split_whitespace()
                .filter(|w| !w.starts_with('-') && !w.starts_with('<'))
                .count()
                < 2
            {
                failures.push(format!("{binary} {args:?} {flag}: not described"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
