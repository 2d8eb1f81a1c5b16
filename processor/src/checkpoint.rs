//! Checkpoints of the fold in a JetStream key-value bucket.
//!
//! A checkpoint is the fold's state after the event with stream sequence `seq`.
//! The state can exceed one NATS message, so it is written as chunks of a new
//! generation and then a small manifest naming them: a crash at any point leaves
//! the previous manifest and its chunks whole. The manifest carries the fold
//! configuration, so a processor started with other flags refuses the state
//! instead of folding it wrongly.
//!
//! Writers are fenced, so a deposed writer (paused past its lease, then
//! resumed with a write in flight) can never corrupt its successor's
//! checkpoint: chunk keys carry the writer's instance id (the lease's
//! random id), so no one else ever writes the chunks a manifest names; the
//! manifest and the history list are written with a compare-and-set on
//! their KV revision; and a writer claims both keys when it loads (it writes
//! them again at the revision it read), so a late write of the one before
//! it, still made at an older revision, is refused by the server. A writer
//! refused is deposed ([`Fenced`]): it must stop.
//!
//! Some checkpoints are also kept as history (every `--history-every` windows,
//! the last `--history-keep` of them), listed under `{name}.history`: `replay`
//! of a past window starts from the newest kept checkpoint taken before that
//! window was reported, instead of from the stream's start. A kept checkpoint's
//! chunks are removed only when it leaves the history.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use backbeat_fold::{Fold, FoldConfig};
use backbeat_service::kv::KvError;

/// The bucket holding every processor's checkpoints.
pub const CHECKPOINT_BUCKET: &str = "BACKBEAT_CHECKPOINTS";
/// The largest chunk, whatever the server allows.
const CHUNK_BYTES_MAX: usize = 4 << 20;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// The stream sequence of the last event folded into the state.
    pub seq: u64,
    pub config: FoldConfig,
    pub chunks: u32,
    pub bytes: u64,
    /// SHA-256 of the state bytes, lowercase hex.
    pub sha256: String,
    /// The instance id of the process that wrote it: its chunks' keys carry it.
    #[serde(default)]
    pub writer: String,
    /// The instance id of the process that holds the checkpoint now: its
    /// writer, or the successor that claimed it since (see [`Fenced`]).
    #[serde(default)]
    pub holder: String,
    /// Per cluster, the bar-stream sequence of the last report the state
    /// closed (published by this processor before the checkpoint was stored):
    /// a report already published after it is searched for from there.
    #[serde(default)]
    pub last_reports: BTreeMap<String, u64>,
    /// The clusters the state folds (sorted; empty = every cluster). A state
    /// of other clusters would skip this processor's events below its position.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Per cluster in the state, its lowest window not yet reported: a replay
    /// of that window or a later one can start from this checkpoint.
    #[serde(default)]
    pub next_to_close: BTreeMap<String, u64>,
}

impl Manifest {
    /// Whether folding cluster `cluster_id` on from this checkpoint with
    /// `config` re-derives window `window` exactly as a fold from the stream's
    /// start would: the same format and flags, a state holding every event of
    /// that cluster so far, and the window not yet reported.
    pub fn can_replay(&self, cluster_id: &str, config: &FoldConfig, window: u64) -> bool {
        self.format == FORMAT
            && self.config == *config
            && (self.clusters.is_empty() || self.clusters.iter().any(|c| c == cluster_id))
            && self.next_to_close.get(cluster_id).is_none_or(|&next| next <= window)
    }
}

/// A checkpoint written by a processor of another version, which this one
/// cannot read: the state must be folded again from the stream's start.
#[derive(Debug, thiserror::Error)]
#[error(
    "checkpoint format {format} is not {FORMAT}: this processor cannot resume it. To fold again from the \
     stream's start, delete key {key} of bucket {CHECKPOINT_BUCKET} (nats kv del {CHECKPOINT_BUCKET} {key}); \
     reports already in the bars stream are not published again"
)]
pub struct OtherFormat {
    pub format: u32,
    pub key: String,
}

