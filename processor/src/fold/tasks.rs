//! The task table of SPEC §5: one entry per `(agent_id, task_id)`, with its
//! deadline, help promise and delivery, dropped after `T` windows without a claim.
//!
//! This is the fold's hottest structure (every claim with a task touches it),
//! so it is laid out for that: entries live in a slab (a `Vec` of slots, freed
//! slots reused) found through a hash index of slot numbers, so a key is
//! allocated once per entry and never cloned. Two ordered indexes of window →
//! slot records keep window closes cheap however many tasks there are: by the
//! window of the deadline (for overdue tasks) and by the last window (for the
//! time-to-live). The last-window index is lazy: a claim that moves an entry to
//! another window only appends a record, and a record counts only while its
//! window is still the entry's last window and its id is still the slot's
//! entry. Neither index is ever iterated in hash order, and the hash index is
//! rebuilt, not stored, when a checkpoint is read.

use std::collections::BTreeMap;
use std::hash::BuildHasher as _;

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// A slab slot's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Slot {
    key: TaskKey,
    entry: TaskEntry,
}

/// A record of an index: the slot, and the id of the entry it was made for.
type SlotRecord = (u32, u64);

/// What a claim did to its task, for the window's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClaimEffect {
    pub on_time_review: bool,
    pub help_fulfilled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TaskTable {
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Slot numbers of the live entries, hashed by their key.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Window of the deadline → the entries created with a deadline there.
    by_deadline_window: BTreeMap<u64, Vec<SlotRecord>>,
    /// Window → entries whose last window was set to it (lazy, see the module doc).
    by_last_window: BTreeMap<u64, Vec<SlotRecord>>,
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
        self.index.len()
    }

    fn hash(hasher: &DefaultHashBuilder, agent_id: &str, task_id: &str) -> u64 {
        hasher.hash_one((agent_id, task_id))
    }

    /// Adds a live slot to the hash index (`hash` is its key's).
    fn index_slot(
        index: &mut HashTable<u32>,
        slots: &[Option<Slot>],
        hasher: &DefaultHashBuilder,
        hash: u64,
        slot: u32,
    ) {
        index.insert_unique(hash, slot, |&s| {
            let key = &slots[s as usize].as_ref().expect("indexed slots are live").key;
            Self::hash(hasher, &key.agent_id, &key.task_id)
        });
    }

    /// The slot of `key`, if it has a live entry.
    fn find(&self, hash: u64, key: TaskKeyRef<'_>) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&slot| {
                slots[slot as usize]
                    .as_ref()
                    .is_some_and(|s| *s.key.agent_id == *key.agent_id && *s.key.task_id == *key.task_id)
            })
            .copied()
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
        let hash = Self::hash(&self.hasher, key.agent_id, key.task_id);
        let slot = match self.find(hash, key) {
            Some(slot) => slot,
            None => self.create(hash, key, due, window, bar_length),
        };
        let entry = &mut self.slots[slot as usize]
            .as_mut()
            .expect("indexed slots are live")
            .entry;
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
            entry.last_window = window;
            let record = (slot, entry.id);
            self.by_last_window.entry(window).or_default().push(record);
        }
        effect
    }

    /// A new entry for `key` (the first claim of the key, or the first after it was dropped).
    fn create(&mut self, hash: u64, key: TaskKeyRef<'_>, due: u64, window: u64, bar_length: u64) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let deadline_window = due / bar_length;
        let content = Slot {
            key: TaskKey {
                agent_id: key.agent_id.into(),
                task_id: key.task_id.into(),
            },
            entry: TaskEntry {
                id,
                deadline: due,
                deadline_window,
                help_deadline: None,
                delivered_at: None,
                done_seen: false,
                last_window: window,
            },
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(content);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 live tasks");
                self.slots.push(Some(content));
                slot
            }
        };
        Self::index_slot(&mut self.index, &self.slots, &self.hasher, hash, slot);
        self.by_deadline_window
            .entry(deadline_window)
            .or_default()
            .push((slot, id));
        self.by_last_window.entry(window).or_default().push((slot, id));
        slot
    }

    /// The live entry a record was made for, if it is still there.
    fn live(&self, (slot, id): SlotRecord) -> Option<&Slot> {
        self.slots[slot as usize].as_ref().filter(|s| s.entry.id == id)
    }

    /// Tasks due in `window` and not delivered at or before their deadline,
    /// as `agent_id/task_id`, in bytewise `(agent_id, task_id)` order. Their
    /// deadline index records are consumed.
    pub fn take_overdue(&mut self, window: u64) -> Vec<String> {
        let Some(records) = self.by_deadline_window.remove(&window) else {
            return Vec::new();
        };
        let mut overdue: Vec<&TaskKey> = records
            .iter()
            .filter_map(|&record| self.live(record))
            .filter(|s| s.entry.delivered_at.is_none_or(|at| at > s.entry.deadline))
            .map(|s| &s.key)
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
        let mut touched_deadline_windows = Vec::new();
        while let Some(bucket) = self.by_last_window.first_entry() {
            if *bucket.key() >= oldest_kept {
                break;
            }
            let (window, records) = bucket.remove_entry();
            for record in records {
                if self.live(record).is_some_and(|s| s.entry.last_window == window) {
                    let deadline_window = self.remove(record.0);
                    touched_deadline_windows.push(deadline_window);
                }
            }
        }
        // The dropped entries' deadline records go too, so that a deadline far
        // ahead does not keep records of long-gone entries.
        touched_deadline_windows.sort_unstable();
        touched_deadline_windows.dedup();
        for window in touched_deadline_windows {
            if let Some(mut records) = self.by_deadline_window.remove(&window) {
                records.retain(|&record| self.live(record).is_some());
                if !records.is_empty() {
                    self.by_deadline_window.insert(window, records);
                }
            }
        }
    }

    /// Frees a live slot; returns the window of its entry's deadline.
    fn remove(&mut self, slot: u32) -> u64 {
        let content = self.slots[slot as usize].take().expect("removing a live slot");
        let hash = Self::hash(&self.hasher, &content.key.agent_id, &content.key.task_id);
        self.index
            .find_entry(hash, |&s| s == slot)
            .expect("live slots are indexed")
            .remove();
        self.free.push(slot);
        content.entry.deadline_window
    }
}

