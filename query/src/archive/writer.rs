//! The archive's writer: one process at a time (the shared lease
//! `query-archive` of `backbeat-service`) seals what the tail holds into
//! Parquet files. A node without the lease refreshes its view of the archive
//! from a listing, so its tail drops what the writer archived, and serves
//! queries over the archive's files and its own tail.
//!
//! A seal round (every `--seal-interval-ms`, or at once when the tail is
//! over its limit): take what is sealed ([`TailTables::to_seal`]), write
//! each file whole, and after each file take the grown view (the tail drops
//! its rows under the same lock queries read under); then record the
//! streams' positions. A file that failed to be written is sealed again next
//! round, from the same first sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream;
use backbeat_service::lease::{Holder, LeaseState, Leases};
use tokio::sync::watch;

use super::location::Archive;
use super::parquet::encode;
use super::view::{ArchiveView, ArchivedFile};
use crate::metrics::Metrics;
use crate::tables::Sealing;
use crate::tail::{Tail, STREAMS};

/// The lease's name: one archive writer per NATS account.
pub const LEASE_NAME: &str = "query-archive";
/// The lease bucket's description, when this service creates it.
const LEASE_BUCKET_DESCRIPTION: &str = "BACKBEAT leases: one running writer per name";

/// How the archive is written (flags of `serve`).
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub seal_interval: Duration,
    pub refresh_interval: Duration,
    pub row_group_rows: usize,
    pub lease_ttl: Duration,
    pub replicas: usize,
}

/// Where the archive stands, for `/api/v1/status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ArchiveState {
    /// The lease's state: `acquiring`, `waiting`, `held` (this node writes), `released`, `lost`.
    pub lease: String,
    pub writer: bool,
    pub last_seal_unix_ms: Option<u64>,
    pub files_written: u64,
    pub rows_written: BTreeMap<&'static str, u64>,
    /// The streams' positions last recorded.
    pub positions: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
}

