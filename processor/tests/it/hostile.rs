//! Issue 16: no client can stall the processor or forge its history. Real
//! nats-server, real `backbeat-processor`: foreign messages published
//! straight to the bar and beat subjects, a bars stream that refuses
//! writes, and each cap.

use std::collections::BTreeSet;

use async_nats::jetstream::{self, message::PublishMessage};
use backbeat_schemas::names::BARS_STREAM;
use backbeat_schemas::window::window_id;
use backbeat_schemas::LogEntry;
use backbeat_tests::{wait_until_async, NatsServer, Signal};

use crate::live_support::{
    beat_payload, claim_payload, ensure_streams, entry, http_get, publish_entries, read_stream, run_tool,
    stream_messages, wait_for_reports, Processor, LIVE_TIMEOUT, NO_CHECKPOINT_UNTIL_STOP,
};
use crate::support::{assert_same_lines, read_log};

const L: u64 = 4;
const CLUSTER: &str = "h";
const BEAT: &str = "backbeat.h.beat";
const BAR: &str = "backbeat.h.bar";

/// Beats `from ..= to` of cluster `h`, each with a claim of agent `a1` on task `t`.
fn events(from: u64, to: u64) -> Vec<LogEntry> {
    (from..=to)
        .flat_map(|beat| {
            [
                entry(0, BEAT, beat_payload(CLUSTER, beat, L)),
                entry(
                    0,
                    "backbeat.h.claim",
                    claim_payload("a1", Some("t"), beat, "executing", 6, (beat, 0)),
                ),
            ]
        })
        .collect()
}

/// Publishes a raw message (as a hostile client would); its stream sequence.
async fn publish_raw(js: &jetstream::Context, subject: &str, payload: Vec<u8>, message_id: Option<&str>) -> u64 {
    let mut message = PublishMessage::build().payload(payload.into());
    if let Some(id) = message_id {
        message = message.message_id(id);
    }
    js.send_publish(subject.to_string(), message)
        .await
        .expect("publishing")
        .await
        .expect("stored")
        .sequence
}

/// A report of window `window` of `h` that looks like the processor's and is not.
fn forged_report(window: u64, agents: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"backbeat.barreport.v1","window_id":"{}","from_beat":{},"to_beat":{},"agents_reporting":{agents},"on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[],"cluster_id":"{CLUSTER}","window_index":{window},"bar_length":{L},"beats_observed":{L},"claims_accepted":0,"claims_late":0,"claims_rejected":0,"tempo_bpm":120,"seq_first":0,"seq_last":0}}"#,
        window_id(CLUSTER, L, window),
        window * L,
        window * L + L - 1
    )
    .into_bytes()
}

/// The reports `fold --log` gives for an `export` of cluster `h`, one a line.
fn fold_of_export(url: &str, work: &std::path::Path, fold_args: &[&str]) -> String {
    let log = work.join("exported.jsonl");
    let log_arg = log.to_str().unwrap();
    let mut export = vec!["export", "--nats", url, "--cluster", CLUSTER, "--out", log_arg];
    export.extend(fold_args);
    run_tool(&export);
    assert!(!read_log(&log).is_empty());
    let mut fold = vec!["fold", "--log", log_arg];
    fold.extend(fold_args);
    run_tool(&fold)
}

/// The messages of `BACKBEAT_BARS` not in `forged` (by sequence), one a line, checked
/// to be one report a window, in window order.
async fn processor_reports(js: &jetstream::Context, forged: &BTreeSet<u64>) -> String {
    let mut windows = Vec::new();
    let mut text = String::new();
    for (seq, subject, payload) in read_stream(js, BARS_STREAM).await.unwrap() {
        if forged.contains(&seq) {
            continue;
        }
        assert_eq!(subject, BAR);
        let report: serde_json::Value = serde_json::from_slice(&payload).expect("a report of the processor");
        windows.push(report["window_index"].as_u64().unwrap());
        text.push_str(std::str::from_utf8(&payload).unwrap());
        text.push('\n');
    }
    let expected: Vec<u64> = (0..windows.len() as u64).collect();
    assert_eq!(windows, expected, "each window once, in order");
    text
}

