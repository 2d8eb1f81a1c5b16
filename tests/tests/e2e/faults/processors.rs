//! Processors sharded by cluster (issue 22, item 3). On one NATS, two
//! `backbeat-processor run` instances fold disjoint `--cluster` sets under
//! their own `--name`s, and a third is started for a set already owned (the
//! same name as the first): it waits on the lease. While beats and claims of
//! four clusters arrive at a steady rate, the holder of one name, drawn at
//! seeded random points, is killed with -9 (3 times in CI, 20 in the long
//! mode); a new instance of that name is started each time, so the first
//! name always has a standby. After each kill the standby or the restarted
//! instance carries on (takes the lease, folds past where the killed one
//! was). At the end, every cluster's reports are the bytes of the offline
//! fold of its exported log, and no window is published twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_schemas::names::BARS_STREAM;
use backbeat_service::streams::{ensure_all_streams, StreamOptions};
use backbeat_tests::{
    free_port, http_get, seed_from_env, wait_until_async, ChildGuard, FaultRecord, NatsServer, TestRng,
};

use super::{last_event_seq, long_mode};
use crate::stack::{
    beat_frame, fold_of_the_exported_log, messages_on, spawn_named, stop_processor_after, BAR, LATENESS, TIMEOUT,
};

/// Each name's clusters: disjoint.
const SHARDS: [(&str, &[&str]); 2] = [("shard-a", &["c1", "c2"]), ("shard-b", &["c3", "c4"])];
/// Short, so a standby takes over soon; long enough that a loaded 2-core
/// machine refreshes it in time (a holder that misses TTL − TTL/4 exits).
const LEASE_TTL_MS: u64 = 3000;
/// A beat of every cluster (and a claim) this often.
const BEAT_INTERVAL: Duration = Duration::from_millis(25);

/// One `run` instance.
struct Instance {
    name: &'static str,
    child: ChildGuard,
    port: u16,
}

fn start_instance(
    name: &'static str,
    clusters: &[&str],
    number: usize,
    logs: &Path,
    url: &str,
) -> anyhow::Result<Instance> {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let clusters = clusters.join(",");
    let ttl = LEASE_TTL_MS.to_string();
    let child = spawn_named(
        &format!("processor-{name}-{number}"),
        "backbeat-processor",
        logs,
        &[
            "run",
            "--nats",
            url,
            "--listen",
            &listen,
            "--bar-length",
            BAR,
            "--lateness",
            LATENESS,
            "--cluster",
            &clusters,
            "--name",
            name,
            "--lease-ttl-ms",
            &ttl,
            "--checkpoint-min-interval-ms",
            "200",
            "--checkpoint-interval-ms",
            "500",
        ],
    )?;
    Ok(Instance { name, child, port })
}

/// The instance's `/api/v1/status`, while it answers.
fn status(port: u16) -> Option<serde_json::Value> {
    let (code, body) = http_get(port, "/api/v1/status")?;
    (code == 200).then_some(())?;
    serde_json::from_str(&body).ok()
}

