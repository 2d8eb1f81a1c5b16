//! Wiring of one pulse node: raft, HTTP, NATS, the emitter thread, metrics, and
//! an orderly shutdown (stop emitting, leave raft, flush NATS, stop HTTP).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Context;
use backbeat_service::admin::{admin_router, serve_admin, AdminState};
use backbeat_service::streams::{ensure_stream, events_config, StreamOptions};
use tokio::sync::watch;

use crate::config::Settings;
use crate::emitter::Emitter;
use crate::http::{self, ApiState};
use crate::metrics::Metrics;
use crate::publisher::BeatPublisher;
use crate::raft;
use crate::raft::contacts::Contacts;
use crate::status::SharedStatus;

/// Pause between attempts to reach NATS at start-up.
const NATS_RETRY: Duration = Duration::from_secs(1);
/// Peers are probed no more often than this.
const PROBE_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Runs the node until SIGTERM/Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    run_until(settings, backbeat_service::shutdown_signal()).await
}

/// Runs the node until `shutdown` resolves (the benchmark runs nodes in-process).
pub async fn run_until(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    metrics.current_tempo_bpm.set(i64::from(settings.bpm));
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating --data-dir {}", settings.data_dir.display()))?;

    let started = raft::start(
        settings.node_id,
        &settings.peers,
        &settings.data_dir,
        settings.heartbeat,
        settings.election_timeout,
    )
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
    };

    let (http_stop_tx, mut http_stop_rx) = watch::channel(false);
    let ready_api = api.clone();
    let status_api = api.clone();
    let admin = AdminState::new(
        metrics.registry.clone(),
        move || http::degraded_reason(&ready_api).map_or(Ok(()), |reason| Err(format!("degraded: {reason}"))),
        move || http::status_json(&status_api),
    );
    let router = admin_router(admin)
        .merge(http::router(api.clone()))
        .merge(raft::rpc::router(started.raft.clone(), started.contacts.clone()));
    let (addr, http_task) = serve_admin(&settings.listen, router, async move {
        let _ = http_stop_rx.wait_for(|stop| *stop).await;
    })
    .await?;
    tracing::info!(%addr, node_id = settings.node_id, "pulse node serving");

    tokio::spawn(watch_leadership(started.raft.clone(), metrics.clone()));

    tokio::spawn(probe_peers(settings.clone(), started.contacts.clone()));

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
    let emitter_thread = std::thread::Builder::new()
        .name("pulse-emitter".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the emitter runtime");
            runtime.block_on(async move {
                let (nats, js, stream) = tokio::select! {
                    connected = connect_nats(&emitter_settings) => connected,
                    _ = shutdown_rx.wait_for(|stop| *stop) => return,
                };
                let _ = nats_slot.set(nats.clone());
                let emitter = Emitter {
                    settings: (*emitter_settings).clone(),
                    raft,
                    state_machine,
                    contacts,
                    publisher: BeatPublisher::new(nats.clone(), js, stream),
                    metrics,
                    status,
                    shutdown: shutdown_rx,
                };
                emitter.run().await;
                if let Err(e) = nats.flush().await {
                    tracing::warn!(%e, "flushing NATS");
                }
            });
        })
        .context("starting the emitter thread")?;

    shutdown.await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || emitter_thread.join()).await;
    stop(started.raft, http_stop_tx, http_task).await
}

/// The orderly end: the emitter has stopped and flushed NATS; leave raft, drain HTTP.
async fn stop(
    raft: raft::Raft,
    http_stop_tx: watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(%e, "raft shutdown");
    }
    let _ = http_stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), http_task).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => tracing::warn!(%e, "HTTP task"),
        Err(_) => tracing::warn!("HTTP did not drain within 5 s"),
    }
    tracing::info!("pulse node stopped");
    Ok(())
}

/// Connects to NATS and makes sure `BACKBEAT_EVENTS` exists, retrying until both
/// succeed; the caller races it against the shutdown signal.
async fn connect_nats(settings: &Settings) -> (async_nats::Client, Context, Stream) {
    loop {
        match try_connect_nats(settings).await {
            Ok(connected) => return connected,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "NATS not usable yet; retrying");
                tokio::time::sleep(NATS_RETRY).await;
            }
        }
    }
}

async fn try_connect_nats(settings: &Settings) -> anyhow::Result<(async_nats::Client, Context, Stream)> {
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

/// Asks every peer's `/health` once per heartbeat, for the peer health in `/api/v1/status`
/// (followers exchange no raft messages with each other).
async fn probe_peers(settings: Arc<Settings>, contacts: Arc<Contacts>) {
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
                let request = client.get(format!("http://{addr}/health")).send();
                async move { (*id, request.await) }
            });
        for (id, answer) in futures::future::join_all(probes).await {
            if answer.is_ok_and(|r| r.status().is_success()) {
                contacts.record_health_answer(id);
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
