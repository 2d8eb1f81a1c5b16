//! The soak (issue 22, item 8). 10,000 simulated agents (`backbeat-agent-sim`
//! over the gateway's NATS intake) for a long while through the whole stack:
//! nats-server, a pulse node, the gateway, the processor and the query
//! service. Measured: every process's RSS at the start of the load, in its
//! middle and at its end; the processor's consumer lag (messages of
//! `BACKBEAT_EVENTS` not yet folded) sampled all along. Checked: every
//! simulated claim acknowledged (none refused, none given up), the lag stays
//! bounded and drains once the load stops, no service's log has an ERROR
//! line, the services' RSS does not keep growing from the middle to the end,
//! and the query service answers SQL over the reports at the end.
//!
//! Its length is `BACKBEAT_SOAK_SECS` (`deploy/faults.sh --soak`, or
//! `--long`: 1800 s, the issue's 30 minutes); without it, the CI mode, a
//! short run of [`CI_SECS`] that shows the soak itself works on every change.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_tests::{bin_path, free_port, http_get, http_post, wait_until_async, ChildGuard, FaultRecord, NatsServer};

use super::last_event_seq;
use crate::stack::{spawn, wait_ready, Services, ServicesOptions, BAR, CLUSTER};

/// The environment variable giving the soak's length in seconds.
pub const SOAK_SECS_ENV: &str = "BACKBEAT_SOAK_SECS";
/// The CI mode's length.
const CI_SECS: u64 = 20;
/// The simulated fleet.
const AGENTS: &str = "10000";
/// The environment variable giving the fleet's claims per second (all agents together).
pub const SOAK_RATE_ENV: &str = "BACKBEAT_SOAK_RATE";
/// The default rate: each agent claims about every 20 s, as agents that
/// report once every few bars (bars of 8 beats at 600 BPM here) would.
const DEFAULT_RATE: &str = "500";
/// How often the processor's lag is sampled.
const LAG_EVERY: Duration = Duration::from_secs(2);
/// The most events the processor may trail the stream by (30 s of the default rate).
const LAG_MAX: u64 = 15_000;
/// From the middle to the end, a service's RSS may grow by this factor plus
/// [`RSS_SLACK_KB`] (allocator arenas, caches filling) and still count as flat.
const RSS_GROWTH_MAX: f64 = 1.5;
const RSS_SLACK_KB: u64 = 32 * 1024;

/// The soak's length: `BACKBEAT_SOAK_SECS`, else the CI mode's.
fn soak_length() -> anyhow::Result<Duration> {
    match std::env::var(SOAK_SECS_ENV) {
        Ok(secs) => Ok(Duration::from_secs(secs.parse().map_err(|_| {
            anyhow::anyhow!("{SOAK_SECS_ENV}={secs:?} is not a number of seconds")
        })?)),
        Err(_) => Ok(Duration::from_secs(CI_SECS)),
    }
}

/// The resident set of `pid` in kB (`VmRSS` of `/proc/{pid}/status`).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The lines of `log` that tracing wrote at level ERROR (`{time} ERROR {target}: …`).
fn error_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("ERROR"))
        .map(str::to_string)
        .collect()
}

