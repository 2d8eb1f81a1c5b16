//! Two query nodes on one archive (issue 22, item 4): two `serve` nodes on
//! one NATS and one archive on object storage (moto's S3). While the
//! clusters' logs grow at a steady rate:
//! - exactly one node writes the archive at a time (`/api/v1/status`
//!   `archive.writer`, sampled on both every 50 ms; at the end each node's
//!   metric `backbeat_query_archive_writer` says the same as its status);
//! - the writer is killed with -9 (once in CI, 10 times in the long mode,
//!   `BACKBEAT_FAULTS_LONG=1`): the other takes over writing within the
//!   lease TTL (plus [`TAKEOVER_MARGIN`]), and a restarted node joins as the
//!   reader;
//! - at the end both answer the same SQL with the same rows, archive + tail
//!   equal the streams, and the archive alone (`sql --archive`) holds no row
//!   twice and none missing below what it holds.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_tests::{wait_until_async, FaultRecord, NatsServer};

use crate::archive_log::{offline, serve_args, start, start_moto, wait_equal, wait_same, ClusterLog, Published};
use crate::support::{ensure_streams, QueryServer, TIMEOUT};

/// `--lease-ttl-ms` of [`serve_args`].
const LEASE_TTL: Duration = Duration::from_millis(1000);
/// Beyond the TTL, for the waiting node's next try (every TTL/10), its
/// listing of the archive on S3, and scheduling on a loaded 2-core machine.
const TAKEOVER_MARGIN: Duration = Duration::from_millis(1500);
const ARCHIVE: &str = "s3://backbeat/nodes/v1";

/// Whether the node on `port` says it writes the archive; `None` while it does not answer.
async fn is_writer(http: &reqwest::Client, port: u16) -> Option<bool> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/api/v1/status"))
        .send()
        .await
        .ok()?;
    let status: serde_json::Value = response.json().await.ok()?;
    status["archive"]["writer"].as_bool()
}

