//! The whole system on real processes, for the end-to-end tests: nats-server
//! (or a cluster of them), the pulse group, the gateway and the processor, each logging to a file in a
//! temporary directory; the offline fold of the exported log to compare the
//! live reports with.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use backbeat_tests::{bin_path, free_port, http_get, wait_until_async, ChildGuard, NatsServer};

pub const CLUSTER: &str = "e2e";
pub const BAR: &str = "8";
pub const LATENESS: &str = "1";
/// Generous: debug builds of five processes on a loaded 2-core machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);

pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> anyhow::Result<ChildGuard> {
    spawn_named(name, name, dir, args)
}

/// As [`spawn`], the log file named `{log_name}.log` (for several processes of one binary).
pub fn spawn_named(log_name: &str, name: &str, dir: &Path, args: &[&str]) -> anyhow::Result<ChildGuard> {
    let log = std::fs::File::create(dir.join(format!("{log_name}.log")))?;
    let mut command = Command::new(bin_path(name));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    ChildGuard::spawn(log_name, &mut command)
}

pub async fn wait_ready(name: &str, port: u16) -> anyhow::Result<()> {
    wait_until_async(&format!("{name} /ready on port {port}"), TIMEOUT, || async move {
        http_get(port, "/ready").and_then(|(status, _)| (status == 200).then_some(()))
    })
    .await
}

/// As [`wait_ready`]; a failure ends with what [`log_summary`] shows of `{logs}/{log_name}.log`.
pub async fn wait_ready_logged(log_name: &str, port: u16, logs: &Path) -> anyhow::Result<()> {
    wait_ready(log_name, port)
        .await
        .map_err(|e| e.context(log_summary(logs, log_name)))
}

