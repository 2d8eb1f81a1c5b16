//! After a live `backbeat-processor run` over every golden scenario and
//! conformance log, `bar_reports` equals the BarReports published to
//! `BACKBEAT_BARS` field by field, and `claims`, `beats` and `rejects` hold
//! every valid message of their streams.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use async_nats::jetstream::{self, consumer, message::PublishMessage};
use backbeat_schemas::names::{beat_msg_id, claim_msg_id, parse_subject, SubjectKind};
use backbeat_schemas::LogEntry;
use backbeat_tests::{bin_path, wait_until_async, workspace_root, ChildGuard, NatsServer};
use futures::StreamExt as _;

use crate::support::{ensure_streams, QueryServer, TIMEOUT};

/// Every golden scenario and conformance log: (name, log file, fold flags).
fn scenarios() -> Vec<(String, PathBuf, String)> {
    let root = workspace_root();
    let mut out = Vec::new();
    let mut golden: Vec<PathBuf> = std::fs::read_dir(root.join("tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    golden.sort();
    for dir in golden {
        let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        out.push((format!("golden/{name}"), dir.join("events.jsonl"), args));
    }
    let mut logs: Vec<PathBuf> = std::fs::read_dir(root.join("tests/conformance"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".log.jsonl"))
        .collect();
    logs.sort();
    for log in logs {
        let stem = log.to_string_lossy().trim_end_matches(".log.jsonl").to_string();
        let args = std::fs::read_to_string(format!("{stem}.args")).unwrap_or_default();
        let name = Path::new(&stem).file_name().unwrap().to_string_lossy().into_owned();
        out.push((format!("conformance/{name}"), log, args));
    }
    assert!(out.len() >= 4, "scenarios found: {out:?}");
    out
}

/// The SPEC §8 message id of an event (as the pulse and the gateway set it).
fn message_id(subject: &str, payload: &[u8]) -> Option<String> {
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

/// Every message of a stream: (seq, subject, payload).
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<(u64, String, Vec<u8>)> {
    let stream = js.get_stream(name).await.unwrap();
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    if consumer.info().await.unwrap().num_pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let info = message.info().unwrap();
        let pending = info.pending;
        out.push((
            info.stream_sequence,
            message.subject.to_string(),
            message.payload.to_vec(),
        ));
        if pending == 0 {
            break;
        }
    }
    out
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.map_or(0, |i| i.state.messages)
}

/// The fold of `log` by the processor's `fold --log` (how many reports `run` must publish).
fn offline_report_count(log: &Path, args: &[&str]) -> usize {
    let output = Command::new(bin_path("backbeat-processor"))
        .args(["fold", "--log", log.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running backbeat-processor fold");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().count()
}

/// The SPEC fields compared between a published report and its row.
const REPORT_FIELDS: [&str; 20] = [
    "window_id",
    "cluster_id",
    "window_index",
    "bar_length",
    "from_beat",
    "to_beat",
    "agents_reporting",
    "on_time_reviews",
    "help_promises_fulfilled",
    "secret_rotations_ok",
    "tempo_drift_ms",
    "issues",
    "beats_observed",
    "claims_accepted",
    "claims_late",
    "claims_rejected",
    "tempo_bpm",
    "seq_first",
    "seq_last",
    "stream_seq",
];

#[tokio::test]
async fn after_a_live_run_the_tables_are_the_streams() {
    for (name, log, args_text) in scenarios() {
        eprintln!("scenario {name}");
        let args: Vec<&str> = args_text.split_whitespace().collect();
        let bar_length = args
            .iter()
            .position(|a| *a == "--bar-length")
            .map_or("120", |i| args[i + 1]);
        let entries: Vec<LogEntry> = backbeat_schemas::parse_log(&std::fs::read_to_string(&log).unwrap()).unwrap();

        let nats = NatsServer::start().expect("nats-server");
        let js = jetstream::new(nats.client().await.unwrap());
        ensure_streams(&js).await;
        // The events stream takes beats and claims; the scenario's other
        // subjects are not stored anywhere (as live).
        for entry in &entries {
            let Some((_, SubjectKind::Beat | SubjectKind::Claim)) = parse_subject(&entry.subject) else {
                continue;
            };
            let mut message = PublishMessage::build().payload(entry.payload.clone().into());
            if let Some(id) = message_id(&entry.subject, &entry.payload) {
                message = message.message_id(id);
            }
            js.send_publish(entry.subject.clone(), message)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Dead letters, as the gateway writes them.
        for index in 0..3 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Backbeat-Reason", "invalid_json");
            js.publish_with_headers("backbeat.x.reject", headers, format!("bad {index}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let events = read_stream(&js, "BACKBEAT_EVENTS").await;

        // What `run` must publish: the offline fold of the stored events.
        let dir = tempfile::tempdir().unwrap();
        let stored_log = dir.path().join("stored.jsonl");
        let text: String = events
            .iter()
            .map(|(seq, subject, payload)| backbeat_schemas::format_line(*seq, subject, payload) + "\n")
            .collect();
        std::fs::write(&stored_log, text).unwrap();
        let expected_reports = offline_report_count(&stored_log, &args) as u64;

        let processor_log = std::fs::File::create(dir.path().join("processor.log")).unwrap();
        let _processor = ChildGuard::spawn(
            "backbeat-processor run",
            Command::new(bin_path("backbeat-processor"))
                .args(["run", "--nats", &nats.url(), "--listen", "127.0.0.1:0"])
                .args(&args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(processor_log),
        )
        .unwrap();
        let published = wait_until_async(&format!("{name}: {expected_reports} reports"), TIMEOUT, || async {
            (stream_messages(&js, "BACKBEAT_BARS").await >= expected_reports).then_some(())
        })
        .await;
        if let Err(e) = published {
            let log = std::fs::read_to_string(dir.path().join("processor.log")).unwrap_or_default();
            panic!("{e}\n{log}");
        }

        // Sealing often: the reports below are read back from the Parquet archive.
        let args = ["--bar-length", bar_length, "--seal-interval-ms", "50"];
        let server = QueryServer::start(&nats.url(), dir.path(), &args).await;
        let bars = read_stream(&js, "BACKBEAT_BARS").await;
        assert_eq!(bars.len() as u64, expected_reports, "{name}");
        server.wait_read("BACKBEAT_BARS", bars.last().map_or(0, |b| b.0)).await;
        server
            .wait_read("BACKBEAT_EVENTS", events.last().map_or(0, |e| e.0))
            .await;
        let last_bar = bars.last().map_or(0, |b| b.0);
        let sealed = wait_until_async(&format!("{name}: every report archived"), TIMEOUT, || async {
            let status = server.get("/api/v1/status").await?.json();
            (status["archive"]["positions"]["BACKBEAT_BARS"].as_u64()? >= last_bar).then_some(())
        })
        .await;
        if let Err(e) = sealed {
            panic!("{e}\n{}", server.log_tail());
        }

        // bar_reports = the published reports, field by field.
        let columns = REPORT_FIELDS.join(", ");
        let rows = server
            .rows(&format!("SELECT {columns} FROM bar_reports ORDER BY stream_seq"))
            .await;
        assert_eq!(rows.len(), bars.len(), "{name}");
        for ((seq, _, payload), row) in bars.iter().zip(&rows) {
            let published: serde_json::Value = serde_json::from_slice(payload).unwrap();
            for (field, value) in REPORT_FIELDS.iter().zip(row) {
                let want = if *field == "stream_seq" {
                    &serde_json::json!(seq)
                } else {
                    &published[field]
                };
                assert_eq!(value, want, "{name}: report at seq {seq}, field {field}");
            }
        }
        // window_start/end: the HLC of the window's first and last beat stored.
        let spans = server
            .rows(
                "WITH f AS (SELECT window_id, min(beat_index) AS lo, max(beat_index) AS hi FROM beats GROUP BY window_id), \
                 spans AS (SELECT f.window_id, a.hlc_time AS first_time, b.hlc_time AS last_time FROM f \
                   JOIN beats a ON a.window_id = f.window_id AND a.beat_index = f.lo \
                   JOIN beats b ON b.window_id = f.window_id AND b.beat_index = f.hi) \
                 SELECT count(*) FROM bar_reports r LEFT JOIN spans ON r.window_id = spans.window_id \
                 WHERE (r.window_start IS DISTINCT FROM spans.first_time) OR (r.window_end IS DISTINCT FROM spans.last_time)",
            )
            .await;
        assert_eq!(spans[0][0], 0, "{name}: window_start/window_end");

        // claims and beats: every valid message of the events stream; rejects: every dead letter.
        let bar: u64 = bar_length.parse().unwrap();
        let valid = |kind: SubjectKind| {
            events
                .iter()
                .filter(|(_, subject, payload)| match parse_subject(subject) {
                    Some((cluster, k)) if k == kind => match kind {
                        SubjectKind::Beat => backbeat_schemas::validate_beat(payload, cluster, bar).is_ok(),
                        _ => backbeat_schemas::validate_claim(payload).is_ok(),
                    },
                    _ => false,
                })
                .count() as u64
        };
        assert_eq!(
            server.count("claims").await,
            valid(SubjectKind::Claim),
            "{name}: claims"
        );
        assert_eq!(server.count("beats").await, valid(SubjectKind::Beat), "{name}: beats");
        assert_eq!(server.count("rejects").await, 3, "{name}: rejects");
        let invalid = events.len() as u64 - valid(SubjectKind::Claim) - valid(SubjectKind::Beat);
        let foreign = server
            .metric("backbeat_query_foreign_events_total{kind=\"beat\"}")
            .await
            .unwrap_or(0.0)
            + server
                .metric("backbeat_query_foreign_events_total{kind=\"claim\"}")
                .await
                .unwrap_or(0.0);
        assert_eq!(foreign as u64, invalid, "{name}: foreign events counted");
    }
}