/// The stream sequences of `table` in the archive alone, as `sql --archive` reads them.
fn archived(table: &str, env: &[(&str, String)]) -> Vec<u64> {
    let csv = offline(
        ARCHIVE,
        &format!("SELECT stream_seq FROM {table} ORDER BY stream_seq"),
        "csv",
        env,
    );
    csv.lines()
        .skip(1)
        .map(|line| line.parse().expect("a sequence"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_archive_with_one_writer_and_take_over_after_kill_9() {
    let long = std::env::var("BACKBEAT_FAULTS_LONG").is_ok_and(|v| v == "1");
    let kills = if long { 10 } else { 1 };
    let dir = tempfile::tempdir().unwrap();
    let (_moto, env) = start_moto(dir.path()).await;
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let args = serve_args(ARCHIVE);
    let http = reqwest::Client::new();

    let first = start(&nats, dir.path(), &args, &env).await;
    wait_until_async("the first node to write the archive", TIMEOUT, || async {
        is_writer(&http, first.port).await.filter(|&w| w)
    })
    .await
    .unwrap();
    let mut nodes: Vec<QueryServer> = vec![first, start(&nats, dir.path(), &args, &env).await];

    // The load: a window of two clusters every 100 ms, straight into the streams.
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = {
        let (js, stop) = (js.clone(), stop_load.clone());
        tokio::spawn(async move {
            let mut published = Published::default();
            let mut logs = [ClusterLog::new("eu-1"), ClusterLog::new("us-2")];
            while !stop.load(Ordering::Relaxed) {
                for log in &mut logs {
                    log.publish(&js, 1, &mut published).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            published
        })
    };
    // Both nodes sampled: never two writers at once.
    let ports = Arc::new(Mutex::new(nodes.iter().map(|n| n.port).collect::<Vec<u16>>()));
    let (two_writers, samples) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (ports, two_writers, samples, stop, http) = (
            ports.clone(),
            two_writers.clone(),
            samples.clone(),
            stop_monitor.clone(),
            http.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now: Vec<u16> = ports.lock().unwrap().clone();
                let mut writers = 0;
                for port in now {
                    if is_writer(&http, port).await == Some(true) {
                        writers += 1;
                    }
                }
                if writers > 1 {
                    two_writers.fetch_add(1, Ordering::Relaxed);
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut takeovers = Vec::new();
    for kill in 0..kills {
        // A while under load, so the writer is sealing when it dies.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let writer = wait_until_async("a writer", TIMEOUT, || async {
            for (i, node) in nodes.iter().enumerate() {
                if is_writer(&http, node.port).await == Some(true) {
                    return Some(i);
                }
            }
            None
        })
        .await
        .unwrap();
        let killed = nodes.remove(writer);
        ports.lock().unwrap().retain(|&p| p != killed.port);
        let killed_at = Instant::now();
        drop(killed); // SIGKILL
        let survivor = nodes[0].port;
        let taken = wait_until_async("the other node to take over writing", TIMEOUT, || async {
            is_writer(&http, survivor).await.filter(|&w| w)
        })
        .await;
        if let Err(e) = taken {
            panic!("{e}\n{}", nodes[0].log_tail());
        }
        takeovers.push(killed_at.elapsed());
        eprintln!("kill {}: taken over in {:?}", kill + 1, takeovers.last().unwrap());
        // A restarted node joins as the reader.
        let restarted = start(&nats, dir.path(), &args, &env).await;
        ports.lock().unwrap().push(restarted.port);
        nodes.push(restarted);
    }
    stop_load.store(true, Ordering::Relaxed);
    let published = load.await.unwrap();
    wait_equal(&nodes[0], &published).await;
    wait_same(&nodes[1], &published).await;
    stop_monitor.store(true, Ordering::Relaxed);
    monitor.await.unwrap();

    // Both nodes answer the same SQL with the same rows.
    let queries = [
        "SELECT * FROM claims ORDER BY stream_seq",
        "SELECT * FROM beats ORDER BY stream_seq",
        "SELECT * FROM bar_reports ORDER BY cluster_id, window_index",
        "SELECT * FROM rejects ORDER BY stream_seq",
        "SELECT cluster_id, count(*) AS n, sum(claims_accepted) AS accepted FROM bar_reports GROUP BY 1 ORDER BY 1",
    ];
    let mut differing = Vec::new();
    for sql in queries {
        if nodes[0].rows(sql).await != nodes[1].rows(sql).await {
            differing.push(sql);
        }
    }
    // Each node's metric says what its status says.
    for node in &nodes {
        let writer = is_writer(&http, node.port).await.expect("the node answers");
        let metric = node.metric("backbeat_query_archive_writer").await;
        assert_eq!(metric, Some(if writer { 1.0 } else { 0.0 }), "{}", node.log_tail());
    }

    // The archive alone: no row twice, none missing below the highest it holds.
    let (mut twice, mut missing, mut foreign, mut rows) = (0u64, 0u64, 0u64, 0u64);
    for (table, published) in [
        ("claims", &published.claims),
        ("beats", &published.beats),
        ("bar_reports", &published.bars),
        ("rejects", &published.rejects),
    ] {
        let archived = archived(table, &env);
        rows += archived.len() as u64;
        twice += archived.windows(2).filter(|pair| pair[0] == pair[1]).count() as u64;
        let held: BTreeSet<u64> = archived.iter().copied().collect();
        let published: BTreeSet<u64> = published.iter().copied().collect();
        let highest = held.iter().next_back().copied().unwrap_or(0);
        missing += published
            .iter()
            .filter(|&&seq| seq <= highest && !held.contains(&seq))
            .count() as u64;
        foreign += held.difference(&published).count() as u64;
    }
    let longest = takeovers.iter().max().copied().unwrap_or_default();
    FaultRecord {
        fault: "kill -9 of the archive writer (2 query nodes, S3)".into(),
        injected: kills,
        checked: "one writer at a time, same rows on both, archive: no row twice or missing".into(),
        acked_lost: Some(missing),
        duplicated: Some(twice),
        differing_reports: Some(differing.len() as u64),
        longest_unavailable_ms: Some(longest.as_secs_f64() * 1000.0),
        reference_unavailable_ms: None,
        notes: format!(
            "unavailable = kill to the other node writing; lease TTL {} ms; {rows} rows archived; \
             {} samples, {} with two writers; lost = published rows missing from the archive",
            LEASE_TTL.as_millis(),
            samples.load(Ordering::Relaxed),
            two_writers.load(Ordering::Relaxed)
        ),
    }
    .record()
    .unwrap();

    assert_eq!(
        two_writers.load(Ordering::Relaxed),
        0,
        "two nodes said they wrote the archive at once"
    );
    assert!(differing.is_empty(), "the nodes answer differently: {differing:?}");
    assert_eq!(
        (twice, missing, foreign),
        (0, 0, 0),
        "archive rows twice, missing, not published"
    );
    assert!(rows > 0, "the archive holds rows");
    for takeover in &takeovers {
        assert!(
            *takeover <= LEASE_TTL + TAKEOVER_MARGIN,
            "the other node took over after {takeover:?}, beyond the lease TTL {LEASE_TTL:?} + {TAKEOVER_MARGIN:?}"
        );
    }
}
