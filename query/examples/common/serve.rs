//! What the query benchmarks share besides the history: a `backbeat-query
//! serve` child (the binary built beside the examples, with the same
//! profile), the engine as `serve` builds it, a memory reading of a process,
//! and order statistics.

// Each benchmark includes this file and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use backbeat_query::archive::Archive;
use backbeat_query::engine::{QueryEngine, QueryLimits, SpillLimit};
use backbeat_query::metrics::Metrics;
use backbeat_query::tables::TailTables;
use backbeat_tests::{ChildGuard, Signal};

/// How long the child may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `backbeat-query` binary of this build: examples are built in
/// `target/{profile}/examples/`, the binary in `target/{profile}/`.
pub fn query_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().and_then(Path::parent).context("the example's directory")?;
    let binary = profile_dir.join("backbeat-query");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it with the examples, \
         `cargo build --profile release-query -p backbeat-query --bin backbeat-query --examples`",
        binary.display()
    );
    Ok(binary)
}

/// A `backbeat-query serve` child: SIGTERM when stopped, SIGKILL when dropped.
pub struct ServeChild {
    child: ChildGuard,
    pub http_url: String,
    pub pg_port: Option<u16>,
    log: PathBuf,
    http: reqwest::Client,
}

impl ServeChild {
    /// Starts `serve --nats nats_url --listen 127.0.0.1:0 args…` (its log in
    /// `log`) and waits until it listens (not until it is ready).
    pub fn start(nats_url: &str, args: &[&str], log: &Path) -> anyhow::Result<ServeChild> {
        let stderr = std::fs::File::create(log)?;
        let mut command = Command::new(query_binary()?);
        command
            .args(["serve", "--nats", nats_url, "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = ChildGuard::spawn("backbeat-query serve", &mut command)?;
        let wants_pg = args.contains(&"--pg-listen");
        let started = Instant::now();
        let (http_port, pg_port) = loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let http = listening_port(&text, "HTTP listening");
            let pg = listening_port(&text, "pg-wire listening");
            if let Some(http) = http.filter(|_| !wants_pg || pg.is_some()) {
                break (http, pg);
            }
            anyhow::ensure!(child.is_running(), "backbeat-query serve exited:\n{text}");
            anyhow::ensure!(
                started.elapsed() < START_TIMEOUT,
                "backbeat-query serve did not listen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(ServeChild {
            child,
            http_url: format!("http://127.0.0.1:{http_port}"),
            pg_port,
            log: log.to_path_buf(),
            http: reqwest::Client::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.http_url)).send().await?;
        Ok(response.json().await?)
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = self.http.get(format!("{}/ready", self.http_url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(started.elapsed() < START_TIMEOUT, "not ready:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /api/v1/sql` in JSON: the whole body, read (not parsed).
    pub async fn sql_json(&self, sql: &str) -> anyhow::Result<bytes::Bytes> {
        let response = self
            .http
            .post(format!("{}/api/v1/sql", self.http_url))
            .header("accept", "application/json")
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(
            status.is_success(),
            "{sql}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        Ok(body)
    }

    /// The libpq connection string of its pg-wire port.
    pub fn pg_conninfo(&self) -> String {
        let port = self.pg_port.expect("started with --pg-listen");
        format!("host=127.0.0.1 port={port} user=backbeat dbname=backbeat")
    }

    /// SIGTERM (the archive's lease is released), and waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.child.signal(Signal::Term)?;
        self.child.wait_exit(Duration::from_secs(20))?;
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The port of the "`marker` addr=127.0.0.1:PORT" log line.
fn listening_port(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let after = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `serve`'s default limits (its flags' defaults), with `memory_bytes` of
/// query memory; spills in the system's temporary directory.
pub fn serve_limits(memory_bytes: usize) -> QueryLimits {
    QueryLimits {
        memory_bytes,
        timeout: Duration::from_secs(30),
        result_rows_max: 100_000,
        result_bytes_max: 64 << 20,
        concurrent_max: 4,
        spill: Some(SpillLimit {
            dir: std::env::temp_dir().join(format!("backbeat-bench-spill-{}", std::process::id())),
            bytes_max: 4 << 30,
        }),
    }
}

/// The engine over the archive at `dir` as `serve` builds it: an empty tail
/// holding the archive's listing, and queries on a runtime of their own of
/// `threads` workers (`--query-threads`, default 2).
pub async fn engine_over(dir: &Path, limits: QueryLimits, threads: usize) -> anyhow::Result<QueryEngine> {
    let archive = Archive::open(dir.to_str().context("a UTF-8 path")?)?;
    let mut tables = TailTables::new(crate::history::BAR, 1_000_000);
    tables.install(archive.list().await?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("bench-query-sql")
        .enable_all()
        .build()?;
    // As serve's: lives as long as the process.
    let runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(runtime));
    let engine = QueryEngine::new(
        Arc::new(Mutex::new(tables)),
        archive.store.clone(),
        limits,
        Some(runtime.handle().clone()),
        Metrics::new()?,
    )?;
    Ok(engine)
}

/// `VmRSS` and `VmHWM` of process `pid`, in MB.
pub fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// The `p` quantile of `values` (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `values` in the order measured, for the table (`1.23, 1.19, …`).
pub fn listed(values: &[f64], scale: f64, decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{:.decimals$}", v * scale))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `--name value` flag of the command line, or `default`.
pub fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} {v}: not a valid value")))
        .unwrap_or(default)
}

/// The `uptime` load averages, for the report's conditions.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
