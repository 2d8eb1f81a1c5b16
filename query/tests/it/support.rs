//! What the tests share: a `backbeat-query serve` child process and a client for its HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use backbeat_schemas::window::window_id;
use backbeat_tests::{wait_until, wait_until_async, ChildGuard};

/// How long a test waits for anything (a debug build on a loaded 2-core machine).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The query binary built by this `cargo test`.
pub fn query_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_backbeat-query"))
}

/// A `backbeat-query serve` child (SIGKILL on drop), its stderr in a file.
pub struct QueryServer {
    _child: ChildGuard,
    pub port: u16,
    /// The pg-wire port, when started with `--pg-listen`.
    pub pg_port: Option<u16>,
    log: PathBuf,
    http: reqwest::Client,
    token: Option<String>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl QueryServer {
    /// Starts `serve` against `nats_url` with `args`, on port 0 (read from its
    /// log, so no other process can take it in between), and waits until ready.
    pub async fn start(nats_url: &str, dir: &Path, args: &[&str]) -> QueryServer {
        QueryServer::start_with_env(nats_url, dir, args, &[]).await
    }

    /// As [`QueryServer::start`], with `env` set for the child.
    pub async fn start_with_env(nats_url: &str, dir: &Path, args: &[&str], env: &[(&str, String)]) -> QueryServer {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let number = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("query-{}-{number}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("creating the query's log file");
        let mut command = Command::new(query_bin());
        command
            .args(["serve", "--nats", nats_url, "--listen", "127.0.0.1:0"])
            .args(args);
        if !args.iter().any(|a| *a == "--archive" || *a == "--data-dir") {
            // Never the default ./backbeat-query-data of the test's working directory.
            command.arg("--data-dir").arg(dir.join(format!("query-data-{number}")));
        }
        command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = ChildGuard::spawn("backbeat-query serve", &mut command).expect("starting backbeat-query");
        let port = wait_until("the query's HTTP address in its log", TIMEOUT, || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match listening_port(&text, "HTTP listening") {
                Some(port) => Some(port),
                None => (!child.is_running()).then_some(0),
            }
        })
        .expect("the query server listens or exits");
        let token = args
            .iter()
            .position(|a| *a == "--token")
            .map(|i| args[i + 1].to_string());
        let pg_port = if args.contains(&"--pg-listen") {
            let text = wait_until("the pg-wire address in the query's log", TIMEOUT, || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("pg-wire listening").then_some(text)
            })
            .expect("the query server listens on pg-wire");
            listening_port(&text, "pg-wire listening")
        } else {
            None
        };
        let server = QueryServer {
            _child: child,
            port,
            pg_port,
            log,
            http: reqwest::Client::new(),
            token,
        };
        assert_ne!(port, 0, "backbeat-query exited\n{}", server.log_tail());
        server.wait_ready().await;
        server
    }

    pub async fn wait_ready(&self) {
        let result = wait_until_async("backbeat-query to be ready", TIMEOUT, || async {
            let answer = self.get("/ready").await?;
            (answer.status == 200).then_some(())
        })
        .await;
        if let Err(e) = result {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn get(&self, path: &str) -> Option<Answer> {
        let mut request = self.http.get(format!("{}{path}", self.url()));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        answer(request).await
    }

    /// `POST /api/v1/sql` with `Accept: accept`, with the server's token.
    pub async fn sql_as(&self, sql: &str, accept: &str) -> Answer {
        self.sql_with(sql, accept, self.token.as_deref()).await
    }

    pub async fn sql_with(&self, sql: &str, accept: &str, token: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/api/v1/sql", self.url()))
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": sql }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        match answer(request).await {
            Some(answer) => answer,
            None => panic!("no answer to {sql:?}\n{}", self.log_tail()),
        }
    }

    /// A query answered 200 in JSON: its rows.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        let answer = self.sql_as(sql, "application/json").await;
        assert_eq!(answer.status, 200, "{sql}: {}", answer.text());
        serde_json::from_value(answer.json()["rows"].clone()).expect("rows are arrays")
    }

    /// `SELECT count(*) FROM table`.
    pub async fn count(&self, table: &str) -> u64 {
        let rows = self.rows(&format!("SELECT count(*) FROM {table}")).await;
        rows[0][0].as_u64().expect("a count")
    }