/// Seals the tail into the archive while it holds the lease; refreshes the
/// tail's view of the archive while it does not.
pub struct Archiver {
    pub archive: Archive,
    tail: Arc<Tail>,
    metrics: Metrics,
    options: ArchiveOptions,
    pub state: Arc<Mutex<ArchiveState>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Archiver {
    pub fn new(archive: Archive, tail: Arc<Tail>, metrics: Metrics, options: ArchiveOptions) -> Arc<Archiver> {
        Arc::new(Archiver {
            archive,
            tail,
            metrics,
            options,
            state: Arc::new(Mutex::new(ArchiveState::default())),
        })
    }

    fn update(&self, f: impl FnOnce(&mut ArchiveState)) {
        if let Ok(mut state) = self.state.lock() {
            f(&mut state);
        }
    }

    /// Waits for the lease (refreshing the view meanwhile), then seals every
    /// `--seal-interval-ms` until SIGTERM (the lease is released) or the
    /// lease is lost (an error: the process stops at once).
    pub async fn run(self: Arc<Self>, js: jetstream::Context) -> anyhow::Result<()> {
        let leases = Leases::open(
            &js,
            LEASE_BUCKET_DESCRIPTION,
            self.options.lease_ttl,
            self.options.replicas,
        )
        .await?;
        let holder = Holder::this_process();
        let (lease_state, mut lease_states) = watch::channel(LeaseState::Acquiring);
        let follower = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    let state = lease_states.borrow_and_update().clone();
                    let held = matches!(state, LeaseState::Held { .. });
                    me.metrics.archive_writer.set(i64::from(held));
                    me.update(|s| s.lease = state.name().to_string());
                    if lease_states.changed().await.is_err() {
                        break;
                    }
                }
            })
        };
        let shutdown = backbeat_service::shutdown_signal();
        tokio::pin!(shutdown);
        let lease = {
            let acquire = leases.acquire(LEASE_NAME, &holder, lease_state, &mut shutdown);
            tokio::pin!(acquire);
            loop {
                tokio::select! {
                    held = &mut acquire => break held?,
                    () = tokio::time::sleep(self.options.refresh_interval) => {
                        if let Err(e) = self.refresh().await {
                            tracing::warn!(error = format!("{e:#}"), "could not list the archive; trying again");
                        }
                    }
                }
            }
        };
        let Some(mut lease) = lease else {
            return Ok(());
        };
        self.become_writer().await?;
        enum Next {
            Lost(backbeat_service::lease::LeaseError),
            Stop,
            Seal,
        }
        let result = loop {
            let next = tokio::select! {
                biased;
                lost = lease.lost() => Next::Lost(lost),
                () = &mut shutdown => Next::Stop,
                () = self.tail.seal_now.notified() => Next::Seal,
                () = tokio::time::sleep(self.options.seal_interval) => Next::Seal,
            };
            match next {
                Next::Lost(lost) => {
                    break Err(anyhow::Error::new(lost).context("the archive lease was lost: stopping at once"));
                }
                Next::Stop => {
                    lease.release().await;
                    break Ok(());
                }
                Next::Seal => {}
            }
            if let Err(e) = self.seal().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "sealing into the archive failed; trying again next round"
                );
                self.update(|s| s.last_error = Some(format!("{e:#}")));
            }
        };
        follower.abort();
        result
    }

    /// A node without the lease: what the archive holds now, from a listing.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let view = self.archive.list().await?;
        let mut tables = self.tail.lock_tables()?;
        tables.install(view);
        Ok(())
    }

    /// The lease is ours: from now on the tail lets no row go (they must
    /// reach the archive), and the archive's own listing is the start.
    async fn become_writer(&self) -> anyhow::Result<()> {
        let view = self.archive.list().await?;
        let mut tables = self.tail.lock_tables()?;
        let evicted = tables.rows_evicted_total();
        anyhow::ensure!(
            evicted == 0,
            "this node let {evicted} rows go from its tail (--tail-rows-max) before it took the archive lease: \
             they would be missing from the archive; restart it to read the streams from the archive's record"
        );
        tables.set_evict(false);
        tables.install(view);
        drop(tables);
        self.update(|s| s.writer = true);
        tracing::info!(archive = %self.archive.location, "writing the archive");
        Ok(())
    }

    /// One seal round.
    pub async fn seal(&self) -> anyhow::Result<()> {
        // Read before the tables are looked at: a sequence counts as read
        // only once its row is applied, so nothing read is missed.
        let read = self.tail.read_positions();
        let (sealings, mut view) = {
            let tables = self.tail.lock_tables()?;
            let force = tables.under_pressure();
            (tables.to_seal(read, force), ArchiveView::clone(&tables.archive()))
        };
        for sealing in sealings {
            let file = self.write(&sealing).await?;
            view.add(file);
            self.tail.lock_tables()?.install(view.clone());
            self.tail.sealed.notify_waiters();
        }
        let (positions, unsealed) = {
            let tables = self.tail.lock_tables()?;
            (tables.positions(read), tables.unsealed_reports())
        };
        for (stream, position) in STREAMS.iter().zip(positions) {
            let last = self.state.lock().ok().and_then(|s| s.positions.get(stream).copied());
            if last != Some(position) {
                self.archive.set_position(stream, position).await?;
                self.update(|s| {
                    s.positions.insert(stream, position);
                });
            }
        }
        let now = unix_ms();
        self.metrics.archive_lag_windows.set(unsealed as i64);
        self.metrics.archive_last_seal.set(now as f64 / 1000.0);
        self.update(|s| {
            s.last_seal_unix_ms = Some(now);
            s.last_error = None;
        });
        Ok(())
    }

    /// Writes one sealing as a file; the file as the archive names it.
    async fn write(&self, sealing: &Sealing) -> anyhow::Result<ArchivedFile> {
        let (file, rows) = write_file(&self.archive, sealing, self.options.row_group_rows).await?;
        let name = sealing.table.name();
        self.metrics.archive_rows.with_label_values(&[name]).inc_by(rows as u64);
        self.metrics.archive_files.with_label_values(&[name]).inc();
        self.update(|s| {
            s.files_written += 1;
            *s.rows_written.entry(name).or_default() += rows as u64;
        });
        tracing::debug!(path = %file.path, rows, "archived");
        Ok(file)
    }
}

/// Encodes one sealing as a Parquet file (on a blocking thread, `row_group_rows`
/// rows a row group) and puts it whole into `archive` under the name that
/// records what it holds; the file as the archive names it, and its rows.
/// The archive's writer writes every file through it, and so does anything
/// that must lay out an archive as the service does (the query benchmarks).
pub async fn write_file(
    archive: &Archive,
    sealing: &Sealing,
    row_group_rows: usize,
) -> anyhow::Result<(ArchivedFile, usize)> {
    let (table, batches) = (sealing.table, sealing.batches.clone());
    let encoded = tokio::task::spawn_blocking(move || encode(table, &batches, row_group_rows))
        .await
        .context("the Parquet encoder's task")??;
    let mut file = ArchivedFile {
        table: sealing.table,
        cluster: sealing.cluster.clone(),
        date: encoded.date,
        from: sealing.from,
        to: sealing.to,
        window_min: encoded.window_min,
        window_max: encoded.window_max,
        path: Default::default(),
        size: encoded.bytes.len() as u64,
    };
    file.path = archive.path(&file.relative_path());
    archive.put(&file.path, encoded.bytes).await?;
    Ok((file, encoded.rows))
}
