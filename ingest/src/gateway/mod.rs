//! The claim gateway: NATS intake (`backbeat.*.intake`, publish or request) and
//! HTTP intake (`POST /api/v1/clusters/{cluster}/claims`), one admission rule
//! ([`admission::admit`]), one JetStream publisher with bounded acks in flight.
//!
//! - An accepted claim is appended to `backbeat.{cluster}.claim` with its raw
//!   bytes and `Nats-Msg-Id` = SPEC §8's claim id, so a retried claim is stored once.
//! - A refused input is kept in `backbeat.{cluster}.reject` (or
//!   [`admission::INVALID_CLUSTER_REJECT_SUBJECT`] when its cluster id is not
//!   valid or not on the allow-list, [`clusters`]) with headers
//!   `Backbeat-Reason`, `Backbeat-Error`, `Backbeat-Source`, `Backbeat-Subject`
//!   (and `Backbeat-Truncated` when only a prefix of a huge input is kept); the
//!   refused lines of an HTTP batch are kept together, in one dead letter
//!   ([`dead_letter`]).
//! - The answer comes after JetStream's ack, never before, and a NATS answer
//!   goes only to an inbox ([`reply`]).
//! - The gateway publishes to JetStream on claim and reject subjects only
//!   (checked on its one publish path, [`publisher`]).
//!
//! [`Gateway::start`] runs it on a connection in-process (tests, the benchmark);
//! the `backbeat-ingest` binary wraps it with flags, admin HTTP and signals.

pub mod clusters;
pub mod http;
pub mod metrics;
pub mod nats_intake;
pub mod publisher;
pub mod reply;

// The pure decisions live in `backbeat-ingest-core` (fuzzed alone, fuzz/),
// here under their old paths.
pub use backbeat_ingest_core::{admission, dead_letter};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use backbeat_schemas::names::{EVENTS_STREAM, INTAKE_WILDCARD, REJECTS_STREAM};
use backbeat_service::admin::{admin_router, AdminState};
use backbeat_service::streams::{ensure_stream, events_config, rejects_config, StreamOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::answer::{BatchReply, LineResult, Outcome, Reply, ReplyError, NDJSON_CONTENT_TYPE, REASON_UNAVAILABLE};
pub use admission::{admit, Admission, INVALID_CLUSTER_REJECT_SUBJECT, REASON_INVALID_CLUSTER};
pub use clusters::{AllowedClusters, REASON_CLUSTER_NOT_ALLOWED};
pub use http::HttpLimits;
pub use metrics::GatewayMetrics;
pub use publisher::{Input, Publisher, PublisherLimits, Source};
pub use reply::{InboxPrefixes, RefusedReply, DEFAULT_INBOX_PREFIX};

/// Everything the gateway needs to know; validated by [`GatewayConfig::validate`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// JetStream publishes awaiting their ack, at most (claims and dead letters).
    pub acks_in_flight_max: u32,
    /// How long an input waits for an ack slot before it is answered `unavailable`.
    pub backpressure_wait: Duration,
    /// A dead letter keeps at most this many bytes of its input (and never more
    /// than the server's largest message allows); a longer input is kept as its
    /// prefix with header `Backbeat-Truncated` = its full length.
    pub dead_letter_bytes_max: usize,
    /// How long the gateway waits for JetStream's ack of one publish.
    pub publish_timeout: Duration,
    /// HTTP request bodies are at most this many bytes.
    pub batch_bytes_max: usize,
    /// An NDJSON batch holds at most this many non-blank lines.
    pub batch_lines_max: usize,
    /// `Retry-After` of a 503, in seconds.
    pub retry_after_secs: u32,
    /// The NATS queue group of the intake subscription: gateways in one group
    /// share the intake, each claim goes to one of them.
    pub queue_group: String,
    /// Replicas of the streams the gateway creates when they are missing.
    pub stream_replicas: usize,
    /// The cluster ids the gateway takes claims for; `None`: every well-formed id.
    pub clusters: Option<Vec<String>>,
    /// NATS answers go only to reply subjects under one of these prefixes
    /// (`{prefix}.…`): `_INBOX` and the custom inbox prefixes of the agents.
    pub inbox_prefixes: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            acks_in_flight_max: 1024,
            backpressure_wait: Duration::from_millis(250),
            dead_letter_bytes_max: 64 * 1024,
            publish_timeout: Duration::from_secs(2),
            batch_bytes_max: 1024 * 1024,
            batch_lines_max: 10_000,
            retry_after_secs: 1,
            queue_group: "backbeat-ingest".to_string(),
            stream_replicas: 1,
            clusters: None,
            inbox_prefixes: vec![DEFAULT_INBOX_PREFIX.to_string()],
        }
    }
}

