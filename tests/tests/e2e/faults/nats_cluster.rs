//! A NATS cluster losing a node (issue 22, item 1). The whole system (a pulse
//! group of three, the gateway, the processor) runs on a 3-node JetStream
//! cluster with R3 streams, each service given all three URLs. Under claim
//! load through the gateway's HTTP, and a raw JetStream publisher beside it,
//! the node leading `BACKBEAT_EVENTS` is killed with -9 and later restarted,
//! then the one leading `BACKBEAT_BARS`. Then:
//! - every claim the gateway answered ok is in the stream, at the sequence
//!   it was told, exactly once (and no claim at all is stored twice);
//! - the pulse's beats are strictly increasing, no index twice;
//! - the processor's reports are the bytes of the offline fold of the
//!   exported log;
//! - the longest time the gateway stored no claim is no longer than the
//!   longest time the raw publisher stored nothing, plus [`TOLERANCE`];
//! - every service carried on by itself (none restarted, none exited), and
//!   the restarted node caught up (stream info shows it current).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_tests::{http_post, wait_until_async, FaultRecord, NatsCluster, Signal};
use futures::TryStreamExt as _;

use super::{last_event_seq, long_mode, SteadyLoad, Successes};
use crate::stack::{
    fold_of_the_exported_log, log_summary, messages_on, stop_processor_after, Services, ServicesOptions, CLUSTER,
};

/// How much longer than raw JetStream's the gateway's longest unavailability
/// may be: it and the raw publisher each lose their connection when their
/// server is the one killed, and the sampling is one attempt per 20 ms; a
/// second covers a reconnect and an ack timeout's rounding.
const TOLERANCE: Duration = Duration::from_secs(1);
/// One claim through the gateway and one raw publish each this often.
const LOAD_INTERVAL: Duration = Duration::from_millis(20);
/// The gateway's default `--publish-timeout-ms`: the raw publisher waits as long for an ack.
const ACK_TIMEOUT: Duration = Duration::from_millis(2000);
/// Where the raw publisher writes: a subject of `BACKBEAT_EVENTS` (the same
/// stream, so the same leader) of a cluster the processor does not fold.
const RAW_SUBJECT: &str = "backbeat.reference.claim";
/// Failover and catch-up on a loaded 2-core machine.
const FAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A claim unique to `n` (agent, HLC and so its message id), for beat `beat_index`.
fn claim(n: u64, beat_index: u64) -> String {
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"load-{}","beat_index":{beat_index},"state":"executing","beats_left":3,"progress":0.5,"hlc":"{wall_ms:x}:{:04x}:0001"}}"#,
        n % 32,
        n & 0xffff
    )
}

/// The claims the gateway answered ok: (the sequence it named, the document).
type Acked = Arc<Mutex<Vec<(u64, String)>>>;