/// 8: the caps in the fold config, the writer's instance in the manifest
/// and in chunk keys, each cluster's last report's bar sequence. 7: whole
/// tasks inside the agent record, no index of deadline windows
/// (an agent's lowest pending deadline window instead), no task entry ids,
/// and the clusters as a sequence sorted by id (6: a task's deadline in its
/// hot part; 5: tasks split into a hot part in the agent record and a cold
/// part; 4: one roster of agents holding their tasks; 3: agent and task
/// tables apart; 2: per-window agent sets; 1: task hash maps).
const FORMAT: u32 = 8;

/// This writer is no longer the one: another process wrote the checkpoint
/// (its manifest or history moved from the revision this one last wrote or
/// claimed). The process must stop; its lease is gone too, or going.
#[derive(Debug, thiserror::Error)]
#[error(
    "checkpoint key {key} of bucket {CHECKPOINT_BUCKET} was written by another process (revision {expected} \
     is no longer the latest): this process is no longer its writer"
)]
pub struct Fenced {
    pub key: String,
    pub expected: u64,
}

/// What can go wrong with a checkpoint, as a caller acts on it: another
/// format (fold again from the stream's start when it is whole), fenced (stop
/// at once), the store unavailable (retry later), or a checkpoint that is not
/// this processor's to resume (stop and say why).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    OtherFormat(#[from] OtherFormat),
    #[error(transparent)]
    Fenced(#[from] Fenced),
    #[error(transparent)]
    Bucket(#[from] KvError),
    /// The key-value store did not answer as it should (unavailable, or a
    /// write refused for another reason than a fence).
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("{what} is not readable")]
    Unreadable {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint state is not readable")]
    State(#[from] backbeat_fold::CheckpointError),
    #[error("checkpoint chunk {key} is missing")]
    MissingChunk { key: String },
    #[error("checkpoint generation {generation} does not match its digest")]
    Digest { generation: u64 },
    #[error("checkpoint {name:?} keeps moving while it is claimed: another process writes it")]
    KeepsMoving { name: String },
    #[error(
        "checkpoint {name:?} folds clusters {have:?} (empty: every cluster), not {want:?}: give each cluster \
         filter its own --name"
    )]
    OtherClusters {
        name: String,
        have: Vec<String>,
        want: Vec<String>,
    },
    /// A write before [`CheckpointStore::load`] (a bug of the caller).
    #[error("checkpoint key {key} written before it was claimed (load first)")]
    NotClaimed { key: String },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `.store(|| what)`: a key-value error as [`CheckpointError::Store`].
trait OrStore<T> {
    fn store(self, what: impl FnOnce() -> String) -> Result<T, CheckpointError>;
}

impl<T, E: Into<BoxError>> OrStore<T> for Result<T, E> {
    fn store(self, what: impl FnOnce() -> String) -> Result<T, CheckpointError> {
        self.map_err(|e| CheckpointError::Store {
            what: what(),
            source: e.into(),
        })
    }
}

/// Our own documents always serialize.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("a checkpoint document always serializes")
}

/// What a writer puts in the manifest key when it claims a name that has no
/// checkpoint yet (read back as "no checkpoint").
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    claimed_by: String,
}

/// Loading gives up after this many claims lost to a concurrent writer.
const CLAIM_ATTEMPTS_MAX: u32 = 10;

/// One processor's checkpoints (`name` = its durable consumer's name).
pub struct CheckpointStore {
    kv: kv::Store,
    name: String,
    /// This process's instance id (its lease's): the writer of its chunks.
    instance: String,
    /// The manifest key's revision this writer last wrote or claimed.
    manifest_revision: Option<u64>,
    /// The history key's revision this writer last wrote or claimed.
    history_revision: Option<u64>,
    /// The next generation to write (never one this process wrote before,
    /// even when a write failed half-way).
    next_generation: u64,
    /// The processor's cluster filter, sorted, written into every manifest.
    clusters: Vec<String>,
    chunk_bytes: usize,
    current: Option<Manifest>,
    /// Kept checkpoints, oldest first.
    history: Vec<Manifest>,
    /// How many kept checkpoints to keep at most.
    history_keep: usize,
}

