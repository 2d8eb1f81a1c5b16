//! `backbeat-agent-sim`: a seeded fleet of simulated agents sending status
//! claims that follow the cluster's beats, through the gateway's NATS intake
//! or its HTTP door. Prints a JSON summary on exit; exits with an error when
//! any claim was refused (simulated claims are valid by construction) or not
//! acknowledged.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backbeat_ingest::client::{BeatFollower, ClaimSender, Clock, FollowerConfig, RetryPolicy, SystemClock, Transport};
use backbeat_ingest::sim::{self, SimConfig};
use backbeat_service::{init_logging, shutdown_signal, LogFormat, NatsArgs};
use clap::Parser;

/// BACKBEAT agent simulator: N agents with seeded task life cycles (planning,
/// executing, reviewing, done; helping, failing, secret rotations, overdue
/// work) sending claims at a steady rate. Beats are always followed over NATS
/// (--nats); claims go to the NATS intake, or to the HTTP gateway with --http.
#[derive(Debug, Parser)]
#[command(name = "backbeat-agent-sim", version)]
struct Config {
    #[command(flatten)]
    nats: NatsArgs,
    /// Send claims over HTTP to this gateway (e.g. http://127.0.0.1:8082) in NDJSON batches instead of NATS.
    #[arg(long, env = "BACKBEAT_HTTP")]
    http: Option<String>,
    /// The cluster the agents belong to.
    #[arg(long, env = "BACKBEAT_CLUSTER", default_value = "default")]
    cluster: String,
    /// The cluster's bar length, for window ids (the beat frames' window ids correct it when it is wrong).
    #[arg(long, env = "BACKBEAT_BAR_LENGTH", default_value_t = 120)]
    bar_length: u64,
    /// Simulated agents.
    #[arg(long, env = "BACKBEAT_AGENTS", default_value_t = 100)]
    agents: usize,
    /// Seed of the fleet's behaviour: the same seed gives the same claims for the same beats.
    #[arg(long, env = "BACKBEAT_SEED", default_value_t = 1)]
    seed: u64,
    /// Claims per second for the whole fleet.
    #[arg(long, env = "BACKBEAT_RATE", default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many seconds (default: run until SIGTERM or --claims).
    #[arg(long, env = "BACKBEAT_DURATION_SECS")]
    duration_secs: Option<f64>,
    /// Stop after this many claims.
    #[arg(long, env = "BACKBEAT_CLAIMS")]
    claims: Option<u64>,
    /// Sends in flight at most (NATS requests, or HTTP batches).
    #[arg(long, env = "BACKBEAT_IN_FLIGHT_MAX", default_value_t = 256)]
    in_flight_max: usize,
    /// Claims per HTTP batch at most.
    #[arg(long, env = "BACKBEAT_BATCH_LINES_MAX", default_value_t = 500)]
    batch_lines_max: usize,
    /// How long to wait for the first beat frame before giving up.
    #[arg(long, env = "BACKBEAT_BEAT_WAIT_SECS", default_value_t = 30)]
    beat_wait_secs: u64,
    /// How long one claim is retried before it counts as not acknowledged.
    #[arg(long, env = "BACKBEAT_RETRY_SECS", default_value_t = 60)]
    retry_secs: u64,
    /// Log format.
    #[arg(long, env = "BACKBEAT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let sim_config = SimConfig {
        agents: config.agents,
        seed: config.seed,
        rate: config.rate,
        claims_max: config.claims,
        duration: config.duration_secs.map(Duration::from_secs_f64),
        in_flight_max: config.in_flight_max,
        batch_lines_max: config.batch_lines_max,
    };
    sim_config.validate()?;
    anyhow::ensure!(
        backbeat_schemas::names::is_valid_cluster_id(&config.cluster),
        "--cluster must match [A-Za-z0-9_-]{{1,64}}"
    );
    anyhow::ensure!(config.bar_length >= 1, "--bar-length must be at least 1");

    let client = config.nats.connect("backbeat-agent-sim").await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let follower = BeatFollower::start(
        client.clone(),
        FollowerConfig {
            cluster: config.cluster.clone(),
            bar_length: config.bar_length,
        },
        clock.clone(),
    )
    .await?;
    let first = follower
        .wait_first_beat(Duration::from_secs(config.beat_wait_secs))
        .await
        .context("is backbeat-pulse running for this cluster?")?;
    tracing::info!(beat = first.beat_index, tempo_bpm = first.tempo_bpm, window_id = %first.window_id, "following beats");

    let transport = match &config.http {
        Some(url) => Transport::http(url.clone()),
        None => Transport::nats(client.clone()),
    };
    let policy = RetryPolicy {
        elapsed_max: Duration::from_secs(config.retry_secs),
        attempts_max: u32::MAX,
        ..RetryPolicy::default()
    };
    let sender = Arc::new(ClaimSender::new(transport, &config.cluster, policy, config.seed));
    tracing::info!(
        agents = config.agents,
        rate = config.rate,
        via = if config.http.is_some() { "http" } else { "nats" },
        "agent-sim starting"
    );
    let stats = sim::run(
        &sim_config,
        &follower,
        sender,
        clock,
        config.http.is_some(),
        shutdown_signal(),
    )
    .await;
    client.flush().await.ok();
    println!("{}", serde_json::to_string(&stats)?);
    anyhow::ensure!(
        stats.rejected_total() == 0,
        "{} simulated claims were refused: {:?}",
        stats.rejected_total(),
        stats.rejected
    );
    anyhow::ensure!(stats.gave_up == 0, "{} claims were never acknowledged", stats.gave_up);
    Ok(())
}
