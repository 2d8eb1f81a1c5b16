//! The whole system on real processes, for the end-to-end tests: nats-server,
//! one pulse node, the gateway and the processor, each logging to a file in a
//! temporary directory; the offline fold of the exported log to compare the
//! live reports with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use backbeat_tests::{bin_path, free_port, http_get, wait_until_async, ChildGuard, NatsServer};

pub const CLUSTER: &str = "e2e";
pub const BAR: &str = "8";
pub const LATENESS: &str = "1";
/// Generous: debug builds of five processes on a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);

pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = Command::new(bin_path(name));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn(name, &mut command)
}

pub async fn wait_ready(name: &str, port: u16) -> anyhow::Result<()> {
    wait_until_async(&format!("{name} /ready on port {port}"), TIMEOUT, || async move {
        http_get(port, "/ready").and_then(|(status, _)| (status == 200).then_some(()))
    })
    .await
}

/// As [`wait_ready`]; a failure ends with the last lines of `{logs}/{name}.log`.
pub async fn wait_ready_logged(name: &str, port: u16, logs: &Path) -> anyhow::Result<()> {
    wait_ready(name, port).await.map_err(|e| {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        e.context(format!(
            "{name}'s log ends:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        ))
    })
}

pub fn run_ok(output: std::io::Result<Output>, what: &str) -> anyhow::Result<String> {
    let output = output?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// What [`Stack::start_with`] varies; the default is [`Stack::start`]'s system.
#[derive(Default)]
pub struct StackOptions {
    /// The server the system runs on (default: a plain single node).
    pub server: Option<NatsServer>,
    /// The cluster the pulse emits for (default [`CLUSTER`]).
    pub cluster: Option<&'static str>,
    /// Flags added to one service's command line, by binary name
    /// (`backbeat-pulse`, `backbeat-ingest`, `backbeat-processor`,
    /// `backbeat-query`): credentials, HTTP limits.
    pub extra_args: Vec<(&'static str, Vec<String>)>,
    /// Start `backbeat-query serve` too (HTTP and pg-wire).
    pub query: bool,
}

impl StackOptions {
    fn extra(&self, binary: &str) -> Vec<String> {
        self.extra_args
            .iter()
            .filter(|(name, _)| *name == binary)
            .flat_map(|(_, args)| args.iter().cloned())
            .collect()
    }
}

/// The query service of a stack.
pub struct QueryNode {
    pub child: ChildGuard,
    pub port: u16,
}

/// A running system: one pulse node (600 BPM, bars of 8), the gateway and the
/// processor; the query service when asked for.
pub struct Stack {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
    pub pulse: ChildGuard,
    pub pulse_port: u16,
    pub raft_port: u16,
    /// Kept to stop the gateway with the stack.
    pub ingest: ChildGuard,
    pub ingest_port: u16,
    pub processor: ChildGuard,
    pub processor_port: u16,
    pub query: Option<QueryNode>,
}

/// Spawns `name` with `args` and then `extra`.
fn spawn_with(name: &str, dir: &Path, args: &[&str], extra: &[String]) -> anyhow::Result<ChildGuard> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    spawn(name, dir, &all)
}

impl Stack {
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(mut options: StackOptions) -> anyhow::Result<Stack> {
        let server = match options.server.take() {
            Some(server) => server,
            None => NatsServer::start()?,
        };
        let cluster = options.cluster.unwrap_or(CLUSTER);
        let url = server.url();
        let dir = tempfile::tempdir()?;
        let logs = dir.path().to_path_buf();

        let pulse_port = free_port();
        let pulse_listen = format!("127.0.0.1:{pulse_port}");
        let raft_port = free_port();
        let raft_listen = format!("127.0.0.1:{raft_port}");
        let peers = format!("1={raft_listen}");
        let data_dir = logs.join("pulse-data");
        let secret = logs.join("raft-secret");
        std::fs::write(&secret, "an end-to-end test's shared raft secret")?;
        let token = logs.join("admin-token");
        std::fs::write(&token, "test-token")?;
        let pulse = spawn_with(
            "backbeat-pulse",
            &logs,
            &[
                "--nats",
                &url,
                "--node-id",
                "1",
                "--peers",
                &peers,
                "--listen",
                &pulse_listen,
                "--raft-listen",
                &raft_listen,
                "--raft-secret-file",
                path_str(&secret),
                "--admin-token-file",
                path_str(&token),
                "--data-dir",
                path_str(&data_dir),
                "--cluster",
                cluster,
                "--bpm",
                "600",
                "--bar-length",
                BAR,
                "--heartbeat-ms",
                "50",
                "--election-timeout-ms",
                "300",
            ],
            &options.extra("backbeat-pulse"),
        )?;
        let ingest_port = free_port();
        let ingest_listen = format!("127.0.0.1:{ingest_port}");
        let ingest = spawn_with(
            "backbeat-ingest",
            &logs,
            &["--nats", &url, "--listen", &ingest_listen],
            &options.extra("backbeat-ingest"),
        )?;
        let processor_port = free_port();
        let processor_listen = format!("127.0.0.1:{processor_port}");
        let processor = spawn_with(
            "backbeat-processor",
            &logs,
            &[
                "run",
                "--nats",
                &url,
                "--listen",
                &processor_listen,
                "--bar-length",
                BAR,
                "--lateness",
                LATENESS,
            ],
            &options.extra("backbeat-processor"),
        )?;
        let query = if options.query {
            let port = free_port();
            let child = spawn_with(
                "backbeat-query",
                &logs,
                &[
                    "serve",
                    "--nats",
                    &url,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                    path_str(&logs.join("query-data")),
                    "--bar-length",
                    BAR,
                ],
                &options.extra("backbeat-query"),
            )?;
            Some(QueryNode { child, port })
        } else {
            None
        };
        wait_ready_logged("backbeat-pulse", pulse_port, &logs).await?;
        wait_ready_logged("backbeat-ingest", ingest_port, &logs).await?;
        wait_ready_logged("backbeat-processor", processor_port, &logs).await?;
        if let Some(query) = &query {
            wait_ready_logged("backbeat-query", query.port, &logs).await?;
        }
        Ok(Stack {
            server,
            dir,
            pulse,
            pulse_port,
            raft_port,
            ingest,
            ingest_port,
            processor,
            processor_port,
            query,
        })
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Waits until the processor has folded the stream up to `last_seq`, then stops it.
    pub async fn stop_processor_after(&mut self, last_seq: u64) -> anyhow::Result<()> {
        let port = self.processor_port;
        wait_until_async("the processor to fold the whole stream", TIMEOUT, || async move {
            let (_, body) = http_get(port, "/api/v1/status")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status["last_seq"].as_u64()? >= last_seq).then_some(())
        })
        .await?;
        // Its last reports are published once their closing beat is folded; the
        // stream's count settles when the processor has acked them all.
        self.processor.signal(backbeat_tests::Signal::Term)?;
        self.processor.wait_exit(TIMEOUT)?;
        Ok(())
    }

    /// The cluster's events exported (`backbeat-processor export`) and folded
    /// offline (`fold --log`): the BarReports as JSON Lines.
    pub fn fold_of_the_exported_log(&self) -> anyhow::Result<String> {
        let processor_bin = bin_path("backbeat-processor");
        let export_path = self.dir.path().join("events.jsonl");
        run_ok(
            Command::new(&processor_bin)
                .args(["export", "--nats", &self.server.url(), "--cluster", CLUSTER, "--out"])
                .arg(&export_path)
                .output(),
            "export",
        )?;
        run_ok(
            Command::new(&processor_bin)
                .args(["fold", "--bar-length", BAR, "--lateness", LATENESS, "--log"])
                .arg(&export_path)
                .output(),
            "fold",
        )
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Every message `stream` holds on `subject`, in stream order: (sequence, payload).
pub async fn messages_on(js: &jetstream::Context, stream: &str, subject: &str) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let mut stream = js.get_stream(stream).await?;
    let state = stream.info().await?.state.clone();
    let mut found = Vec::new();
    if state.messages == 0 {
        return Ok(found);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await?;
        if message.subject.as_str() == subject {
            found.push((seq, message.payload.to_vec()));
        }
    }
    Ok(found)
}

/// The sum of every sample of the metric `name` (all its labels) on a
/// service's `/metrics`; `None` while the service does not answer.
pub fn metric_sum(port: u16, name: &str) -> Option<f64> {
    let (status, text) = http_get(port, "/metrics")?;
    (status == 200).then_some(())?;
    Some(
        text.lines()
            .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Waits until the metric `name` of the service on `port` is at least `at_least`.
pub async fn wait_for_metric(port: u16, name: &str, at_least: f64) -> anyhow::Result<f64> {
    wait_until_async(
        &format!("{name} >= {at_least} on port {port}"),
        TIMEOUT,
        || async move { metric_sum(port, name).filter(|&value| value >= at_least) },
    )
    .await
}
