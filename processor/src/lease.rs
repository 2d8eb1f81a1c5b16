//! One writer per processor name: a lease in KV bucket `BACKBEAT_LEASES`.
//!
//! Reports are fenced by the server (expected last subject sequence), so two
//! processors with one `--name` never publish a report twice; but they would
//! fight over the durable consumer (each re-creates it at start) and over the
//! checkpoint keys. So `run` first takes the lease: it `create`s the key (its
//! name) with a [`Holder`] record, which fails while another holder's key is
//! there, and then waits, trying again, until the key is deleted (a graceful
//! stop) or expires (the bucket's `max_age` is the TTL: a holder killed with
//! -9 stops refreshing). Nothing touches the consumer or the checkpoint before
//! the lease is held.
//!
//! The holder refreshes the key every TTL/3 with `update(key, record,
//! last_revision)`. A refresh refused because the revision moved (someone else
//! holds it now), or no successful refresh for TTL − margin (a quarter of the
//! TTL, [`safety_margin`]) since the last one was sent, means the lease is
//! lost: the holder must stop at once, a margin before the key can expire
//! and be taken, so that its last writes land before a successor starts. The keeper runs on a task of its own, so a
//! busy driver never delays a refresh.

use std::future::Future as _;
use std::hash::{BuildHasher as _, Hasher as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::SharedStatus;

/// The bucket holding every processor's lease.
pub const LEASE_BUCKET: &str = "BACKBEAT_LEASES";
/// The shortest TTL: a refresh every TTL/3 must fit a round trip to the server.
pub const LEASE_TTL_MIN: Duration = Duration::from_millis(300);

/// Who holds a lease: the value of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Random, new for every process.
    pub instance: String,
    pub host: String,
    pub pid: u32,
    /// When this process started, UTC (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
    pub started_at: String,
}

impl Holder {
    /// This process.
    pub fn this_process() -> Holder {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Holder {
            instance: random_instance_id(),
            host: hostname(),
            pid: std::process::id(),
            started_at: backbeat_schemas::timestamp::format_utc_ms(now_ms),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "instance {} (host {}, pid {}, started {})",
            self.instance, self.host, self.pid, self.started_at
        )
    }
}

/// 128 random bits as hex, from the standard library's OS-seeded hasher keys.
fn random_instance_id() -> String {
    let mut id = String::with_capacity(32);
    for salt in 0..2u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(salt);
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        id.push_str(&format!("{:016x}", hasher.finish()));
    }
    id
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// The lease's key for a processor name: KV keys allow `[-/_=.A-Za-z0-9]`
/// (not starting or ending with `.`); anything else becomes `_`.
pub fn lease_key(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        "_".into()
    } else {
        key
    }
}

/// What `/api/v1/status` shows about the lease.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LeaseStatus {
    /// `acquiring`, `waiting`, `held`, `released` or `lost`.
    pub state: String,
    pub bucket: String,
    pub key: String,
    /// The TTL in force (the bucket's `max_age`).
    pub ttl_ms: u64,
    /// This process.
    pub holder: Option<Holder>,
    /// While waiting: who holds it.
    pub held_by: Option<Holder>,
    /// The key's revision while held.
    pub revision: u64,
    /// While lost: why.
    pub lost: Option<String>,
}

impl LeaseStatus {
    /// The `/ready` answer while the lease is not held (None when it is).
    pub fn not_ready_reason(&self) -> Option<String> {
        match self.state.as_str() {
            "held" | "released" | "" => None,
            "waiting" => Some(match &self.held_by {
                Some(holder) => format!("waiting for lease {}/{} held by {holder}", self.bucket, self.key),
                None => format!("waiting for lease {}/{}", self.bucket, self.key),
            }),
            "lost" => Some(format!(
                "lost lease {}/{}: {}",
                self.bucket,
                self.key,
                self.lost.as_deref().unwrap_or("")
            )),
            _ => Some(format!("acquiring lease {}/{}", self.bucket, self.key)),
        }
    }
}

/// The lease bucket, opened (created when missing).
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

