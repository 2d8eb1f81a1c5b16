//! One writer per name: a lease in a JetStream key-value bucket.
//!
//! A service whose writes must come from one process at a time (the
//! processor per `--name`; the query service's archive writer) takes the
//! name's lease first: it `create`s the key with a [`Holder`] record, which
//! fails while another holder's key is there, and then waits, trying again,
//! until the key is deleted (a graceful stop) or expires (the bucket's
//! `max_age` is the TTL: a holder killed with -9 stops refreshing).
//!
//! The holder refreshes the key every TTL/3 with `update(key, record,
//! last_revision)`. A refresh refused because the revision moved (someone else
//! holds it now), or no successful refresh for TTL − margin (a quarter of the
//! TTL, [`safety_margin`]) since the last one was sent, means the lease is
//! lost: the holder must stop at once, a margin before the key can expire and
//! be taken, so that its last writes land before a successor starts. The
//! keeper runs on a task of its own, so a busy service never delays a refresh.
//!
//! The lease says where it stands as a [`LeaseState`] on a `watch` channel
//! ([`Leases::acquire`]); the service copies it into its status and metrics.
//! This module is a leaf: it knows nothing of the service that holds it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kv::KvError;

/// The bucket holding every lease (a lease's key is its name).
pub const LEASE_BUCKET: &str = "BACKBEAT_LEASES";
/// The shortest TTL: a refresh every TTL/3 must fit a round trip to the server.
pub const LEASE_TTL_MIN: Duration = Duration::from_millis(300);

/// Where a lease stands, as [`Leases::acquire`] publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Trying to take it for the first time.
    Acquiring,
    /// Someone else holds it (`None`: the key could not be read).
    Waiting { held_by: Option<Holder> },
    /// This process holds it; `revision` is the key's revision it last wrote.
    Held { revision: u64 },
    /// Given back (or never taken: stopped while waiting).
    Released,
    /// Lost while held: the holder must have stopped.
    Lost { reason: String },
}

impl LeaseState {
    /// The state's name: `acquiring`, `waiting`, `held`, `released` or `lost`.
    pub fn name(&self) -> &'static str {
        match self {
            LeaseState::Acquiring => "acquiring",
            LeaseState::Waiting { .. } => "waiting",
            LeaseState::Held { .. } => "held",
            LeaseState::Released => "released",
            LeaseState::Lost { .. } => "lost",
        }
    }
}

/// Why a lease could not be used, or stopped being held.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Bucket(#[from] KvError),
    #[error(
        "bucket {bucket} has no max_age, so a lease of a killed process would never expire: delete the bucket \
         (it holds only leases) or give it a max_age"
    )]
    NoMaxAge { bucket: String },
    #[error(
        "bucket {bucket} has max_age {max_age:?}, below the shortest lease TTL {LEASE_TTL_MIN:?}: delete the \
         bucket (it holds only leases) or give it a longer max_age"
    )]
    MaxAgeTooShort { bucket: String, max_age: Duration },
    /// Another process holds it now: the key's revision moved.
    #[error("lease {bucket}/{key} was taken: its revision moved from {revision}, now held by {held_by}")]
    Taken {
        bucket: String,
        key: String,
        revision: u64,
        held_by: String,
    },
    /// Not refreshed in time: another process may hold it soon.
    #[error(
        "lease {bucket}/{key} could not be refreshed within its TTL ({} ms) less a safety margin of {} ms: \
         another process may hold it soon",
        ttl.as_millis(),
        safety_margin(*ttl).as_millis()
    )]
    Expired { bucket: String, key: String, ttl: Duration },
    /// The task refreshing the lease ended without saying why (a bug).
    #[error("the lease keeper of {bucket}/{key} ended: {reason}")]
    KeeperEnded {
        bucket: String,
        key: String,
        reason: String,
    },
}

/// Who holds a lease: the value of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Random, new for every process ([`random_instance_id`]).
    pub instance: String,
    pub host: String,
    pub pid: u32,
    /// When this process started, UTC (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
    pub started_at: String,
}

impl Holder {
    /// This process, with a new random instance id.
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