/// Waits until an instance of `name` holds the lease and has folded through
/// `seq`: its position in `instances`.
async fn wait_carried_on(instances: &[Instance], name: &str, seq: u64) -> anyhow::Result<usize> {
    wait_until_async(
        &format!("an instance of {name} to fold through {seq}"),
        TIMEOUT,
        || async {
            instances.iter().position(|instance| {
                instance.name == name
                    && status(instance.port).is_some_and(|s| {
                        s["lease"]["state"] == "held" && s["last_seq"].as_u64().is_some_and(|last| last >= seq)
                    })
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_processors_and_a_standby_survive_kill_9_at_random_points() -> anyhow::Result<()> {
    let kills = if long_mode() { 20 } else { 3 };
    let seed = seed_from_env("BACKBEAT_FAULT_SEED", 22);
    let mut rng = TestRng::new(seed);
    let server = NatsServer::start()?;
    let url = server.url();
    let dir = tempfile::tempdir()?;
    let js = jetstream::new(server.client().await?);
    ensure_all_streams(&js, StreamOptions::default()).await?;

    // Beats and claims of every cluster at a steady rate, straight into the stream.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(BEAT_INTERVAL);
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticks.tick().await;
                // HLC times 100 ms apart (600 BPM), whatever the wall clock does.
                let hlc_ms = 1_796_342_400_000 + index * 100;
                for (_, clusters) in SHARDS {
                    for cluster in clusters {
                        let beat = beat_frame(cluster, index, &format!("{hlc_ms:x}:0000:0001"));
                        js.publish(format!("backbeat.{cluster}.beat"), beat.into())
                            .await?
                            .await?;
                        let claim = format!(
                            r#"{{"type":"backbeat.statusclaim.v1","agent_id":"agent-{}","beat_index":{index},"state":"executing","beats_left":2,"progress":0.5,"hlc":"{:x}:0000:0002"}}"#,
                            index % 5,
                            hlc_ms + 10
                        );
                        js.publish(format!("backbeat.{cluster}.claim"), claim.into())
                            .await?
                            .await?;
                    }
                }
                index += 1;
            }
            anyhow::Ok(index)
        })
    };

    let logs = dir.path();
    let mut started = 0;
    let mut instances = Vec::new();
    for (name, clusters) in SHARDS {
        instances.push(start_instance(name, clusters, started, logs, &url)?);
        started += 1;
    }
    // The third, for a set already owned: it waits on the lease.
    let (first_name, first_clusters) = SHARDS[0];
    wait_carried_on(&instances, first_name, 1).await?;
    instances.push(start_instance(first_name, first_clusters, started, logs, &url)?);
    started += 1;
    let standby_port = instances[2].port;
    wait_until_async("the third instance to wait on the lease", TIMEOUT, || async {
        status(standby_port)
            .filter(|s| s["lease"]["state"] == "waiting")
            .map(|_| ())
    })
    .await?;

    let mut takeovers = Vec::new();
    for kill in 0..kills {
        // A random point: 0.2–2 s of load after the last one carried on.
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
        let (name, clusters) = SHARDS[rng.below(SHARDS.len() as u64) as usize];
        let holder = wait_carried_on(&instances, name, 0).await?;
        let seq_at_kill = last_event_seq(&js, clusters).await?;
        let mut victim = instances.remove(holder);
        let killed_at = Instant::now();
        victim.child.kill();
        eprintln!(
            "kill {} of {name} (port {}), stream at {seq_at_kill}",
            kill + 1,
            victim.port
        );
        // A new instance of the name: the restarted one (or the next standby).
        instances.push(start_instance(name, clusters, started, logs, &url)?);
        started += 1;
        wait_carried_on(&instances, name, seq_at_kill).await?;
        takeovers.push((name, killed_at.elapsed()));
    }

    stop.store(true, Ordering::Relaxed);
    let beats_published = publisher.await??;
    // Each holder folds through its clusters' last event, then stops.
    for (name, clusters) in SHARDS {
        let last = last_event_seq(&js, clusters).await?;
        let holder = wait_carried_on(&instances, name, last).await?;
        let mut instance = instances.remove(holder);
        stop_processor_after(&mut instance.child, instance.port, last).await?;
    }
    drop(instances);

    // Per cluster: reports = the offline fold of its exported log, each window once.
    let mut differing = 0;
    let mut duplicated = 0;
    let mut reports = 0;
    let mut mismatches = Vec::new();
    for (_, clusters) in SHARDS {
        for cluster in clusters {
            let mut live = String::new();
            let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
            for (_, payload) in messages_on(&js, BARS_STREAM, &format!("backbeat.{cluster}.bar")).await? {
                let report: serde_json::Value = serde_json::from_slice(&payload)?;
                *windows
                    .entry(report["window_index"].as_u64().unwrap_or(u64::MAX))
                    .or_default() += 1;
                live.push_str(std::str::from_utf8(&payload)?);
                live.push('\n');
            }
            duplicated += windows.values().filter(|&&n| n > 1).count() as u64;
            let folded = fold_of_the_exported_log(&url, cluster, dir.path())?;
            let (live_lines, folded_lines): (Vec<&str>, Vec<&str>) = (live.lines().collect(), folded.lines().collect());
            reports += live_lines.len();
            let differ = live_lines.iter().zip(&folded_lines).filter(|(a, b)| a != b).count()
                + live_lines.len().abs_diff(folded_lines.len());
            if differ > 0 {
                mismatches.push(cluster.to_string());
            }
            differing += differ as u64;
        }
    }
    let longest = takeovers.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let by_name: Vec<String> = SHARDS
        .iter()
        .map(|(name, _)| format!("{name} {}", takeovers.iter().filter(|(n, _)| n == name).count()))
        .collect();
    FaultRecord {
        fault: "kill -9 of a sharded processor (2 shards + a standby)".into(),
        injected: kills,
        checked: "each cluster's reports = fold of its log, no window twice, standby/restart carries on".into(),
        acked_lost: None,
        duplicated: Some(duplicated),
        differing_reports: Some(differing),
        longest_unavailable_ms: Some(longest.as_secs_f64() * 1000.0),
        reference_unavailable_ms: None,
        notes: format!(
            "seed {seed} (BACKBEAT_FAULT_SEED); kills by name: {}; lease TTL {LEASE_TTL_MS} ms; \
             unavailable = kill to the next holder folding past the kill point; {reports} reports of 4 clusters, \
             {beats_published} beats each",
            by_name.join(", ")
        ),
    }
    .record()?;

    assert_eq!(duplicated, 0, "windows published twice");
    assert!(
        mismatches.is_empty(),
        "reports differ from the offline fold for {mismatches:?}"
    );
    assert!(reports >= 4 * 3, "only {reports} reports");
    Ok(())
}
