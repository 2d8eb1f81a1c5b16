//! The whole pipeline on real processes: a pulse node emits beats, simulated
//! agents send claims through the gateway, the processor folds the stream
//! live. Then the log is exported and folded offline: the reports must be the
//! very bytes the live run published (replay = live, DESIGN principle 1).

use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::BarReport;
use backbeat_tests::{wait_until_async, Signal};

use crate::stack::{messages_on, spawn, Stack, BAR, CLUSTER, TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reports_equal_the_fold_of_the_exported_log() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let url = stack.server.url();
    let logs = stack.logs();
    let logs = logs.as_path();

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
    let js = jetstream::new(stack.server.client().await?);
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
    stack.pulse.signal(Signal::Term)?;
    stack.pulse.wait_exit(TIMEOUT)?;
    let last_seq = events.info().await?.state.last_sequence;
    assert!(last_seq >= beats_after);

    stack.stop_processor_after(last_seq).await?;

    let mut live = String::new();
    for (_, payload) in messages_on(&js, BARS_STREAM, "backbeat.e2e.bar").await? {
        live.push_str(std::str::from_utf8(&payload)?);
        live.push('\n');
    }
    assert_eq!(
        js.get_stream(BARS_STREAM).await?.info().await?.state.messages as usize,
        live.lines().count(),
        "every message in BACKBEAT_BARS is a report of the cluster"
    );
    let folded = stack.fold_of_the_exported_log()?;
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
