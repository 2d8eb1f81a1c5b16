//! Wiring of one pulse node: raft, HTTP, NATS, the emitter thread, metrics, and
//! an orderly shutdown (stop emitting, leave raft, flush NATS, stop HTTP).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Context;
use backbeat_service::admin::{admin_router, serve_http, AdminState, HttpLimits};
use backbeat_service::streams::{ensure_stream, events_config, StreamOptions};
use backbeat_service::ServiceError;
use tokio::sync::watch;

use crate::auth::{GroupSecret, SecretError};
use crate::clock::PulseClock;
use crate::config::{SecretSource, Settings, GENERATED_SECRET_FILE};
use crate::emitter::Emitter;
use crate::http::{self, ApiState};
use crate::metrics::Metrics;
use crate::publisher::BeatPublisher;
use crate::raft;
use crate::raft::contacts::Contacts;
use crate::raft::network;
use crate::status::SharedStatus;
use crate::watchdog::{EmitterProgress, RaftIsolation, Watchdog};

/// Pause between attempts to reach NATS at start-up.
const NATS_RETRY: Duration = Duration::from_secs(1);
/// Peers are probed no more often than this.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Why a node could not start, or stopped on its own. Each names what failed;
/// its cause is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("creating --data-dir {}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the group-of-one secret {}", path.display())]
    GeneratedSecret {
        path: std::path::PathBuf,
        #[source]
        source: SecretError,
    },
    #[error(transparent)]
    Raft(#[from] raft::StartError),
    /// `--listen` could not be bound.
    #[error(transparent)]
    Listen(ServiceError),
    #[error("--raft-listen")]
    RaftListen(#[source] ServiceError),
    #[error("starting the emitter thread")]
    EmitterThread(#[source] std::io::Error),
    /// The emitter thread is gone: the node gave up leadership and stopped, for
    /// its supervisor to restart it.
    #[error("the emitter thread ended; the node gave up leadership and stopped")]
    EmitterGone,
}

/// Runs the node until SIGTERM/Ctrl-C.
pub async fn run(settings: Settings) -> Result<(), NodeError> {
    run_until(settings, backbeat_service::shutdown_signal()).await
}

/// Runs the node until `shutdown` resolves (the benchmark runs nodes in-process),
/// or until its emitter thread is gone (then it stops with an error, for its
/// supervisor to restart it).
pub async fn run_until(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), NodeError> {
    let metrics = Metrics::new();
    metrics.current_tempo_bpm.set(i64::from(settings.bpm));
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| NodeError::DataDir {
        path: settings.data_dir.clone(),
        source,
    })?;
    let secret = match &settings.raft_secret {
        SecretSource::Given(secret) => secret.clone(),
        SecretSource::GenerateInDataDir => {
            let path = settings.data_dir.join(GENERATED_SECRET_FILE);
            GroupSecret::read_or_generate(&path).map_err(|source| NodeError::GeneratedSecret { path, source })?
        }
    };
    let clock = Arc::new(PulseClock::new());
    let isolation = Arc::new(RaftIsolation::default());
    let progress = Arc::new(EmitterProgress::new());

    let started = raft::start(raft::StartOptions {
        node_id: settings.node_id,
        peers: &settings.peers,
        data_dir: &settings.data_dir,
        heartbeat: settings.heartbeat,
        election_timeout: settings.election_timeout,
        secret: secret.clone(),
        isolation: isolation.clone(),
        invalid_entries: metrics.invalid_raft_entries_total.clone(),
    })
    .await?;
    let status = Arc::new(SharedStatus::default());
    let settings = Arc::new(settings);
    let api = ApiState {
        settings: settings.clone(),
        raft: started.raft.clone(),
        state_machine: started.state_machine.clone(),
        contacts: started.contacts.clone(),
        status: status.clone(),
        client: reqwest::Client::new(),
        nats: Arc::new(std::sync::OnceLock::new()),
        clock: clock.clone(),
        foreign_beats: metrics.foreign_beats_total.clone(),
    };

    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let ready_api = api.clone();
    let status_api = api.clone();
    let admin = AdminState::new(
        metrics.registry.clone(),
        move || http::degraded_reason(&ready_api).map_or(Ok(()), |reason| Err(format!("degraded: {reason}"))),
        move || http::status_json(&status_api),
    );
    let router = admin_router(admin).merge(http::router(api.clone()));
    let mut stop_rx = http_stop_rx.clone();
    let limits = settings.http.limits(HttpLimits {
        registry: Some(metrics.registry.clone()),
        ..HttpLimits::default()
    });
    let (addr, http_task) = serve_http(
        &settings.listen,
        router,
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
        limits,
    )
    .await
    .map_err(NodeError::Listen)?;
    tracing::info!(%addr, node_id = settings.node_id, "pulse node serving");

    // Raft on its own listener: peers reach it, the public never needs to.
    let raft_task = match &settings.raft_listen {
        None => {
            tracing::info!("a group of one whose raft address is its --listen: no raft listener");
            None
        }
        Some(raft_listen) => {
            let nats_slot = api.nats.clone();
            let admin_addr = addr.to_string();
            let node_id = settings.node_id;
            let context = raft::rpc::RpcContext {
                contacts: started.contacts.clone(),
                secret: secret.clone(),
                auth_failures: metrics.raft_auth_failures_total.clone(),
                isolation: isolation.clone(),
                info: Arc::new(move || raft::rpc::PeerInfo {
                    node_id,
                    admin_addr: admin_addr.clone(),
                    ready: nats_slot
                        .get()
                        .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected),
                }),
            };
            let mut stop_rx = http_stop_rx.clone();
            // Raft's own body limit; the rest (timeouts, connection caps) as every listener.
            let limits = settings.http.limits(HttpLimits {
                body_bytes_max: raft::rpc::RAFT_BODY_BYTES_MAX,
                registry: Some(metrics.registry.clone()),
                metrics_prefix: "backbeat_pulse_raft_http",
                ..HttpLimits::default()
            });
            let router = raft::rpc::router(started.raft.clone(), context);
            let stopped = async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            };
            let (raft_addr, task) = serve_http(raft_listen, router, stopped, limits)
                .await
                .map_err(NodeError::RaftListen)?;
            tracing::info!(%raft_addr, "raft RPC serving");
            Some(task)
        }
    };

    tokio::spawn(watch_leadership(started.raft.clone(), metrics.clone()));

    tokio::spawn(probe_peers(settings.clone(), started.contacts.clone(), secret.clone()));

    let watchdog = tokio::spawn(
        Watchdog {
            raft: started.raft.clone(),
            progress: progress.clone(),
            isolation: isolation.clone(),
            contacts: started.contacts.clone(),
            metrics: metrics.clone(),
            election_timeout: settings.election_timeout,
        }
        .run(),
    );

    // The emitter runs on a thread and runtime of its own, so that nothing
    // else's work can delay a beat. Its NATS connection is made there too: the
    // client's connection task then runs on the emitter's thread, and a publish
    // does not wait for another thread to wake up. Raft and HTTP run without
    // NATS; the emitter keeps trying to connect until NATS answers or the node
    // is told to stop, instead of exiting.
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let emitter_settings = settings.clone();
    let nats_slot = api.nats.clone();
    let raft = started.raft.clone();
    let state_machine = started.state_machine.clone();
    let contacts = started.contacts.clone();
    let emitter_progress = progress.clone();
    let emitter_thread = std::thread::Builder::new()
        .name("pulse-emitter".into())
        .spawn(move || {
            // However the thread ends (a panic included), the watchdog learns of it.
            let _finished = FinishedGuard(emitter_progress.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the emitter runtime");
            runtime.block_on(async move {
                let (nats, js, stream) = tokio::select! {
                    connected = connect_nats(&emitter_settings, &emitter_progress) => connected,
                    _ = shutdown_rx.wait_for(|stop| *stop) => return,
                };
                let _ = nats_slot.set(nats.clone());
                let emitter = Emitter {
                    settings: (*emitter_settings).clone(),
                    raft,
                    state_machine,
                    contacts,
                    publisher: BeatPublisher::new(
                        nats.clone(),
                        js,
                        stream,
                        secret,
                        metrics.foreign_beats_total.clone(),
                    ),
                    metrics,
                    status,
                    clock,
                    progress: emitter_progress,
                    shutdown: shutdown_rx,
                };
                emitter.run().await;
                if let Err(e) = nats.flush().await {
                    tracing::warn!(%e, "flushing NATS");
                }
            });
        })
        .map_err(NodeError::EmitterThread)?;

    let emitter_gone = tokio::select! {
        _ = shutdown => false,
        _ = watchdog => true,
    };
    let _ = shutdown_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || emitter_thread.join()).await;
    stop(started.raft, http_stop_tx, http_task, raft_task).await;
    if emitter_gone {
        return Err(NodeError::EmitterGone);
    }
    Ok(())
}

