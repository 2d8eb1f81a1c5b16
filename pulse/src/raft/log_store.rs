//! The durable raft log: one JSON file per entry plus vote, committed and
//! purged files, each written crash-safely (temporary file, fsync, rename,
//! directory fsync) before openraft is told the write is done.
//!
//! The pulse log is tiny (configuration, epochs, tempo changes, membership and
//! a blank entry per election), so a file per entry is simpler than an
//! append-only file with its own framing and compaction, and just as safe.
//! The entries are also cached in memory; the files are read once, at start.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId as _, StorageError, StorageIOError, Vote};

use super::durable;
use super::{NodeId, TypeConfig};

/// The raft log under one directory. Clones share the same store.
#[derive(Clone)]
pub struct FileLogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

const ENTRIES_DIR: &str = "entries";

fn entry_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(ENTRIES_DIR).join(format!("{index:020}.json"))
}

impl FileLogStore {
    /// Opens (creating if needed) the log under `dir` and loads it.
    pub fn open(dir: &Path) -> std::io::Result<FileLogStore> {
        let entries_dir = dir.join(ENTRIES_DIR);
        fs::create_dir_all(&entries_dir)?;
        let last_purged: Option<LogId<NodeId>> = durable::read_json(&dir.join("purged.json"))?;
        let mut entries = BTreeMap::new();
        for item in fs::read_dir(&entries_dir)? {
            let path = item?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(durable::TMP_SUFFIX) {
                // A write that a crash interrupted before its rename: never acknowledged.
                durable::remove_file(&path)?;
                continue;
            }
            let Some(entry) = durable::read_json::<Entry<TypeConfig>>(&path)? else {
                continue;
            };
            if last_purged.is_some_and(|purged| entry.get_log_id().index <= purged.index) {
                // Left over by a crash during purge.
                durable::remove_file(&path)?;
                continue;
            }
            entries.insert(entry.get_log_id().index, entry);
        }
        let inner = Inner {
            vote: durable::read_json(&dir.join("vote.json"))?,
            committed: durable::read_json(&dir.join("committed.json"))?,
            last_purged,
            dir: dir.to_path_buf(),
            entries,
        };
        Ok(FileLogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Whether nothing was ever written: no vote, no entry. Such a node may initialise the group.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.entries.is_empty() && inner.vote.is_none() && inner.last_purged.is_none()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic in the middle of a log write: crash loudly.
        self.inner.lock().expect("raft log lock poisoned")
    }
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        durable::write_json(&inner.dir.join("vote.json"), vote).map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        durable::write_json(&inner.dir.join("committed.json"), &committed).map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        // Each entry file is fsync'd before its rename, and the directory after;
        // only then is openraft told the entries are on disk.
        for entry in entries {
            let path = entry_path(&inner.dir, entry.get_log_id().index);
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            if let Err(e) = durable::write_file(&path, &bytes) {
                callback.log_io_completed(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(StorageIOError::write_logs(&e).into());
            }
            inner.entries.insert(entry.get_log_id().index, entry);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        let doomed: Vec<u64> = inner.entries.range(log_id.index..).map(|(i, _)| *i).collect();
        // Remove from the end, so a crash in between leaves a log without holes.
        for index in doomed.into_iter().rev() {
            durable::remove_file(&entry_path(&inner.dir, index)).map_err(|e| StorageIOError::write_logs(&e))?;
            inner.entries.remove(&index);
        }
        durable::sync_dir(&inner.dir.join(ENTRIES_DIR)).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        // Record the purge point first: a crash after it leaves only stale files,
        // which are below the purge point and harmless.
        durable::write_json(&inner.dir.join("purged.json"), &log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.last_purged = Some(log_id);
        let doomed: Vec<u64> = inner.entries.range(..=log_id.index).map(|(i, _)| *i).collect();
        for index in doomed {
            durable::remove_file(&entry_path(&inner.dir, index)).map_err(|e| StorageIOError::write_logs(&e))?;
            inner.entries.remove(&index);
        }
        Ok(())
    }
}