/// `beat` with its `hlc` replaced.
fn with_hlc(beat: Vec<u8>, hlc: &str) -> Vec<u8> {
    let text = String::from_utf8(beat).unwrap();
    let start = text.find(r#""hlc":""#).expect("a beat has an hlc") + r#""hlc":""#.len();
    let end = start + text[start..].find('"').unwrap();
    format!("{}{hlc}{}", &text[..start], &text[end..]).into_bytes()
}

fn metric(processor: &Processor, name: &str) -> f64 {
    processor
        .metric(name)
        .unwrap_or_else(|| panic!("no metric {name}\n{}", processor.log_tail()))
}

fn status(processor: &Processor) -> serde_json::Value {
    serde_json::from_str(&processor.get("/api/v1/status").expect("status").1).unwrap()
}

#[tokio::test]
async fn forged_and_garbage_bar_messages_neither_stall_nor_fool_the_processor() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    // No checkpoint until asked to stop: the restart after kill -9 re-derives
    // every window and must recognise its own reports among forged ones.
    let args = [
        &["--bar-length", "4", "--lease-ttl-ms", "1000"][..],
        &NO_CHECKPOINT_UNTIL_STOP,
    ]
    .concat();
    let mut first = Processor::start(&url, work.path(), &args);
    first.wait_ready().await;
    publish_entries(&js, &events(0, L)).await.unwrap();
    wait_for_reports(&js, 1, &first).await;

    let mut forged = BTreeSet::new();
    forged.insert(publish_raw(&js, BAR, b"not a report".to_vec(), None).await);
    // Far in the future: later windows must not become "already published".
    forged.insert(publish_raw(&js, BAR, forged_report(1_000_000, 1), None).await);
    // The next window, wrong content, holding its message id in the duplicate window.
    let next_id = window_id(CLUSTER, L, 1);
    forged.insert(publish_raw(&js, BAR, forged_report(1, 999), Some(&next_id)).await);
    forged.insert(publish_raw(&js, BAR, forged_report(2, 999), None).await);
    publish_entries(&js, &events(L + 1, 3 * L)).await.unwrap();
    wait_for_reports(&js, 3 + forged.len() as u64, &first).await;
    assert_eq!(metric(&first, "backbeat_processor_foreign_bars_total"), 4.0);
    assert_eq!(metric(&first, "backbeat_processor_report_msg_id_taken_total"), 1.0);
    assert_eq!(status(&first)["foreign_bars"], 4);
    assert_eq!(first.get("/ready").unwrap().0, 200, "{}", first.log_tail());

    // kill -9 without a checkpoint, more garbage, and a restart from the stream's start.
    first.kill();
    forged.insert(publish_raw(&js, BAR, vec![0xff, 0x00], None).await);
    let mut second = Processor::start(&url, work.path(), &args);
    second.wait_ready().await;
    publish_entries(&js, &events(3 * L + 1, 4 * L)).await.unwrap();
    wait_for_reports(&js, 4 + forged.len() as u64, &second).await;
    assert_eq!(metric(&second, "backbeat_processor_reports_skipped_total"), 3.0);
    assert_eq!(metric(&second, "backbeat_processor_reports_published_total"), 1.0);
    assert_eq!(metric(&second, "backbeat_processor_foreign_bars_total"), 5.0);

    // A checkpoint records the bar sequence of its last report; a forged
    // report of the next window stored after it is passed over on resume.
    second.signal(Signal::Term);
    assert!(second.wait_exit(LIVE_TIMEOUT).success(), "{}", second.log_tail());
    forged.insert(publish_raw(&js, BAR, forged_report(4, 999), None).await);
    let mut third = Processor::start(&url, work.path(), &["--bar-length", "4"]);
    third.wait_ready().await;
    publish_entries(&js, &events(4 * L + 1, 5 * L)).await.unwrap();
    wait_for_reports(&js, 5 + forged.len() as u64, &third).await;
    assert_eq!(metric(&third, "backbeat_processor_foreign_bars_total"), 1.0);
    assert_eq!(metric(&third, "backbeat_processor_report_mismatches_total"), 1.0);

    let published = processor_reports(&js, &forged).await;
    assert_same_lines(
        "the processor's reports vs fold of export",
        &published,
        &fold_of_export(&url, work.path(), &["--bar-length", "4"]),
    );
    assert_eq!(stream_messages(&js, BARS_STREAM).await, 5 + forged.len() as u64);
    // replay compares with what is stored, forged messages among it, and agrees.
    let replayed = run_tool(&[
        "replay",
        "--nats",
        &url,
        "--cluster",
        CLUSTER,
        "--from-window",
        "0",
        "--bar-length",
        "4",
    ]);
    assert_same_lines("replay among forged reports", &replayed, &published);
}