/// The table as a checkpoint holds it: everything but the hash index.
#[derive(Serialize)]
struct TaskTableRef<'a> {
    slots: &'a Vec<Option<Slot>>,
    free: &'a Vec<u32>,
    by_deadline_window: &'a BTreeMap<u64, Vec<SlotRecord>>,
    by_last_window: &'a BTreeMap<u64, Vec<SlotRecord>>,
    next_id: u64,
}

#[derive(Deserialize)]
struct TaskTableState {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_deadline_window: BTreeMap<u64, Vec<SlotRecord>>,
    by_last_window: BTreeMap<u64, Vec<SlotRecord>>,
    next_id: u64,
}

impl Serialize for TaskTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskTableRef {
            slots: &self.slots,
            free: &self.free,
            by_deadline_window: &self.by_deadline_window,
            by_last_window: &self.by_last_window,
            next_id: self.next_id,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = TaskTableState::deserialize(deserializer)?;
        let mut table = TaskTable {
            slots: state.slots,
            free: state.free,
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            by_deadline_window: state.by_deadline_window,
            by_last_window: state.by_last_window,
            next_id: state.next_id,
        };
        for (slot, content) in table.slots.iter().enumerate() {
            if let Some(content) = content {
                let hash = Self::hash(&table.hasher, &content.key.agent_id, &content.key.task_id);
                Self::index_slot(&mut table.index, &table.slots, &table.hasher, hash, slot as u32);
            }
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The rules of SPEC §5 written as plainly as possible: one ordered map,
    /// scanned whole at every close.
    #[derive(Default)]
    struct Model {
        entries: BTreeMap<(String, String), TaskEntry>,
    }

    impl Model {
        fn apply_claim(
            &mut self,
            key: (String, String),
            beat: u64,
            left: u32,
            kind: TaskClaimKind,
            window: u64,
            bar: u64,
        ) -> ClaimEffect {
            let due = beat + u64::from(left);
            let entry = self.entries.entry(key).or_insert(TaskEntry {
                id: 0,
                deadline: due,
                deadline_window: due / bar,
                help_deadline: None,
                delivered_at: None,
                done_seen: false,
                last_window: window,
            });
            let mut effect = ClaimEffect::default();
            if kind == TaskClaimKind::Helping && entry.help_deadline.is_none() {
                entry.help_deadline = Some(due);
            }
            if matches!(kind, TaskClaimKind::Delivering | TaskClaimKind::Done) && entry.delivered_at.is_none() {
                entry.delivered_at = Some(beat);
                effect.on_time_review = beat <= entry.deadline;
            }
            if kind == TaskClaimKind::Done && !entry.done_seen {
                entry.done_seen = true;
                effect.help_fulfilled = entry.help_deadline.is_some_and(|h| beat <= h);
            }
            entry.last_window = window;
            effect
        }

        fn close(&mut self, window: u64, ttl: u64) -> Vec<String> {
            let overdue = self
                .entries
                .iter()
                .filter(|(_, e)| e.deadline_window == window && e.delivered_at.is_none_or(|at| at > e.deadline))
                .map(|((a, t), _)| format!("{a}/{t}"))
                .collect();
            if let Some(oldest_kept) = window.checked_sub(ttl) {
                self.entries.retain(|_, e| e.last_window >= oldest_kept);
            }
            overdue
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// agent, task, beat offset from the window start, beats_left, kind, window offset.
        Claim(u8, u8, u64, u32, u8, u8),
        Close,
        Checkpoint,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..6, 0u8..4, 0u64..4, 0u32..20, 0u8..4, 0u8..3)
                .prop_map(|(a, t, b, l, k, w)| Step::Claim(a, t, b, l, k, w)),
            2 => Just(Step::Close),
            1 => Just(Step::Checkpoint),
        ]
    }

