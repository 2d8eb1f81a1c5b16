//! The durable raft state machine: [`PulseState`] plus what openraft needs
//! (last applied log id, membership), written to disk after every applied
//! batch, and snapshots of it. The emitter and the HTTP handlers read the
//! current state through [`StateMachineStore::current`] and `watch`.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::durable;
use super::{NodeId, TypeConfig};
use crate::state::{PulseState, Response};

/// What `state.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    state: PulseState,
}

/// What `snapshot.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine under one directory. Clones share it.
#[derive(Clone)]
pub struct StateMachineStore {
    dir: PathBuf,
    inner: Arc<Mutex<Persisted>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    changes: watch::Sender<PulseState>,
    /// Counts committed entries refused by [`crate::state::Request::check`].
    invalid_entries: prometheus::IntCounter,
}

impl StateMachineStore {
    /// Opens (creating if needed) the state machine under `dir`.
    /// `invalid_entries` counts committed entries that are out of range (skipped).
    pub fn open(dir: &Path, invalid_entries: prometheus::IntCounter) -> std::io::Result<StateMachineStore> {
        std::fs::create_dir_all(dir)?;
        let persisted: Persisted = durable::read_json(&dir.join("state.json"))?.unwrap_or_default();
        let snapshot: Option<StoredSnapshot> = durable::read_json(&dir.join("snapshot.json"))?;
        let (changes, _) = watch::channel(persisted.state.clone());
        Ok(StateMachineStore {
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(persisted)),
            snapshot: Arc::new(Mutex::new(snapshot)),
            changes,
            invalid_entries,
        })
    }

    /// The state as last applied on this node.
    pub fn current(&self) -> PulseState {
        self.changes.borrow().clone()
    }

    /// Notified after every applied change.
    pub fn watch(&self) -> watch::Receiver<PulseState> {
        self.changes.subscribe()
    }

    fn persist(&self, persisted: &Persisted) -> std::io::Result<()> {
        durable::write_json(&self.dir.join("state.json"), persisted)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let persisted = self.inner.lock().expect("state machine lock").clone();
        let data = serde_json::to_vec(&persisted.state).map_err(|e| StorageIOError::read_state_machine(&e))?;
        let snapshot_id = match persisted.last_applied {
            Some(last) => format!("{}-{}", last.leader_id, last.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: persisted.last_applied,
            last_membership: persisted.last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        durable::write_json(&self.dir.join("snapshot.json"), &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.snapshot.lock().expect("snapshot lock") = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>> {
        let inner = self.inner.lock().expect("state machine lock");
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut next = self.inner.lock().expect("state machine lock").clone();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(request) => {
                    let response = next.state.apply(request);
                    if let Response::Invalid(reason) = &response {
                        // Skipped, not applied: every node skips it the same way,
                        // and a restart replays it without harm.
                        self.invalid_entries.inc();
                        tracing::error!(log_id = %entry.log_id, ?request, %reason, "skipping an out-of-range raft entry");
                    }
                    response
                }
                EntryPayload::Membership(membership) => {
                    next.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::None
                }
            };
            responses.push(response);
        }
        // On disk before the responses are returned: a restarted node resumes from here.
        self.persist(&next)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        let state = next.state.clone();
        *self.inner.lock().expect("state machine lock") = next;
        self.changes.send_replace(state);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let state: PulseState =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let persisted = Persisted {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            state: state.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        durable::write_json(&self.dir.join("snapshot.json"), &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.persist(&persisted)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        *self.inner.lock().expect("state machine lock") = persisted;
        *self.snapshot.lock().expect("snapshot lock") = Some(stored);
        self.changes.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = self.snapshot.lock().expect("snapshot lock").clone();
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
