//! DESIGN "Binaries: one set of conventions": every flag of every binary is
//! described in `--help` and reads an environment variable `BACKBEAT_…`.
//!
//! The flags and the subcommands are clap's own lists, read from each
//! `--help` (its "Options:" and "Commands:" sections), not lists kept here:
//! a new flag or subcommand is checked the day it is added.

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

/// The subcommands a clap `--help` lists in its "Commands:" section (each
/// entry's first word, at the section's indentation), but `help`.
fn subcommands(help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        let entry = line.strip_prefix("  ").filter(|rest| !rest.starts_with(' '));
        if let Some(name) = entry
            .filter(|_| in_commands)
            .and_then(|rest| rest.split_whitespace().next())
        {
            if name != "help" {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// `binary args… --help`.
fn help_of(binary: &str, args: &[String]) -> String {
    let output = Command::new(bin_path(binary))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{binary} {args:?} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// Every binary of the workspace.
const BINARIES: [&str; 5] = [
    "backbeat-pulse",
    "backbeat-ingest",
    "backbeat-agent-sim",
    "backbeat-processor",
    "backbeat-query",
];

/// Every command (binary and subcommand path) with its `--help`, binaries in
/// [`BINARIES`] order, each followed by its subcommands in `--help` order.
fn every_command() -> Vec<(&'static str, Vec<String>, String)> {
    let mut found = Vec::new();
    for binary in BINARIES {
        let mut pending = vec![Vec::new()];
        while let Some(args) = pending.pop() {
            let help = help_of(binary, &args);
            let subs = subcommands(&help);
            for name in subs.into_iter().rev() {
                pending.push(args.iter().cloned().chain([name]).collect());
            }
            found.push((binary, args, help));
        }
    }
    found
}

/// The configuration reference: every command's `--help`, as the binaries print it.
fn configuration_reference() -> String {
    let mut text = String::from(
        "# Configuration reference\n\n\
         Every command's `--help`, as the binaries print it. Every flag also reads the\n\
         environment variable in its `[env: …]`. Generated: a test\n\
         (`tests/tests/e2e/cli.rs`) fails when this file and the binaries differ;\n\
         `BACKBEAT_UPDATE_REFERENCE=1 cargo test -p backbeat-tests --test e2e cli::` writes it anew.\n",
    );
    for (binary, args, help) in every_command() {
        let command = std::iter::once(binary.to_string())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ");
        text.push_str(&format!("\n## `{command}`\n\n```text\n{}\n```\n", help.trim_end()));
    }
    text
}

#[test]
fn the_configuration_reference_is_the_binaries_help() {
    let path = backbeat_tests::workspace_root().join("docs/configuration.md");
    let expected = configuration_reference();
    if std::env::var_os("BACKBEAT_UPDATE_REFERENCE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &expected).unwrap();
    }
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        found == expected,
        "{} differs from the binaries' --help; write it anew with\n  \
         BACKBEAT_UPDATE_REFERENCE=1 cargo test -p backbeat-tests --test e2e cli::",
        path.display()
    );
}

#[test]
fn the_subcommands_are_read_from_the_help() {
    let help = "Usage: x <COMMAND>\n\nCommands:\n  fold    Fold a log\n          more words\n  run     Run\n  help    Print this message\n\nOptions:\n  -h, --help  Print help\n";
    assert_eq!(subcommands(help), ["fold", "run"]);
}

#[test]
fn every_flag_of_every_binary_is_described_and_reads_an_environment_variable() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for (binary, args, help) in every_command() {
        checked += 1;
        let entries = option_entries(&help);
        // A command with subcommands may have no flags of its own.
        assert!(
            entries.len() >= 3 || !subcommands(&help).is_empty(),
            "{binary} {args:?}: no options found in\n{help}"
        );
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
    // The processor's subcommands (fold, run, export, replay) and the query's
    // (serve, sql) were found and checked too.
    assert!(checked >= 11, "only {checked} commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
