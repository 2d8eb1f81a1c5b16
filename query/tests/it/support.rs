//! What the tests share: a `backbeat-query serve` child process and a client for its HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
            match listening_port(&text) {
                Some(port) => Some(port),
                None => (!child.is_running()).then_some(0),
            }
        })
        .expect("the query server listens or exits");
        let token = args
            .iter()
            .position(|a| *a == "--token")
            .map(|i| args[i + 1].to_string());
        let server = QueryServer {
            _child: child,
            port,
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

/// The port of the "HTTP listening addr=127.0.0.1:PORT" log line.
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("HTTP listening"))?;
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
