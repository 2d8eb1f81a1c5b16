//! What the archive's tests share: a cluster's log as the pulse, gateway and
//! processor would write it (published straight to the streams), what SQL
//! sees of it, `serve` with a quick archive, `sql --archive` offline, and the
//! local S3-compatible server (moto). Used by `archive` and by the fault
//! test of two query nodes (`nodes`).

use std::path::Path;
use std::process::{Command, Stdio};

use async_nats::jetstream;
use async_nats::HeaderMap;
use backbeat_schemas::window::window_id;
use backbeat_tests::{free_port, wait_until_async, ChildGuard, NatsServer};

use crate::support::{publish, query_bin, QueryServer, TIMEOUT};

pub const BAR: u64 = 4;
/// 2026-12-04T00:00:00Z in milliseconds: the beats' HLC times start there.
const DAY_MS: u64 = 1_796_342_400_000;

/// What was published, by table: each row's stream sequence.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub claims: Vec<u64>,
    pub beats: Vec<u64>,
    pub bars: Vec<u64>,
    pub rejects: Vec<u64>,
    /// The reports' documents, as published.
    pub reports: Vec<String>,
}

/// A cluster's log, window by window, as the pulse, gateway and processor would write it.
pub struct ClusterLog {
    cluster: String,
    next_window: u64,
    /// The events of the window last published, not yet reported: (seq_first, seq_last).
    open: Option<(u64, u64, u64)>,
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
    pub fn new(cluster: &str) -> Self {
        ClusterLog {
            cluster: cluster.to_string(),
            next_window: 0,
            open: None,
        }
    }

    /// Publishes `windows` more windows (4 beats, 2 claims each), each
    /// window's report after the first beat of the next, and a dead letter.
    pub async fn publish(&mut self, js: &jetstream::Context, windows: u64, published: &mut Published) {
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
pub async fn seen(server: &QueryServer) -> Published {
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

pub fn same(a: &Published, b: &Published) -> bool {
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
pub async fn wait_equal(server: &QueryServer, published: &Published) {
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
pub async fn wait_same(server: &QueryServer, published: &Published) {
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
pub async fn held(server: &QueryServer, table: &str) -> u64 {
    let status = server.get("/api/v1/status").await.expect("status").json();
    status["tail"]["tables"][table]["rows_held"]
        .as_u64()
        .expect("rows_held")
}

pub fn serve_args(archive: &str) -> Vec<String> {
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

pub async fn start(nats: &NatsServer, dir: &Path, args: &[String], env: &[(&str, String)]) -> QueryServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    QueryServer::start_with_env(&nats.url(), dir, &args, env).await
}

/// `sql --archive` offline: its CSV output.
pub fn offline(archive: &str, sql: &str, format: &str, env: &[(&str, String)]) -> String {
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

/// A running moto_server with bucket `backbeat`, and the environment that
/// points the AWS SDK settings of `serve` and `sql` at it.
pub async fn start_moto(dir: &Path) -> (ChildGuard, [(&'static str, String); 4]) {
    let moto = moto_server();
    let port = free_port();
    let log = std::fs::File::create(dir.join("moto.log")).unwrap();
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = ChildGuard::spawn("moto_server", &mut command).expect("starting moto_server");
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
        ("AWS_ENDPOINT_URL", endpoint),
    ];
    (child, env)
}