/// How far the processor on `port` trails the stream: events after its last folded one.
async fn processor_lag(js: &jetstream::Context, port: u16) -> Option<u64> {
    let stream_last = last_event_seq(js, &[CLUSTER]).await.ok()?;
    let (_, body) = http_get(port, "/api/v1/status")?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(stream_last.saturating_sub(status["last_seq"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agents_through_the_whole_stack_keep_memory_flat_and_lag_bounded() -> anyhow::Result<()> {
    let length = soak_length()?;
    let rate = std::env::var(SOAK_RATE_ENV).unwrap_or_else(|_| DEFAULT_RATE.to_string());
    let server = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let logs = dir.path();
    let mut services = Services::start(&server.url(), &ServicesOptions::default(), logs).await?;
    let query_port = free_port();
    let mut query = spawn(
        "backbeat-query",
        logs,
        &[
            "serve",
            "--nats",
            &server.url(),
            "--listen",
            &format!("127.0.0.1:{query_port}"),
            "--data-dir",
            &logs.join("query-data").to_string_lossy(),
            "--bar-length",
            BAR,
        ],
    )?;
    wait_ready("backbeat-query", query_port).await?;
    let js = jetstream::new(server.client().await?);

    let summary_path = logs.join("agent-sim.json");
    let mut sim = ChildGuard::spawn(
        "backbeat-agent-sim",
        Command::new(bin_path("backbeat-agent-sim"))
            .args(["--nats", &server.url(), "--cluster", CLUSTER, "--bar-length", BAR])
            .args(["--agents", AGENTS, "--rate", &rate, "--seed", "22"])
            .args(["--duration-secs", &length.as_secs().to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&summary_path)?)
            .stderr(std::fs::File::create(logs.join("backbeat-agent-sim.log"))?),
    )?;

    // Every process whose memory is watched, by name.
    let watched: Vec<(String, u32)> = services
        .pulses
        .iter()
        .map(|(pulse, _)| ("backbeat-pulse".to_string(), pulse.pid()))
        .chain([
            ("backbeat-ingest".to_string(), services.ingest.pid()),
            ("backbeat-processor".to_string(), services.processor.pid()),
            ("backbeat-query".to_string(), query.pid()),
            ("nats-server".to_string(), server.pid()),
        ])
        .collect();
    let sample_rss = || -> Vec<Option<u64>> { watched.iter().map(|(_, pid)| rss_kb(*pid)).collect() };

    // Start, middle and end of the load; the lag sampled all along. The soak's
    // length is the fault here, so the test sleeps through it.
    let started = Instant::now();
    let mut rss = vec![sample_rss()];
    let mut lag_max = 0u64;
    let mut lag_samples = 0u64;
    let marks = [length / 2, length.saturating_sub(LAG_EVERY)];
    for mark in marks {
        while started.elapsed() < mark {
            tokio::time::sleep(LAG_EVERY.min(mark.saturating_sub(started.elapsed()))).await;
            if let Some(lag) = processor_lag(&js, services.processor_port).await {
                lag_max = lag_max.max(lag);
                lag_samples += 1;
            }
        }
        rss.push(sample_rss());
    }

    // The fleet stops by itself; then the processor drains what is left.
    let sim_status = tokio::task::block_in_place(|| sim.wait_exit(Duration::from_secs(300)))?;
    let summary: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&summary_path)?.trim()).unwrap_or_default();
    let stopped = Instant::now();
    wait_until_async(
        "the processor to fold every event",
        Duration::from_secs(300),
        || async { (processor_lag(&js, services.processor_port).await? == 0).then_some(()) },
    )
    .await?;
    let drained = stopped.elapsed();
    let sql = http_post(
        query_port,
        "/api/v1/sql",
        "application/json",
        r#"{"sql":"SELECT count(*) AS reports FROM bar_reports"}"#,
    );
    let reports = sql
        .as_ref()
        .filter(|(code, _)| *code == 200)
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .map(|v| v.to_string());

    let mut errors = Vec::new();
    for entry in std::fs::read_dir(logs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            for line in error_lines(&path) {
                errors.push(format!(
                    "{}: {line}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    let mut carried_on = vec![
        ("backbeat-ingest", services.ingest.is_running()),
        ("backbeat-processor", services.processor.is_running()),
        ("backbeat-query", query.is_running()),
    ];
    for (pulse, _) in &mut services.pulses {
        carried_on.push(("backbeat-pulse", pulse.is_running()));
    }

    let mb = |kb: Option<u64>| kb.map_or("–".to_string(), |kb| format!("{:.0}", kb as f64 / 1024.0));
    let table: Vec<String> = watched
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{name} {}/{}/{}", mb(rss[0][i]), mb(rss[1][i]), mb(rss[2][i])))
        .collect();
    let growing: Vec<&str> = watched
        .iter()
        .enumerate()
        .filter(|(i, _)| match (rss[1][*i], rss[2][*i]) {
            (Some(middle), Some(end)) => end as f64 > middle as f64 * RSS_GROWTH_MAX + RSS_SLACK_KB as f64,
            _ => true,
        })
        .map(|(_, (name, _))| name.as_str())
        .collect();
    let accepted = summary["accepted"].as_u64().unwrap_or(0);
    FaultRecord {
        fault: format!(
            "soak: {AGENTS} simulated agents at {rate} claims/s for {} s",
            length.as_secs()
        ),
        injected: 1,
        checked: "RSS flat (middle→end), processor lag bounded and drained, no ERROR in any log, SQL answers".into(),
        acked_lost: None,
        duplicated: None,
        differing_reports: None,
        longest_unavailable_ms: None,
        reference_unavailable_ms: None,
        notes: format!(
            "RSS MB start/middle/end: {}; processor lag max {lag_max} events ({lag_samples} samples), drained \
             {} ms after the load; agent-sim: {accepted} accepted, sent {}, retries {}, gave up {}, refused {}; \
             {} ERROR lines; SQL: {}",
            table.join(", "),
            drained.as_millis(),
            summary["sent"],
            summary["retries"],
            summary["gave_up"],
            summary["rejected"],
            errors.len(),
            reports.as_deref().unwrap_or("no answer"),
        ),
    }
    .record()?;

    assert!(
        sim_status.success(),
        "the agent simulator failed ({sim_status}): {summary}; its log: {}",
        std::fs::read_to_string(logs.join("backbeat-agent-sim.log")).unwrap_or_default()
    );
    assert!(accepted > 0, "no claim accepted: {summary}");
    assert!(
        carried_on.iter().all(|(_, up)| *up),
        "services that exited: {carried_on:?}"
    );
    assert!(errors.is_empty(), "ERROR lines in the logs:\n{}", errors.join("\n"));
    assert!(
        lag_max <= LAG_MAX,
        "the processor trailed the stream by {lag_max} events"
    );
    assert!(
        growing.is_empty(),
        "RSS kept growing from the middle to the end: {growing:?} ({table:?})"
    );
    assert!(reports.is_some(), "the query service did not answer SQL: {sql:?}");
    Ok(())
}
