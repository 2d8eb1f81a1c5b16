//! `run`: the live fold on JetStream — a thin shell around [`crate::fold`].
//!
//! It reads `BACKBEAT_EVENTS` in stream order through a durable pull consumer,
//! feeds every message to the fold, publishes each report exactly once
//! ([`crate::publisher`]), and checkpoints ([`crate::checkpoint`]). The
//! checkpoint is the truth about the position: on start the durable consumer is
//! re-created at the checkpoint's sequence + 1, so a kill -9 at any point loses
//! nothing and re-derives at most what followed the checkpoint (whose reports
//! are then recognised as already published).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, AckKind};
use backbeat_schemas::names::{subject, SubjectKind};
use futures::StreamExt as _;

use crate::checkpoint::CheckpointStore;
use crate::fold::{Fold, FoldConfig};
use crate::metrics::Metrics;
use crate::publisher::{BarPublisher, PublishOutcome};
use crate::status::SharedStatus;

/// What `run` needs, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub fold: FoldConfig,
    /// Durable consumer and checkpoint name.
    pub name: String,
    /// Clusters to fold; empty = every cluster.
    pub clusters: Vec<String>,
    /// A checkpoint at most this often after reports (limits checkpoint writes during catch-up).
    pub checkpoint_min_interval: Duration,
    /// A checkpoint at least this often while events arrive.
    pub checkpoint_interval: Duration,
    /// Messages per pull request.
    pub batch: usize,
    /// Stream replicas for streams/buckets this service creates.
    pub replicas: usize,
    /// Readiness: caught up means at most this many messages behind.
    pub ready_lag_max: u64,
}

/// The subjects a processor folds.
pub fn filter_subjects(clusters: &[String]) -> Vec<String> {
    clusters
        .iter()
        .flat_map(|c| [subject(c, SubjectKind::Beat), subject(c, SubjectKind::Claim)])
        .collect()
}