    /// One sample's value from `/metrics` (`name` with its labels as rendered).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").await?.text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Waits until the tail has read `seq` of `stream` (from `/api/v1/status`).
    pub async fn wait_read(&self, stream: &str, seq: u64) {
        let result = wait_until_async(&format!("the tail to read {stream} through {seq}"), TIMEOUT, || async {
            let status = self.get("/api/v1/status").await?.json();
            (status["tail"]["streams"][stream]["last_seq"].as_u64()? >= seq).then_some(())
        })
        .await;
        if let Err(e) = result {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    /// The libpq connection string of the pg-wire port (user and database `backbeat`).
    pub fn pg_conninfo(&self) -> String {
        let port = self.pg_port.expect("started with --pg-listen");
        format!("host=127.0.0.1 port={port} user=backbeat dbname=backbeat")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- query log ({}) ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Option<Answer> {
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.bytes().await.ok()?.to_vec();
    Some(Answer {
        status,
        content_type,
        body,
    })
}

/// The port of the "`marker` addr=127.0.0.1:PORT" log line.
fn listening_port(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Creates the SPEC §1 streams as every service would.
pub async fn ensure_streams(js: &async_nats::jetstream::Context) {
    backbeat_service::streams::ensure_all_streams(js, backbeat_service::streams::StreamOptions::default())
        .await
        .expect("creating the streams");
}

/// A valid BarReport of `cluster`'s window `window` (bar length 4), with one issue.
pub fn report(cluster: &str, window: u64, agents: u64) -> String {
    let id = window_id(cluster, 4, window);
    let (from, to) = (window * 4, window * 4 + 3);
    format!(
        r#"{{"type":"backbeat.barreport.v1","window_id":"{id}","from_beat":{from},"to_beat":{to},"agents_reporting":{agents},"on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[{{"code":"missing_beats","count":2,"sample":["1","2"]}}],"cluster_id":"{cluster}","window_index":{window},"bar_length":4,"beats_observed":2,"claims_accepted":1,"claims_late":0,"claims_rejected":0,"tempo_bpm":60,"seq_first":1,"seq_last":3}}"#
    )
}

/// A valid beat frame of `cluster` (bar length 4) with HLC `hlc`.
pub fn beat(cluster: &str, index: u64, hlc: &str) -> String {
    let window = index / 4;
    let phase = match index % 4 {
        0 => "plan",
        3 => "review",
        _ => "execution",
    };
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{phase}","hlc":"{hlc}","deadline_at":"2026-01-01T00:00:01Z","tempo_bpm":60,"window_id":"{}"}}"#,
        index.is_multiple_of(4),
        window_id(cluster, 4, window)
    )
}

/// Publishes to JetStream; the stream sequence.
pub async fn publish(js: &jetstream::Context, subject: &str, payload: String) -> u64 {
    js.publish(subject.to_string(), payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// The limits flags of the refusal tests: 5 rows, 1 MB of result, 1 MB of
/// query memory, 3 s, one query at a time.
pub const LIMITS: [&str; 10] = [
    "--max-result-rows",
    "5",
    "--max-result-bytes",
    "1000000",
    "--query-memory-bytes",
    "1000000",
    "--query-timeout-ms",
    "3000",
    "--max-concurrent-queries",
    "1",
];

/// Every kind of statement the read-only rules refuse, with what the
/// refusal names.
pub const FORBIDDEN: [(&str, &str); 11] = [
    ("INSERT INTO claims VALUES (1)", "INSERT INTO"),
    ("UPDATE claims SET agent_id = 'x'", "UPDATE"),
    ("DELETE FROM claims", "DELETE FROM"),
    ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
    ("DROP TABLE claims", "DROP TABLE"),
    (
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "CREATE EXTERNAL TABLE",
    ),
    ("COPY (SELECT 1) TO '/tmp/backbeat-query-copy.csv'", "COPY"),
    ("SET datafusion.execution.batch_size = 1", "SET"),
    ("EXPLAIN INSERT INTO claims VALUES (1)", "INSERT INTO"),
    ("SELECT 1 INTO t", "read-only"),
];
