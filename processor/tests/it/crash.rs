//! kill -9 of `backbeat-processor run` at seeded random points while events
//! are published and folded: after every restart it resumes from its
//! checkpoint, and `BACKBEAT_BARS` ends up holding exactly the reports of an
//! uninterrupted fold — every window once, in order, byte for byte (SPEC §8).

use std::collections::BTreeMap;

use async_nats::jetstream;
use backbeat_schemas::LogEntry;
use backbeat_tests::{seed_from_env, NatsServer, TestRng};

use crate::live_support::{
    beat_payload, claim_payload, ensure_streams, entry, publish_entries, reference_reports, stored_events,
    stored_reports, wait_for_reports, Processor,
};
use crate::support::config_from_args;

const FOLD_ARGS: &str = "--bar-length 8 --task-ttl 3";
const CLUSTERS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A log of `beats` beats per cluster, interleaved, each followed by claims of
/// a dozen agents: tasks delivered on time or late, help promises, failed
/// secret rotations, late and future claims, invalid input and missing beats.
/// Every event has its own SPEC §8 message id, so the stream stores all of them.
fn generate(rng: &mut TestRng, beats: u64) -> Vec<LogEntry> {
    let mut entries = Vec::new();
    let mut beat_of: BTreeMap<&str, u64> = CLUSTERS.iter().map(|c| (*c, 0)).collect();
    for _ in 0..beats {
        for cluster in CLUSTERS {
            let beat = beat_of[cluster];
            let skip = u64::from(beat > 0 && rng.below(40) == 0);
            let beat = beat + skip;
            beat_of.insert(cluster, beat + 1);
            let (beat_subject, claim_subject) =
                (format!("backbeat.{cluster}.beat"), format!("backbeat.{cluster}.claim"));
            entries.push(entry(0, &beat_subject, beat_payload(cluster, beat, 8)));
            for logical in 0..rng.below(8) as u16 {
                let agent = format!("agent-{}", rng.below(12));
                let r = rng.below(100);
                let payload = if r == 0 {
                    b"{\"type\":\"backbeat.statusclaim.v1\",\"agent_id\":".to_vec()
                } else {
                    let claimed = match r {
                        1..=4 => beat.saturating_sub(10 + rng.below(10)),
                        5..=6 => beat + 3 + rng.below(3),
                        _ => beat.saturating_sub(rng.below(2)),
                    };
                    let (state, kind) = match rng.below(12) {
                        0 => ("failed", if rng.below(2) == 0 { "secret-rotation" } else { "build" }),
                        1..=2 => ("reviewing", "build"),
                        3 => ("done", "build"),
                        4 => ("helping", "build"),
                        5 => ("idle", ""),
                        _ => ("executing", "build"),
                    };
                    let task = (!kind.is_empty()).then(|| format!("{kind}:{}", claimed / 16));
                    claim_payload(
                        &agent,
                        task.as_deref(),
                        claimed,
                        state,
                        rng.below(24) as u32,
                        (beat, logical),
                    )
                };
                entries.push(entry(0, &claim_subject, payload));
            }
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_leaves_every_report_exactly_once() {
    let seed = seed_from_env("BACKBEAT_CRASH_SEED", 0x5eed_0fc0_ffee_u64);
    let mut rng = TestRng::new(seed);
    let entries = generate(&mut rng, 300);
    let total = entries.len() as u64;
    assert!(total > 3000, "a long log: {total} events");
    let expected = reference_reports(config_from_args(FOLD_ARGS), &entries);

    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    // The server's deduplication mostly out of the way: exactly once is the processor's doing.
    bars_without_server_dedup(&js).await;
    let work = tempfile::tempdir().unwrap();
    // Frequent checkpoints, so kills land before, between and after reports and checkpoints.
    let mut args: Vec<&str> = FOLD_ARGS.split_whitespace().collect();
    args.extend([
        "--checkpoint-min-interval-ms",
        "0",
        "--checkpoint-interval-ms",
        "20",
        "--batch",
        "64",
    ]);

    let publisher = {
        let js = js.clone();
        let entries = entries.clone();
        tokio::spawn(async move {
            // Events arrive over time, as they would live (a load profile, not synchronisation).
            let mut pace = tokio::time::interval(std::time::Duration::from_millis(10));
            for chunk in entries.chunks(50) {
                pace.tick().await;
                publish_entries(&js, chunk).await.expect("publishing");
            }
        })
    };

    let mut kill_points: Vec<u64> = (0..8).map(|_| 1 + rng.below(total)).collect();
    kill_points.sort_unstable();
    // One kill while it is starting (loading its checkpoint, creating its consumer).
    kill_points.insert(rng.below(kill_points.len() as u64) as usize, 0);
    let mut processor = Processor::start(&server.url(), work.path(), &args);
    for point in &kill_points {
        if *point == 0 {
            let port = processor.port;
            backbeat_tests::wait_until_async(
                "the processor's HTTP",
                crate::live_support::LIVE_TIMEOUT,
                || async move { crate::live_support::http_get(port, "/health").map(|_| ()) },
            )
            .await
            .unwrap();
        } else {
            processor.wait_folded(*point).await;
        }
        assert!(
            processor.is_running(),
            "processor died by itself\n{}",
            processor.log_tail()
        );
        eprintln!(
            "kill -9 at folded seq {:?} (point {point}), publishing {}",
            crate::live_support::folded_seq(processor.port),
            if publisher.is_finished() { "done" } else { "under way" }
        );
        processor.kill();
        forget_lease_of_the_dead(&js).await;
        processor = Processor::start(&server.url(), work.path(), &args);
    }
    publisher.await.unwrap();
    assert_eq!(
        crate::live_support::stream_messages(&js, backbeat_schemas::names::EVENTS_STREAM).await,
        total,
        "every generated event has its own message id and is stored"
    );
    processor.wait_ready().await;
    processor.wait_folded(total).await;
    wait_for_reports(&js, expected.len() as u64, &processor).await;

    // The stream holds the generated log exactly.
    assert_eq!(stored_events(&js).await, entries);
    let stored = stored_reports(&js).await;
    let mut per_subject: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (subject, text) in &stored {
        per_subject
            .entry(subject.clone())
            .or_default()
            .push(serde_json::from_str(text).unwrap());
    }
    assert_eq!(per_subject.len(), CLUSTERS.len());
    for (subject, reports) in &per_subject {
        let mut ids = std::collections::HashSet::new();
        for pair in reports.windows(2) {
            assert_eq!(
                pair[1]["window_index"].as_u64().unwrap(),
                pair[0]["window_index"].as_u64().unwrap() + 1,
                "{subject}: windows out of order or repeated"
            );
        }
        for report in reports {
            assert!(
                ids.insert(report["window_id"].as_str().unwrap().to_string()),
                "{subject}: window twice"
            );
            assert_eq!(
                subject,
                &format!("backbeat.{}.bar", report["cluster_id"].as_str().unwrap())
            );
        }
    }
    // Byte for byte the uninterrupted fold, cluster by cluster (clusters interleave freely).
    for cluster in CLUSTERS {
        let subject = format!("backbeat.{cluster}.bar");
        let published: Vec<&str> = stored
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, r)| r.as_str())
            .collect();
        let wanted: Vec<&str> = expected
            .iter()
            .filter(|r| r.contains(&format!("\"cluster_id\":\"{cluster}\"")))
            .map(String::as_str)
            .collect();
        assert_eq!(
            published, wanted,
            "{cluster}: stored reports differ from the uninterrupted fold"
        );
    }
    assert_eq!(stored.len(), expected.len());
    assert_eq!(
        processor.metric("backbeat_processor_report_mismatches_total"),
        Some(0.0),
        "a re-derived report differed from the stored one"
    );
}

/// Deletes the lease of a processor killed with -9 (reaped), as an operator
/// may: the restart then need not wait out the lease TTL. These tests are
/// about exactly once; expiry after a kill has its own test (`lease`).
async fn forget_lease_of_the_dead(js: &jetstream::Context) {
    // A process killed while starting may not have created the bucket yet.
    if let Ok(leases) = js.get_key_value("BACKBEAT_LEASES").await {
        leases.delete("backbeat-processor").await.expect("deleting the lease");
    }
}

/// BACKBEAT_BARS with a duplicate window so short that the server's
/// message-id deduplication is gone by the time a processor restarts: only
/// the processor's own check (SPEC §8) stands between a window and a second copy.
async fn bars_without_server_dedup(js: &jetstream::Context) {
    let mut config = backbeat_service::streams::bars_config(Default::default());
    config.duplicate_window = std::time::Duration::from_millis(100); // the server's minimum
    js.create_stream(config).await.expect("creating BACKBEAT_BARS");
    ensure_streams(js).await;
}

const PROBE_SUBJECT: &str = "backbeat.dedup-probe.bar";

/// Publishes a probe with a fixed message id until the server stops calling
/// it a duplicate: every message id published before the first probe has
/// then left the duplicate window too.
async fn wait_for_the_duplicate_window_to_pass(js: &jetstream::Context) {
    let probe = || {
        async_nats::jetstream::message::PublishMessage::build()
            .payload("probe".into())
            .message_id("dedup-probe")
    };
    js.send_publish(PROBE_SUBJECT, probe()).await.unwrap().await.unwrap();
    backbeat_tests::wait_until_async(
        "the duplicate window to pass",
        crate::live_support::LIVE_TIMEOUT,
        || async {
            let ack = js.send_publish(PROBE_SUBJECT, probe()).await.ok()?.await.ok()?;
            (!ack.duplicate).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_restart_from_behind_its_reports_publishes_nothing_twice_after_the_duplicate_window() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    bars_without_server_dedup(&js).await;
    let mut rng = TestRng::new(7);
    let entries = generate(&mut rng, 40);
    let expected = reference_reports(config_from_args(FOLD_ARGS), &entries);
    let last_seq = publish_entries(&js, &entries).await.unwrap();

    // No checkpoint until SIGTERM: a kill -9 leaves none, and the next run starts from nothing.
    let mut args: Vec<&str> = FOLD_ARGS.split_whitespace().collect();
    args.extend(crate::live_support::NO_CHECKPOINT_UNTIL_STOP);
    let work = tempfile::tempdir().unwrap();
    let mut first = Processor::start(&server.url(), work.path(), &args);
    wait_for_reports(&js, expected.len() as u64, &first).await;
    first.wait_folded(last_seq).await;
    first.kill();
    forget_lease_of_the_dead(&js).await;
    wait_for_the_duplicate_window_to_pass(&js).await;

    let mut second = Processor::start(&server.url(), work.path(), &args);
    second.wait_ready().await;
    second.wait_folded(last_seq).await;
    let port = second.port;
    let count = expected.len() as f64;
    backbeat_tests::wait_until_async(
        "every re-derived report to be handled",
        crate::live_support::LIVE_TIMEOUT,
        || async move {
            let text = crate::live_support::http_get(port, "/metrics")?.1;
            let value = |name| crate::live_support::metric_value(&text, name).unwrap_or(0.0);
            let handled =
                value("backbeat_processor_reports_skipped_total") + value("backbeat_processor_reports_published_total");
            (handled >= count).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log_tail()));
    assert_eq!(
        second.metric("backbeat_processor_reports_published_total"),
        Some(0.0),
        "a re-derived report was published again"
    );
    assert_eq!(second.metric("backbeat_processor_reports_skipped_total"), Some(count));
    assert_eq!(second.metric("backbeat_processor_report_mismatches_total"), Some(0.0));
    let stored: Vec<String> = stored_reports(&js)
        .await
        .into_iter()
        .filter(|(subject, _)| subject != PROBE_SUBJECT)
        .map(|(_, r)| r)
        .collect();
    let mut per_cluster_expected = expected.clone();
    let mut per_cluster_stored = stored.clone();
    // Clusters interleave freely in the stream; within a cluster the order is the fold's.
    per_cluster_expected.sort_by_key(|r| cluster_of(r));
    per_cluster_stored.sort_by_key(|r| cluster_of(r));
    assert_eq!(per_cluster_stored, per_cluster_expected);
}

fn cluster_of(report: &str) -> String {
    serde_json::from_str::<serde_json::Value>(report).unwrap()["cluster_id"]
        .as_str()
        .unwrap()
        .to_string()
}
