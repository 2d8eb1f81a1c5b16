//! What the live tests share: a `backbeat-processor run` child process with
//! its admin HTTP, publishing SPEC §7 log entries to `BACKBEAT_EVENTS` with
//! their SPEC §8 message ids, and reading `BACKBEAT_BARS` back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use backbeat_schemas::names::{beat_msg_id, claim_msg_id, parse_subject, SubjectKind, BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::LogEntry;
pub use backbeat_tests::http_get;
use backbeat_tests::{wait_until, wait_until_async, ChildGuard, Signal};
use futures::StreamExt as _;

/// How long a live test waits for anything (a debug build on a loaded 2-core machine).
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// `run` flags that put off every checkpoint until the process is asked to stop.
pub const NO_CHECKPOINT_UNTIL_STOP: [&str; 4] = [
    "--checkpoint-interval-ms",
    "3600000",
    "--checkpoint-min-interval-ms",
    "3600000",
];

/// The processor binary built by this `cargo test`.
pub fn processor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backbeat-processor"))
}

/// A `backbeat-processor run` child (SIGKILL on drop), its stderr in a file.
pub struct Processor {
    child: ChildGuard,
    pub port: u16,
    log: PathBuf,
}

impl Processor {
    /// Starts `run` against `nats_url` with the fold flags in `args` (and any
    /// other `run` flags). It binds its admin HTTP on port 0 and the port is
    /// read from its log, so no other process can take the port in between.
    /// Port 0 when it exited before listening (its log tells why).
    pub fn start(nats_url: &str, log_dir: &Path, args: &[&str]) -> Processor {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let number = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = log_dir.join(format!("processor-{}-{number}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("creating the processor's log file");
        let mut command = Command::new(processor_bin());
        command
            .args(["run", "--nats", nats_url, "--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("BACKBEAT_TEST_PROCESSOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child =
            ChildGuard::spawn("backbeat-processor run", &mut command).expect("starting backbeat-processor run");
        let port = wait_until("the processor's admin HTTP address in its log", LIVE_TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match listening_port(&text) {
                Some(port) => Some(port),
                None => (!child.is_running()).then_some(0),
            }
        })
        .expect("the processor listens or exits");
        Processor { child, port, log }
    }

    /// `GET path` on the admin HTTP: `(status, body)`, or None while it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let what = format!("backbeat-processor on port {} to be ready", self.port);
        let port = self.port;
        let result = wait_until_async(&what, LIVE_TIMEOUT, || async move {
            http_get(port, "/ready").and_then(|(code, _)| (code == 200).then_some(()))
        })
        .await;
        if let Err(e) = result {
            panic!("{e}\n{}", self.log_tail());
        }
        assert!(self.child.is_running(), "processor exited\n{}", self.log_tail());
    }

    /// One metric's value from `/metrics` (`name` with its labels, as rendered).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        metric_value(&text, name)
    }

    /// Waits until the processor has folded every event up to `seq`.
    pub async fn wait_folded(&self, seq: u64) {
        let port = self.port;
        let result = wait_until_async(
            &format!("the processor to fold through seq {seq}"),
            LIVE_TIMEOUT,
            || async move { (folded_seq(port)? >= seq).then_some(()) },
        )
        .await;
        if let Err(e) = result {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    pub fn signal(&self, signal: Signal) {
        self.child.signal(signal).expect("signalling the processor");
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match self.child.wait_exit(timeout) {
            Ok(status) => status,
            Err(e) => panic!("{e}\n{}", self.log_tail()),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The last lines of the processor's log, for failure messages.
    /// The whole log (a backtrace, with RUST_BACKTRACE=1, can push the error out of the tail).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- processor log ({}) ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

/// The last sequence a processor has folded: the metric (updated on every
/// event) or the status (which also knows the checkpoint it resumed from).
pub fn folded_seq(port: u16) -> Option<u64> {
    let (_, text) = http_get(port, "/metrics")?;
    let metric = metric_value(&text, "backbeat_processor_last_seq")? as u64;
    let (_, status) = http_get(port, "/api/v1/status")?;
    let status: serde_json::Value = serde_json::from_str(&status).ok()?;
    Some(metric.max(status["last_seq"].as_u64()?))
}

/// The port of the processor's "(admin) HTTP listening addr=127.0.0.1:PORT" log line.
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("HTTP listening"))?;
    let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The value of the sample `name` (with labels exactly as Prometheus renders them).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The SPEC §8 message id of a stored event: beats `{cluster}:{index}`,
/// claims the digest of their identity; None for a payload that has none
/// (invalid input, which the gateway would never have stored).
pub fn message_id(subject: &str, payload: &[u8]) -> Option<String> {
    let (cluster, kind) = parse_subject(subject)?;
    let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let beat_index = doc.get("beat_index")?.as_u64()?;
    match kind {
        SubjectKind::Beat => Some(beat_msg_id(cluster, beat_index)),
        SubjectKind::Claim => {
            let agent_id = doc.get("agent_id")?.as_str()?;
            let hlc = doc.get("hlc")?.as_str()?;
            let task_id = doc.get("task_id").and_then(|t| t.as_str()).filter(|t| !t.is_empty());
            Some(claim_msg_id(cluster, agent_id, task_id, beat_index, hlc))
        }
        _ => None,
    }
}

/// Publishes `entries` in order (their subjects and payloads; the stream
/// assigns the sequences) with SPEC §8 message ids, acks awaited in batches.
/// Returns the stream sequence of the last one.
pub async fn publish_entries(js: &jetstream::Context, entries: &[LogEntry]) -> anyhow::Result<u64> {
    let mut last = 0;
    for batch in entries.chunks(256) {
        let mut acks = Vec::with_capacity(batch.len());
        for entry in batch {
            let mut message = PublishMessage::build().payload(entry.payload.clone().into());
            if let Some(id) = message_id(&entry.subject, &entry.payload) {
                message = message.message_id(id);
            }
            acks.push(
                js.send_publish(entry.subject.clone(), message)
                    .await
                    .with_context(|| format!("publishing to {}", entry.subject))?,
            );
        }
        for ack in acks {
            last = ack.await.context("event not acknowledged")?.sequence;
        }
    }
    Ok(last)
}

/// Every message of `stream_name` in stream order: `(seq, subject, payload)`.
pub async fn read_stream(js: &jetstream::Context, stream_name: &str) -> anyhow::Result<Vec<(u64, String, Vec<u8>)>> {
    let stream = js.get_stream(stream_name).await?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut out = Vec::new();
    if consumer.info().await?.num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        out.push((seq, message.subject.to_string(), message.payload.to_vec()));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// The reports stored in `BACKBEAT_BARS`, as one JSON Lines text per cluster
/// subject, in stream order.
pub async fn stored_reports(js: &jetstream::Context) -> Vec<(String, String)> {
    read_stream(js, BARS_STREAM)
        .await
        .expect("reading BACKBEAT_BARS")
        .into_iter()
        .map(|(_, subject, payload)| (subject, String::from_utf8(payload).expect("reports are UTF-8")))
        .collect()
}

/// The number of messages in a stream (0 when it does not exist yet).
pub async fn stream_messages(js: &jetstream::Context, stream_name: &str) -> u64 {
    match js.get_stream(stream_name).await {
        Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// Waits until `BACKBEAT_BARS` holds at least `count` reports.
pub async fn wait_for_reports(js: &jetstream::Context, count: u64, processor: &Processor) {
    let result = wait_until_async(
        &format!("{count} reports in BACKBEAT_BARS"),
        LIVE_TIMEOUT,
        || async move { (stream_messages(js, BARS_STREAM).await >= count).then_some(()) },
    )
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", processor.log_tail());
    }
}

/// Creates the SPEC §1 streams as every service would.
pub async fn ensure_streams(js: &jetstream::Context) {
    backbeat_service::streams::ensure_all_streams(js, backbeat_service::streams::StreamOptions::default())
        .await
        .expect("creating the streams");
}

/// The stored events as a log (what `export` should write).
pub async fn stored_events(js: &jetstream::Context) -> Vec<LogEntry> {
    read_stream(js, EVENTS_STREAM)
        .await
        .expect("reading BACKBEAT_EVENTS")
        .into_iter()
        .map(|(seq, subject, payload)| LogEntry { seq, subject, payload })
        .collect()
}

/// Runs the processor binary with `args` to completion; its stdout, or a panic with its stderr.
pub fn run_tool(args: &[&str]) -> String {
    let output = Command::new(processor_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running backbeat-processor");
    assert!(
        output.status.success(),
        "backbeat-processor {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("output is UTF-8")
}

/// HLC physical milliseconds of beat `index` at 120 bpm from a fixed epoch.
pub fn beat_ms(index: u64) -> u64 {
    1_700_000_000_000 + index * 500
}

/// A valid BeatFrame of `cluster` (bar length `bar_length`, 120 bpm).
pub fn beat_payload(cluster: &str, index: u64, bar_length: u64) -> Vec<u8> {
    use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{:x}:0000:0001","deadline_at":"2023-11-14T22:13:20.500Z","tempo_bpm":120,"window_id":"{}"}}"#,
        is_downbeat(index, bar_length),
        phase_of(index, bar_length).as_str(),
        beat_ms(index),
        window_id(cluster, bar_length, window_of(index, bar_length))
    )
    .into_bytes()
}

/// A valid StatusClaim for `beat`, sent at beat `sent` (its HLC physical
/// time); `logical` tells claims sent at one beat apart, so that every claim
/// has its own HLC and so its own message id.
pub fn claim_payload(
    agent: &str,
    task: Option<&str>,
    beat: u64,
    state: &str,
    beats_left: u32,
    (sent, logical): (u64, u16),
) -> Vec<u8> {
    let task = task.map(|t| format!(r#""task_id":"{t}","#)).unwrap_or_default();
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}",{task}"beat_index":{beat},"state":"{state}","beats_left":{beats_left},"progress":0.5,"hlc":"{:x}:{logical:04x}:00a1"}}"#,
        beat_ms(sent)
    )
    .into_bytes()
}

/// A log entry (its `seq` is where the stream will store it when published in order).
pub fn entry(seq: u64, subject: &str, payload: Vec<u8>) -> LogEntry {
    LogEntry {
        seq,
        subject: subject.to_string(),
        payload,
    }
}

/// The reports of folding `entries` uninterruptedly, one JSON line each.
pub fn reference_reports(config: backbeat_processor::FoldConfig, entries: &[LogEntry]) -> Vec<String> {
    backbeat_processor::fold_all(
        config,
        entries
            .iter()
            .map(|e| (e.seq, e.subject.as_str(), e.payload.as_slice())),
    )
    .iter()
    .map(|r| r.to_json())
    .collect()
}