/// Claims through the gateway's HTTP at a steady rate, each answer recorded.
fn gateway_load(port: u16, beat: Arc<AtomicU64>, acked: Acked, refused: Arc<AtomicU64>, ok: Successes) -> SteadyLoad {
    SteadyLoad::start(LOAD_INTERVAL, 64, move |n| {
        let payload = claim(n, beat.load(Ordering::Relaxed));
        let (acked, refused, ok) = (acked.clone(), refused.clone(), ok.clone());
        async move {
            let body = payload.clone();
            let path = format!("/api/v1/clusters/{CLUSTER}/claims");
            let answer = tokio::task::spawn_blocking(move || http_post(port, &path, "application/json", &body)).await;
            let done = Instant::now();
            let seq = match answer {
                Ok(Some((202, text))) => serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|reply| reply["seq"].as_u64()),
                _ => None,
            };
            match seq {
                Some(seq) => {
                    acked.lock().expect("not poisoned").push((seq, payload));
                    ok.record(done);
                }
                None => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Raw JetStream publishes at the same rate, beside the gateway: the reference.
fn raw_load(js: jetstream::Context, failed: Arc<AtomicU64>, ok: Successes) -> SteadyLoad {
    SteadyLoad::start(LOAD_INTERVAL, 64, move |n| {
        let (js, failed, ok) = (js.clone(), failed.clone(), ok.clone());
        async move {
            let stored = tokio::time::timeout(ACK_TIMEOUT, async {
                js.publish(RAW_SUBJECT, claim(n, 0).into()).await?.await
            })
            .await;
            match stored {
                Ok(Ok(_)) => ok.record(Instant::now()),
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// The server leading `stream` (its name), once there is one other than `not`.
async fn leader_of(js: &jetstream::Context, stream: &str, not: Option<&str>) -> anyhow::Result<String> {
    wait_until_async(
        &format!("a leader of {stream} other than {not:?}"),
        FAULT_TIMEOUT,
        || async {
            let mut stream = js.get_stream(stream).await.ok()?;
            let leader = stream.info().await.ok()?.cluster.clone()?.leader?;
            (Some(leader.as_str()) != not).then_some(leader)
        },
    )
    .await
}

/// The names of the streams kept on more than one server.
async fn replicated_streams(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = js.stream_names().try_collect().await?;
    let mut replicated = Vec::new();
    for name in names {
        if js.get_stream(&name).await?.info().await?.config.num_replicas > 1 {
            replicated.push(name);
        }
    }
    Ok(replicated)
}

/// Waits until `server` is current in `stream`'s group (a current replica, or its leader).
async fn wait_current(js: &jetstream::Context, stream: &str, server: &str) -> anyhow::Result<()> {
    wait_until_async(
        &format!("{server} to be current in {stream}"),
        FAULT_TIMEOUT,
        || async {
            let mut stream = js.get_stream(stream).await.ok()?;
            let cluster = stream.info().await.ok()?.cluster.clone()?;
            let current = cluster.leader.as_deref() == Some(server)
                || cluster
                    .replicas
                    .iter()
                    .any(|peer| peer.name == server && peer.current && !peer.offline);
            current.then_some(())
        },
    )
    .await
}

/// One injected fault's figures.
struct Injection {
    killed: String,
    gateway_gap: Duration,
    raw_gap: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leaders_of_a_3_node_cluster_loses_nothing_and_doubles_nothing() -> anyhow::Result<()> {
    let long = long_mode();
    // CI: each leader killed once, a few seconds down; long: three rounds, longer.
    let (rounds, settle, down) = if long {
        (3, Duration::from_secs(10), Duration::from_secs(10))
    } else {
        (1, Duration::from_secs(2), Duration::from_secs(3))
    };
    let mut cluster = NatsCluster::start(3)?;
    let urls = cluster.urls();
    let dir = tempfile::tempdir()?;
    let options = ServicesOptions {
        pulse_nodes: 3,
        stream_replicas: 3,
        processor_clusters: vec![CLUSTER.to_string()],
        // Above JetStream's leader election of the lease bucket (README,
        // "Durability on a NATS cluster"): with the default 10 s the
        // processor stops when the bucket's leader is killed.
        extra_args: vec![(
            "backbeat-processor",
            vec!["--lease-ttl-ms".to_string(), "30000".to_string()],
        )],
        ..ServicesOptions::default()
    };
    let mut services = Services::start(&urls, &options, dir.path()).await?;
    let url_list: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url_list.as_slice())
        .await?;
    let js = jetstream::new(client);

    // The current beat, for the claims' beat_index (read off the stream, best effort).
    let beat = Arc::new(AtomicU64::new(0));
    let beat_tracker = {
        let (js, beat) = (js.clone(), beat.clone());
        tokio::spawn(async move {
            let beat_subject = format!("backbeat.{CLUSTER}.beat");
            loop {
                if let Ok(events) = js.get_stream(EVENTS_STREAM).await {
                    if let Ok(last) = events.get_last_raw_message_by_subject(&beat_subject).await {
                        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&last.payload) {
                            beat.store(value["beat_index"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_until_async("the first beat", FAULT_TIMEOUT, || async {
        (beat.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await?;

    let acked: Acked = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let raw_failed = Arc::new(AtomicU64::new(0));
    let (gateway_ok, raw_ok) = (Successes::default(), Successes::default());
    let gateway = gateway_load(
        services.ingest_port,
        beat.clone(),
        acked.clone(),
        refused.clone(),
        gateway_ok.clone(),
    );
    let raw = raw_load(js.clone(), raw_failed.clone(), raw_ok.clone());
    let started = Instant::now();

    let mut injections: HashMap<&str, Vec<Injection>> = HashMap::new();
    for _ in 0..rounds {
        for stream in [EVENTS_STREAM, BARS_STREAM] {
            // Load runs for a while before each fault, so each one hits a system at work.
            let before = gateway_ok.count();
            wait_until_async("claims acked before the fault", FAULT_TIMEOUT, || async {
                (gateway_ok.count() >= before + 25).then_some(())
            })
            .await?;
            tokio::time::sleep(settle).await;
            let leader = leader_of(&js, stream, None).await?;
            let index = cluster
                .index_of(&leader)
                .ok_or_else(|| anyhow::anyhow!("{stream}'s leader {leader} is not one of ours"))?;
            let killed_at = Instant::now();
            eprintln!("kill -9 of {leader}, leader of {stream}");
            cluster.nodes[index].kill();
            // The fault lasts `down` under load (a new leader is elected meanwhile).
            leader_of(&js, stream, Some(&leader)).await?;
            tokio::time::sleep(down).await;
            tokio::task::block_in_place(|| cluster.nodes[index].restart())?;
            // Every replicated stream, the key-value buckets' (the leases,
            // the checkpoints) included: killing the next node while this one
            // still catches up on a bucket would leave that bucket without a
            // quorum, a double fault this test does not inject.
            for caught_up in replicated_streams(&js).await? {
                wait_current(&js, &caught_up, &leader).await?;
            }
            tokio::time::sleep(settle).await;
            let now = Instant::now();
            injections.entry(stream).or_default().push(Injection {
                killed: leader,
                gateway_gap: gateway_ok.longest_gap(killed_at, now),
                raw_gap: raw_ok.longest_gap(killed_at, now),
            });
        }
    }
    let skipped = gateway.stop().await? + raw.stop().await?;
    beat_tracker.abort();
    let load_secs = started.elapsed().as_secs_f64();

    // Every service carried on by itself.
    let mut carried_on = Vec::new();
    for (i, (pulse, _)) in services.pulses.iter_mut().enumerate() {
        carried_on.push((format!("pulse {}", i + 1), pulse.is_running()));
    }
    carried_on.push(("gateway".into(), services.ingest.is_running()));
    carried_on.push(("processor".into(), services.processor.is_running()));
    let stopped: Vec<&String> = carried_on.iter().filter(|(_, up)| !up).map(|(name, _)| name).collect();

    // The log is final: pulses stopped, then the processor once it folded it all.
    for (pulse, _) in &services.pulses {
        pulse.signal(Signal::Term)?;
    }
    for (pulse, _) in &mut services.pulses {
        pulse.wait_exit(FAULT_TIMEOUT)?;
    }
    let last_seq = last_event_seq(&js, &[CLUSTER]).await?;
    if stopped.is_empty() {
        stop_processor_after(&mut services.processor, services.processor_port, last_seq).await?;
    }

    // Claims: each one acked is at its sequence, and no claim is stored twice.
    let claims = messages_on(&js, EVENTS_STREAM, &format!("backbeat.{CLUSTER}.claim")).await?;
    let mut stored: HashMap<&[u8], u64> = HashMap::new();
    for (_, payload) in &claims {
        *stored.entry(payload.as_slice()).or_default() += 1;
    }
    let by_seq: HashMap<u64, &[u8]> = claims.iter().map(|(seq, p)| (*seq, p.as_slice())).collect();
    let acked = acked.lock().expect("not poisoned").clone();
    let acked_lost = acked
        .iter()
        .filter(|(seq, payload)| by_seq.get(seq) != Some(&payload.as_bytes()))
        .count() as u64;
    let duplicated = stored.values().filter(|&&n| n > 1).count() as u64;

    // Beats: strictly increasing, no index twice.
    let beats = messages_on(&js, EVENTS_STREAM, &format!("backbeat.{CLUSTER}.beat")).await?;
    let indices: Vec<u64> = beats
        .iter()
        .map(|(_, payload)| {
            serde_json::from_slice::<serde_json::Value>(payload).map(|v| v["beat_index"].as_u64().unwrap_or(0))
        })
        .collect::<Result<_, _>>()?;
    let beats_out_of_order = indices.windows(2).filter(|pair| pair[1] <= pair[0]).count() as u64;

    // Reports: the live ones are the offline fold of the exported log.
    let mut live = String::new();
    for (_, payload) in messages_on(&js, BARS_STREAM, &format!("backbeat.{CLUSTER}.bar")).await? {
        live.push_str(std::str::from_utf8(&payload)?);
        live.push('\n');
    }
    let folded = fold_of_the_exported_log(&urls, CLUSTER, dir.path())?;
    let (live_lines, folded_lines): (Vec<&str>, Vec<&str>) = (live.lines().collect(), folded.lines().collect());
    let differing = live_lines.iter().zip(&folded_lines).filter(|(a, b)| a != b).count()
        + live_lines.len().abs_diff(folded_lines.len());

    let refused = refused.load(Ordering::Relaxed);
    let raw_failed = raw_failed.load(Ordering::Relaxed);
    for (stream, list) in &injections {
        let gateway_gap = list.iter().map(|i| i.gateway_gap).max().unwrap_or_default();
        let raw_gap = list.iter().map(|i| i.raw_gap).max().unwrap_or_default();
        let killed: Vec<&str> = list.iter().map(|i| i.killed.as_str()).collect();
        FaultRecord {
            fault: format!("kill -9 + restart of the {stream} leader (3 nodes, R3)"),
            injected: list.len() as u64,
            checked: "acked claims stored once, beats increasing, reports = fold, node catches up".into(),
            acked_lost: Some(acked_lost),
            duplicated: Some(duplicated),
            differing_reports: Some(differing as u64),
            longest_unavailable_ms: Some(gateway_gap.as_secs_f64() * 1000.0),
            reference_unavailable_ms: Some(raw_gap.as_secs_f64() * 1000.0),
            notes: format!(
                "killed {killed:?}; whole run: {} claims acked, {refused} refused, {} reports, {} beats, \
                 {raw_failed} raw publishes failed, {skipped} ticks skipped, {load_secs:.0} s of load; \
                 unavailable = longest time without a stored claim (gateway) / publish (raw); tolerance {} ms",
                acked.len(),
                live_lines.len(),
                indices.len(),
                TOLERANCE.as_millis()
            ),
        }
        .record()?;
    }

    if !stopped.is_empty() {
        let mut logs = String::new();
        for name in ["backbeat-ingest", "backbeat-processor"] {
            logs.push_str(&log_summary(dir.path(), name));
        }
        panic!("services that did not carry on: {stopped:?}\n{logs}");
    }
    assert_eq!(acked_lost, 0, "claims answered ok and not stored at their sequence");
    assert_eq!(duplicated, 0, "claims stored more than once");
    assert_eq!(beats_out_of_order, 0, "beats not strictly increasing: {indices:?}");
    assert_eq!(
        folded, live,
        "the live reports differ from the fold of the exported log"
    );
    assert!(live_lines.len() >= 3, "only {} reports", live_lines.len());
    assert!(!acked.is_empty());
    for (stream, list) in &injections {
        for injection in list {
            assert!(
                injection.gateway_gap <= injection.raw_gap + TOLERANCE,
                "killing {} (leader of {stream}): the gateway stored no claim for {:?}, raw JetStream \
                 published nothing for {:?} (tolerance {TOLERANCE:?})",
                injection.killed,
                injection.gateway_gap,
                injection.raw_gap
            );
        }
    }
    Ok(())
}
