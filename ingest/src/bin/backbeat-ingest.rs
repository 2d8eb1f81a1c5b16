//! `backbeat-ingest`: the claim gateway. Takes status claims on
//! `backbeat.{cluster}.intake` (NATS publish or request) and on
//! `POST /api/v1/clusters/{cluster}/claims` (HTTP, one claim or an NDJSON batch),
//! appends accepted ones to `BACKBEAT_EVENTS` and keeps refused ones in
//! `BACKBEAT_REJECTS`. It never rewrites a payload and never answers before
//! JetStream acknowledged.

use std::time::Duration;

use anyhow::Context as _;
use backbeat_ingest::gateway::{Gateway, GatewayConfig};
use backbeat_service::{init_logging, serve_http, shutdown_signal, HttpArgs, LogFormat, NatsArgs};
use clap::Parser;

/// BACKBEAT claim gateway: validates status claims (NATS intake and HTTP) and
/// appends them to JetStream, exactly once per claim id; refused input goes to
/// BACKBEAT_REJECTS with its reason.
#[derive(Debug, Parser)]
#[command(name = "backbeat-ingest", version)]
struct Config {
    #[command(flatten)]
    nats: NatsArgs,
    /// HTTP address: claims (POST /api/v1/clusters/{cluster}/claims), /health, /ready, /metrics, /api/v1/status.
    #[arg(long, env = "BACKBEAT_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    #[command(flatten)]
    http: HttpArgs,
    /// Log format.
    #[arg(long, env = "BACKBEAT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// JetStream publishes awaiting their ack, at most; beyond it claims are answered 'unavailable'.
    #[arg(long, env = "BACKBEAT_ACKS_IN_FLIGHT_MAX", default_value_t = 1024)]
    acks_in_flight_max: u32,
    /// How long a claim waits for a free ack slot before it is answered 'unavailable' (HTTP 503).
    #[arg(long, env = "BACKBEAT_BACKPRESSURE_WAIT_MS", default_value_t = 250)]
    backpressure_wait_ms: u64,
    /// A dead letter keeps at most this many bytes of a refused input (its prefix, with header Backbeat-Truncated).
    #[arg(long, env = "BACKBEAT_DEAD_LETTER_BYTES_MAX", default_value_t = 64 * 1024)]
    dead_letter_bytes_max: usize,
    /// How long to wait for JetStream's ack of one publish before answering 'unavailable'.
    #[arg(long, env = "BACKBEAT_PUBLISH_TIMEOUT_MS", default_value_t = 2000)]
    publish_timeout_ms: u64,
    /// Largest HTTP request body (one claim or an NDJSON batch), in bytes; larger is 413.
    #[arg(long, env = "BACKBEAT_BATCH_BYTES_MAX", default_value_t = 1024 * 1024)]
    batch_bytes_max: usize,
    /// Most non-blank lines in one NDJSON batch; more is 413.
    #[arg(long, env = "BACKBEAT_BATCH_LINES_MAX", default_value_t = 10_000)]
    batch_lines_max: usize,
    /// Retry-After (seconds) of a 503.
    #[arg(long, env = "BACKBEAT_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u32,
    /// NATS queue group of the intake subscription: gateways in one group share the claims.
    #[arg(long, env = "BACKBEAT_QUEUE_GROUP", default_value = "backbeat-ingest")]
    queue_group: String,
    /// Replicas of the streams created when missing (1 for one server, 3 for a cluster).
    #[arg(long, env = "BACKBEAT_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
    /// The cluster ids claims are taken for, comma-separated (all well-formed ids when absent); claims for others are refused with reason cluster_not_allowed (HTTP 403) and dead-lettered.
    #[arg(long, env = "BACKBEAT_CLUSTERS", value_delimiter = ',')]
    clusters: Option<Vec<String>>,
    /// NATS answers go only to reply subjects under these inbox prefixes (PREFIX.…), comma-separated: _INBOX and the custom inbox prefixes your agents use; a request with any other reply subject is taken but not answered (metric backbeat_ingest_replies_refused_total).
    #[arg(
        long,
        env = "BACKBEAT_INBOX_PREFIXES",
        value_delimiter = ',',
        default_value = "_INBOX"
    )]
    inbox_prefixes: Vec<String>,
    /// On SIGTERM, how long to wait for the claims taken to be answered.
    #[arg(long, env = "BACKBEAT_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    drain_timeout_secs: u64,
}

impl Config {
    fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            acks_in_flight_max: self.acks_in_flight_max,
            backpressure_wait: Duration::from_millis(self.backpressure_wait_ms),
            dead_letter_bytes_max: self.dead_letter_bytes_max,
            publish_timeout: Duration::from_millis(self.publish_timeout_ms),
            batch_bytes_max: self.batch_bytes_max,
            batch_lines_max: self.batch_lines_max,
            retry_after_secs: self.retry_after_secs,
            queue_group: self.queue_group.clone(),
            stream_replicas: self.stream_replicas,
            clusters: self.clusters.clone(),
            inbox_prefixes: self.inbox_prefixes.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_logging(config.log_format);
    let gateway_config = config.gateway();
    gateway_config.validate()?;

    // Two connections: claims in and replies out on one, JetStream publishes
    // and acks on the other (each connection is one task, so one core).
    let client = config.nats.connect("backbeat-ingest").await?;
    let publish_client = config.nats.connect("backbeat-ingest-publish").await?;
    let gateway = Gateway::start_with(client, publish_client, gateway_config)
        .await
        .context("starting the gateway")?;

    // One signal stops both the HTTP server (its graceful shutdown lets the
    // requests in progress get their answers) and, after it, the NATS intake.
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = http_stop_rx.await;
    };
    let (addr, http) = serve_http(
        &config.listen,
        gateway.router(),
        shutdown,
        config.http.limits(gateway.http_limits()),
    )
    .await?;
    tracing::info!(%addr, "backbeat-ingest ready");

    shutdown_signal().await;
    let _ = http_stop_tx.send(());
    let drain = Duration::from_secs(config.drain_timeout_secs);
    let http_result = tokio::time::timeout(drain, http).await;
    let drained = gateway.shutdown(drain).await;
    match http_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP requests still open at the drain timeout"),
    }
    if !drained {
        tracing::warn!("acks still in flight at the drain timeout; their senders will retry");
    }
    Ok(())
}
