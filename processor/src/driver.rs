//! `run`: the live fold on JetStream — a thin shell around the fold ([`backbeat_fold`]).
//!
//! It reads `BACKBEAT_EVENTS` in stream order through a durable pull consumer,
//! feeds every message to the fold, publishes each report exactly once
//! ([`crate::publisher`]), and checkpoints ([`crate::checkpoint`]). The
//! checkpoint is the truth about the position: on start the durable consumer is
//! re-created at the checkpoint's sequence + 1, so a kill -9 at any point loses
//! nothing and re-derives at most what followed the checkpoint (whose reports
//! are then recognised, byte for byte, among what the bar subject holds
//! after the last report the checkpoint names: [`crate::publisher`]).
//!
//! One process per name folds at a time: `run` first takes the name's lease
//! ([`crate::lease`], [`backbeat_service::lease`]), waiting while another process holds it, and stops at
//! once (an error) if it loses it, so two processes never fight over the
//! durable consumer and the checkpoint.
//!
//! The fold runs on its own thread ([`crate::worker`]): this task reads and
//! acknowledges messages and hands them over in batches, while the worker folds
//! the previous batch; the worker's outputs (reports, checkpoint states) come
//! back in order and are published and stored here, reports first.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, AckKind};
use backbeat_fold::{Fold, FoldConfig};
use backbeat_schemas::names::{subject, SubjectKind};
use backbeat_service::lease::{lease_key, Holder, LeaseState, Leases, LEASE_BUCKET};
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::watch;

use crate::checkpoint::{CheckpointError, CheckpointStore};
use crate::lease::{self, LEASE_BUCKET_DESCRIPTION};
use crate::metrics::Metrics;
use crate::publisher::{BarPublisher, PublishHealth, PublishOutcome};
use crate::status::{LeaseStatus, SharedStatus, REFUSED_CLUSTERS_SHOWN};
use crate::worker::{self, Request};

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
    /// The single-writer lease's TTL (the lease bucket's `max_age` when it creates the bucket).
    pub lease_ttl: Duration,
    /// Keep a checkpoint as history after at least this many reported windows
    /// (0: keep none), for `replay` to start from.
    pub history_every: u64,
    /// Kept checkpoints at most (the oldest leave first).
    pub history_keep: usize,
    /// Clusters the fold holds at most; events of others are counted, not folded.
    pub max_clusters: usize,
}

/// Whether `stream` still holds every message it ever stored (none removed by
/// limits, purges or deletes).
async fn stream_is_whole(stream: &mut jetstream::stream::Stream) -> anyhow::Result<bool> {
    let state = stream
        .info()
        .await
        .context("reading the events stream's state")?
        .state
        .clone();
    Ok(state.first_sequence <= 1 && state.messages == state.last_sequence)
}

/// The subjects a processor folds.
pub fn filter_subjects(clusters: &[String]) -> Vec<String> {
    clusters
        .iter()
        .flat_map(|c| [subject(c, SubjectKind::Beat), subject(c, SubjectKind::Claim)])
        .collect()
}

/// Takes the name's lease ([`crate::lease`]; waiting while another process
/// holds it), then folds until `shutdown` resolves, writes a last checkpoint
/// and releases the lease. Losing the lease stops everything at once (the fold
/// is dropped mid-flight, as a crash would) and is an error.
pub async fn run(
    client: async_nats::Client,
    config: RunConfig,
    metrics: Metrics,
    status: SharedStatus,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    let js = jetstream::new(client.clone());
    let leases = Leases::open(&js, LEASE_BUCKET_DESCRIPTION, config.lease_ttl, config.replicas).await?;
    let holder = Holder::this_process();
    status.update(|s| {
        s.lease = LeaseStatus {
            bucket: LEASE_BUCKET.into(),
            key: lease_key(&config.name),
            ttl_ms: leases.ttl().as_millis() as u64,
            holder: Some(holder.clone()),
            ..LeaseStatus::default()
        }
    });
    let (lease_state, lease_states) = watch::channel(LeaseState::Acquiring);
    let follower = lease::follow(lease_states, status.clone(), metrics.clone());
    let result = run_leased(
        client,
        &leases,
        &holder,
        lease_state,
        &config,
        metrics,
        status,
        shutdown,
    )
    .await;
    // The lease is gone (released, lost or never taken): its last state is in the status.
    let _ = follower.await;
    result
}