impl CheckpointStore {
    /// Opens (creating when missing) the bucket, for a processor folding `clusters` (empty: all).
    pub async fn open(
        js: &jetstream::Context,
        name: &str,
        instance: &str,
        clusters: &[String],
        replicas: usize,
        max_payload: usize,
        history_keep: usize,
    ) -> Result<Self, CheckpointError> {
        let chunk_bytes = max_payload.saturating_sub(8 * 1024).clamp(64 * 1024, CHUNK_BYTES_MAX);
        let kv = backbeat_service::kv::open_or_create(
            js,
            kv::Config {
                bucket: CHECKPOINT_BUCKET.to_string(),
                description: "BACKBEAT processor checkpoints: fold state and stream position".into(),
                history: 1,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let mut clusters = clusters.to_vec();
        clusters.sort();
        clusters.dedup();
        Ok(CheckpointStore {
            kv,
            name: name.to_string(),
            instance: instance.to_string(),
            manifest_revision: None,
            history_revision: None,
            next_generation: 1,
            clusters,
            chunk_bytes,
            current: None,
            history: Vec::new(),
            history_keep,
        })
    }

    fn manifest_key(&self) -> String {
        manifest_key(&self.name)
    }

    /// The latest checkpoint, checked against its digest; `None` when there
    /// is none. Claims the checkpoint for this writer first (see the module
    /// doc), so a late write of a deposed one is refused from now on.
    pub async fn load(&mut self) -> Result<Option<(Manifest, Fold)>, CheckpointError> {
        let mut attempt = 0;
        let raw = loop {
            attempt += 1;
            match self.claim().await? {
                Some(raw) => break raw,
                None if attempt < CLAIM_ATTEMPTS_MAX => {
                    tracing::warn!("the checkpoint moved while it was claimed (a deposed writer's late write); again");
                }
                None => {
                    return Err(CheckpointError::KeepsMoving {
                        name: self.name.clone(),
                    })
                }
            }
        };
        let next_generation = self.history.iter().map(|m| m.generation).max().unwrap_or(0) + 1;
        self.next_generation = self.next_generation.max(next_generation);
        let Some(raw) = raw.filter(|raw| serde_json::from_slice::<Claim>(raw).is_err()) else {
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&raw).map_err(|source| CheckpointError::Unreadable {
            what: "checkpoint manifest".into(),
            source,
        })?;
        self.next_generation = self.next_generation.max(manifest.generation + 1);
        if manifest.format != FORMAT {
            let error = OtherFormat {
                format: manifest.format,
                key: self.manifest_key(),
            };
            // Its chunks go when the next checkpoint is written.
            self.current = Some(manifest);
            return Err(error.into());
        }
        let state = read_state(&self.kv, &self.name, &manifest).await?;
        if manifest.clusters != self.clusters {
            return Err(CheckpointError::OtherClusters {
                name: self.name.clone(),
                have: manifest.clusters,
                want: self.clusters.clone(),
            });
        }
        let fold = Fold::from_checkpoint(&state)?;
        self.current = Some(manifest.clone());
        Ok(Some((manifest, fold)))
    }

    /// Reads the history and the manifest and writes each again at the
    /// revision read (a key not there is created: an empty history, a
    /// [`Claim`] in the manifest's place). Some(manifest bytes, None when
    /// there is none) once both are claimed; None when one moved meanwhile.
    async fn claim(&mut self) -> Result<Option<Option<Bytes>>, CheckpointError> {
        let history_key = history_key(&self.name);
        let history_entry = self
            .kv
            .entry(&history_key)
            .await
            .store(|| "reading the checkpoint history".into())?;
        let history_raw = put_value(&history_entry);
        // Kept checkpoints outlive a removed latest one, and new generations
        // must not reuse their chunks' keys.
        self.history = match history_raw.as_deref().map(serde_json::from_slice::<Vec<Manifest>>) {
            None => Vec::new(),
            Some(Ok(history)) => history,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the checkpoint history is not readable; starting it afresh");
                Vec::new()
            }
        };
        let history_value = Bytes::from(to_json(&self.history));
        let Some(history_revision) =
            claim_key(&self.kv, &history_key, history_entry.map(|e| e.revision), history_value).await?
        else {
            return Ok(None);
        };
        let manifest_key = self.manifest_key();
        let entry = self
            .kv
            .entry(&manifest_key)
            .await
            .store(|| "reading checkpoint manifest".into())?;
        let raw = put_value(&entry);
        // A manifest is written again naming this process as its holder: a
        // deposed writer that finds the key moved can tell it is not its own.
        let claimed = raw
            .as_deref()
            .and_then(|raw| serde_json::from_slice::<Manifest>(raw).ok())
            .map(|mut manifest| {
                manifest.holder = self.instance.clone();
                manifest
            });
        let value = match (&raw, &claimed) {
            (_, Some(manifest)) => Bytes::from(to_json(manifest)),
            // Not readable: written back as it is (load says why).
            (Some(raw), None) => raw.clone(),
            (None, None) => Bytes::from(to_json(&Claim {
                claimed_by: self.instance.clone(),
            })),
        };
        let Some(manifest_revision) = claim_key(&self.kv, &manifest_key, entry.map(|e| e.revision), value).await?
        else {
            return Ok(None);
        };
        self.history_revision = Some(history_revision);
        self.manifest_revision = Some(manifest_revision);
        Ok(Some(raw))
    }

    /// Writes `state` (a fold's checkpoint bytes after the event `seq`, folded
    /// with `config`, with each cluster's lowest unreported window) as the new
    /// checkpoint, and removes the previous one's chunks unless that one is
    /// kept. With `keep`, the new one is also kept as history (and the oldest
    /// kept one leaves the history when there are more than `history_keep`).
    pub async fn save_state(
        &mut self,
        seq: u64,
        config: FoldConfig,
        state: &[u8],
        next_to_close: BTreeMap<String, u64>,
        last_reports: BTreeMap<String, u64>,
        keep: bool,
    ) -> Result<Manifest, CheckpointError> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let mut chunks = 0u32;
        for (index, chunk) in state.chunks(self.chunk_bytes).enumerate() {
            let key = chunk_key(&self.name, &self.instance, generation, index as u32);
            self.kv
                .put(&key, Bytes::copy_from_slice(chunk))
                .await
                .store(|| format!("writing checkpoint chunk {key}"))?;
            chunks += 1;
        }
        let manifest = Manifest {
            format: FORMAT,
            generation,
            seq,
            config,
            chunks,
            bytes: state.len() as u64,
            sha256: sha256_hex(state),
            writer: self.instance.clone(),
            holder: self.instance.clone(),
            last_reports,
            clusters: self.clusters.clone(),
            next_to_close,
        };
        let manifest_key = self.manifest_key();
        let revision = self.manifest_revision;
        let instance = self.instance.as_str();
        let ours = |raw: &[u8]| serde_json::from_slice::<Manifest>(raw).is_ok_and(|m| m.holder == instance);
        let written = write_fenced(&self.kv, &manifest_key, revision, to_json(&manifest).into(), ours);
        self.manifest_revision = Some(written.await?);
        let mut unused = Vec::new();
        if let Some(previous) = self.current.replace(manifest.clone()) {
            if !self.is_kept(previous.generation) {
                unused.push(previous);
            }
        }
        if keep && self.history_keep > 0 {
            self.history.push(manifest.clone());
            let excess = self.history.len().saturating_sub(self.history_keep);
            unused.extend(self.history.drain(..excess));
            // The list is one message: with many clusters (each manifest names
            // every cluster's position) the oldest leave early to keep it one.
            let mut list = to_json(&self.history);
            while list.len() > self.chunk_bytes && self.history.len() > 1 {
                tracing::warn!(
                    kept = self.history.len(),
                    bytes = list.len(),
                    "the checkpoint history is too large for one message; the oldest kept checkpoint leaves it"
                );
                unused.push(self.history.remove(0));
                list = to_json(&self.history);
            }
            // Written before the chunks of those that left it are removed: the
            // history never names a checkpoint whose chunks are gone.
            let history_key = history_key(&self.name);
            let revision = self.history_revision;
            // A claim writes the list as it was, so it cannot tell a write of
            // ours from another's: a moved history always fences.
            let written = write_fenced(&self.kv, &history_key, revision, list.into(), |_| false);
            self.history_revision = Some(written.await?);
        }
        for old in unused {
            for index in 0..old.chunks {
                let key = chunk_key(&self.name, &old.writer, old.generation, index);
                if let Err(e) = self.kv.purge(&key).await {
                    tracing::warn!(%key, error = %e, "could not remove an old checkpoint chunk");
                }
            }
        }
        Ok(manifest)
    }

