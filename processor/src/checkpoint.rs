//! Checkpoints of the fold in a JetStream key-value bucket.
//!
//! A checkpoint is the fold's state after the event with stream sequence `seq`.
//! The state can exceed one NATS message, so it is written as chunks of a new
//! generation and then a small manifest naming them: a crash at any point leaves
//! the previous manifest and its chunks whole. The manifest carries the fold
//! configuration, so a processor started with other flags refuses the state
//! instead of folding it wrongly.
//!
//! Some checkpoints are also kept as history (every `--history-every` windows,
//! the last `--history-keep` of them), listed under `{name}.history`: `replay`
//! of a past window starts from the newest kept checkpoint taken before that
//! window was reported, instead of from the stream's start. A kept checkpoint's
//! chunks are removed only when it leaves the history.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fold::{Fold, FoldConfig};

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

/// 7: whole tasks inside the agent record, no index of deadline windows
/// (an agent's lowest pending deadline window instead), no task entry ids,
/// and the clusters as a sequence sorted by id (6: a task's deadline in its
/// hot part; 5: tasks split into a hot part in the agent record and a cold
/// part; 4: one roster of agents holding their tasks; 3: agent and task
/// tables apart; 2: per-window agent sets; 1: task hash maps).
const FORMAT: u32 = 7;

/// One processor's checkpoints (`name` = its durable consumer's name).
pub struct CheckpointStore {
    kv: kv::Store,
    name: String,
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
        clusters: &[String],
        replicas: usize,
        max_payload: usize,
        history_keep: usize,
    ) -> anyhow::Result<Self> {
        let chunk_bytes = max_payload.saturating_sub(8 * 1024).clamp(64 * 1024, CHUNK_BYTES_MAX);
        let kv = match js.get_key_value(CHECKPOINT_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: CHECKPOINT_BUCKET.to_string(),
                    description: "BACKBEAT processor checkpoints: fold state and stream position".into(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("creating the checkpoint bucket")?,
        };
        let mut clusters = clusters.to_vec();
        clusters.sort();
        clusters.dedup();
        Ok(CheckpointStore {
            kv,
            name: name.to_string(),
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

    fn chunk_key(&self, generation: u64, index: u32) -> String {
        chunk_key(&self.name, generation, index)
    }

    /// The latest checkpoint, checked against its digest; `None` when there is none.
    pub async fn load(&mut self) -> anyhow::Result<Option<(Manifest, Fold)>> {
        // The history first: kept checkpoints outlive a removed latest one,
        // and new generations must not reuse their chunks' keys.
        self.history = match read_history(&self.kv, &self.name).await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the checkpoint history is not readable; starting it afresh");
                Vec::new()
            }
        };
        let Some(raw) = self
            .kv
            .get(self.manifest_key())
            .await
            .context("reading checkpoint manifest")?
        else {
            return Ok(None);
        };
        let manifest: Manifest = serde_json::from_slice(&raw).context("checkpoint manifest is not readable")?;
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
            bail!(
                "checkpoint {:?} folds clusters {:?} (empty: every cluster), not {:?}: give each cluster filter \
                 its own --name",
                self.name,
                manifest.clusters,
                self.clusters
            );
        }
        let fold = Fold::from_checkpoint(&state).context("checkpoint state is not readable")?;
        self.current = Some(manifest.clone());
        Ok(Some((manifest, fold)))
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
        keep: bool,
    ) -> anyhow::Result<Manifest> {
        let generation = self
            .current
            .iter()
            .chain(&self.history)
            .map(|m| m.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let mut chunks = 0u32;
        for (index, chunk) in state.chunks(self.chunk_bytes).enumerate() {
            let key = self.chunk_key(generation, index as u32);
            self.kv
                .put(&key, Bytes::copy_from_slice(chunk))
                .await
                .with_context(|| format!("writing checkpoint chunk {key}"))?;
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
            clusters: self.clusters.clone(),
            next_to_close,
        };
        self.kv
            .put(self.manifest_key(), serde_json::to_vec(&manifest)?.into())
            .await
            .context("writing checkpoint manifest")?;
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
            let mut list = serde_json::to_vec(&self.history)?;
            while list.len() > self.chunk_bytes && self.history.len() > 1 {
                tracing::warn!(
                    kept = self.history.len(),
                    bytes = list.len(),
                    "the checkpoint history is too large for one message; the oldest kept checkpoint leaves it"
                );
                unused.push(self.history.remove(0));
                list = serde_json::to_vec(&self.history)?;
            }
            // Written before the chunks of those that left it are removed: the
            // history never names a checkpoint whose chunks are gone.
            self.kv
                .put(history_key(&self.name), list.into())
                .await
                .context("writing the checkpoint history")?;
        }
        for old in unused {
            for index in 0..old.chunks {
                let key = self.chunk_key(old.generation, index);
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
) -> anyhow::Result<Option<(Manifest, Fold)>> {
    let Ok(kv) = js.get_key_value(CHECKPOINT_BUCKET).await else {
        return Ok(None);
    };
    let mut candidates = read_history(&kv, name).await?;
    if let Some(latest) = kv
        .get(manifest_key(name))
        .await
        .context("reading checkpoint manifest")?
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
        let mut fold = Fold::from_checkpoint(&state).context("checkpoint state is not readable")?;
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

fn chunk_key(name: &str, generation: u64, index: u32) -> String {
    format!("{name}.g{generation}.c{index}")
}

/// Processor `name`'s kept checkpoints, oldest first (none when it keeps none).
async fn read_history(kv: &kv::Store, name: &str) -> anyhow::Result<Vec<Manifest>> {
    match kv
        .get(history_key(name))
        .await
        .context("reading the checkpoint history")?
    {
        Some(raw) => serde_json::from_slice(&raw).context("the checkpoint history is not readable"),
        None => Ok(Vec::new()),
    }
}

/// The state bytes a manifest names, checked against its digest.
async fn read_state(kv: &kv::Store, name: &str, manifest: &Manifest) -> anyhow::Result<Vec<u8>> {
    let mut state = Vec::with_capacity(manifest.bytes as usize);
    for index in 0..manifest.chunks {
        let key = chunk_key(name, manifest.generation, index);
        let chunk = kv
            .get(&key)
            .await
            .with_context(|| format!("reading checkpoint chunk {key}"))?
            .with_context(|| format!("checkpoint chunk {key} is missing"))?;
        state.extend_from_slice(&chunk);
    }
    if sha256_hex(&state) != manifest.sha256 {
        bail!(
            "checkpoint generation {} does not match its digest",
            manifest.generation
        );
    }
    Ok(state)
}

fn sha256_hex(bytes: &[u8]) -> String {
    backbeat_schemas::window::lower_hex(&Sha256::digest(bytes))
}
