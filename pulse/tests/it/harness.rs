//! Real pulse processes around a real nats-server: start a group, ask its
//! nodes over HTTP, and read the beats the stream holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use backbeat_pulse::auth::{GroupSecret, BEAT_MAC_HEADER};
use backbeat_schemas::message::BeatFrame;
use backbeat_schemas::names::{subject, SubjectKind};
use backbeat_schemas::validate::validate_beat;
use backbeat_tests::{bin_path, free_port, wait_until_async, ChildGuard};
use serde_json::Value;

/// Test timing: fast enough to keep the suite short, slow enough for a loaded 2-core debug run.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_TIMEOUT_MS: u64 = 600;
pub const TOKEN: &str = "test-admin-token";
/// The group secret every node of a test group reads from its file.
pub const SECRET: &str = "the pulse integration tests' group secret";
/// The generous bound for things that should happen within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How a group is started.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    pub size: u64,
    pub bpm: u32,
    pub bar_length: u64,
    pub cluster: String,
}

impl GroupOptions {
    pub fn new(size: u64, bpm: u32, bar_length: u64) -> GroupOptions {
        GroupOptions {
            size,
            bpm,
            bar_length,
            cluster: "it".into(),
        }
    }
}

/// One pulse node; its process is `None` while it is down.
pub struct PulseNode {
    pub id: u64,
    /// Its public HTTP (`--listen`).
    pub addr: String,
    /// Its raft RPC (`--raft-listen`, the address `--peers` names).
    pub raft_addr: String,
    /// Its `--data-dir`.
    pub data_dir: PathBuf,
    pub process: Option<ChildGuard>,
    command: Vec<String>,
    log: PathBuf,
}

/// A group of pulse processes, each with its own data directory and log file.
pub struct PulseGroup {
    pub nodes: BTreeMap<u64, PulseNode>,
    pub options: GroupOptions,
    http: reqwest::Client,
    // Last: removed after the processes are gone.
    _dir: tempfile::TempDir,
}

impl PulseGroup {
    /// Starts every node against `nats_url`.
    pub fn start(nats_url: &str, options: GroupOptions) -> anyhow::Result<PulseGroup> {
        PulseGroup::start_with_nats(|_| nats_url.to_string(), options)
    }