    /// The kept checkpoints, oldest first.
    pub fn kept(&self) -> &[Manifest] {
        &self.history
    }

    fn is_kept(&self, generation: u64) -> bool {
        self.history.iter().any(|kept| kept.generation == generation)
    }
}

/// The checkpoint a replay of window `window` of cluster `cluster_id` can start
/// from: the newest of processor `name`'s kept checkpoints and its latest one
/// for which [`Manifest::can_replay`] holds, with the fold it holds (only that
/// cluster left in it). `None` when there is none (or no bucket yet): the
/// replay starts from the stream's start.
pub async fn replay_start(
    js: &jetstream::Context,
    name: &str,
    cluster_id: &str,
    config: &FoldConfig,
    window: u64,
) -> Result<Option<(Manifest, Fold)>, CheckpointError> {
    let Some(kv) = backbeat_service::kv::open(js, CHECKPOINT_BUCKET).await? else {
        return Ok(None);
    };
    let mut candidates = read_history(&kv, name).await?;
    if let Some(latest) = kv
        .get(manifest_key(name))
        .await
        .store(|| "reading checkpoint manifest".into())?
    {
        if let Ok(latest) = serde_json::from_slice::<Manifest>(&latest) {
            candidates.push(latest);
        }
    }
    candidates.sort_by_key(|m| std::cmp::Reverse(m.seq));
    for manifest in candidates {
        if !manifest.can_replay(cluster_id, config, window) {
            continue;
        }
        // A checkpoint replaced or pruned since it was listed is skipped.
        let Ok(state) = read_state(&kv, name, &manifest).await else {
            continue;
        };
        let mut fold = Fold::from_checkpoint(&state)?;
        fold.keep_only(cluster_id);
        return Ok(Some((manifest, fold)));
    }
    Ok(None)
}