#[tokio::test]
async fn forged_beats_are_counted_as_spec_section_5_says() {
    let server = NatsServer::start().expect("nats-server");
    let url = server.url();
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&url, work.path(), &["--bar-length", "4"]);
    processor.wait_ready().await;
    publish_entries(&js, &events(0, 2)).await.unwrap();

    publish_raw(&js, BEAT, b"garbage".to_vec(), None).await;
    // Valid, but far beyond J: beat_jump. Then an index beyond 2^53 - 1.
    let far = with_hlc(beat_payload(CLUSTER, (1 << 53) - 1, L), "18bcfe56800:0000:0001");
    publish_raw(&js, BEAT, far, None).await;
    let overflowing = String::from_utf8(beat_payload(CLUSTER, 3, L))
        .unwrap()
        .replace(r#""beat_index":3"#, &format!(r#""beat_index":{}"#, u64::MAX));
    publish_raw(&js, BEAT, overflowing.into_bytes(), None).await;
    // An HLC at the maximum, and a stale beat, and another cluster's beat.
    let max_hlc = String::from_utf8(beat_payload(CLUSTER, 1, L)).unwrap().replace(
        &format!(r#""hlc":"{:x}:0000:0001""#, crate::live_support::beat_ms(1)),
        r#""hlc":"ffffffffffff:ffff:ffff""#,
    );
    assert!(max_hlc.contains("ffffffffffff"));
    publish_raw(&js, BEAT, max_hlc.into_bytes(), None).await;
    publish_raw(&js, BEAT, beat_payload("other", 3, L), None).await;
    let last = publish_entries(&js, &events(3, 3 * L)).await.unwrap();
    wait_for_reports(&js, 3, &processor).await;
    processor.wait_folded(last).await;
    assert_eq!(processor.get("/ready").unwrap().0, 200, "{}", processor.log_tail());

    let published = processor_reports(&js, &BTreeSet::new()).await;
    assert_same_lines(
        "published vs fold of export",
        &published,
        &fold_of_export(&url, work.path(), &["--bar-length", "4"]),
    );
    let first: serde_json::Value = serde_json::from_str(published.lines().next().unwrap()).unwrap();
    let issues = first["issues"].as_array().unwrap();
    let issue = |code: &str| issues.iter().find(|i| i["code"] == code).cloned();
    let rejected = issue("rejected_beats").expect("rejected beats counted");
    assert_eq!(rejected["count"], 4, "{first}");
    assert_eq!(
        rejected["sample"],
        serde_json::json!([
            "invalid_json",
            "beat_jump",
            "invalid_field:beat_index",
            "cluster_mismatch"
        ])
    );
    assert_eq!(
        issue("stale_beats").expect("stale beat counted")["sample"],
        serde_json::json!(["1"])
    );
}

#[tokio::test]
async fn ready_is_red_while_the_bars_stream_refuses_reports_and_green_after() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    processor.wait_ready().await;
    publish_entries(&js, &events(0, L)).await.unwrap();
    wait_for_reports(&js, 1, &processor).await;

    // The server refuses every further message of BACKBEAT_BARS.
    let mut stream = js.get_stream(BARS_STREAM).await.unwrap();
    let open = stream.info().await.unwrap().config.clone();
    let mut full = open.clone();
    full.max_messages = 1;
    full.discard = jetstream::stream::DiscardPolicy::New;
    js.update_stream(full).await.unwrap();
    publish_entries(&js, &events(L + 1, 2 * L)).await.unwrap();
    let port = processor.port;
    let reason = wait_until_async("/ready to turn red", LIVE_TIMEOUT, || async move {
        http_get(port, "/ready").and_then(|(code, body)| (code == 503).then_some(body))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", processor.log_tail()));
    assert!(reason.contains("cannot publish the report of window 1"), "{reason}");
    assert_eq!(metric(&processor, "backbeat_processor_publish_failing"), 1.0);
    assert!(processor.is_running());

    // Writable again: the report goes out and /ready turns green.
    js.update_stream(open).await.unwrap();
    wait_for_reports(&js, 2, &processor).await;
    processor.wait_ready().await;
    assert_eq!(metric(&processor, "backbeat_processor_publish_failing"), 0.0);
    assert!(metric(&processor, "backbeat_processor_publish_failures_total") >= 1.0);
}

#[tokio::test]
async fn clusters_beyond_max_clusters_are_counted_logged_once_and_not_folded() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(
        &server.url(),
        work.path(),
        &["--bar-length", "1", "--max-clusters", "2"],
    );
    processor.wait_ready().await;
    let mut entries = Vec::new();
    for beat in 0..3 {
        for cluster in ["a", "b", "c", "d"] {
            entries.push(entry(
                0,
                &format!("backbeat.{cluster}.beat"),
                beat_payload(cluster, beat, 1),
            ));
        }
    }
    let last = publish_entries(&js, &entries).await.unwrap();
    wait_for_reports(&js, 4, &processor).await;
    processor.wait_folded(last).await;
    assert_eq!(metric(&processor, "backbeat_processor_cluster_cap_events_total"), 6.0);
    assert_eq!(metric(&processor, "backbeat_processor_clusters"), 2.0);
    assert_eq!(metric(&processor, "backbeat_processor_clusters_refused"), 2.0);
    let status = status(&processor);
    assert_eq!(status["refused_clusters"], serde_json::json!(["c", "d"]), "{status}");
    assert_eq!(status["clusters_held"], 2);
    assert_eq!(status["max_clusters"], 2);
    let logged = processor
        .log()
        .lines()
        .filter(|l| l.contains("beyond --max-clusters"))
        .count();
    assert_eq!(logged, 2, "once per cluster\n{}", processor.log_tail());
    // Only the held clusters are reported (bar length 1: beats 1 and 2 close windows 0 and 1).
    let subjects: BTreeSet<String> = read_stream(&js, BARS_STREAM)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, subject, _)| subject)
        .collect();
    assert_eq!(
        subjects,
        BTreeSet::from(["backbeat.a.bar".to_string(), "backbeat.b.bar".to_string()])
    );
    assert_eq!(processor.get("/ready").unwrap().0, 200);
}