/// Runs until `shutdown` resolves, then writes a last checkpoint.
pub async fn run(
    client: async_nats::Client,
    config: RunConfig,
    metrics: Metrics,
    status: SharedStatus,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let options = backbeat_service::streams::StreamOptions {
        replicas: config.replicas,
    };
    let events =
        backbeat_service::streams::ensure_stream(&js, backbeat_service::streams::events_config(options)).await?;
    backbeat_service::streams::ensure_stream(&js, backbeat_service::streams::bars_config(options)).await?;
    let max_payload = client.server_info().max_payload;
    let mut store = CheckpointStore::open(&js, &config.name, config.replicas, max_payload).await?;

    let mut fold = match store.load().await? {
        Some((manifest, fold)) => {
            if manifest.config != config.fold {
                bail!(
                    "checkpoint {:?} was made with fold config {:?}, not {:?}: a bar length or fold setting \
                     cannot change under a running history. Start with the same flags, or use another --name \
                     (it folds the stream from the start)",
                    config.name,
                    manifest.config,
                    config.fold
                );
            }
            tracing::info!(
                seq = manifest.seq,
                generation = manifest.generation,
                "resuming from checkpoint"
            );
            status.update(|s| {
                s.checkpoint_seq = manifest.seq;
                s.checkpoint_generation = manifest.generation;
            });
            fold
        }
        None => {
            tracing::info!("no checkpoint: folding from the start of the stream");
            Fold::new(config.fold)
        }
    };
    let start_seq = fold.last_seq() + 1;

    // The checkpoint is the position's truth: re-create the durable consumer there.
    match events.delete_consumer(&config.name).await {
        Ok(_) => tracing::debug!("replaced the durable consumer"),
        Err(e) => tracing::debug!(error = %e, "no durable consumer to replace"),
    }
    let consumer = events
        .create_consumer(consumer::pull::Config {
            durable_name: Some(config.name.clone()),
            description: Some("BACKBEAT processor (position restored from its checkpoint at start)".into()),
            filter_subjects: filter_subjects(&config.clusters),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start_seq,
            },
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending: 1_000_000,
            ..Default::default()
        })
        .await
        .context("creating the durable consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("starting to consume")?;
    status.update(|s| s.started = true);
    status.refresh_from(&fold);

    let mut publisher = BarPublisher::new(js.clone());
    let mut reports = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    let mut since_ack = 0u32;
    let mut ticker = tokio::time::interval(config.checkpoint_interval.min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = messages.next() => {
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer error; continuing");
                        continue;
                    }
                    None => bail!("the consumer's message stream ended"),
                };
                let arrived = Instant::now();
                let (seq, pending) = match message.info() {
                    Ok(info) => (info.stream_sequence, info.pending),
                    Err(e) => {
                        tracing::warn!(error = %e, "message without JetStream metadata; skipped");
                        continue;
                    }
                };
                if seq <= fold.last_seq() {
                    continue;
                }
                let outcome = fold.apply(seq, message.subject.as_str(), &message.payload, &mut reports);
                metrics.count(outcome);
                metrics.last_seq.set(seq as i64);
                metrics.consumer_lag.set(pending as i64);
                dirty = true;
                let had_reports = !reports.is_empty();
                for report in reports.drain(..) {
                    let outcome = publisher
                        .publish(&report, Duration::from_secs(u64::MAX / 4))
                        .await?;
                    match outcome {
                        PublishOutcome::Published(_) => metrics.reports_published.inc(),
                        PublishOutcome::AlreadyPublished => metrics.reports_skipped.inc(),
                    }
                    metrics.report_mismatches.inc_by(std::mem::take(&mut publisher.mismatches));
                    let elapsed = arrived.elapsed().as_secs_f64();
                    metrics.rollup_latency.observe(elapsed);
                    metrics.window_processing.observe(elapsed);
                    metrics.windows_completed.with_label_values(&[report.cluster_id.as_str()]).inc();
                    metrics.agents_reporting.with_label_values(&[report.cluster_id.as_str()]).set(report.agents_reporting as i64);
                    metrics.on_time_reviews.with_label_values(&[report.cluster_id.as_str()]).set(report.on_time_reviews as i64);
                    status.record_report(&report);
                    status.update(|s| s.reports_published = metrics.reports_published.get());
                }
                // Acks only keep the server's view of the consumer current: the
                // checkpoint, not the ack floor, is where a restart begins.
                since_ack += 1;
                if pending == 0 || since_ack >= 1000 || had_reports {
                    if let Err(e) = message.ack_with(AckKind::Ack).await {
                        tracing::debug!(error = %e, "ack failed");
                    }
                    since_ack = 0;
                }
                let caught_up = pending <= config.ready_lag_max;
                if pending == 0 || had_reports {
                    status.refresh_from(&fold);
                    status.update(|s| { s.consumer_lag = pending; s.caught_up = caught_up; });
                }
                let due = (had_reports && last_checkpoint.elapsed() >= config.checkpoint_min_interval)
                    || last_checkpoint.elapsed() >= config.checkpoint_interval;
                if due {
                    checkpoint(&mut store, &fold, &metrics, &status).await;
                    last_checkpoint = Instant::now();
                    dirty = false;
                }
            }
            _ = ticker.tick() => {
                if dirty && last_checkpoint.elapsed() >= config.checkpoint_interval {
                    checkpoint(&mut store, &fold, &metrics, &status).await;
                    last_checkpoint = Instant::now();
                    dirty = false;
                }
                if let Ok(info) = consumer.clone().info().await {
                    let lag = info.num_pending;
                    metrics.consumer_lag.set(lag as i64);
                    status.update(|s| { s.consumer_lag = lag; s.caught_up = lag <= config.ready_lag_max; });
                }
            }
        }
    }
    if dirty {
        checkpoint(&mut store, &fold, &metrics, &status).await;
    }
    tracing::info!(seq = fold.last_seq(), "stopped");
    Ok(())
}

async fn checkpoint(store: &mut CheckpointStore, fold: &Fold, metrics: &Metrics, status: &SharedStatus) {
    match store.save(fold).await {
        Ok(manifest) => {
            metrics.checkpoints.inc();
            metrics.checkpoint_bytes.set(manifest.bytes as i64);
            status.update(|s| {
                s.checkpoint_seq = manifest.seq;
                s.checkpoint_generation = manifest.generation;
            });
        }
        // A failed checkpoint costs only re-folding time after a restart.
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "checkpoint failed; will retry"),
    }
}