impl GatewayConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.acks_in_flight_max >= 1, "--acks-in-flight-max must be at least 1");
        anyhow::ensure!(self.batch_bytes_max >= 1, "--batch-bytes-max must be at least 1");
        anyhow::ensure!(
            self.dead_letter_bytes_max >= 8192,
            "--dead-letter-bytes-max must be at least 8192 (an oversize claim's first 8 KiB)"
        );
        anyhow::ensure!(self.batch_lines_max >= 1, "--batch-lines-max must be at least 1");
        anyhow::ensure!(
            !self.publish_timeout.is_zero(),
            "--publish-timeout-ms must be more than 0"
        );
        anyhow::ensure!(!self.queue_group.is_empty(), "--queue-group must not be empty");
        anyhow::ensure!(
            (1..=5).contains(&self.stream_replicas),
            "--stream-replicas must be 1 to 5"
        );
        self.allowed_clusters()?;
        self.inboxes()?;
        Ok(())
    }

    /// `clusters` checked.
    pub fn allowed_clusters(&self) -> anyhow::Result<AllowedClusters> {
        Ok(match &self.clusters {
            None => AllowedClusters::all(),
            Some(ids) => AllowedClusters::only(ids)?,
        })
    }

    /// `inbox_prefixes` checked.
    pub fn inboxes(&self) -> anyhow::Result<InboxPrefixes> {
        InboxPrefixes::new(&self.inbox_prefixes).context("--inbox-prefixes")
    }
}

/// A running gateway on one NATS connection.
pub struct Gateway {
    client: async_nats::Client,
    publish_client: async_nats::Client,
    publisher: Arc<Publisher>,
    metrics: GatewayMetrics,
    config: GatewayConfig,
    streams_present: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    intake: JoinHandle<()>,
    stream_watch: JoinHandle<()>,
    started_at: Instant,
}

impl Gateway {
    /// Creates `BACKBEAT_EVENTS` and `BACKBEAT_REJECTS` when missing and starts
    /// serving NATS intake. HTTP intake is served by whoever serves [`Gateway::router`].
    pub async fn start(client: async_nats::Client, config: GatewayConfig) -> anyhow::Result<Gateway> {
        Gateway::start_with(client.clone(), client, config).await
    }

    /// As [`Gateway::start`], with JetStream publishes on a connection of their
    /// own (`publish_client`): each connection is served by one task, so the
    /// intake (claims in, replies out) and the appends (publishes out, acks in)
    /// then run on two cores instead of one.
    pub async fn start_with(
        client: async_nats::Client,
        publish_client: async_nats::Client,
        config: GatewayConfig,
    ) -> anyhow::Result<Gateway> {
        config.validate()?;
        let clusters = config.allowed_clusters()?;
        let inboxes = config.inboxes()?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            // Our own slots bound the acks; the context's bound must never be the one that blocks.
            .max_ack_inflight(config.acks_in_flight_max as usize + 64)
            .build(publish_client.clone());
        let options = StreamOptions {
            replicas: config.stream_replicas,
        };
        ensure_stream(&js, events_config(options)).await?;
        ensure_stream(&js, rejects_config(options)).await?;
        let streams_present = Arc::new(AtomicBool::new(true));

        let metrics = GatewayMetrics::new();
        let publisher = Arc::new(Publisher::new(
            js.clone(),
            PublisherLimits {
                acks_in_flight_max: config.acks_in_flight_max,
                backpressure_wait: config.backpressure_wait,
                // Headers and the protocol need some room beside the payload.
                dead_letter_bytes_max: config
                    .dead_letter_bytes_max
                    .min((client.server_info().max_payload).saturating_sub(4096).max(8192)),
            },
            clusters,
            metrics.clone(),
        ));
        let subscription = client
            .queue_subscribe(INTAKE_WILDCARD, config.queue_group.clone())
            .await
            .context("subscribing to the intake subjects")?;
        // The subscription is registered once the server has seen it: flush, so
        // a claim sent right after start() returns is not missed.
        client.flush().await.context("flushing the intake subscription")?;
        let (stop, stop_rx) = watch::channel(false);
        let intake = tokio::spawn(nats_intake::serve_nats_intake(
            client.clone(),
            subscription,
            publisher.clone(),
            inboxes.clone(),
            metrics.clone(),
            stop_rx,
        ));
        let stream_watch = tokio::spawn(watch_streams(js, streams_present.clone()));
        tracing::info!(
            subject = INTAKE_WILDCARD,
            queue_group = %config.queue_group,
            clusters = ?config.clusters,
            inbox_prefixes = ?inboxes.prefixes(),
            acks_in_flight_max = config.acks_in_flight_max,
            "gateway serving NATS intake"
        );
        Ok(Gateway {
            client,
            publish_client,
            publisher,
            metrics,
            config,
            streams_present,
            stop,
            intake,
            stream_watch,
            started_at: Instant::now(),
        })
    }