#[tokio::test]
async fn the_fold_caps_count_the_excess_and_are_part_of_the_checkpoint_config() {
    // One agent minting tasks, and more agents than the cap.
    let mut entries = vec![entry(0, BEAT, beat_payload(CLUSTER, 0, L))];
    for task in 0..5 {
        let task_id = format!("t{task}");
        entries.push(entry(
            0,
            "backbeat.h.claim",
            claim_payload("a1", Some(&task_id), 0, "executing", 9, (0, task)),
        ));
    }
    for agent in 2..=4 {
        let agent_id = format!("a{agent}");
        entries.push(entry(
            0,
            "backbeat.h.claim",
            claim_payload(&agent_id, None, 0, "idle", 0, (0, 10 + agent as u16)),
        ));
    }
    entries.push(entry(0, BEAT, beat_payload(CLUSTER, L, L)));
    let caps = [
        "--bar-length",
        "4",
        "--max-tasks-per-agent",
        "2",
        "--max-agents-per-cluster",
        "3",
    ];

    // The binary's fold: the excess is counted under SPEC §5 reasons.
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("caps.jsonl");
    let numbered: Vec<LogEntry> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| LogEntry {
            seq: i as u64 + 1,
            ..e.clone()
        })
        .collect();
    let text: String = numbered
        .iter()
        .map(|e| backbeat_schemas::format_line(e.seq, &e.subject, &e.payload) + "\n")
        .collect();
    std::fs::write(&log, text).unwrap();
    let log_arg = log.to_str().unwrap();
    let capped = run_tool(&[&["fold", "--log", log_arg][..], &caps].concat());
    let report: serde_json::Value = serde_json::from_str(capped.lines().next().unwrap()).unwrap();
    assert_eq!(report["claims_accepted"], 4, "{report}");
    assert_eq!(report["claims_rejected"], 4, "{report}");
    let rejected = report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["code"] == "rejected_claims")
        .unwrap();
    assert_eq!(
        rejected["sample"],
        serde_json::json!(["too_many_tasks", "too_many_agents"]),
        "{report}"
    );
    // Under the default caps nothing is rejected.
    let uncapped = run_tool(&["fold", "--log", log_arg, "--bar-length", "4"]);
    assert!(!uncapped.contains("too_many"), "{uncapped}");

    // Live: the same bytes, and the caps are part of the checkpoint's config.
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    publish_entries(&js, &entries).await.unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &caps);
    wait_for_reports(&js, 1, &processor).await;
    let (_, status) = processor.get("/api/v1/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["clusters"]["h"]["agents"], 3, "{status}");
    assert_eq!(status["clusters"]["h"]["tasks"], 2, "{status}");
    assert_same_lines("live vs fold", &processor_reports(&js, &BTreeSet::new()).await, &capped);
    processor.signal(Signal::Term);
    assert!(processor.wait_exit(LIVE_TIMEOUT).success(), "{}", processor.log_tail());
    let mut other = Processor::start(
        &server.url(),
        work.path(),
        &["--bar-length", "4", "--max-tasks-per-agent", "3"],
    );
    assert!(
        !other.wait_exit(LIVE_TIMEOUT).success(),
        "a checkpoint with other caps was resumed"
    );
    assert!(other.log().contains("fold config"), "{}", other.log_tail());
}