fn manifest_key(name: &str) -> String {
    format!("{name}.manifest")
}

fn history_key(name: &str) -> String {
    format!("{name}.history")
}

/// A chunk's key: the writer's instance id in it, so that only the process
/// that wrote a manifest ever writes the chunks it names (a manifest of
/// format 7 and before has no writer: the old keys).
fn chunk_key(name: &str, writer: &str, generation: u64, index: u32) -> String {
    if writer.is_empty() {
        format!("{name}.g{generation}.c{index}")
    } else {
        format!("{name}.{writer}.g{generation}.c{index}")
    }
}

/// The value of an entry that holds one (not a deletion).
fn put_value(entry: &Option<kv::Entry>) -> Option<Bytes> {
    entry
        .as_ref()
        .filter(|e| e.operation == kv::Operation::Put)
        .map(|e| e.value.clone())
}

/// Writes `key` again at `revision` (creates it when there is none): the new
/// revision, or None when the key moved meanwhile.
async fn claim_key(
    kv: &kv::Store,
    key: &str,
    revision: Option<u64>,
    value: Bytes,
) -> Result<Option<u64>, CheckpointError> {
    let result = match revision {
        Some(revision) => kv.update(key, value, revision).await.map_err(|e| {
            let moved = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
            (moved, BoxError::from(e))
        }),
        None => kv.create(key, value).await.map_err(|e| {
            let moved = e.kind() == kv::CreateErrorKind::AlreadyExists;
            (moved, BoxError::from(e))
        }),
    };
    match result {
        Ok(revision) => Ok(Some(revision)),
        Err((true, _)) => Ok(None),
        Err((false, source)) => Err(CheckpointError::Store {
            what: format!("claiming checkpoint key {key}"),
            source,
        }),
    }
}