    /// What the gateway's HTTP listener allows (serve [`Gateway::router`] with
    /// it): the service defaults, a body limit that lets the claims route read
    /// a whole batch and the slack past it that gets its sender a 413, and the
    /// listener's metrics in the gateway's registry.
    pub fn http_limits(&self) -> backbeat_service::HttpLimits {
        backbeat_service::HttpLimits {
            body_bytes_max: http::body_bytes_read_max(self.config.batch_bytes_max),
            registry: Some(self.metrics.registry.clone()),
            ..Default::default()
        }
    }

    /// The claims route and the admin routes (`/health`, `/ready`, `/metrics`, `/api/v1/status`).
    pub fn router(&self) -> Router {
        let claims = http::claims_router(
            self.publisher.clone(),
            HttpLimits {
                batch_bytes_max: self.config.batch_bytes_max,
                batch_lines_max: self.config.batch_lines_max,
                retry_after_secs: self.config.retry_after_secs,
            },
        );
        let ready_clients = [self.client.clone(), self.publish_client.clone()];
        let ready_streams = self.streams_present.clone();
        let ready_stop = self.stop.subscribe();
        let status = StatusSource {
            client: self.client.clone(),
            publish_client: self.publish_client.clone(),
            publisher: self.publisher.clone(),
            metrics: self.metrics.clone(),
            streams_present: self.streams_present.clone(),
            stop: self.stop.subscribe(),
            started_at: self.started_at,
            inbox_prefixes: self.config.inbox_prefixes.clone(),
        };
        let admin = AdminState::new(
            self.metrics.registry.clone(),
            move || {
                if *ready_stop.borrow() {
                    return Err("shutting down".into());
                }
                if ready_clients
                    .iter()
                    .any(|c| c.connection_state() != async_nats::connection::State::Connected)
                {
                    return Err("not connected to NATS".into());
                }
                if !ready_streams.load(Ordering::Relaxed) {
                    return Err(format!("stream {EVENTS_STREAM} or {REJECTS_STREAM} missing"));
                }
                Ok(())
            },
            move || status.status(),
        );
        admin_router(admin).merge(claims)
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    /// Stops taking claims and waits, at most `wait`, for the ones taken to be
    /// answered. Stop the HTTP server first (its graceful shutdown waits for its
    /// requests' answers). Returns whether every ack in flight was drained.
    pub async fn shutdown(self, wait: Duration) -> bool {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + wait;
        let intake_done = tokio::time::timeout_at(deadline, self.intake).await.is_ok();
        self.publisher.close();
        let acks_done = self
            .publisher
            .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        self.stream_watch.abort();
        // Replies are queued on the connection: send them before the caller exits.
        let _ = tokio::time::timeout_at(deadline, self.client.flush()).await;
        let _ = tokio::time::timeout_at(deadline, self.publish_client.flush()).await;
        let drained = intake_done && acks_done;
        tracing::info!(drained, "gateway stopped");
        drained
    }
}

/// Keeps the `/ready` flag of the streams current: a stream deleted under the
/// gateway makes it not ready (its publishes then fail and are answered `unavailable`).
async fn watch_streams(js: jetstream::Context, streams_present: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let present = js.get_stream(EVENTS_STREAM).await.is_ok() && js.get_stream(REJECTS_STREAM).await.is_ok();
        streams_present.store(present, Ordering::Relaxed);
    }
}

struct StatusSource {
    client: async_nats::Client,
    publish_client: async_nats::Client,
    publisher: Arc<Publisher>,
    metrics: GatewayMetrics,
    streams_present: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    started_at: Instant,
    inbox_prefixes: Vec<String>,
}

impl StatusSource {
    fn status(&self) -> serde_json::Value {
        let m = &self.metrics;
        let received: u64 = ["nats", "http"]
            .iter()
            .map(|s| m.claims_received.with_label_values(&[s]).get())
            .sum();
        let rejected = m.claims_rejected_all.get();
        let nats_connected = [&self.client, &self.publish_client]
            .iter()
            .all(|c| c.connection_state() == async_nats::connection::State::Connected);
        serde_json::json!({
            "service": "backbeat-ingest",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started_at.elapsed().as_secs(),
            "nats_connected": nats_connected,
            "streams_present": self.streams_present.load(Ordering::Relaxed),
            "shutting_down": *self.stop.borrow(),
            "intake_subject": INTAKE_WILDCARD,
            "clusters": self.publisher.clusters().listed(),
            "inbox_prefixes": self.inbox_prefixes,
            "acks_in_flight": self.publisher.acks_in_flight(),
            "acks_in_flight_max": self.publisher.limits().acks_in_flight_max,
            "claims": {
                "received": received,
                "accepted": m.claims_accepted.get(),
                "duplicate": m.claims_duplicate.get(),
                "rejected": rejected,
                "unavailable": m.claims_unavailable.get(),
            },
            "dead_letters_failed": m.dead_letters_failed.get(),
            "replies_refused": RefusedReply::ALL
                .iter()
                .map(|r| m.replies_refused.with_label_values(&[r.as_str()]).get())
                .sum::<u64>(),
        })
    }
}
