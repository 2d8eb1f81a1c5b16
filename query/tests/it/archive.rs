//! The Parquet archive: archive + tail equal the streams (no row twice, none
//! missing) across seals, across a kill -9 of `serve` and a restart, and
//! across a restart that lost the streams' positions (a crash between
//! writing files and recording the positions); pruning shown by `EXPLAIN
//! ANALYZE`; `sql --archive` offline; the S3 path against a local
//! S3-compatible server (moto).

use std::path::Path;
use std::process::{Command, Stdio};

use async_nats::jetstream;
use async_nats::HeaderMap;
use backbeat_schemas::window::window_id;
use backbeat_tests::{free_port, wait_until_async, ChildGuard, NatsServer};

use crate::support::{ensure_streams, query_bin, QueryServer, TIMEOUT};

const BAR: u64 = 4;
/// 2026-12-04T00:00:00Z in milliseconds: the beats' HLC times start there.
const DAY_MS: u64 = 1_796_342_400_000;

/// What was published, by table: each row's stream sequence.
#[derive(Debug, Default, Clone)]
struct Published {
    claims: Vec<u64>,
    beats: Vec<u64>,
    bars: Vec<u64>,
    rejects: Vec<u64>,
    /// The reports' documents, as published.
    reports: Vec<String>,
}

/// A cluster's log, window by window, as the pulse, gateway and processor would write it.
struct ClusterLog {
    cluster: String,
    next_window: u64,
    /// The events of the window last published, not yet reported: (seq_first, seq_last).
    open: Option<(u64, u64, u64)>,
}

async fn publish(js: &jetstream::Context, subject: &str, payload: String) -> u64 {
    js.publish(subject.to_string(), payload.into())
        .await
        .expect("publishing")
        .await
        .expect("the stream's ack")
        .sequence
}

fn beat(cluster: &str, index: u64) -> String {
    let phase = match index % BAR {
        0 => "plan",
        3 => "review",
        _ => "execution",
    };
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{phase}","hlc":"{:x}:0000:0001","deadline_at":"2026-12-04T00:00:01Z","tempo_bpm":60,"window_id":"{}"}}"#,
        index.is_multiple_of(BAR),
        DAY_MS + index * 1000,
        window_id(cluster, BAR, index / BAR)
    )
}

fn claim(agent: &str, beat_index: u64) -> String {
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}","beat_index":{beat_index},"state":"executing","beats_left":2,"progress":0.5,"hlc":"{:x}:0000:0002"}}"#,
        DAY_MS + beat_index * 1000 + 10
    )
}

fn report(cluster: &str, window: u64, seq_first: u64, seq_last: u64) -> String {
    let id = window_id(cluster, BAR, window);
    let (from, to) = (window * BAR, window * BAR + BAR - 1);
    format!(
        r#"{{"type":"backbeat.barreport.v1","window_id":"{id}","from_beat":{from},"to_beat":{to},"agents_reporting":2,"on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[],"cluster_id":"{cluster}","window_index":{window},"bar_length":{BAR},"beats_observed":4,"claims_accepted":2,"claims_late":0,"claims_rejected":0,"tempo_bpm":60,"seq_first":{seq_first},"seq_last":{seq_last}}}"#
    )
}

impl ClusterLog {
    fn new(cluster: &str) -> Self {
        ClusterLog {
            cluster: cluster.to_string(),
            next_window: 0,
            open: None,
        }
    }

    /// Publishes `windows` more windows (4 beats, 2 claims each), each
    /// window's report after the first beat of the next, and a dead letter.
    async fn publish(&mut self, js: &jetstream::Context, windows: u64, published: &mut Published) {
        let c = self.cluster.clone();
        for _ in 0..windows {
            let window = self.next_window;
            self.next_window += 1;
            let mut first = 0;
            let mut last = 0;
            for offset in 0..BAR {
                let index = window * BAR + offset;
                let seq = publish(js, &format!("backbeat.{c}.beat"), beat(&c, index)).await;
                published.beats.push(seq);
                if offset == 0 {
                    first = seq;
                    // The first beat of this window closes the previous one: its report.
                    if let Some((w, f, l)) = self.open.take() {
                        let document = report(&c, w, f, l);
                        let bar = publish(js, &format!("backbeat.{c}.bar"), document.clone()).await;
                        published.bars.push(bar);
                        published.reports.push(document);
                    }
                }
                if offset == 1 {
                    for agent in ["a", "b"] {
                        let seq = publish(js, &format!("backbeat.{c}.claim"), claim(agent, index)).await;
                        published.claims.push(seq);
                    }
                }
                last = seq;
            }
            self.open = Some((window, first, last));
        }
        let mut headers = HeaderMap::new();
        headers.insert("Backbeat-Reason", "invalid_json");
        let seq = js
            .publish_with_headers(format!("backbeat.{c}.reject"), headers, "{oops".into())
            .await
            .expect("publishing")
            .await
            .expect("the stream's ack")
            .sequence;
        published.rejects.push(seq);
    }
}

