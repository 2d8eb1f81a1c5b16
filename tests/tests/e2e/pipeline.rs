//! The whole pipeline on real processes: a pulse node emits beats, simulated
//! agents send claims through the gateway, the processor folds the stream
//! live. Then the log is exported and folded offline: the reports must be the
//! very bytes the live run published (replay = live, DESIGN principle 1).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::BarReport;
use backbeat_tests::{bin_path, free_port, http_get, wait_until_async, ChildGuard, NatsServer, Signal};

const CLUSTER: &str = "e2e";
const BAR: &str = "8";
const LATENESS: &str = "1";
/// Generous: debug builds of five processes on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(90);

fn spawn(name: &str, dir: &Path, args: &[&str]) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = Command::new(bin_path(name));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn(name, &mut command)
}

async fn wait_ready(name: &str, port: u16) -> anyhow::Result<()> {
    wait_until_async(&format!("{name} /ready on port {port}"), TIMEOUT, || async move {
        http_get(port, "/ready").and_then(|(status, _)| (status == 200).then_some(()))
    })
    .await
}

fn run_ok(output: std::io::Result<Output>, what: &str) -> anyhow::Result<String> {
    let output = output?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reports_equal_the_fold_of_the_exported_log() -> anyhow::Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    let dir = tempfile::tempdir()?;
    let logs = dir.path();

    let pulse_port = free_port();
    let pulse_listen = format!("127.0.0.1:{pulse_port}");
    let peers = format!("1={pulse_listen}");
    let data_dir = logs.join("pulse-data");
    let mut pulse = spawn(
        "backbeat-pulse",
        logs,
        &[
            "--nats",
            &url,
            "--node-id",
            "1",
            "--peers",
            &peers,
            "--listen",
            &pulse_listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--cluster",
            CLUSTER,
            "--bpm",
            "600",
            "--bar-length",
            BAR,
            "--admin-token",
            "test-token",
            "--heartbeat-ms",
            "50",
            "--election-timeout-ms",
            "300",
        ],
    )?;
    let ingest_port = free_port();
    let ingest_listen = format!("127.0.0.1:{ingest_port}");
    let _ingest = spawn("backbeat-ingest", logs, &["--nats", &url, "--listen", &ingest_listen])?;
    let processor_port = free_port();
    let processor_listen = format!("127.0.0.1:{processor_port}");
    let mut processor = spawn(
        "backbeat-processor",
        logs,
        &[
            "run",
            "--nats",
            &url,
            "--listen",
            &processor_listen,
            "--bar-length",
            BAR,
            "--lateness",
            LATENESS,
        ],
    )?;
    wait_ready("backbeat-pulse", pulse_port).await?;
    wait_ready("backbeat-ingest", ingest_port).await?;
    wait_ready("backbeat-processor", processor_port).await?;

    // 300 agents, 3000 claims at 600 claims/s: about five seconds, six bars.
    let mut sim = spawn(
        "backbeat-agent-sim",
        logs,
        &[
            "--nats",
            &url,
            "--cluster",
            CLUSTER,
            "--bar-length",
            BAR,
            "--agents",
            "300",
            "--rate",
            "600",
            "--claims",
            "3000",
            "--seed",
            "7",
        ],
    )?;
    let status = sim.wait_exit(TIMEOUT)?;
    let sim_log = std::fs::read_to_string(logs.join("backbeat-agent-sim.log")).unwrap_or_default();
    assert!(status.success(), "agent-sim: {status}\n{sim_log}");

    // Let the pulse close the last claimed window, then stop it: the log is final.
    let js = jetstream::new(server.client().await?);
    let mut events = js.get_stream(EVENTS_STREAM).await?;
    let last_claim_seq = events.info().await?.state.last_sequence;
    let beats_after = wait_until_async("beats after the last claim", TIMEOUT, || {
        let events = events.clone();
        async move {
            let last = events.get_last_raw_message_by_subject("backbeat.e2e.beat").await.ok()?;
            (last.sequence > last_claim_seq + 24).then_some(last.sequence)
        }
    })
    .await?;
    pulse.signal(Signal::Term)?;
    pulse.wait_exit(TIMEOUT)?;
    let last_seq = events.info().await?.state.last_sequence;
    assert!(last_seq >= beats_after);

    // Wait until the processor has folded everything.
    wait_until_async("the processor to fold the whole stream", TIMEOUT, || async move {
        let (_, body) = http_get(processor_port, "/api/v1/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status["last_seq"].as_u64()? >= last_seq).then_some(())
    })
    .await?;
    // Its last reports are published once their closing beat is folded; the
    // stream's count settles when the processor has acked them all.
    processor.signal(Signal::Term)?;
    processor.wait_exit(TIMEOUT)?;

    let mut bars = js.get_stream(BARS_STREAM).await?;
    let stored = bars.info().await?.state.clone();
    let mut live = String::new();
    for seq in stored.first_sequence..=stored.last_sequence {
        let message = bars.get_raw_message(seq).await?;
        assert_eq!(message.subject.as_str(), "backbeat.e2e.bar");
        live.push_str(std::str::from_utf8(&message.payload)?);
        live.push('\n');
    }

    let processor_bin = bin_path("backbeat-processor");
    let export_path = logs.join("events.jsonl");
    run_ok(
        Command::new(&processor_bin)
            .args(["export", "--nats", &url, "--cluster", CLUSTER, "--out"])
            .arg(&export_path)
            .output(),
        "export",
    )?;
    let folded = run_ok(
        Command::new(&processor_bin)
            .args(["fold", "--bar-length", BAR, "--lateness", LATENESS, "--log"])
            .arg(&export_path)
            .output(),
        "fold",
    )?;
    assert_eq!(
        folded, live,
        "the offline fold of the exported log differs from the live reports"
    );

    // And the reports are about the fleet: windows in order, claims accepted.
    let reports: Vec<BarReport> = live.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(reports.len() >= 5, "only {} reports", reports.len());
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(
            report.window_index,
            reports[0].window_index + i as u64,
            "gapless, in order"
        );
    }
    let accepted: u64 = reports.iter().map(|r| r.claims_accepted + r.claims_late).sum();
    assert_eq!(accepted, 3000, "every claim the sim sent is in a closed window");
    assert!(reports.iter().any(|r| r.agents_reporting > 100), "the fleet reports");
    Ok(())
}