/// Tells the watchdog that the emitter thread ended, when dropped.
struct FinishedGuard(Arc<EmitterProgress>);

impl Drop for FinishedGuard {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// The orderly end: the emitter has stopped and flushed NATS; leave raft, drain HTTP.
async fn stop(
    raft: raft::Raft,
    http_stop_tx: watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<()>,
    raft_task: Option<tokio::task::JoinHandle<()>>,
) {
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(%e, "raft shutdown");
    }
    let _ = http_stop_tx.send(true);
    for task in std::iter::once(http_task).chain(raft_task) {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%e, "HTTP task"),
            Err(_) => tracing::warn!("HTTP did not drain within 5 s"),
        }
    }
    tracing::info!("pulse node stopped");
}

/// Connects to NATS and makes sure `BACKBEAT_EVENTS` exists, retrying until both
/// succeed; the caller races it against the shutdown signal.
async fn connect_nats(settings: &Settings, progress: &EmitterProgress) -> (async_nats::Client, Context, Stream) {
    loop {
        match try_connect_nats(settings).await {
            Ok(connected) => return connected,
            Err(e) => {
                // Should this node lead meanwhile, it cannot emit: the watchdog hands over.
                progress.failed();
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(e)),
                    "NATS not usable yet; retrying"
                );
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    }
}

