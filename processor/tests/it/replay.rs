//! `replay` (and `export`) from the checkpoints `run` keeps: a past window is
//! re-derived from the newest kept checkpoint taken before it was reported,
//! with the bytes the live run published, as a replay from the stream's start
//! gives them (and an export slice has the same lines); the
//! history keeps only the newest `--history-keep` checkpoints, and the chunks
//! of those that left it are gone.

use async_nats::jetstream;
use backbeat_processor::checkpoint::{Manifest, CHECKPOINT_BUCKET};
use backbeat_schemas::LogEntry;
use backbeat_tests::{wait_until_async, NatsServer, NatsServerOptions};

use crate::live_support::{
    beat_payload, claim_payload, ensure_streams, entry, processor_bin, publish_entries, stored_reports,
    wait_for_reports, Processor, LIVE_TIMEOUT,
};
use crate::support::assert_same_lines;

const L: u64 = 4;

/// Beats `from..to` of cluster `r`, each with claims of three agents (a task
/// each, delivered in the window after it starts, some late).
fn events(from: u64, to: u64) -> Vec<LogEntry> {
    let mut entries = Vec::new();
    for beat in from..to {
        entries.push(entry(0, "backbeat.r.beat", beat_payload("r", beat, L)));
        for (logical, agent) in ["a1", "a2", "a3"].into_iter().enumerate() {
            let task = format!("t:{}", beat / (2 * L));
            let state = if beat % (2 * L) == L + 1 {
                "reviewing"
            } else {
                "executing"
            };
            let payload = claim_payload(agent, Some(&task), beat, state, 6, (beat, logical as u16));
            entries.push(entry(0, "backbeat.r.claim", payload));
        }
    }
    entries
}

/// `replay` of cluster `r` from `from`: (stdout, stderr); it must succeed.
fn replay(url: &str, from: u64, extra: &[&str]) -> (String, String) {
    tool("replay", url, from, extra)
}

/// `command` (`replay` or `export`) of cluster `r` from window `from`:
/// (stdout, stderr); it must succeed.
fn tool(command: &str, url: &str, from: u64, extra: &[&str]) -> (String, String) {
    let from = from.to_string();
    let output = std::process::Command::new(processor_bin())
        .args([command, "--nats", url, "--cluster", "r", "--bar-length", "4"])
        .args(["--from-window", &from])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .expect("running backbeat-processor");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{command} failed: {stderr}");
    (String::from_utf8(output.stdout).expect("UTF-8"), stderr)
}

/// A nats-server with the streams, and `run` with `args` checkpointing after
/// every batch with reports, once ready.
struct Setup {
    server: NatsServer,
    js: jetstream::Context,
    processor: Processor,
    _work: tempfile::TempDir,
}

async fn start_checkpointing(options: NatsServerOptions, args: &[&str]) -> Setup {
    let server = NatsServer::start_with(options).expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(
        &server.url(),
        work.path(),
        &[args, &["--checkpoint-min-interval-ms", "0"]].concat(),
    );
    processor.wait_ready().await;
    Setup {
        server,
        js,
        processor,
        _work: work,
    }
}