    /// A key's value that is not a holder record, shown as it is.
    fn unreadable(value: &[u8]) -> Holder {
        Holder {
            instance: String::from_utf8_lossy(value).into_owned(),
            host: "?".into(),
            pid: 0,
            started_at: "?".into(),
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

/// 128 bits from the operating system's random source, as 32 hex digits.
pub fn random_instance_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    backbeat_schemas::window::lower_hex(&bytes)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// The lease's key for a name: KV keys allow `[-/_=.A-Za-z0-9]` (not
/// starting or ending with `.`); anything else becomes `_`.
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

/// The lease bucket, opened (created when missing).
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

impl Leases {
    /// Opens [`LEASE_BUCKET`], creating it with `max_age = ttl` and
    /// `description` when missing. An existing bucket's `max_age` is the TTL
    /// in force (a warning when it differs from `ttl`: the bucket is never
    /// reconfigured).
    pub async fn open(
        js: &jetstream::Context,
        description: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Leases, LeaseError> {
        let ttl = ttl.max(LEASE_TTL_MIN);
        let config = kv::Config {
            bucket: LEASE_BUCKET.to_string(),
            description: description.to_string(),
            history: 1,
            max_age: ttl,
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let kv = crate::kv::open_or_create(js, config).await?;
        let max_age = kv.stream.cached_info().config.max_age;
        let bucket = LEASE_BUCKET.to_string();
        if max_age.is_zero() {
            return Err(LeaseError::NoMaxAge { bucket });
        }
        if max_age < LEASE_TTL_MIN {
            return Err(LeaseError::MaxAgeTooShort { bucket, max_age });
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

    /// The TTL in force (the bucket's `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease of `name` for `holder`, waiting while someone else
    /// holds it, and publishes where it stands on `state` from now on (also
    /// after, through the [`HeldLease`]). `None` when `shutdown` resolves
    /// first (nothing was taken; the state is then [`LeaseState::Released`]).
    pub async fn acquire(
        &self,
        name: &str,
        holder: &Holder,
        state: watch::Sender<LeaseState>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Option<HeldLease>, LeaseError> {
        let key = lease_key(name);
        let record = Bytes::from(serde_json::to_vec(holder).expect("a holder record always serializes"));
        let ttl = self.ttl;
        state.send_replace(LeaseState::Acquiring);
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
                    state.send_replace(LeaseState::Held { revision });
                    return Ok(Some(HeldLease::keep(
                        self.kv.clone(),
                        holder.instance.clone(),
                        key,
                        record,
                        revision,
                        ttl,
                        sent,
                        state,
                    )));
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let current = match self.kv.entry(&key).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => Some(
                            serde_json::from_slice::<Holder>(&entry.value)
                                .unwrap_or_else(|_| Holder::unreadable(&entry.value)),
                        ),
                        _ => None,
                    };
                    if let Some(by) = current.as_ref().filter(|&by| last_seen.as_ref() != Some(by)) {
                        tracing::info!(
                            bucket = LEASE_BUCKET, %key,
                            "waiting for lease held by {by}: another process named {name:?} is running; \
                             taking over when it stops or its lease expires (within {} ms of its last refresh)",
                            ttl.as_millis()
                        );
                        last_seen = Some(by.clone());
                    }
                    state.send_replace(LeaseState::Waiting { held_by: current });
                }
                Err(e) => {
                    tracing::warn!(bucket = LEASE_BUCKET, %key, error = %e, "could not take the lease; retrying");
                }
            }
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    state.send_replace(LeaseState::Released);
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
    Lost(LeaseError),
}

/// A lease held: a task refreshes it until it is released or lost.
pub struct HeldLease {
    kv: kv::Store,
    /// This process's random id (the processor's checkpoint chunk keys carry it).
    instance: String,
    key: String,
    record: Bytes,
    ttl: Duration,
    /// Until when nobody else can hold it (the keeper moves it on every refresh).
    held_until: Arc<Mutex<Instant>>,
    stop: Option<oneshot::Sender<()>>,
    keeper: Option<JoinHandle<KeeperEnd>>,
    state: watch::Sender<LeaseState>,
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
        state: watch::Sender<LeaseState>,
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
            state.clone(),
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
            state,
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
    pub async fn lost(&mut self) -> LeaseError {
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
                Ok(KeeperEnd::Stopped(_)) => self.keeper_ended("stopped".into()),
                Err(e) => self.keeper_ended(e.to_string()),
            })
        })
        .await;
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        self.state.send_replace(LeaseState::Lost {
            reason: error.to_string(),
        });
        error
    }

    fn keeper_ended(&self, reason: String) -> LeaseError {
        LeaseError::KeeperEnded {
            bucket: LEASE_BUCKET.into(),
            key: self.key.clone(),
            reason,
        }
    }

    /// Stops refreshing and deletes the key if it is still this process's
    /// revision, so a successor starts at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(keeper) = self.keeper.take() else { return };
        let mut revision = match keeper.await {
            Ok(KeeperEnd::Stopped(revision)) => revision,
            Ok(KeeperEnd::Lost(e)) => {
                tracing::warn!(error = %e, "the lease was lost before its release");
                self.state.send_replace(LeaseState::Lost { reason: e.to_string() });
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the lease keeper failed; the lease expires on its own");
                self.state.send_replace(LeaseState::Released);
                return;
            }
        };
        for _ in 0..3 {
            match self.kv.delete_expect_revision(&self.key, Some(revision)).await {
                Ok(()) => {
                    tracing::info!(bucket = LEASE_BUCKET, key = %self.key, "lease released");
                    self.state.send_replace(LeaseState::Released);
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
                            self.state.send_replace(LeaseState::Released);
                            return;
                        }
                    }
                }
            }
        }
        self.state.send_replace(LeaseState::Released);
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
    state: watch::Sender<LeaseState>,
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
                state.send_replace(LeaseState::Held { revision });
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
                        let held_by = entry
                            .filter(|e| e.operation == kv::Operation::Put)
                            .and_then(|e| serde_json::from_slice::<Holder>(&e.value).ok())
                            .map_or_else(|| "nobody (deleted or expired)".to_string(), |h| h.to_string());
                        return KeeperEnd::Lost(LeaseError::Taken {
                            bucket: LEASE_BUCKET.into(),
                            key,
                            revision,
                            held_by,
                        });
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

fn expired(key: &str, ttl: Duration) -> LeaseError {
    LeaseError::Expired {
        bucket: LEASE_BUCKET.into(),
        key: key.to_string(),
        ttl,
    }
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
        assert!(random_instance_id().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_margin_keeps_a_refresh_retry_before_the_ttl() {
        let ttl = Duration::from_millis(1200);
        assert_eq!(safety_margin(ttl), Duration::from_millis(300));
        assert_eq!(usable(ttl), Duration::from_millis(900));
        // Refreshes every TTL/3: the second try of a failed one is before the holder gives up.
        assert!(2 * (ttl / 3) < usable(ttl));
    }
}
