//! The Parquet archive: archive + tail equal the streams (no row twice, none
//! missing) across seals, across a kill -9 of `serve` and a restart, and
//! across a restart that lost the streams' positions (a crash between
//! writing files and recording the positions); pruning shown by `EXPLAIN
//! ANALYZE`; `sql --archive` offline; the S3 path against a local
//! S3-compatible server (moto).

use std::path::Path;
use std::process::Command;

use async_nats::jetstream;
use backbeat_schemas::window::window_id;
use backbeat_tests::{wait_until_async, NatsServer};

use crate::archive_log::{
    held, offline, serve_args, start, start_moto, wait_equal, wait_same, ClusterLog, Published, BAR,
};
use crate::support::{ensure_streams, query_bin, TIMEOUT};

#[tokio::test]
async fn archive_and_tail_equal_the_streams_across_seals_kill_9_and_restarts() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap().to_string();
    let args = serve_args(&archive);
    let mut published = Published::default();
    let (mut a, mut b) = (ClusterLog::new("eu-1"), ClusterLog::new("us-2"));

    // Phase 1: a server seals what is reported.
    let server = start(&nats, dir.path(), &args, &[]).await;
    a.publish(&js, 6, &mut published).await;
    b.publish(&js, 3, &mut published).await;
    wait_equal(&server, &published).await;
    // Sealed rows leave the tail: only the open window of each cluster stays (its 2 claims).
    let left = wait_until_async("sealed rows to leave the tail", TIMEOUT, || async {
        let (claims, rejects) = (held(&server, "claims").await, held(&server, "rejects").await);
        (claims == 4 && rejects == 0).then_some(())
    })
    .await;
    if let Err(e) = left {
        panic!("{e}\n{}", server.log_tail());
    }

    // Phase 2: more while it runs (archive and tail together), then kill -9.
    a.publish(&js, 3, &mut published).await;
    b.publish(&js, 2, &mut published).await;
    wait_equal(&server, &published).await;
    a.publish(&js, 2, &mut published).await;
    drop(server); // SIGKILL, wherever the writer was

    // Phase 3: a restart resumes from the archive's record plus the positions.
    let server = start(&nats, dir.path(), &args, &[]).await;
    b.publish(&js, 2, &mut published).await;
    wait_equal(&server, &published).await;
    let status = server.get("/api/v1/status").await.unwrap().json();
    assert_eq!(status["archive"]["writer"], true, "{status}");
    assert!(status["archive"]["positions"]["BACKBEAT_EVENTS"].as_u64().unwrap() > 0);
    // The windows API answers every report, archived ones (sealed before the
    // restart, no longer in any tail) as well as the tail's, byte for byte.
    let windows = server.get("/api/v1/windows").await.unwrap();
    let mut reports = published.reports.clone();
    reports.sort_by_key(|document| {
        let report: serde_json::Value = serde_json::from_str(document).unwrap();
        (report["cluster_id"].to_string(), report["window_index"].as_u64())
    });
    assert_eq!(
        (windows.status, windows.text()),
        (200, format!("[{}]", reports.join(",")))
    );
    let first = window_id("eu-1", BAR, 0);
    let one = server.get(&format!("/api/v1/windows/{first}")).await.unwrap();
    assert_eq!((one.status, one.text()), (200, published.reports[0].clone()));
    let eu = server
        .get("/api/v1/windows?cluster=eu-1&from=2&to=3")
        .await
        .unwrap()
        .json();
    let indices: Vec<u64> = eu
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["window_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [2, 3]);
    drop(server);

    // Phase 4: positions lost (a crash after files were written, before the
    // positions were): the stream is read from its start, and what the
    // files hold is not taken twice.
    for stream in ["BACKBEAT_EVENTS", "BACKBEAT_BARS", "BACKBEAT_REJECTS"] {
        std::fs::remove_file(Path::new(&archive).join("_positions").join(stream)).unwrap();
    }
    let server = start(&nats, dir.path(), &args, &[]).await;
    a.publish(&js, 1, &mut published).await;
    wait_equal(&server, &published).await;
    let metrics = server.get("/metrics").await.unwrap().text();
    assert!(
        metrics.contains("backbeat_query_archive_files_total{table=\"claims\"}"),
        "{metrics}"
    );
    drop(server);

    // Offline over the archive alone: every sealed row, the same output formats.
    let sealed_claims = offline(&archive, "SELECT count(*) AS n FROM claims", "csv", &[]);
    let in_archive: u64 = sealed_claims.lines().nth(1).unwrap().parse().unwrap();
    assert!(
        in_archive > 0 && in_archive < published.claims.len() as u64,
        "{sealed_claims}"
    );
    let table = offline(
        &archive,
        "SELECT cluster_id, count(*) AS n FROM bar_reports GROUP BY 1 ORDER BY 1",
        "table",
        &[],
    );
    assert!(table.contains("| cluster_id | n  |"), "{table}");
    assert!(table.contains("| eu-1       | 11 |"), "{table}");
    let json = offline(&archive, "SELECT count(*) AS n FROM beats", "json", &[]);
    assert!(json.starts_with(r#"{"columns":[{"name":"n""#), "{json}");
    let refused = Command::new(query_bin())
        .args(["sql", "COPY claims TO '/tmp/x'", "--archive", &archive])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("42501"));
}

#[tokio::test]
async fn a_node_without_the_lease_serves_archive_and_tail_and_takes_over_after_a_kill_9() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive").to_str().unwrap().to_string();
    let args = serve_args(&archive);
    let mut published = Published::default();
    let mut a = ClusterLog::new("eu-1");
    let writer = start(&nats, dir.path(), &args, &[]).await;
    a.publish(&js, 4, &mut published).await;
    wait_equal(&writer, &published).await;

    // A second node waits for the lease and serves the archive's files and its own tail.
    let reader = start(&nats, dir.path(), &args, &[]).await;
    a.publish(&js, 3, &mut published).await;
    wait_equal(&writer, &published).await;
    wait_same(&reader, &published).await;
    let status = reader.get("/api/v1/status").await.unwrap().json();
    assert_eq!(status["archive"]["writer"], false, "{status}");
    assert_eq!(status["archive"]["lease"], "waiting", "{status}");
    // What the writer archived leaves the reader's tail too (its listing says so).
    let left = wait_until_async("archived rows to leave the reader's tail", TIMEOUT, || async {
        (held(&reader, "claims").await == 2).then_some(())
    })
    .await;
    if let Err(e) = left {
        panic!("{e}\n{}", reader.log_tail());
    }

    // The writer is killed: the reader takes the lease and archives on.
    drop(writer);
    a.publish(&js, 2, &mut published).await;
    wait_equal(&reader, &published).await;
}