impl Leases {
    /// Opens the bucket, creating it with `max_age = ttl` when missing. An
    /// existing bucket's `max_age` is the TTL in force (a warning when it
    /// differs from `ttl`: the bucket is never reconfigured).
    pub async fn open(js: &jetstream::Context, ttl: Duration, replicas: usize) -> anyhow::Result<Leases> {
        let ttl = ttl.max(LEASE_TTL_MIN);
        let kv = match js.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => match js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.to_string(),
                    description: "BACKBEAT processor leases: one running writer per processor name".into(),
                    history: 1,
                    max_age: ttl,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(kv) => kv,
                // Another processor may have created it meanwhile.
                Err(e) => js
                    .get_key_value(LEASE_BUCKET)
                    .await
                    .map_err(|_| e)
                    .context("creating the lease bucket")?,
            },
        };
        let max_age = kv.stream.cached_info().config.max_age;
        if max_age.is_zero() {
            bail!(
                "bucket {LEASE_BUCKET} has no max_age, so a lease of a killed processor would never expire: \
                 delete the bucket (it holds only leases) or give it a max_age"
            );
        }
        if max_age < LEASE_TTL_MIN {
            bail!(
                "bucket {LEASE_BUCKET} has max_age {max_age:?}, below the shortest lease TTL {LEASE_TTL_MIN:?}: \
                 delete the bucket (it holds only leases) or give it a longer max_age"
            );
        }
        if max_age != ttl {
            tracing::warn!(
                bucket = LEASE_BUCKET,
                bucket_max_age_ms = max_age.as_millis() as u64,
                lease_ttl_ms = ttl.as_millis() as u64,
                "the lease bucket exists with another max_age; its max_age is the lease TTL in force"
            );
        }
        Ok(Leases { kv, ttl: max_age })
    }

    /// Takes the lease of `name`, waiting while someone else holds it. `None`
    /// when `shutdown` resolves first (nothing was touched).
    pub async fn acquire(
        &self,
        name: &str,
        metrics: &Metrics,
        status: &SharedStatus,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<Option<HeldLease>> {
        let key = lease_key(name);
        let holder = Holder::this_process();
        let record = Bytes::from(serde_json::to_vec(&holder)?);
        let ttl = self.ttl;
        status.update(|s| {
            s.lease = LeaseStatus {
                state: "acquiring".into(),
                bucket: LEASE_BUCKET.into(),
                key: key.clone(),
                ttl_ms: ttl.as_millis() as u64,
                holder: Some(holder.clone()),
                ..Default::default()
            }
        });
        // A freed key is taken within this (a deleted key at once on the next try).
        let poll = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let mut last_seen: Option<Holder> = None;
        tokio::pin!(shutdown);
        loop {
            let sent = Instant::now();
            match self.kv.create(&key, record.clone()).await {
                Ok(revision) => {
                    tracing::info!(
                        bucket = LEASE_BUCKET, %key, revision, ttl_ms = ttl.as_millis() as u64,
                        "lease taken; this process is the only {name:?}"
                    );
                    metrics.lease_held.set(1);
                    status.update(|s| {
                        s.lease.state = "held".into();
                        s.lease.held_by = None;
                        s.lease.revision = revision;
                    });
                    return Ok(Some(HeldLease::keep(
                        self.kv.clone(),
                        holder.instance.clone(),
                        key,
                        record,
                        revision,
                        ttl,
                        sent,
                        metrics.clone(),
                        status.clone(),
                    )));
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let current = match self.kv.entry(&key).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => Some(
                            serde_json::from_slice::<Holder>(&entry.value).unwrap_or_else(|_| Holder {
                                instance: String::from_utf8_lossy(&entry.value).into_owned(),
                                host: "?".into(),
                                pid: 0,
                                started_at: "?".into(),
                            }),
                        ),
                        _ => None,
                    };
                    if let Some(by) = current.as_ref().filter(|&by| last_seen.as_ref() != Some(by)) {
                        tracing::info!(
                            bucket = LEASE_BUCKET, %key,
                            "waiting for lease held by {by}: another `run --name {name}` is running; \
                             taking over when it stops or its lease expires (within {} ms of its last refresh)",
                            ttl.as_millis()
                        );
                        last_seen = Some(by.clone());
                    }
                    status.update(|s| {
                        s.lease.state = "waiting".into();
                        s.lease.held_by = current;
                    });
                }
                Err(e) => {
                    tracing::warn!(bucket = LEASE_BUCKET, %key, error = %e, "could not take the lease; retrying");
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    status.update(|s| s.lease.state = "released".into());
                    return Ok(None);
                }
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

/// How the keeper ended.
enum KeeperEnd {
    /// Asked to stop; the key's revision now.
    Stopped(u64),
    Lost(anyhow::Error),
}

/// A lease held: a task refreshes it until it is released or lost.
pub struct HeldLease {
    kv: kv::Store,
    /// This process's random id (the checkpoint's chunk keys carry it).
    instance: String,
    key: String,
    record: Bytes,
    ttl: Duration,
    /// Until when nobody else can hold it (the keeper moves it on every refresh).
    held_until: Arc<Mutex<Instant>>,
    stop: Option<oneshot::Sender<()>>,
    keeper: Option<JoinHandle<KeeperEnd>>,
    metrics: Metrics,
    status: SharedStatus,
}

impl HeldLease {
    #[allow(clippy::too_many_arguments)]
    fn keep(
        kv: kv::Store,
        instance: String,
        key: String,
        record: Bytes,
        revision: u64,
        ttl: Duration,
        sent: Instant,
        metrics: Metrics,
        status: SharedStatus,
    ) -> HeldLease {
        let (stop_tx, stop_rx) = oneshot::channel();
        // The key expires ttl after the server stored the last refresh, which was
        // not before it was sent: until then nobody else can hold it. The
        // holder stops acting a safety margin before that.
        let held_until = Arc::new(Mutex::new(sent + usable(ttl)));
        let keeper = tokio::spawn(keeper(
            kv.clone(),
            key.clone(),
            record.clone(),
            revision,
            ttl,
            held_until.clone(),
            stop_rx,
            status.clone(),
        ));
        HeldLease {
            kv,
            instance,
            key,
            record,
            ttl,
            held_until,
            stop: Some(stop_tx),
            keeper: Some(keeper),
            metrics,
            status,
        }
    }

    /// This process's random instance id, as the lease records it.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Resolves when the lease is lost (never while it is held). Every poll
    /// first checks the time, so a process resumed after a pause longer than
    /// the TTL (SIGSTOP, a stalled VM) sees the loss before anything else of
    /// its task runs (poll it first, in a biased `select!`).
    pub async fn lost(&mut self) -> anyhow::Error {
        let error = std::future::poll_fn(|cx| {
            if Instant::now() >= *self.held_until.lock().expect("lease deadline lock") {
                return Poll::Ready(expired(&self.key, self.ttl));
            }
            let Some(keeper) = self.keeper.as_mut() else {
                return Poll::Pending;
            };
            let Poll::Ready(end) = Pin::new(keeper).poll(cx) else {
                return Poll::Pending;
            };
            self.keeper = None;
            Poll::Ready(match end {
                Ok(KeeperEnd::Lost(e)) => e,
                Ok(KeeperEnd::Stopped(_)) => anyhow::anyhow!("the lease keeper stopped"),
                Err(e) => anyhow::anyhow!("the lease keeper failed: {e}"),
            })
        })
        .await;
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        self.metrics.lease_held.set(0);
        self.metrics.lease_lost.inc();
        let reason = format!("{error:#}");
        self.status.update(|s| {
            s.lease.state = "lost".into();
            s.lease.lost = Some(reason);
        });
        error
    }

    /// Stops refreshing and deletes the key if it is still this process's
    /// revision, so a successor starts at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(keeper) = self.keeper.take() else { return };
        let revision = match keeper.await {
            Ok(KeeperEnd::Stopped(revision)) => revision,
            Ok(KeeperEnd::Lost(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "the lease was lost before its release");
                self.metrics.lease_held.set(0);
                self.metrics.lease_lost.inc();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the lease keeper failed; the lease expires on its own");
                self.metrics.lease_held.set(0);
                return;
            }
        };
        self.metrics.lease_held.set(0);
        let mut revision = revision;
        for _ in 0..3 {
            match self.kv.delete_expect_revision(&self.key, Some(revision)).await {
                Ok(()) => {
                    tracing::info!(bucket = LEASE_BUCKET, key = %self.key, "lease released");
                    self.status.update(|s| s.lease.state = "released".into());
                    return;
                }
                Err(e) => {
                    // Only ever our own revision: a refresh stored without its ack reaching us moves it.
                    match self.kv.entry(&self.key).await {
                        Ok(Some(entry))
                            if entry.operation == kv::Operation::Put
                                && entry.value == self.record
                                && entry.revision != revision =>
                        {
                            revision = entry.revision;
                        }
                        _ => {
                            tracing::warn!(bucket = LEASE_BUCKET, key = %self.key, error = %e,
                                "could not release the lease (it expires on its own)");
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Not released and not lost: stop refreshing; the key expires.
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// Refreshes every TTL/3 until stopped or lost.
#[allow(clippy::too_many_arguments)]
async fn keeper(
    kv: kv::Store,
    key: String,
    record: Bytes,
    mut revision: u64,
    ttl: Duration,
    shared_held_until: Arc<Mutex<Instant>>,
    mut stop: oneshot::Receiver<()>,
    status: SharedStatus,
) -> KeeperEnd {
    let every = ttl / 3;
    let mut held_until = *shared_held_until.lock().expect("lease deadline lock");
    let mut next = held_until - usable(ttl) + every;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return KeeperEnd::Stopped(revision),
            () = tokio::time::sleep_until(next.min(held_until)) => {}
        }
        if Instant::now() >= held_until {
            return KeeperEnd::Lost(expired(&key, ttl));
        }
        let sent = Instant::now();
        let result = tokio::time::timeout(
            held_until.saturating_duration_since(sent),
            kv.update(&key, record.clone(), revision),
        )
        .await;
        match result {
            Ok(Ok(new_revision)) => {
                revision = new_revision;
                held_until = sent + usable(ttl);
                *shared_held_until.lock().expect("lease deadline lock") = held_until;
                next = sent + every;
                failures = 0;
                status.update(|s| s.lease.revision = new_revision);
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A refresh of ours may have been stored without its ack reaching us.
                match kv.entry(&key).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put && entry.value == record => {
                        tracing::debug!(revision = entry.revision, "the lease moved to a refresh of our own");
                        revision = entry.revision;
                        next = Instant::now();
                    }
                    Ok(entry) => {
                        let by = entry
                            .filter(|e| e.operation == kv::Operation::Put)
                            .and_then(|e| serde_json::from_slice::<Holder>(&e.value).ok())
                            .map_or_else(|| "nobody (deleted or expired)".to_string(), |h| h.to_string());
                        return KeeperEnd::Lost(anyhow::anyhow!(
                            "lease {LEASE_BUCKET}/{key} was taken: its revision moved from {revision}, now held by {by}"
                        ));
                    }
                    Err(read) => {
                        tracing::warn!(error = %read, "lease refresh refused and the key unreadable; retrying");
                        failures += 1;
                        next = Instant::now() + retry_delay(failures, every);
                    }
                }
            }
            Ok(Err(e)) => {
                failures += 1;
                tracing::warn!(error = %e, "lease refresh failed; retrying until the TTL passes");
                next = Instant::now() + retry_delay(failures, every);
            }
            Err(_) => return KeeperEnd::Lost(expired(&key, ttl)),
        }
    }
}

fn expired(key: &str, ttl: Duration) -> anyhow::Error {
    anyhow::anyhow!(
        "lease {LEASE_BUCKET}/{key} could not be refreshed within its TTL ({} ms) less a safety margin of {} ms: \
         another process may hold it soon",
        ttl.as_millis(),
        safety_margin(ttl).as_millis()
    )
}

/// How long before the key can expire the holder stops acting: a write it
/// sends just before giving up still reaches the server before anyone else
/// can take the lease (a quarter of the TTL; refreshes come every third, so
/// one refresh may fail and be retried before the holder gives up).
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 4
}

/// How long after sending a refresh that the server stores the holder acts on it.
fn usable(ttl: Duration) -> Duration {
    ttl - safety_margin(ttl)
}

fn retry_delay(failures: u32, every: Duration) -> Duration {
    (Duration::from_millis(25) * failures.min(8)).min(every / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_kv_rules() {
        assert_eq!(lease_key("backbeat-processor"), "backbeat-processor");
        assert_eq!(lease_key("a.b c*"), "a_b_c_");
        assert_eq!(lease_key(""), "_");
    }

    #[test]
    fn instances_differ() {
        assert_ne!(random_instance_id(), random_instance_id());
        assert_eq!(random_instance_id().len(), 32);
    }
}
