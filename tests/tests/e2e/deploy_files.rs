//! The deployment files of `deploy/` (compose file, Kubernetes manifests,
//! nats-server configs, Prometheus config), checked without deploying them by
//! `deploy/check_deploy_files.py`: YAML, the Kubernetes schemas, what each
//! kind requires, the compose file's consistency, and every flag given to a
//! binary against that binary's own `--help`, which this test runs.

use std::process::Command;

use backbeat_tests::{bin_path, workspace_root};

/// Every binary (and subcommand) the deployment files start.
const COMMANDS: &[&[&str]] = &[
    &["backbeat-pulse"],
    &["backbeat-ingest"],
    &["backbeat-agent-sim"],
    &["backbeat-processor", "run"],
    &["backbeat-query", "serve"],
];

#[test]
fn the_deployment_files_are_consistent_valid_and_use_only_known_flags() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut checker = Command::new("python3");
    checker
        .arg(workspace_root().join("deploy/check_deploy_files.py"))
        .arg(workspace_root().join("deploy"));
    for command in COMMANDS {
        let output = Command::new(bin_path(command[0]))
            .args(&command[1..])
            .arg("--help")
            .output()?;
        anyhow::ensure!(output.status.success(), "{} --help failed", command.join(" "));
        let file = dir.path().join(command.join("-"));
        std::fs::write(&file, &output.stdout)?;
        checker
            .arg("--help-text")
            .arg(format!("{}={}", command.join(" "), file.display()));
    }
    let output = checker.output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    anyhow::ensure!(
        output.status.success(),
        "deploy/check_deploy_files.py failed (deploy/install-deploy-checks.sh installs what it needs):\n{report}"
    );
    Ok(())
}