/// Writes `key` with a compare-and-set on `revision` (the one this writer
/// last wrote or claimed): the new revision, or [`Fenced`] when another
/// process wrote it since. A write of this writer's own stored without its
/// answer reaching it (`is_ours` of the stored value) is written over.
async fn write_fenced(
    kv: &kv::Store,
    key: &str,
    revision: Option<u64>,
    value: Bytes,
    is_ours: impl Fn(&[u8]) -> bool,
) -> Result<u64, CheckpointError> {
    let Some(mut revision) = revision else {
        return Err(CheckpointError::NotClaimed { key: key.to_string() });
    };
    let mut adopted = false;
    loop {
        match kv.update(key, value.clone(), revision).await {
            Ok(revision) => return Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let entry = kv
                    .entry(key)
                    .await
                    .store(|| "reading a checkpoint key that moved".into())?;
                match entry {
                    Some(entry) if !adopted && entry.operation == kv::Operation::Put && is_ours(&entry.value) => {
                        adopted = true;
                        revision = entry.revision;
                    }
                    _ => {
                        return Err(Fenced {
                            key: key.to_string(),
                            expected: revision,
                        }
                        .into())
                    }
                }
            }
            Err(e) => return Err(e).store(|| format!("writing checkpoint key {key}")),
        }
    }
}

/// Processor `name`'s kept checkpoints, oldest first (none when it keeps none).
async fn read_history(kv: &kv::Store, name: &str) -> Result<Vec<Manifest>, CheckpointError> {
    match kv
        .get(history_key(name))
        .await
        .store(|| "reading the checkpoint history".into())?
    {
        Some(raw) => serde_json::from_slice(&raw).map_err(|source| CheckpointError::Unreadable {
            what: "the checkpoint history".into(),
            source,
        }),
        None => Ok(Vec::new()),
    }
}

/// The state bytes a manifest names, checked against its digest.
async fn read_state(kv: &kv::Store, name: &str, manifest: &Manifest) -> Result<Vec<u8>, CheckpointError> {
    let mut state = Vec::with_capacity(manifest.bytes as usize);
    for index in 0..manifest.chunks {
        let key = chunk_key(name, &manifest.writer, manifest.generation, index);
        let chunk = kv
            .get(&key)
            .await
            .store(|| format!("reading checkpoint chunk {key}"))?
            .ok_or_else(|| CheckpointError::MissingChunk { key: key.clone() })?;
        state.extend_from_slice(&chunk);
    }
    if sha256_hex(&state) != manifest.sha256 {
        return Err(CheckpointError::Digest {
            generation: manifest.generation,
        });
    }
    Ok(state)
}

fn sha256_hex(bytes: &[u8]) -> String {
    backbeat_schemas::window::lower_hex(&Sha256::digest(bytes))
}
