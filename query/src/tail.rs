//! The tail reader: one ordered consumer per stream (`BACKBEAT_EVENTS`,
//! `BACKBEAT_BARS`, `BACKBEAT_REJECTS`) from the archive's recorded position
//! (the first message when there is none), feeding the in-memory tables. It never writes to a stream and never acks (ordered
//! consumers are ephemeral, without acks): reading is all it does.
//!
//! A consumer that fails (the server restarted, the stream was recreated) is
//! created again after the last sequence read, with a backoff, so no row is
//! read twice and none is skipped while the stream still holds it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM, REJECTS_STREAM};
use futures::StreamExt as _;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::tables::{Applied, Table, TailTables};

/// The streams the tail reads.
pub const STREAMS: [&str; 3] = [EVENTS_STREAM, BARS_STREAM, REJECTS_STREAM];

/// The longest wait between two attempts to create a consumer again.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// The tail of the three streams: the tables, and how far each stream is read.
pub struct Tail {
    pub tables: Arc<Mutex<TailTables>>,
    metrics: Metrics,
    progress: [StreamProgress; 3],
    /// The tail asks the archive's writer for a seal (it holds too many rows).
    pub seal_now: Notify,
    /// The writer says a seal let rows go.
    pub sealed: Notify,
}

/// How far one stream has been read.
#[derive(Debug, Default)]
struct StreamProgress {
    /// The last stream sequence read.
    last_seq: AtomicU64,
    /// Messages the server said were left after the last one read.
    pending: AtomicU64,
    /// Whether the tail has read everything the stream held at some point.
    caught_up: AtomicBool,
    /// Whether the consumer is up (false between a failure and its recreation).
    connected: AtomicBool,
}

impl Tail {
    /// A tail that reads each stream after `start` (the archive's positions, [`STREAMS`] order).
    pub fn new(tables: TailTables, metrics: Metrics, start: [u64; 3]) -> Arc<Tail> {
        let progress: [StreamProgress; 3] = Default::default();
        for (progress, start) in progress.iter().zip(start) {
            progress.last_seq.store(start, Ordering::Relaxed);
        }
        Arc::new(Tail {
            tables: Arc::new(Mutex::new(tables)),
            metrics,
            progress,
            seal_now: Notify::new(),
            sealed: Notify::new(),
        })
    }