/// Takes the lease (nothing of this name, consumer or checkpoint, is touched
/// before), folds while it is held, then releases it.
#[allow(clippy::too_many_arguments)]
async fn run_leased(
    client: async_nats::Client,
    leases: &Leases,
    holder: &Holder,
    lease_state: watch::Sender<LeaseState>,
    config: &RunConfig,
    metrics: Metrics,
    status: SharedStatus,
    shutdown: impl std::future::Future<Output = ()> + Clone,
) -> anyhow::Result<()> {
    let Some(mut lease) = leases
        .acquire(&config.name, holder, lease_state, shutdown.clone())
        .await?
    else {
        tracing::info!("stopped while waiting for the lease");
        return Ok(());
    };
    let instance = lease.instance().to_string();
    let result = tokio::select! {
        biased;
        lost = lease.lost() => {
            tracing::error!(error = %lost, "lease lost: stopping at once");
            return Err(anyhow::Error::new(lost)
                .context(format!("processor {:?} stopped: it no longer holds its lease", config.name)));
        }
        result = fold_live(client, config, instance, metrics, status, shutdown) => result,
    };
    // Stopped (or failed) on our own: the fold is dropped, so a successor may start now.
    lease.release().await;
    result
}

/// The live fold, while the lease is held.
async fn fold_live(
    client: async_nats::Client,
    config: &RunConfig,
    instance: String,
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
    let mut store = CheckpointStore::open(
        &js,
        &config.name,
        &instance,
        &config.clusters,
        config.replicas,
        max_payload,
        config.history_keep,
    )
    .await?;

    let loaded = match store.load().await {
        Ok(loaded) => loaded,
        // Folding the whole stream again gives the very state the checkpoint
        // held (and the reports already published are skipped), so an
        // upgrade needs no one's hand. A stream missing events could not
        // give it: then an operator decides.
        Err(CheckpointError::OtherFormat(other)) => {
            if !stream_is_whole(&mut events.clone()).await? {
                return Err(CheckpointError::OtherFormat(other).into());
            }
            tracing::warn!(
                format = other.format,
                "checkpoint of another format; the events stream holds every event since its start, \
                 so folding it again from there"
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut last_reports = Default::default();
    let mut fold = match loaded {
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
            last_reports = manifest.last_reports;
            fold
        }
        None => {
            tracing::info!("no checkpoint: folding from the start of the stream");
            Fold::new(config.fold)
        }
    };
    if fold.cluster_count() > config.max_clusters {
        tracing::warn!(
            held = fold.cluster_count(),
            max_clusters = config.max_clusters,
            "the checkpoint holds more clusters than --max-clusters: they stay, no new one is folded"
        );
    }
    fold.set_max_clusters(config.max_clusters);
    metrics.clusters.set(fold.cluster_count() as i64);
    status.update(|s| {
        s.max_clusters = config.max_clusters as u64;
        s.clusters_held = fold.cluster_count() as u64;
    });
    let kept: Vec<u64> = store.kept().iter().map(|m| m.seq).collect();
    status.update(|s| s.kept_checkpoint_seqs = kept);
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
        .context("starting to consume")?
        .ready_chunks(config.batch.clamp(1, DISPATCH_BATCH_MAX));
    status.update(|s| s.started = true);
    status.refresh_from(&fold);

    let mut dispatched_seq = fold.last_seq();
    let mut publisher = BarPublisher::new(js.clone()).with_health(PublishHealth {
        status: status.clone(),
        metrics: metrics.clone(),
    });
    publisher.resume_after(&last_reports);
    let mut shell = Shell {
        publisher,
        store,
        metrics,
        status,
        config: config.clone(),
        folded_seq: fold.last_seq(),
        checkpointed_seq: fold.last_seq(),
        last_checkpoint: Instant::now(),
        checkpoint_wanted: false,
        windows_since_kept: 0,
    };
    let (requests, mut outputs) = worker::spawn(fold);
    let mut since_ack = 0usize;
    let mut ticker = tokio::time::interval(config.checkpoint_interval.min(Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);

    loop {
        if shell.checkpoint_wanted {
            // Not waiting for room: when the worker is busy, the next output asks again.
            if requests.try_send(Request::Checkpoint).is_ok() {
                shell.checkpoint_wanted = false;
            }
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            output = outputs.recv() => {
                shell.handle(output.context("the fold thread stopped")?).await?;
            }
            chunk = messages.next() => {
                let Some(chunk) = chunk else {
                    bail!("the consumer's message stream ended");
                };
                let arrived = Instant::now();
                let mut events = Vec::with_capacity(chunk.len());
                let mut last = None;
                let mut pending = None;
                for message in chunk {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error; continuing");
                            continue;
                        }
                    };
                    let (seq, left) = match message.info() {
                        Ok(info) => (info.stream_sequence, info.pending),
                        Err(e) => {
                            tracing::warn!(error = %e, "message without JetStream metadata; skipped");
                            continue;
                        }
                    };
                    // A redelivery: the fold would skip it too (`Fold::apply`); it is not sent.
                    if seq <= dispatched_seq {
                        continue;
                    }
                    dispatched_seq = seq;
                    pending = Some(left);
                    events.push(worker::Event { seq, subject: message.subject.clone(), payload: message.payload.clone() });
                    last = Some(message);
                }
                let (Some(last), Some(pending)) = (last, pending) else { continue };
                // Acks only keep the server's view of the consumer current: the
                // checkpoint, not the ack floor, is where a restart begins.
                since_ack += events.len();
                if pending == 0 || since_ack >= 1000 {
                    if let Err(e) = last.ack_with(AckKind::Ack).await {
                        tracing::debug!(error = %e, "ack failed");
                    }
                    since_ack = 0;
                }
                shell.metrics.consumer_lag.set(pending as i64);
                // Room in the worker's queue, handling its outputs meanwhile: it
                // may be waiting for room in ours.
                let request = Request::Events { events, pending, arrived };
                loop {
                    tokio::select! {
                        permit = requests.reserve() => {
                            permit.context("the fold thread stopped")?.send(request);
                            break;
                        }
                        output = outputs.recv() => {
                            shell.handle(output.context("the fold thread stopped")?).await?;
                        }
                    }
                }
            }
            _ = ticker.tick() => {
                if shell.folded_seq > shell.checkpointed_seq
                    && shell.last_checkpoint.elapsed() >= shell.config.checkpoint_interval
                {
                    shell.checkpoint_wanted = true;
                }
                if let Ok(info) = consumer.clone().info().await {
                    let lag = info.num_pending;
                    // Idle and everything folded: the fold is at the stream's end.
                    if lag == 0 && shell.folded_seq == dispatched_seq {
                        shell.metrics.consumer_lag.set(0);
                        shell.status.update(|s| { s.consumer_lag = 0; s.caught_up = true; });
                    } else {
                        let behind = lag + dispatched_seq.saturating_sub(shell.folded_seq);
                        shell.status.update(|s| { s.consumer_lag = behind; s.caught_up = behind <= shell.config.ready_lag_max; });
                    }
                }
            }
        }
    }
    // Let the worker fold what it was sent; its last output is a checkpoint.
    drop(requests);
    while let Some(output) = outputs.recv().await {
        shell.handle(output).await?;
    }
    tracing::info!(seq = shell.folded_seq, "stopped");
    Ok(())
}

/// Events per request to the worker at most.
const DISPATCH_BATCH_MAX: usize = 1024;

/// The driver's side of the worker: publishes reports, stores checkpoints,
/// keeps metrics and status current.
struct Shell {
    publisher: BarPublisher,
    store: CheckpointStore,
    metrics: Metrics,
    status: SharedStatus,
    config: RunConfig,
    /// The last event the worker has folded (as far as outputs tell).
    folded_seq: u64,
    /// The last event of the stored checkpoint.
    checkpointed_seq: u64,
    last_checkpoint: Instant,
    /// A checkpoint is due and not yet requested.
    checkpoint_wanted: bool,
    /// Windows reported since the last checkpoint kept as history.
    windows_since_kept: u64,
}

impl Shell {
    /// Handles one output of the worker, in order.
    async fn handle(&mut self, output: worker::Output) -> anyhow::Result<()> {
        let metrics = &self.metrics;
        metrics.count_many(&output.outcomes);
        metrics.clusters.set(output.clusters as i64);
        for cluster_id in &output.refused_clusters {
            tracing::warn!(
                cluster = %cluster_id, max_clusters = self.config.max_clusters,
                "events of a cluster beyond --max-clusters: counted, not folded (logged once per cluster)"
            );
            metrics.clusters_refused.inc();
        }
        self.folded_seq = self.folded_seq.max(output.last_seq);
        metrics.last_seq.set(self.folded_seq as i64);
        let had_reports = !output.reports.is_empty();
        self.windows_since_kept += output.reports.len() as u64;
        for report in &output.reports {
            match self
                .publisher
                .publish(report, Duration::from_secs(u64::MAX / 4))
                .await?
            {
                PublishOutcome::Published(_) => metrics.reports_published.inc(),
                PublishOutcome::AlreadyPublished(_) => metrics.reports_skipped.inc(),
            }
            metrics
                .report_mismatches
                .inc_by(std::mem::take(&mut self.publisher.mismatches));
            metrics.foreign_bars.inc_by(std::mem::take(&mut self.publisher.foreign));
            metrics
                .report_msg_id_taken
                .inc_by(std::mem::take(&mut self.publisher.msg_id_taken));
            if let Some(arrived) = output.arrived {
                let elapsed = arrived.elapsed().as_secs_f64();
                metrics.rollup_latency.observe(elapsed);
                metrics.window_processing.observe(elapsed);
            }
            let cluster = [report.cluster_id.as_str()];
            metrics.windows_completed.with_label_values(&cluster).inc();
            metrics
                .agents_reporting
                .with_label_values(&cluster)
                .set(report.agents_reporting as i64);
            metrics
                .on_time_reviews
                .with_label_values(&cluster)
                .set(report.on_time_reviews as i64);
            self.status.record_report(report);
        }
        if let Some(views) = output.views {
            self.status.refresh(self.folded_seq, self.config.fold.bar_length, views);
        }
        let published = metrics.reports_published.get();
        let ready_lag_max = self.config.ready_lag_max;
        let (foreign, msg_ids_taken) = (metrics.foreign_bars.get(), metrics.report_msg_id_taken.get());
        let cluster_cap_events = metrics.cluster_cap_events.get();
        self.status.update(|s| {
            s.reports_published = published;
            s.foreign_bars = foreign;
            s.report_msg_ids_taken = msg_ids_taken;
            s.cluster_cap_events = cluster_cap_events;
            s.clusters_held = output.clusters as u64;
            let room = REFUSED_CLUSTERS_SHOWN.saturating_sub(s.refused_clusters.len());
            s.refused_clusters
                .extend(output.refused_clusters.iter().take(room).cloned());
            if let Some(pending) = output.pending {
                s.consumer_lag = pending;
                s.caught_up = pending <= ready_lag_max;
            }
        });
        if let Some(checkpoint) = output.checkpoint {
            if checkpoint.seq > self.checkpointed_seq {
                self.save(checkpoint).await?;
            }
        } else if (had_reports && self.last_checkpoint.elapsed() >= self.config.checkpoint_min_interval)
            || (self.folded_seq > self.checkpointed_seq
                && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
        {
            self.checkpoint_wanted = true;
        }
        Ok(())
    }

    /// Stores a checkpoint. A failed write costs only re-folding time after
    /// a restart and is retried later; a write refused because another
    /// process wrote the checkpoint ([`CheckpointError::Fenced`]) stops the processor.
    async fn save(&mut self, checkpoint: worker::CheckpointState) -> anyhow::Result<()> {
        self.last_checkpoint = Instant::now();
        let history_every = self.config.history_every;
        let keep = history_every > 0 && self.windows_since_kept >= history_every;
        match self
            .store
            .save_state(
                checkpoint.seq,
                checkpoint.config,
                &checkpoint.state,
                checkpoint.next_to_close,
                self.publisher.last_reports(),
                keep,
            )
            .await
        {
            Ok(manifest) => {
                if keep {
                    self.windows_since_kept = 0;
                    self.metrics.checkpoints_kept.inc();
                }
                self.checkpointed_seq = manifest.seq;
                self.metrics.checkpoints.inc();
                self.metrics.checkpoint_bytes.set(manifest.bytes as i64);
                let kept = self.store.kept().iter().map(|m| m.seq).collect();
                self.status.update(|s| {
                    s.checkpoint_seq = manifest.seq;
                    s.checkpoint_generation = manifest.generation;
                    s.kept_checkpoint_seqs = kept;
                });
            }
            Err(e @ CheckpointError::Fenced(_)) => {
                return Err(
                    anyhow::Error::new(e).context("stopping: another process writes this processor's checkpoint")
                );
            }
            Err(e) => tracing::warn!(error = %format!("{:#}", anyhow::Error::new(e)), "checkpoint failed; will retry"),
        }
        Ok(())
    }
}