/// The numbers of a pruning metric in `EXPLAIN ANALYZE` output:
/// `name=T total → M matched` (summed over the plan's lines).
fn pruning(plan: &str, name: &str) -> (u64, u64) {
    let (mut total, mut matched) = (0, 0);
    for part in plan.split(&format!("{name}=")).skip(1) {
        let words: Vec<&str> = part.split_whitespace().collect();
        total += words[0].parse::<u64>().unwrap_or(0);
        if let Some(i) = words.iter().position(|w| w.starts_with("matched")) {
            matched += words[i - 1].parse::<u64>().unwrap_or(0);
        }
    }
    (total, matched)
}

#[tokio::test]
async fn filters_on_cluster_window_and_beat_prune_files_and_row_groups() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive").to_str().unwrap().to_string();
    let server = start(&nats, dir.path(), &serve_args(&archive), &[]).await;
    let mut published = Published::default();
    let (mut a, mut b) = (ClusterLog::new("eu-1"), ClusterLog::new("us-2"));
    for _ in 0..3 {
        a.publish(&js, 4, &mut published).await;
        b.publish(&js, 4, &mut published).await;
        wait_equal(&server, &published).await;
    }
    let explain = |sql: &str| format!("EXPLAIN ANALYZE {sql}");
    let plan = |rows: Vec<Vec<serde_json::Value>>| -> String {
        rows.iter()
            .map(|r| {
                r.iter()
                    .map(|v| v.as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Cluster: the other cluster's files are pruned by their statistics.
    let by_cluster = plan(
        server
            .rows(&explain("SELECT count(*) FROM claims WHERE cluster_id = 'eu-1'"))
            .await,
    );
    let (files, matched) = pruning(&by_cluster, "files_ranges_pruned_statistics");
    assert!(files > matched && matched > 0, "{by_cluster}");
    // Window: files of other windows pruned, and row groups within.
    let by_window = plan(
        server
            .rows(&explain(
                "SELECT count(*) FROM claims WHERE cluster_id = 'eu-1' AND window_index = 5",
            ))
            .await,
    );
    let (files, matched) = pruning(&by_window, "files_ranges_pruned_statistics");
    assert!(files > matched, "{by_window}");
    let (groups, matched) = pruning(&by_window, "row_groups_pruned_statistics");
    assert!(groups > matched, "{by_window}");
    // Beat: row groups (two rows each, sorted by beat) pruned, and the answer right.
    let sql = "SELECT count(*) FROM claims WHERE beat_index = 21";
    let by_beat = plan(server.rows(&explain(sql)).await);
    let (groups, matched) = pruning(&by_beat, "row_groups_pruned_statistics");
    assert!(groups > matched && matched > 0, "{by_beat}");
    assert_eq!(server.rows(sql).await, vec![vec![serde_json::json!(4)]]);
    // Time: a range on hlc_time prunes row groups too.
    let by_time = plan(
        server
            .rows(&explain(
                "SELECT count(*) FROM beats WHERE hlc_time < TIMESTAMP '2026-12-04T00:00:03Z'",
            ))
            .await,
    );
    let (groups, matched) = pruning(&by_time, "row_groups_pruned_statistics");
    assert!(groups > matched, "{by_time}");
}

#[tokio::test]
async fn the_archive_on_s3_equals_the_streams_and_reads_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (_moto, env) = start_moto(dir.path()).await;

    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let url = "s3://backbeat/archive/v1";
    let args = serve_args(url);
    let server = start(&nats, dir.path(), &args, &env).await;
    let mut published = Published::default();
    let mut a = ClusterLog::new("eu-1");
    a.publish(&js, 5, &mut published).await;
    wait_equal(&server, &published).await;
    drop(server);
    let server = start(&nats, dir.path(), &args, &env).await;
    a.publish(&js, 2, &mut published).await;
    wait_equal(&server, &published).await;
    drop(server);
    let csv = offline(url, "SELECT count(*) AS n FROM bar_reports", "csv", &env);
    assert_eq!(csv, "n\n6\n");
}