    /// Starts every node, node `id` against `nats_url_of(id)`.
    pub fn start_with_nats(nats_url_of: impl Fn(u64) -> String, options: GroupOptions) -> anyhow::Result<PulseGroup> {
        let dir = tempfile::Builder::new().prefix("backbeat-pulse-it-").tempdir()?;
        let addrs: BTreeMap<u64, (String, String)> = (1..=options.size)
            .map(|id| {
                let addr = format!("127.0.0.1:{}", free_port());
                (id, (addr, format!("127.0.0.1:{}", free_port())))
            })
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, (_, raft_addr))| format!("{id}={raft_addr}"))
            .collect::<Vec<_>>()
            .join(",");
        // Secrets from files, as an operator should give them (never on the command line).
        let secret_file = dir.path().join("raft-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n"))?;
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n"))?;
        let mut nodes = BTreeMap::new();
        for (id, (addr, raft_addr)) in &addrs {
            let data_dir = dir.path().join(format!("node-{id}"));
            let command = vec![
                format!("--node-id={id}"),
                format!("--peers={peers}"),
                format!("--listen={addr}"),
                format!("--raft-listen={raft_addr}"),
                format!("--raft-secret-file={}", secret_file.display()),
                format!("--data-dir={}", data_dir.display()),
                format!("--nats={}", nats_url_of(*id)),
                format!("--cluster={}", options.cluster),
                format!("--bpm={}", options.bpm),
                format!("--bar-length={}", options.bar_length),
                format!("--admin-token-file={}", token_file.display()),
                format!("--heartbeat-ms={HEARTBEAT_MS}"),
                format!("--election-timeout-ms={ELECTION_TIMEOUT_MS}"),
            ];
            let node = PulseNode {
                id: *id,
                addr: addr.clone(),
                raft_addr: raft_addr.clone(),
                data_dir: data_dir.clone(),
                process: None,
                command,
                log: dir.path().join(format!("node-{id}.log")),
            };
            nodes.insert(*id, node);
        }
        let mut group = PulseGroup {
            nodes,
            options,
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            _dir: dir,
        };
        for id in 1..=group.options.size {
            group.launch(id)?;
        }
        Ok(group)
    }

    /// Starts node `id` (again), with the same flags and data directory.
    pub fn launch(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).expect("node id of this group");
        let log = File::options().create(true).append(true).open(&node.log)?;
        let mut command = Command::new(bin_path("backbeat-pulse"));
        command
            .args(&node.command)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.process = Some(ChildGuard::spawn(format!("backbeat-pulse {id}"), &mut command)?);
        Ok(())
    }

    /// kill -9 of node `id`; it stays down until [`PulseGroup::launch`].
    pub fn kill(&mut self, id: u64) {
        if let Some(mut process) = self.node(id).process.take() {
            process.kill();
        }
    }

    /// Whether node `id` has been launched and not killed since.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[&id].process.is_some()
    }

    pub fn node(&mut self, id: u64) -> &mut PulseNode {
        self.nodes.get_mut(&id).expect("node id of this group")
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {} ---\n", node.id));
            out.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
            out.push('\n');
        }
        out
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.nodes[&id].addr)
    }

    /// `GET /api/v1/status` of node `id`; `None` when it does not answer.
    pub async fn status(&self, id: u64) -> Option<Value> {
        let response = self.http.get(self.url(id, "/api/v1/status")).send().await.ok()?;
        response.json().await.ok()
    }

    /// `GET /ready` of node `id`: the status code, or `None` when it does not answer.
    pub async fn ready(&self, id: u64) -> Option<u16> {
        let response = self.http.get(self.url(id, "/ready")).send().await.ok()?;
        Some(response.status().as_u16())
    }

    /// The value of a metric without labels on node `id`.
    pub async fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let response = self.http.get(self.url(id, "/metrics")).send().await.ok()?;
        let text = response.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// `POST /api/v1/tempo` to node `id` with `token` (none: no header).
    pub async fn post_tempo(&self, id: u64, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.post(self.url(id, "/api/v1/tempo")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the node answers POST /api/v1/tempo");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The node that leads and emits, as every running node that answers agrees.
    pub async fn emitting_leader(&self) -> Option<u64> {
        for (id, node) in &self.nodes {
            if node.process.is_none() {
                continue;
            }
            let Some(status) = self.status(*id).await else {
                continue;
            };
            if status["role"] == "leader" && status["emitting"] == true {
                return Some(*id);
            }
        }
        None
    }

    /// Waits until some node leads and emits.
    pub async fn wait_for_leader(&self) -> anyhow::Result<u64> {
        let found = wait_until_async("a pulse node to lead and emit", PATIENCE, || self.emitting_leader()).await;
        found.map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }
}

/// A beat as the stream holds it.
#[derive(Debug, Clone)]
pub struct StoredBeat {
    pub sequence: u64,
    pub frame: BeatFrame,
    pub msg_id: String,
}

/// Reads the beats of one cluster from `BACKBEAT_EVENTS`: the group's own
/// (their `Backbeat-Beat-Mac` verifies with [`SECRET`]); other messages on the
/// beat subject (a test's forgeries) are only counted.
pub struct BeatLog {
    stream: Stream,
    cluster: String,
    bar_length: u64,
    beats: Vec<StoredBeat>,
    read_up_to: u64,
    /// Messages on the beat subject that are not the group's.
    pub foreign: usize,
}

impl BeatLog {
    /// Waits until the pulse has created the stream, then opens it.
    pub async fn open(nats_url: &str, cluster: &str, bar_length: u64) -> anyhow::Result<BeatLog> {
        let client = async_nats::connect(nats_url).await?;
        let js = async_nats::jetstream::new(client);
        let stream = wait_until_async("the pulse to create BACKBEAT_EVENTS", PATIENCE, || {
            let js = js.clone();
            async move { js.get_stream("BACKBEAT_EVENTS").await.ok() }
        })
        .await?;
        Ok(BeatLog {
            stream,
            cluster: cluster.to_string(),
            bar_length,
            beats: Vec::new(),
            read_up_to: 0,
            foreign: 0,
        })
    }

    /// Every beat stored so far, in stream order; each one has passed the fold's
    /// own validation (SPEC §5) and carries `Nats-Msg-Id = {cluster}:{index}`.
    pub async fn read(&mut self) -> anyhow::Result<&[StoredBeat]> {
        let last = self.stream.info().await?.state.last_sequence;
        let beat_subject = subject(&self.cluster, SubjectKind::Beat);
        for sequence in self.read_up_to + 1..=last {
            let message = match self.stream.get_raw_message(sequence).await {
                Ok(m) => m,
                // A deleted or never-written sequence (none in these tests, but harmless).
                Err(_) => continue,
            };
            if message.subject.as_str() != beat_subject {
                continue;
            }
            let mac = message.headers.get(BEAT_MAC_HEADER).map(|v| v.to_string());
            let secret = GroupSecret::from_text(SECRET)?;
            if !mac.is_some_and(|mac| secret.beat_mac_matches(&beat_subject, &message.payload, &mac)) {
                self.foreign += 1;
                continue;
            }
            let frame = validate_beat(&message.payload, &self.cluster, self.bar_length)
                .map_err(|e| anyhow::anyhow!("beat at sequence {sequence} is invalid: {e}"))?;
            let msg_id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            self.beats.push(StoredBeat {
                sequence,
                frame,
                msg_id,
            });
        }
        self.read_up_to = last;
        Ok(&self.beats)
    }

    /// Waits until a beat satisfying `pred` is stored; returns it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&StoredBeat) -> bool,
    ) -> anyhow::Result<StoredBeat> {
        let start = std::time::Instant::now();
        loop {
            if let Some(found) = self.read().await?.iter().find(|b| pred(b)) {
                return Ok(found.clone());
            }
            if start.elapsed() > timeout {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` more beats than now are stored.
    pub async fn wait_for_more(&mut self, count: usize) -> anyhow::Result<StoredBeat> {
        let target = self.read().await?.len() + count;
        let start = std::time::Instant::now();
        loop {
            let beats = self.read().await?;
            if beats.len() >= target {
                return Ok(beats[target - 1].clone());
            }
            if start.elapsed() > PATIENCE {
                anyhow::bail!("timed out waiting for {count} more beats (have {})", beats.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks the invariant every run must keep: indices strictly increase in
/// stream order (so none repeats), and each message id is `{cluster}:{index}`.
pub fn assert_strictly_increasing(beats: &[StoredBeat], cluster: &str) {
    for pair in beats.windows(2) {
        assert!(
            pair[1].frame.beat_index > pair[0].frame.beat_index,
            "beat {} (sequence {}) follows beat {} (sequence {}): an index repeated or went back",
            pair[1].frame.beat_index,
            pair[1].sequence,
            pair[0].frame.beat_index,
            pair[0].sequence
        );
    }
    for beat in beats {
        assert_eq!(beat.msg_id, format!("{cluster}:{}", beat.frame.beat_index));
    }
}

/// A TCP relay to a local port that a test can cut, as a network partition
/// between one pulse node and NATS would: open connections are dropped and new
/// ones closed at once.
pub struct TcpProxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Relays `127.0.0.1:{port}` (a free port) to `127.0.0.1:{target_port}`.
    pub async fn start(target_port: u16) -> anyhow::Result<TcpProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *cut_rx.borrow() {
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { port, cut, task })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
