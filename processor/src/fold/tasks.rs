//! The task table of SPEC §5: one entry per `(agent_id, task_id)`, with its
//! deadline, help promise and delivery, dropped after `T` windows without a claim.
//!
//! Two ordered indexes keep window closes cheap however many tasks there are:
//! entries by the window of their deadline (for overdue tasks) and by their last
//! window (for the time-to-live). Neither is ever iterated in hash order.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};

/// `(agent_id, task_id)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub agent_id: Box<str>,
    pub task_id: Box<str>,
}

/// A borrowed key, to look up without allocating.
#[derive(Debug, Clone, Copy)]
pub struct TaskKeyRef<'a> {
    pub agent_id: &'a str,
    pub task_id: &'a str,
}

impl Hash for TaskKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as the derived `Hash` of `TaskKey` (str, then str).
        self.agent_id.hash(state);
        self.task_id.hash(state);
    }
}

impl Equivalent<TaskKey> for TaskKeyRef<'_> {
    fn equivalent(&self, key: &TaskKey) -> bool {
        *key.agent_id == *self.agent_id && *key.task_id == *self.task_id
    }
}

/// One task's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskEntry {
    /// Unique for the life of the fold: tells a re-created key from the dropped one.
    pub id: u64,
    pub deadline: u64,
    /// The window holding `deadline`, where the entry is indexed.
    pub deadline_window: u64,
    pub help_deadline: Option<u64>,
    pub delivered_at: Option<u64>,
    pub done_seen: bool,
    pub last_window: u64,
}

/// What a claim did to its task, for the window's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClaimEffect {
    pub on_time_review: bool,
    pub help_fulfilled: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskTable {
    entries: HashMap<TaskKey, TaskEntry>,
    /// (window of the deadline, entry id) → key.
    by_deadline_window: BTreeMap<(u64, u64), TaskKey>,
    /// (last window, entry id) → key.
    by_last_window: BTreeMap<(u64, u64), TaskKey>,
    next_id: u64,
}

/// The state a claim declares, as far as tasks care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskClaimKind {
    Helping,
    /// `reviewing`: delivers the task.
    Delivering,
    /// `done`: delivers the task and settles a help promise.
    Done,
    Other,
}

impl TaskTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Applies a claim of `key` at `beat_index` with `beats_left`, in window `w`.
    pub fn apply_claim(
        &mut self,
        key: TaskKeyRef<'_>,
        beat_index: u64,
        beats_left: u32,
        kind: TaskClaimKind,
        window: u64,
        bar_length: u64,
    ) -> ClaimEffect {
        let due = beat_index + u64::from(beats_left);
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let owned = TaskKey {
                    agent_id: key.agent_id.into(),
                    task_id: key.task_id.into(),
                };
                self.by_deadline_window.insert((due / bar_length, id), owned.clone());
                self.by_last_window.insert((window, id), owned.clone());
                self.entries.entry(owned).or_insert(TaskEntry {
                    id,
                    deadline: due,
                    deadline_window: due / bar_length,
                    help_deadline: None,
                    delivered_at: None,
                    done_seen: false,
                    last_window: window,
                })
            }
        };
        let mut effect = ClaimEffect::default();
        if kind == TaskClaimKind::Helping && entry.help_deadline.is_none() {
            entry.help_deadline = Some(due);
        }
        if matches!(kind, TaskClaimKind::Delivering | TaskClaimKind::Done) && entry.delivered_at.is_none() {
            entry.delivered_at = Some(beat_index);
            effect.on_time_review = beat_index <= entry.deadline;
        }
        if kind == TaskClaimKind::Done && !entry.done_seen {
            entry.done_seen = true;
            effect.help_fulfilled = entry.help_deadline.is_some_and(|help| beat_index <= help);
        }
        if entry.last_window != window {
            let id = entry.id;
            let old = std::mem::replace(&mut entry.last_window, window);
            let owned = self
                .by_last_window
                .remove(&(old, id))
                .expect("every entry is indexed by last window");
            self.by_last_window.insert((window, id), owned);
        }
        effect
    }

    /// Tasks due in `window` and not delivered at or before their deadline,
    /// as `agent_id/task_id`, in bytewise `(agent_id, task_id)` order. Their
    /// deadline index records are consumed.
    pub fn take_overdue(&mut self, window: u64) -> Vec<String> {
        let due = take_range(&mut self.by_deadline_window, (window, 0)..=(window, u64::MAX));
        let mut overdue: Vec<&TaskKey> = due
            .iter()
            .filter(|key| {
                let entry = &self.entries[*key];
                entry.delivered_at.is_none_or(|at| at > entry.deadline)
            })
            .collect();
        overdue.sort_unstable();
        overdue
            .iter()
            .map(|key| format!("{}/{}", key.agent_id, key.task_id))
            .collect()
    }

    /// Drops entries whose last window is more than `ttl` windows before `closed`.
    pub fn expire(&mut self, closed: u64, ttl: u64) {
        let Some(oldest_kept) = closed.checked_sub(ttl) else {
            return;
        };
        for key in take_range(&mut self.by_last_window, ..(oldest_kept, 0)) {
            let entry = self.entries.remove(&key).expect("indexed entries exist");
            self.by_deadline_window.remove(&(entry.deadline_window, entry.id));
        }
    }
}

/// Removes and returns the values in `range`, in key order.
fn take_range(map: &mut BTreeMap<(u64, u64), TaskKey>, range: impl std::ops::RangeBounds<(u64, u64)>) -> Vec<TaskKey> {
    let keys: Vec<(u64, u64)> = map.range(range).map(|(k, _)| *k).collect();
    keys.iter().map(|k| map.remove(k).expect("key just seen")).collect()
}