async fn try_connect_nats(settings: &Settings) -> Result<(async_nats::Client, Context, Stream), ServiceError> {
    let nats = settings
        .nats
        .connect(&format!("backbeat-pulse-{}", settings.node_id))
        .await?;
    let mut js = async_nats::jetstream::new(nats.clone());
    js.set_timeout(Duration::from_secs(1));
    let stream = ensure_stream(
        &js,
        events_config(StreamOptions {
            replicas: settings.stream_replicas,
        }),
    )
    .await?;
    Ok((nats, js, stream))
}

/// Asks every peer's `/raft/info` once per heartbeat: for the peer health in
/// `/api/v1/status` (followers exchange no raft messages with each other), the
/// peers' admin addresses (tempo forwarding) and their readiness (the watchdog).
async fn probe_peers(settings: Arc<Settings>, contacts: Arc<Contacts>, secret: GroupSecret) {
    let client = reqwest::Client::builder()
        .timeout(settings.election_timeout)
        .build()
        .expect("building an HTTP client with static options");
    let mut tick = tokio::time::interval(settings.heartbeat.max(PROBE_INTERVAL_MIN));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes = settings
            .peers
            .iter()
            .filter(|(id, _)| **id != settings.node_id)
            .map(|(id, addr)| {
                let (client, secret) = (&client, &secret);
                async move { (*id, network::probe_peer(client, secret, addr).await) }
            });
        for (id, answer) in futures::future::join_all(probes).await {
            if let Ok(info) = answer {
                if info.node_id == id {
                    contacts.record_info(id, info.admin_addr, info.ready);
                }
            }
        }
    }
}

/// Counts and logs leader changes (`backbeat_is_leader` is the emitter's: it is 1
/// only while this node leads with a lease, not merely while raft calls it leader).
async fn watch_leadership(raft: raft::Raft, metrics: Metrics) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    loop {
        let (leader, term) = {
            let m = rx.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if leader.is_some() && leader != last_leader {
            if last_leader.is_some() {
                metrics.leader_changes_total.inc();
            }
            tracing::info!(?leader, term, "leader changed");
            last_leader = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
