//! The binaries as an operator runs them: `backbeat-ingest` (help, readiness,
//! metrics, SIGTERM) and `backbeat-agent-sim` against it, over NATS and HTTP,
//! with claims the fold would take.

use std::process::Command;
use std::time::Duration;

use backbeat_schemas::message::BeatFrame;
use backbeat_schemas::{validate_claim, ClaimState};
use backbeat_tests::{bin_path, free_port, wait_until_async, ChildGuard, Signal};

use crate::support::{claim, read_stream, start_server, BeatEmitter};

/// Every option of `--help` (but help and version) names its `BACKBEAT_` variable.
fn assert_help_documents_env(binary: &str) {
    let output = Command::new(bin_path(binary))
        .arg("--help")
        .output()
        .expect("--help runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let is_option = line.starts_with("  ") && (trimmed.starts_with("--") || trimmed.starts_with('-'));
        if is_option {
            let flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or_default()
                .trim_start_matches("--")
                .to_string();
            blocks.push((flag, line.to_string()));
        } else if let Some(last) = blocks.last_mut() {
            last.1.push_str(line);
        }
    }
    assert!(blocks.len() > 5, "{binary} --help lists its options:\n{help}");
    for (flag, text) in blocks {
        if flag == "help" || flag == "version" {
            continue;
        }
        let env = format!("BACKBEAT_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            text.contains(&format!("[env: {env}")),
            "{binary} --{flag} lacks {env}:\n{help}"
        );
    }
}

fn spawn_ingest(nats_url: &str, port: u16, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "backbeat-ingest",
        Command::new(bin_path("backbeat-ingest"))
            .args(["--nats", nats_url, "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("RUST_LOG", "warn"),
    )
    .expect("backbeat-ingest starts")
}

async fn wait_ready(base: &str) {
    let url = format!("{base}/ready");
    wait_until_async("backbeat-ingest /ready", Duration::from_secs(30), || async {
        let response = reqwest::get(&url).await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_binary_documents_its_flags_serves_admin_and_stops_on_sigterm() {
    assert_help_documents_env("backbeat-ingest");
    assert_help_documents_env("backbeat-agent-sim");
    let server = start_server();
    let port = free_port();
    let mut ingest = spawn_ingest(
        &server.url(),
        port,
        &["--clusters", "zeta,eta", "--inbox-prefixes", "_INBOX,_AGENTS"],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    assert_eq!(reqwest::get(format!("{base}/health")).await.unwrap().status(), 200);

    let client = crate::support::client(&server).await;
    let answer = client
        .request("backbeat.zeta.intake", claim("a", None, 1, 0x10).into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer.payload).starts_with(r#"{"ok":true,"seq":"#));
    // --clusters: another cluster is refused.
    let answer = client
        .request("backbeat.omega.intake", claim("a", None, 1, 0x10).into())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer.payload).contains(r#""reason":"cluster_not_allowed""#),
        "{answer:?}"
    );
    // --inbox-prefixes: a client with the custom prefix is answered.
    let custom = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_AGENTS")
        .connect(server.url())
        .await
        .unwrap();
    let answer = custom
        .request("backbeat.eta.intake", claim("b", None, 1, 0x10).into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&answer.payload).starts_with(r#"{"ok":true,"seq":"#));

    let metrics = crate::support::metrics_text(&base).await;
    for name in [
        "backbeat_ingest_claims_received_total{source=\"nats\"} 3",
        "backbeat_ingest_claims_accepted_total 2",
        "backbeat_ingest_claims_rejected_total{reason=\"cluster_not_allowed\"} 1",
        "backbeat_ingest_claims_duplicate_total 0",
        "backbeat_ingest_replies_refused_total{reason=\"not_an_inbox\"} 0",
        "backbeat_ingest_publish_latency_seconds_count 3",
        "backbeat_ingest_acks_in_flight 0",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let status = crate::support::status_json(&base).await;
    assert_eq!(status["claims"]["accepted"], 2);

    ingest.signal(Signal::Term).unwrap();
    let exit = tokio::task::spawn_blocking(move || ingest.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("exits on SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

/// Runs the simulator to completion; returns its JSON summary.
async fn run_sim(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout.json");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut sim = ChildGuard::spawn(
        "backbeat-agent-sim",
        Command::new(bin_path("backbeat-agent-sim"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(out),
    )
    .expect("backbeat-agent-sim starts");
    let exit = tokio::task::spawn_blocking(move || sim.wait_exit(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the simulator finishes");
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(exit.success(), "agent-sim {args:?} failed: {exit:?}\n{text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("summary {text:?}: {e}"))
}

/// The claims of `cluster` in stream order are valid, and the fold would apply
/// them: each comes after a beat and is at most F = 2 beats ahead of the
/// latest beat before it (SPEC §5 `future_beat`). Returns (claims, states seen).
async fn assert_foldable(client: &async_nats::Client, cluster: &str) -> (usize, Vec<ClaimState>) {
    let events = read_stream(client, "BACKBEAT_EVENTS", &format!("backbeat.{cluster}.*")).await;
    let mut current_beat: Option<u64> = None;
    let mut claims = 0;
    let mut states = Vec::new();
    for event in events {
        if event.subject.ends_with(".beat") {
            let frame: BeatFrame = serde_json::from_slice(&event.payload).unwrap();
            current_beat = current_beat.max(Some(frame.beat_index));
            continue;
        }
        let claim = validate_claim(&event.payload).expect("a valid claim");
        let current = current_beat.expect("claims only after a beat");
        assert!(
            claim.beat_index <= current + 2,
            "claim at beat {} after beat {current}: the fold would call it future_beat",
            claim.beat_index
        );
        if !states.contains(&claim.state) {
            states.push(claim.state);
        }
        claims += 1;
    }
    (claims, states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_sends_valid_claims_over_nats_and_http_and_runs_ten_thousand_agents() {
    let server = start_server();
    let port = free_port();
    let _ingest = spawn_ingest(&server.url(), port, &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    let client = crate::support::client(&server).await;
    // 150 bpm: a beat every 400 ms, so the test's own beat emitter may stall
    // for most of a second under load before a claim could look "future".
    let _beats_n = BeatEmitter::start(client.clone(), "sim-n", 150, 16);
    let _beats_h = BeatEmitter::start(client.clone(), "sim-h", 150, 16);

    let nats_url = server.url();
    let summary = run_sim(&[
        "--nats",
        &nats_url,
        "--cluster",
        "sim-n",
        "--bar-length",
        "16",
        "--agents",
        "100",
        "--seed",
        "3",
        "--rate",
        "400",
        "--claims",
        "600",
    ])
    .await;
    assert_eq!(summary["sent"], 600, "{summary}");
    assert_eq!(summary["accepted"], 600, "{summary}");
    assert!(summary["retries"].is_u64(), "the summary counts retries: {summary}");
    let (claims, states) = assert_foldable(&client, "sim-n").await;
    assert_eq!(claims, 600);
    assert!(states.len() >= 3, "a life cycle, not one state: {states:?}");

    let summary = run_sim(&[
        "--nats",
        &nats_url,
        "--http",
        &base,
        "--cluster",
        "sim-h",
        "--agents",
        "10000",
        "--seed",
        "4",
        "--rate",
        "3000",
        "--claims",
        "3000",
    ])
    .await;
    assert_eq!(summary["accepted"], 3000, "{summary}");
    let (claims, _) = assert_foldable(&client, "sim-h").await;
    assert_eq!(claims, 3000);

    // Without a limit it runs until SIGTERM, then waits for its answers and reports.
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout.json");
    let mut sim = ChildGuard::spawn(
        "backbeat-agent-sim",
        Command::new(bin_path("backbeat-agent-sim"))
            .args([
                "--nats",
                &nats_url,
                "--cluster",
                "sim-n",
                "--agents",
                "20",
                "--rate",
                "200",
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&out_path).unwrap()),
    )
    .unwrap();
    wait_until_async(
        "the unlimited simulator sends claims",
        Duration::from_secs(30),
        || async { (crate::support::claims_stored(&client, "sim-n").await.len() >= 650).then_some(()) },
    )
    .await
    .unwrap();
    sim.signal(Signal::Term).unwrap();
    let exit = tokio::task::spawn_blocking(move || sim.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("exits on SIGTERM");
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(exit.success(), "{exit:?} {text}");
    let summary: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(summary["sent"], summary["accepted"], "{summary}");
    assert_foldable(&client, "sim-n").await;
}

/// The example agent of the client library's docs, built by `cargo test`,
/// runs to completion against a live gateway and beats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agent_runs_its_task_to_done() {
    let server = start_server();
    let port = free_port();
    let _ingest = spawn_ingest(&server.url(), port, &[]);
    wait_ready(&format!("http://127.0.0.1:{port}")).await;
    let client = crate::support::client(&server).await;
    let _beats = BeatEmitter::start(client.clone(), "example", 300, 120);
    let mut example = bin_path("backbeat-ingest");
    example.set_file_name("examples");
    example.push("agent");
    assert!(
        example.exists(),
        "{} not built: run `cargo test -p backbeat-ingest` (which builds the examples), not `--test it` alone",
        example.display()
    );
    let output = tokio::task::spawn_blocking({
        let url = server.url();
        move || {
            Command::new(&example)
                .args([url.as_str(), "example", "agent-x", "0"])
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", example.display()))
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("stored at seq").count(), 5, "{stdout}");
    let (claims, states) = assert_foldable(&client, "example").await;
    assert_eq!(claims, 5);
    assert_eq!(
        states,
        [
            ClaimState::Planning,
            ClaimState::Executing,
            ClaimState::Reviewing,
            ClaimState::Done
        ]
    );
}