/// Every table's stream sequences as SQL sees them, sorted; panics at once on a row seen twice.
async fn seen(server: &QueryServer) -> Published {
    let column = |rows: Vec<Vec<serde_json::Value>>| -> Vec<u64> {
        let seqs: Vec<u64> = rows.iter().map(|r| r[0].as_u64().expect("a sequence")).collect();
        for pair in seqs.windows(2) {
            assert!(
                pair[0] < pair[1],
                "stream_seq {} is seen twice\n{}",
                pair[0],
                server.log_tail()
            );
        }
        seqs
    };
    let query = |table: &str| format!("SELECT stream_seq FROM {table} ORDER BY stream_seq");
    Published {
        claims: column(server.rows(&query("claims")).await),
        beats: column(server.rows(&query("beats")).await),
        bars: column(server.rows(&query("bar_reports")).await),
        rejects: column(server.rows(&query("rejects")).await),
        reports: Vec::new(),
    }
}

fn same(a: &Published, b: &Published) -> bool {
    let sorted = |v: &Vec<u64>| {
        let mut v = v.clone();
        v.sort_unstable();
        v
    };
    sorted(&a.claims) == sorted(&b.claims)
        && sorted(&a.beats) == sorted(&b.beats)
        && sorted(&a.bars) == sorted(&b.bars)
        && sorted(&a.rejects) == sorted(&b.rejects)
}

/// Waits until SQL sees exactly what was published (never a row twice on
/// the way), and the writer has sealed every report it holds.
async fn wait_equal(server: &QueryServer, published: &Published) {
    let result = wait_until_async(
        "archive + tail to equal the streams, reports sealed",
        TIMEOUT,
        || async {
            let seen = seen(server).await;
            let status = server.get("/api/v1/status").await?.json();
            let lag = server.metric("backbeat_query_archive_lag_windows").await?;
            let writer = status["archive"]["writer"].as_bool()?;
            let files = status["archive"]["holds"]["bar_reports"]["files"].as_u64()?;
            // Every report stored is archived once the bars' position passed the last one.
            let bars_position = status["archive"]["positions"]["BACKBEAT_BARS"].as_u64()?;
            let last_bar = published.bars.iter().max().copied().unwrap_or(0);
            (same(&seen, published) && writer && lag == 0.0 && files > 0 && bars_position >= last_bar).then_some(())
        },
    )
    .await;
    if let Err(e) = result {
        let seen = seen(server).await;
        panic!("{e}: seen {seen:?}, published {published:?}\n{}", server.log_tail());
    }
}

/// Waits until SQL on a node sees exactly what was published (never a row twice on the way).
async fn wait_same(server: &QueryServer, published: &Published) {
    let result = wait_until_async("archive + tail to equal the streams", TIMEOUT, || async {
        same(&seen(server).await, published).then_some(())
    })
    .await;
    if let Err(e) = result {
        let seen = seen(server).await;
        panic!("{e}: seen {seen:?}, published {published:?}\n{}", server.log_tail());
    }
}

/// How many rows of each table the tail holds in memory (the rest is archived).
async fn held(server: &QueryServer, table: &str) -> u64 {
    let status = server.get("/api/v1/status").await.expect("status").json();
    status["tail"]["tables"][table]["rows_held"]
        .as_u64()
        .expect("rows_held")
}

fn serve_args(archive: &str) -> Vec<String> {
    [
        "--bar-length",
        "4",
        "--archive",
        archive,
        "--seal-interval-ms",
        "100",
        "--archive-refresh-ms",
        "100",
        "--lease-ttl-ms",
        "1000",
        "--archive-row-group-rows",
        "2",
    ]
    .map(str::to_string)
    .to_vec()
}

async fn start(nats: &NatsServer, dir: &Path, args: &[String], env: &[(&str, String)]) -> QueryServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    QueryServer::start_with_env(&nats.url(), dir, &args, env).await
}

/// `sql --archive` offline: its CSV output.
fn offline(archive: &str, sql: &str, format: &str, env: &[(&str, String)]) -> String {
    let output = Command::new(query_bin())
        .args(["sql", sql, "--archive", archive, "--format", format])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("running backbeat-query sql");
    assert!(
        output.status.success(),
        "sql --archive: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

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

/// The local S3-compatible server, or a clear failure naming how to install it.
fn moto_server() -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("moto_server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "moto_server (a local S3-compatible server) is not on PATH: install it with `bash deploy/install-moto.sh`"
        )
    })
}

#[tokio::test]
async fn the_archive_on_s3_equals_the_streams_and_reads_offline() {
    let moto = moto_server();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let _moto = ChildGuard::spawn("moto_server", &mut command).expect("starting moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until_async("moto_server to create the bucket", TIMEOUT, || async {
        let response = http.put(format!("{endpoint}/backbeat")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await
    .expect("a bucket on moto_server");
    let env = [
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
    ];

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