    /// The tables, locked.
    pub fn lock_tables(&self) -> anyhow::Result<std::sync::MutexGuard<'_, TailTables>> {
        self.tables
            .lock()
            .map_err(|_| anyhow::anyhow!("the tail's lock is poisoned"))
    }

    /// The last sequence read of each stream ([`STREAMS`] order); every row
    /// at or below it is applied to the tables.
    pub fn read_positions(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.progress[i].last_seq.load(Ordering::Relaxed))
    }

    /// On the archive's writer, while a table holds more than its limit:
    /// asks for a seal and waits until one lets rows go (never a row lost).
    async fn wait_for_room(&self) -> anyhow::Result<()> {
        loop {
            if !self.lock_tables()?.must_wait() {
                return Ok(());
            }
            self.metrics.tail_waits.inc();
            let sealed = self.sealed.notified();
            self.seal_now.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(1), sealed).await;
        }
    }

    /// Starts one reader task per stream; they run until the runtime stops.
    pub fn spawn(self: &Arc<Self>, js: jetstream::Context) {
        for (index, stream) in STREAMS.into_iter().enumerate() {
            let tail = self.clone();
            let js = js.clone();
            tokio::spawn(async move { tail.read_forever(js, index, stream).await });
        }
    }

    /// `Ok` when every stream is read up to where it was (the tail caught up)
    /// and every consumer is up; else what is missing.
    pub fn ready(&self) -> Result<(), String> {
        for (stream, progress) in STREAMS.iter().zip(&self.progress) {
            if !progress.connected.load(Ordering::Relaxed) {
                return Err(format!("no consumer on {stream}"));
            }
            if !progress.caught_up.load(Ordering::Relaxed) {
                return Err(format!(
                    "{stream} not read up to its end yet ({} messages left)",
                    progress.pending.load(Ordering::Relaxed)
                ));
            }
        }
        Ok(())
    }

    /// The status of each stream and table, for `/api/v1/status`.
    pub fn status(&self) -> serde_json::Value {
        let streams: serde_json::Map<String, serde_json::Value> = STREAMS
            .iter()
            .zip(&self.progress)
            .map(|(stream, p)| {
                let value = serde_json::json!({
                    "last_seq": p.last_seq.load(Ordering::Relaxed),
                    "pending": p.pending.load(Ordering::Relaxed),
                    "caught_up": p.caught_up.load(Ordering::Relaxed),
                    "connected": p.connected.load(Ordering::Relaxed),
                });
                (stream.to_string(), value)
            })
            .collect();
        let tables: serde_json::Map<String, serde_json::Value> = match self.tables.lock() {
            Ok(tables) => Table::ALL
                .iter()
                .map(|table| {
                    let (held, evicted) = tables.rows(*table);
                    let value = serde_json::json!({"rows_held": held, "rows_evicted": evicted});
                    (table.name().to_string(), value)
                })
                .collect(),
            Err(_) => serde_json::Map::new(),
        };
        serde_json::json!({"streams": streams, "tables": tables})
    }

    async fn read_forever(&self, js: jetstream::Context, index: usize, stream: &'static str) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.read(&js, index, stream).await {
                Ok(()) => tracing::warn!(stream, "tail consumer ended; creating it again"),
                Err(e) => tracing::warn!(
                    stream,
                    error = format!("{e:#}"),
                    "tail consumer failed; creating it again"
                ),
            }
            self.progress[index].connected.store(false, Ordering::Relaxed);
            self.metrics.tail_restarts.inc();
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }

    /// Reads `stream` from after the last sequence read until the consumer fails.
    async fn read(&self, js: &jetstream::Context, index: usize, stream_name: &'static str) -> anyhow::Result<()> {
        let progress = &self.progress[index];
        let stream = js
            .get_stream(stream_name)
            .await
            .with_context(|| format!("looking up {stream_name}"))?;
        let next = progress.last_seq.load(Ordering::Relaxed) + 1;
        let deliver_policy = if next == 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: next }
        };
        let mut consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating an ordered consumer on {stream_name}"))?;
        let pending = consumer
            .info()
            .await
            .context("reading the consumer's info")?
            .num_pending;
        progress.connected.store(true, Ordering::Relaxed);
        self.set_pending(index, stream_name, pending);
        let mut messages = consumer.messages().await.context("consuming")?;
        while let Some(message) = messages.next().await {
            let message = message.context("reading a message")?;
            let info = message
                .info()
                .map_err(|e| anyhow::anyhow!("reading a message's info: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let stored_at: SystemTime = info.published.into();
            let stored_at_us = stored_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            // An ordered consumer delivers each sequence once, in order; one
            // created again after a failure starts after the last one read.
            if seq <= progress.last_seq.load(Ordering::Relaxed) {
                continue;
            }
            let applied = {
                let mut tables = self
                    .tables
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the tail's lock is poisoned"))?;
                let subject = message.subject.as_str();
                let payload = &message.payload;
                let applied = match index {
                    0 => tables.apply_event(seq, stored_at_us, subject, payload),
                    1 => tables.apply_bar(seq, stored_at_us, subject, payload),
                    _ => tables.apply_reject(seq, stored_at_us, subject, payload, |name| {
                        message.headers.as_ref()?.get(name).map(|v| v.as_str())
                    }),
                };
                for table in Table::ALL {
                    let (held, evicted) = tables.rows(table);
                    self.metrics
                        .rows_held
                        .with_label_values(&[table.name()])
                        .set(held as i64);
                    let counter = self.metrics.rows_evicted.with_label_values(&[table.name()]);
                    counter.inc_by(evicted.saturating_sub(counter.get()));
                }
                applied
            };
            self.count(stream_name, seq, &message.subject, applied);
            progress.last_seq.store(seq, Ordering::Relaxed);
            self.set_pending(index, stream_name, pending);
            self.wait_for_room().await?;
        }
        Ok(())
    }

    fn set_pending(&self, index: usize, stream_name: &str, pending: u64) {
        let progress = &self.progress[index];
        progress.pending.store(pending, Ordering::Relaxed);
        self.metrics
            .tail_lag
            .with_label_values(&[stream_name])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        // The first time a stream is read to its end (a start's catch-up),
        // the archive's writer seals at once rather than at its next tick:
        // what a restarted writer read is archived, and its position
        // recorded, without waiting up to --seal-interval-ms. Only the first
        // time: live, the pending count touches 0 after every burst.
        if pending == 0 && !progress.caught_up.swap(true, Ordering::Relaxed) {
            self.seal_now.notify_one();
        }
    }

    fn count(&self, stream_name: &str, seq: u64, subject: &str, applied: Applied) {
        match applied {
            Applied::Row | Applied::Ignored | Applied::Archived => {}
            Applied::Replaced => {
                self.metrics.foreign_bars.with_label_values(&["superseded"]).inc();
                tracing::warn!(
                    seq,
                    subject,
                    "a second report of a window on the bar subject: the last stored one is kept"
                );
            }
            Applied::ForeignBar(why) => {
                self.metrics.foreign_bars.with_label_values(&["invalid"]).inc();
                tracing::debug!(
                    seq,
                    subject,
                    why,
                    "not a BarReport of its cluster; left out of bar_reports"
                );
            }
            Applied::ForeignEvent(kind) => {
                self.metrics.foreign_events.with_label_values(&[kind.as_str()]).inc();
                tracing::debug!(
                    stream = stream_name,
                    seq,
                    subject,
                    "not a valid beat or claim; left out"
                );
            }
        }
    }
}