    proptest! {
        /// The slab, its hash index and its lazy window indexes give what the
        /// plain model gives, through checkpoints too.
        #[test]
        fn the_table_behaves_as_the_plain_rules(steps in proptest::collection::vec(step(), 1..200), ttl in 0u64..4) {
            const BAR: u64 = 4;
            let mut table = TaskTable::default();
            let mut model = Model::default();
            let mut next_to_close = 0u64;
            for step in steps {
                match step {
                    Step::Claim(a, t, b, left, k, w) => {
                        let window = next_to_close + u64::from(w);
                        let beat = window * BAR + b;
                        let kind = [TaskClaimKind::Helping, TaskClaimKind::Delivering, TaskClaimKind::Done, TaskClaimKind::Other][k as usize];
                        let (agent, task) = (format!("a{a}"), format!("t{t}"));
                        let got = table.apply_claim(TaskKeyRef { agent_id: &agent, task_id: &task }, beat, left, kind, window, BAR);
                        let want = model.apply_claim((agent, task), beat, left, kind, window, BAR);
                        prop_assert_eq!(got, want);
                    }
                    Step::Close => {
                        let got = table.take_overdue(next_to_close);
                        table.expire(next_to_close, ttl);
                        prop_assert_eq!(got, model.close(next_to_close, ttl));
                        prop_assert_eq!(table.len(), model.entries.len());
                        next_to_close += 1;
                    }
                    Step::Checkpoint => {
                        let bytes = postcard::to_stdvec(&table).unwrap();
                        table = postcard::from_bytes(&bytes).unwrap();
                    }
                }
            }
        }
    }
}