/// A service's warnings and errors (an exit's error comes before its
/// backtrace), then its last lines: of `{logs}/{log_name}.log`.
pub fn log_summary(logs: &Path, log_name: &str) -> String {
    let log = std::fs::read_to_string(logs.join(format!("{log_name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .filter(|line| {
            line.contains(" WARN ")
                || line.contains(" ERROR ")
                || line.starts_with("Error")
                || line.contains("panicked")
        })
        .copied()
        .collect();
    format!(
        "--- {log_name}'s warnings and errors:\n{}\n--- {log_name}'s log ends:\n{}\n",
        errors[errors.len().saturating_sub(40)..].join("\n"),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
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
    /// How the services run (one pulse node, as the default).
    pub services: ServicesOptions,
}

/// A running system on one nats-server: one pulse node (600 BPM, bars of 8),
/// the gateway and the processor; the query service when asked for.
pub struct Stack {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
    pub pulse: ChildGuard,
    pub pulse_port: u16,
    pub raft_port: u16,
    pub ingest: ChildGuard,
    pub ingest_port: u16,
    pub processor: ChildGuard,
    pub processor_port: u16,
    pub query: Option<QueryNode>,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Stack> {
        let server = match options.server {
            Some(server) => server,
            None => NatsServer::start()?,
        };
        anyhow::ensure!(options.services.pulse_nodes == 1, "a Stack runs one pulse node");
        let dir = tempfile::tempdir()?;
        let services = Services::start(&server.url(), &options.services, dir.path()).await?;
        let Services {
            mut pulses,
            raft_ports,
            ingest,
            ingest_port,
            processor,
            processor_port,
            query,
        } = services;
        let (pulse, pulse_port) = pulses.remove(0);
        Ok(Stack {
            server,
            dir,
            pulse,
            pulse_port,
            raft_port: raft_ports[0],
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
        stop_processor_after(&mut self.processor, self.processor_port, last_seq).await
    }

    /// The cluster's events exported (`backbeat-processor export`) and folded
    /// offline (`fold --log`): the BarReports as JSON Lines.
    pub fn fold_of_the_exported_log(&self) -> anyhow::Result<String> {
        fold_of_the_exported_log(&self.server.url(), CLUSTER, self.dir.path())
    }
}

/// How [`Services::start`] runs the system.
#[derive(Debug, Clone)]
pub struct ServicesOptions {
    /// Pulse nodes in the raft group (node ids 1..=n).
    pub pulse_nodes: usize,
    /// `--stream-replicas` of every service (3 on a NATS cluster).
    pub stream_replicas: usize,
    /// The processor's `--cluster` set (every cluster when empty).
    pub processor_clusters: Vec<String>,
    /// The cluster the pulse emits for.
    pub cluster: &'static str,
    /// Flags added to one service's command line, by binary name
    /// (`backbeat-pulse`, `backbeat-ingest`, `backbeat-processor`,
    /// `backbeat-query`): credentials, HTTP limits.
    pub extra_args: Vec<(&'static str, Vec<String>)>,
    /// Start `backbeat-query serve` too.
    pub query: bool,
}

impl Default for ServicesOptions {
    fn default() -> Self {
        ServicesOptions {
            pulse_nodes: 1,
            stream_replicas: 1,
            processor_clusters: Vec::new(),
            cluster: CLUSTER,
            extra_args: Vec::new(),
            query: false,
        }
    }
}

impl ServicesOptions {
    /// `base` and then the extra flags given for `binary`.
    fn args<'a>(&'a self, binary: &str, base: &[&'a str]) -> Vec<&'a str> {
        let mut all = base.to_vec();
        for (name, extra) in &self.extra_args {
            if *name == binary {
                all.extend(extra.iter().map(String::as_str));
            }
        }
        all
    }
}

/// The query service of a system.
pub struct QueryNode {
    pub child: ChildGuard,
    pub port: u16,
}

/// The services of a system on a given NATS: the pulse group (600 BPM, bars
/// of 8, cluster [`CLUSTER`] unless told), the gateway and the processor (and
/// the query service when asked for), each ready.
pub struct Services {
    /// Each pulse node and its HTTP port, node 1 first.
    pub pulses: Vec<(ChildGuard, u16)>,
    /// Each pulse node's raft port, node 1 first.
    pub raft_ports: Vec<u16>,
    pub ingest: ChildGuard,
    pub ingest_port: u16,
    pub processor: ChildGuard,
    pub processor_port: u16,
    pub query: Option<QueryNode>,
}

impl Services {
    /// Starts every service against `nats_urls` (comma-separated, as `--nats`
    /// takes them), logging into `logs`, and waits until each is ready.
    pub async fn start(nats_urls: &str, options: &ServicesOptions, logs: &Path) -> anyhow::Result<Services> {
        let replicas = options.stream_replicas.to_string();
        let secret = logs.join("raft-secret");
        std::fs::write(&secret, "an end-to-end test's shared raft secret")?;
        let token = logs.join("admin-token");
        std::fs::write(&token, "test-token")?;
        let raft_ports: Vec<u16> = (0..options.pulse_nodes).map(|_| free_port()).collect();
        let raft_addresses: Vec<String> = raft_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let peers: Vec<String> = raft_addresses
            .iter()
            .enumerate()
            .map(|(i, address)| format!("{}={address}", i + 1))
            .collect();
        let peers = peers.join(",");
        let mut pulses = Vec::with_capacity(options.pulse_nodes);
        for (i, raft_listen) in raft_addresses.iter().enumerate() {
            let node_id = (i + 1).to_string();
            let pulse_port = free_port();
            let pulse_listen = format!("127.0.0.1:{pulse_port}");
            let data_dir = logs.join(format!("pulse-data-{node_id}"));
            let log_name = pulse_log_name(i);
            let pulse = spawn_named(
                &log_name,
                "backbeat-pulse",
                logs,
                &options.args(
                    "backbeat-pulse",
                    &[
                        "--nats",
                        nats_urls,
                        "--node-id",
                        &node_id,
                        "--peers",
                        &peers,
                        "--listen",
                        &pulse_listen,
                        "--raft-listen",
                        raft_listen,
                        "--raft-secret-file",
                        path_str(&secret),
                        "--admin-token-file",
                        path_str(&token),
                        "--data-dir",
                        path_str(&data_dir),
                        "--cluster",
                        options.cluster,
                        "--bpm",
                        "600",
                        "--bar-length",
                        BAR,
                        "--heartbeat-ms",
                        "50",
                        "--election-timeout-ms",
                        "300",
                        "--stream-replicas",
                        &replicas,
                    ],
                ),
            )?;
            pulses.push((pulse, pulse_port));
        }
        let ingest_port = free_port();
        let ingest_listen = format!("127.0.0.1:{ingest_port}");
        let ingest = spawn(
            "backbeat-ingest",
            logs,
            &options.args(
                "backbeat-ingest",
                &[
                    "--nats",
                    nats_urls,
                    "--listen",
                    &ingest_listen,
                    "--stream-replicas",
                    &replicas,
                ],
            ),
        )?;
        let processor_port = free_port();
        let processor_listen = format!("127.0.0.1:{processor_port}");
        let mut processor_args: Vec<&str> = vec![
            "run",
            "--nats",
            nats_urls,
            "--listen",
            &processor_listen,
            "--bar-length",
            BAR,
            "--lateness",
            LATENESS,
            "--stream-replicas",
            &replicas,
        ];
        let clusters = options.processor_clusters.join(",");
        if !clusters.is_empty() {
            processor_args.extend(["--cluster", clusters.as_str()]);
        }
        let processor = spawn(
            "backbeat-processor",
            logs,
            &options.args("backbeat-processor", &processor_args),
        )?;
        let query = if options.query {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let data_dir = logs.join("query-data");
            let args = [
                "serve",
                "--nats",
                nats_urls,
                "--listen",
                &listen,
                "--data-dir",
                path_str(&data_dir),
                "--bar-length",
                BAR,
            ];
            let child = spawn("backbeat-query", logs, &options.args("backbeat-query", &args))?;
            Some(QueryNode { child, port })
        } else {
            None
        };
        for (i, (_, port)) in pulses.iter().enumerate() {
            wait_ready_logged(&pulse_log_name(i), *port, logs).await?;
        }
        wait_ready_logged("backbeat-ingest", ingest_port, logs).await?;
        wait_ready_logged("backbeat-processor", processor_port, logs).await?;
        if let Some(query) = &query {
            wait_ready_logged("backbeat-query", query.port, logs).await?;
        }
        Ok(Services {
            pulses,
            raft_ports,
            ingest,
            ingest_port,
            processor,
            processor_port,
            query,
        })
    }
}

/// The log name of the pulse node at `index` (node id `index + 1`): node 1
/// logs to backbeat-pulse.log, as the single-node stack always did.
fn pulse_log_name(index: usize) -> String {
    if index == 0 {
        "backbeat-pulse".to_string()
    } else {
        format!("backbeat-pulse-{}", index + 1)
    }
}

/// Waits until the processor on `port` has folded the stream up to
/// `last_seq`, then stops it (SIGTERM: its last reports and checkpoint go out).
pub async fn stop_processor_after(processor: &mut ChildGuard, port: u16, last_seq: u64) -> anyhow::Result<()> {
    wait_until_async("the processor to fold the whole stream", TIMEOUT, || async move {
        let (_, body) = http_get(port, "/api/v1/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status["last_seq"].as_u64()? >= last_seq).then_some(())
    })
    .await?;
    // Its last reports are published once their closing beat is folded; the
    // stream's count settles when the processor has acked them all.
    processor.signal(backbeat_tests::Signal::Term)?;
    processor.wait_exit(TIMEOUT)?;
    Ok(())
}

/// `cluster`'s events exported from the NATS at `nats_urls` (`backbeat-processor
/// export`, into `dir`) and folded offline (`fold --log`) with the stack's
/// fold flags: the BarReports as JSON Lines.
pub fn fold_of_the_exported_log(nats_urls: &str, cluster: &str, dir: &Path) -> anyhow::Result<String> {
    let processor_bin = bin_path("backbeat-processor");
    let export_path = dir.join(format!("events-{cluster}.jsonl"));
    run_ok(
        Command::new(&processor_bin)
            .args(["export", "--nats", nats_urls, "--cluster", cluster, "--out"])
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

/// A beat frame as the pulse writes it for `cluster` with the stack's bar
/// length, for any index and HLC.
pub fn beat_frame(cluster: &str, beat_index: u64, hlc: &str) -> String {
    let bar: u64 = BAR.parse().expect("BAR is a number");
    let window = window_of(beat_index, bar);
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{beat_index},"downbeat":{},"phase":"{}","hlc":"{hlc}","deadline_at":"2026-12-04T10:00:00Z","tempo_bpm":600,"window_id":"{}"}}"#,
        is_downbeat(beat_index, bar),
        phase_of(beat_index, bar).as_str(),
        window_id(cluster, bar, window),
    )
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
