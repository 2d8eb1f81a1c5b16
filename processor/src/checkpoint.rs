//! Checkpoints of the fold in a JetStream key-value bucket.
//!
//! A checkpoint is the fold's state after the event with stream sequence `seq`.
//! The state can exceed one NATS message, so it is written as chunks of a new
//! generation and then a small manifest naming them: a crash at any point leaves
//! the previous manifest and its chunks whole. The manifest carries the fold
//! configuration, so a processor started with other flags refuses the state
//! instead of folding it wrongly.

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
}

/// 4: one roster of agents holding their tasks (3: agent and task tables apart;
/// 2: per-window agent sets; 1: task hash maps).
const FORMAT: u32 = 4;

/// One processor's checkpoints (`name` = its durable consumer's name).
pub struct CheckpointStore {
    kv: kv::Store,
    name: String,
    /// The processor's cluster filter, sorted, written into every manifest.
    clusters: Vec<String>,
    chunk_bytes: usize,
    current: Option<Manifest>,
}

impl CheckpointStore {
    /// Opens (creating when missing) the bucket, for a processor folding `clusters` (empty: all).
    pub async fn open(
        js: &jetstream::Context,
        name: &str,
        clusters: &[String],
        replicas: usize,
        max_payload: usize,
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
        })
    }

    fn manifest_key(&self) -> String {
        format!("{}.manifest", self.name)
    }

    fn chunk_key(&self, generation: u64, index: u32) -> String {
        format!("{}.g{generation}.c{index}", self.name)
    }

    /// The latest checkpoint, checked against its digest; `None` when there is none.
    pub async fn load(&mut self) -> anyhow::Result<Option<(Manifest, Fold)>> {
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
            bail!(
                "checkpoint format {} is not {FORMAT}: this processor cannot resume it. To fold again \
                 from the stream's start, delete key {} of bucket {CHECKPOINT_BUCKET} (nats kv del \
                 {CHECKPOINT_BUCKET} {}); reports already in the bars stream are not published again",
                manifest.format,
                self.manifest_key(),
                self.manifest_key()
            );
        }
        let mut state = Vec::with_capacity(manifest.bytes as usize);
        for index in 0..manifest.chunks {
            let key = self.chunk_key(manifest.generation, index);
            let chunk = self
                .kv
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

    /// Writes the fold's state as the new checkpoint and removes the previous one's chunks.
    pub async fn save(&mut self, fold: &Fold) -> anyhow::Result<Manifest> {
        self.save_state(fold.last_seq(), *fold.config(), &fold.to_checkpoint())
            .await
    }

    /// Writes `state` (a fold's checkpoint bytes after the event `seq`, folded
    /// with `config`) as the new checkpoint and removes the previous one's chunks.
    pub async fn save_state(&mut self, seq: u64, config: FoldConfig, state: &[u8]) -> anyhow::Result<Manifest> {
        let generation = self.current.as_ref().map_or(1, |m| m.generation + 1);
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
        };
        self.kv
            .put(self.manifest_key(), serde_json::to_vec(&manifest)?.into())
            .await
            .context("writing checkpoint manifest")?;
        if let Some(previous) = self.current.replace(manifest.clone()) {
            for index in 0..previous.chunks {
                let key = self.chunk_key(previous.generation, index);
                if let Err(e) = self.kv.purge(&key).await {
                    tracing::warn!(%key, error = %e, "could not remove an old checkpoint chunk");
                }
            }
        }
        Ok(manifest)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    backbeat_schemas::window::lower_hex(&Sha256::digest(bytes))
}