/// Waits until `processor` has kept `count` checkpoints.
async fn wait_kept(processor: &Processor, count: u64) {
    let result = wait_until_async(&format!("kept checkpoint {count}"), LIVE_TIMEOUT, || {
        let kept = processor.metric("backbeat_processor_checkpoints_kept_total");
        async move { kept.filter(|&k| k >= count as f64).map(drop) }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", processor.log_tail());
    }
}

#[tokio::test]
async fn replay_starts_from_the_newest_kept_checkpoint_before_the_window() {
    // `_work` (not `..`) keeps the work directory until the test ends.
    let Setup {
        server,
        js,
        processor,
        _work,
    } = start_checkpointing(
        NatsServerOptions::default(),
        &["--bar-length", "4", "--history-every", "2", "--history-keep", "3"],
    )
    .await;

    // Five phases of two windows each; after each, its reports and a kept checkpoint.
    let phases = 5u64;
    for phase in 0..phases {
        // Through the beat that closes the phase's second window.
        let from = if phase == 0 { 0 } else { phase * 2 * L + 1 };
        let to = (phase + 1) * 2 * L + 1;
        publish_entries(&js, &events(from, to)).await.unwrap();
        wait_for_reports(&js, (phase + 1) * 2, &processor).await;
        wait_kept(&processor, phase + 1).await;
    }
    let published: Vec<String> = stored_reports(&js).await.into_iter().map(|(_, r)| r).collect();
    assert_eq!(published.len() as u64, phases * 2);

    // The history holds the newest three, oldest first; the others' chunks are gone.
    let kv = js.get_key_value(CHECKPOINT_BUCKET).await.unwrap();
    let history: Vec<Manifest> =
        serde_json::from_slice(&kv.get("backbeat-processor.history").await.unwrap().expect("a history")).unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(history.windows(2).all(|w| w[0].seq < w[1].seq), "{history:?}");
    for manifest in &history {
        // Chunk keys carry their writer's instance id.
        let key = format!("backbeat-processor.{}.g{}.c0", manifest.writer, manifest.generation);
        assert!(kv.get(&key).await.unwrap().is_some(), "kept chunk {key}");
    }
    // The status endpoint lists them too.
    let (_, status) = processor.get("/api/v1/status").expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let kept: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(status["kept_checkpoint_seqs"], serde_json::json!(kept), "{status}");
    let oldest_kept = history[0].generation;
    for generation in 1..oldest_kept {
        let key = format!("backbeat-processor.{}.g{generation}.c0", history[0].writer);
        assert!(
            kv.get(&key).await.unwrap().is_none(),
            "chunk {key} outlived its checkpoint"
        );
    }

    // A window after the oldest kept checkpoint: replayed from the newest one before it.
    let target = history[1].next_to_close["r"];
    let (from_kept, stderr) = replay(&server.url(), target, &[]);
    assert!(stderr.contains("folding from a kept checkpoint"), "{stderr}");
    assert!(
        stderr.contains(&format!("seq={}", history[1].seq)),
        "the newest kept checkpoint taken before window {target} was reported: {stderr}"
    );
    let expected: String = published[target as usize..].iter().map(|r| format!("{r}\n")).collect();
    assert_same_lines("replay from a kept checkpoint", &from_kept, &expected);
    // The same bytes from the stream's start.
    let (from_start, stderr) = replay(&server.url(), target, &["--from-stream-start"]);
    assert!(stderr.contains("folding from the stream's start"), "{stderr}");
    assert_eq!(from_start, from_kept);
    // export's slice from a window: from a kept checkpoint, the same lines.
    let (slice, stderr) = tool("export", &server.url(), target, &[]);
    assert!(stderr.contains("folding from a kept checkpoint"), "{stderr}");
    let (slice_from_start, _) = tool("export", &server.url(), target, &["--from-stream-start"]);
    assert!(!slice.is_empty());
    assert_eq!(slice, slice_from_start, "export from a kept checkpoint");
    // Window 0 was reported before any kept checkpoint: the stream's start.
    let (all, stderr) = replay(&server.url(), 0, &[]);
    assert!(stderr.contains("folding from the stream's start"), "{stderr}");
    let expected: String = published.iter().map(|r| format!("{r}\n")).collect();
    assert_same_lines("replay from window 0", &all, &expected);
}

/// With many clusters every manifest names many positions, and the history
/// list must still fit in one message: the oldest kept checkpoints leave it
/// early, with a warning, and the processor goes on checkpointing.
#[tokio::test]
async fn the_history_stays_one_message_with_many_clusters() {
    let options = NatsServerOptions {
        max_payload: "128KB",
        ..Default::default()
    };
    // `_server` and `_work` (not `_` or `..`) keep them until the test ends.
    let Setup {
        server: _server,
        js,
        processor,
        _work,
    } = start_checkpointing(options, &["--bar-length", "1", "--history-every", "1"]).await;
    // 600 clusters of bar length 1: each beat closes its cluster's previous window.
    let clusters: Vec<String> = (0..600).map(|c| format!("c{c:03}")).collect();
    let phases = 24u64;
    for beat in 0..phases {
        let beats: Vec<LogEntry> = clusters
            .iter()
            .map(|c| entry(0, &format!("backbeat.{c}.beat"), beat_payload(c, beat, 1)))
            .collect();
        publish_entries(&js, &beats).await.unwrap();
        if beat > 0 {
            wait_for_reports(&js, beat * clusters.len() as u64, &processor).await;
            wait_kept(&processor, beat).await;
        }
    }
    let kv = js.get_key_value(CHECKPOINT_BUCKET).await.unwrap();
    let list = kv.get("backbeat-processor.history").await.unwrap().expect("a history");
    let history: Vec<Manifest> = serde_json::from_slice(&list).unwrap();
    assert!(list.len() <= 128 * 1024 - 8 * 1024, "{} bytes", list.len());
    assert!(
        history.len() > 1 && (history.len() as u64) < phases - 1,
        "{} kept",
        history.len()
    );
    assert!(
        processor.log().contains("too large for one message"),
        "{}",
        processor.log_tail()
    );
    let oldest = history[0].generation;
    assert!(kv
        .get(format!("backbeat-processor.{}.g{}.c0", history[0].writer, oldest - 1))
        .await
        .unwrap()
        .is_none());
}
