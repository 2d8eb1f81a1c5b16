//! A cluster's agents and their tasks: which open windows each agent is
//! counted in (SPEC §5 `agents_reporting`) and the task table of SPEC §5 (one
//! entry per `(agent_id, task_id)` with its deadline, help promise and
//! delivery, dropped after `T` windows without a claim).
//!
//! This is the fold's hottest structure: every applied claim finds its agent,
//! and most find a task. So one hash look-up finds both. Agents live in a slab
//! (a `Vec` of slots, freed slots reused) found through a hash index of slot
//! numbers; an agent's id is stored inline when short. Its tasks are inside
//! its record too, each whole (the id, stored inline when short, its last
//! window, deadline, help deadline, and flags for the once-only facts: help
//! promised, delivered, delivered on time, done seen), beside a vector of
//! 32-bit tags of their ids in the same order. A claim scans the tags and
//! compares the id of a matching task only, and moves its task first: an
//! agent that claims one task again and again finds it by the first tag, in
//! the record's first 184 bytes. Up to [`TASKS_INLINE`] tasks stay inside
//! the record, so a claim, a close and the time-to-live read no memory
//! outside it (an earlier layout kept the ids and help deadlines on the
//! heap: a miss per claim, and more in each close).
//!
//! A close already visits every agent, in slot order (to uncount it from
//! the window), so it does the rest of the window's task work on the way,
//! reading the tasks of the agents that have some: it counts the overdue
//! tasks of an agent whose lowest pending deadline window
//! ([`Agent::due_min`]) has come, and drops the stale tasks of an agent
//! whose oldest task claim ([`Agent::tasks_last_window_min`]) is past the
//! time-to-live. Neither needs an index of its own. Nothing is ever iterated
//! in hash order, and the hash index is rebuilt, not stored, when a
//! checkpoint is read.
//!
//! An agent is forgotten once it has no task, no open window, and has not
//! claimed for [`AGENT_KEEP_WINDOWS`] windows, so the roster grows with the
//! fleet and its live tasks, never with the log.

use std::hash::BuildHasher as _;

use compact_str::CompactString;
use hashbrown::{DefaultHashBuilder, HashTable};
use serde::{Deserialize, Deserializer, Serialize};
use smallvec::SmallVec;

/// Windows an agent without a claim or a task is kept for. Under the cap on
/// agents per cluster, only a cost trade-off (forgetting sooner or later
/// never changes a report); at the cap, it tells which agents count (see
/// ARCHITECTURE.md, "the caps").
pub const AGENT_KEEP_WINDOWS: u64 = 2;

/// Tasks that fit inside an agent's record (more spill to the heap, a
/// cache miss per claim): 8 × 56 bytes, and their tags. Only a cost trade-off.
const TASKS_INLINE: usize = 8;

/// A task of the table, inside its agent's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Task {
    /// Which once-only facts are settled: [`HELP_SET`], [`DELIVERED`],
    /// [`ON_TIME`], [`DONE_SEEN`].
    flags: u8,
    /// The window of the task's last claim.
    last_window: u64,
    /// The beat the task is due at (set by its first claim): it is overdue
    /// in the window holding that beat unless delivered by then.
    deadline: u64,
    /// Meaningful with [`HELP_SET`].
    help_deadline: u64,
    task_id: CompactString,
}

/// A help promise was made (`help_deadline` is set).
const HELP_SET: u8 = 1;
/// The task was delivered (`reviewing` or `done`).
const DELIVERED: u8 = 2;
/// It was delivered at or before its deadline.
const ON_TIME: u8 = 4;
/// A `done` claim was seen.
const DONE_SEEN: u8 = 8;

/// An agent's record. Its fields are laid out in this order (`repr(C)`) so
/// that what every claim reads and writes, from the id to the first task
/// (the one claimed last), is in the record's first 184 bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[repr(C)]
struct Agent {
    agent_id: CompactString,
    /// The highest window it was counted in.
    last: u64,
    /// At most the lowest `last_window` of its tasks: while it is not below
    /// the oldest window kept, a close need not look at the tasks.
    tasks_last_window_min: u64,
    /// Open windows the agent is counted in (usually one or two).
    open: SmallVec<[u64; 2]>,
    /// A 32-bit hash of each task's id, `tags[i]` of `tasks[i]`: a claim
    /// compares the id of a task whose tag matches only. Rebuilt, not
    /// stored, when a checkpoint is read.
    #[serde(skip)]
    tags: SmallVec<[u32; TASKS_INLINE]>,
    /// Its live tasks, the one claimed last first.
    tasks: SmallVec<[Task; TASKS_INLINE]>,
    /// At most the lowest deadline window of its tasks not delivered on time
    /// and not yet closed (`u64::MAX` for none): until that window closes,
    /// a close need not look for overdue tasks.
    due_min: u64,
}

/// The tag of a task id in [`Agent::tags`] (any 32 bits of a good hash).
fn task_tag(hasher: &DefaultHashBuilder, task_id: &str) -> u32 {
    hasher.hash_one(task_id) as u32
}

/// What a claim did to its task, for the window's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClaimEffect {
    pub on_time_review: bool,
    pub help_fulfilled: bool,
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

/// A claim's task, as [`Roster::apply_task_claim`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct TaskClaim<'a> {
    pub task_id: &'a str,
    pub beat_index: u64,
    pub beats_left: u32,
    pub kind: TaskClaimKind,
    /// The window of `beat_index`.
    pub window: u64,
}

/// The overdue tasks of one close: how many, and the first few pairs.
struct Overdue {
    count: u64,
    sample: usize,
    /// The first `sample` `(agent_id, task_id)` pairs so far, ascending.
    first: Vec<(CompactString, CompactString)>,
}

impl Overdue {
    fn new(sample: usize) -> Self {
        Overdue {
            count: 0,
            sample,
            first: Vec::with_capacity(sample + 1),
        }
    }

    /// Counts `agent`'s tasks due in window `closed` and not delivered on
    /// time; returns its new [`Agent::due_min`] (over the tasks due later).
    fn count_in(&mut self, agent: &Agent, closed: u64, bar_length: u64) -> u64 {
        let mut due_min = u64::MAX;
        for task in &agent.tasks {
            if task.flags & ON_TIME != 0 {
                continue;
            }
            let due_window = task.deadline / bar_length;
            if due_window > closed {
                due_min = due_min.min(due_window);
            } else if due_window == closed {
                self.count += 1;
                self.offer(&agent.agent_id, &task.task_id);
            }
        }
        due_min
    }

    /// Keeps the pair if it is among the first `sample`. A candidate whose
    /// agent id is above the last kept one's (most are, once `sample` are
    /// kept) is passed over at once, its task id not compared.
    fn offer(&mut self, agent_id: &CompactString, task_id: &CompactString) {
        if self.first.len() == self.sample
            && self
                .first
                .last()
                .is_none_or(|(last, _)| agent_id.as_str() > last.as_str())
        {
            return;
        }
        // A task is counted at one close only, so no pair comes twice.
        let pair = (agent_id.as_str(), task_id.as_str());
        let at = self.first.partition_point(|(a, t)| (a.as_str(), t.as_str()) < pair);
        if at < self.sample {
            self.first.insert(at, (agent_id.clone(), task_id.clone()));
            self.first.truncate(self.sample);
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        let first = self
            .first
            .iter()
            .map(|(agent_id, task_id)| format!("{agent_id}/{task_id}"))
            .collect();
        (self.count, first)
    }
}

/// Serialized as [`RosterState`] is read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Roster {
    slots: Vec<Option<Agent>>,
    /// Empty slots, reused before the slab grows.
    free: Vec<u32>,
    /// Slot numbers of the live agents, hashed by their id.
    #[serde(skip)]
    index: HashTable<u32>,
    #[serde(skip)]
    hasher: DefaultHashBuilder,
    /// Live tasks.
    #[serde(skip)]
    task_count: usize,
}

impl Roster {
    /// Live task entries.
    pub fn task_count(&self) -> usize {
        self.task_count
    }

    fn agent_mut(&mut self, slot: u32) -> &mut Agent {
        self.slots[slot as usize].as_mut().expect("a live agent's slot")
    }

    /// Live agents.
    pub fn agent_count(&self) -> usize {
        self.index.len()
    }

    /// The slot of `agent_id`, added if it is not known (or was forgotten)
    /// and fewer than `max_agents` agents are live; None when it would be one too many.
    pub fn agent(&mut self, agent_id: &str, max_agents: u64) -> Option<u32> {
        let hash = self.hasher.hash_one(agent_id);
        let slots = &self.slots;
        let found = self.index.find(hash, |&slot| {
            slots[slot as usize]
                .as_ref()
                .is_some_and(|agent| agent.agent_id == agent_id)
        });
        if let Some(&slot) = found {
            return Some(slot);
        }
        if self.index.len() as u64 >= max_agents {
            return None;
        }
        let agent = Agent {
            agent_id: agent_id.into(),
            open: SmallVec::new(),
            last: 0,
            tasks_last_window_min: u64::MAX,
            due_min: u64::MAX,
            tags: SmallVec::new(),
            tasks: SmallVec::new(),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(agent);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 live agents");
                self.slots.push(Some(agent));
                slot
            }
        };
        Self::index_slot(&mut self.index, &self.slots, &self.hasher, hash, slot);
        Some(slot)
    }

    /// Adds a live slot to the hash index (`hash` is its agent id's).
    fn index_slot(
        index: &mut HashTable<u32>,
        slots: &[Option<Agent>],
        hasher: &DefaultHashBuilder,
        hash: u64,
        slot: u32,
    ) {
        index.insert_unique(hash, slot, |&s| {
            let agent = slots[s as usize].as_ref().expect("indexed slots are live");
            hasher.hash_one(agent.agent_id.as_str())
        });
    }

    /// Counts the agent at `slot` in open window `window`; true when it was
    /// not counted there yet.
    pub fn count_in(&mut self, slot: u32, window: u64) -> bool {
        let agent = self.agent_mut(slot);
        if agent.open.contains(&window) {
            return false;
        }
        agent.open.push(window);
        agent.last = agent.last.max(window);
        true
    }

    /// Applies a claim of the agent at `slot` to its task `claim.task_id`;
    /// None, changing nothing, when the task is new and the agent already
    /// holds `max_tasks` tasks.
    pub fn apply_task_claim(
        &mut self,
        slot: u32,
        claim: TaskClaim<'_>,
        bar_length: u64,
        max_tasks: u64,
    ) -> Option<ClaimEffect> {
        let due = claim.beat_index + u64::from(claim.beats_left);
        let tag = task_tag(&self.hasher, claim.task_id);
        let agent = self.slots[slot as usize].as_mut().expect("a live agent's slot");
        let found = (0..agent.tags.len()).find(|&p| agent.tags[p] == tag && agent.tasks[p].task_id == claim.task_id);
        let position = match found {
            Some(position) => position,
            None if agent.tasks.len() as u64 >= max_tasks => return None,
            None => {
                // The first claim of the task, or the first after it was
                // dropped. Its deadline is at or after the claim's beat, so
                // its window is not closed yet.
                agent.tags.push(tag);
                agent.tasks.push(Task {
                    flags: 0,
                    last_window: claim.window,
                    deadline: due,
                    help_deadline: 0,
                    task_id: claim.task_id.into(),
                });
                agent.due_min = agent.due_min.min(due / bar_length);
                self.task_count += 1;
                agent.tasks.len() - 1
            }
        };
        // The task claimed goes first: an agent mostly claims one task
        // again and again, found then by the first tag, in the record's
        // first lines.
        if position > 0 {
            agent.tags.swap(0, position);
            agent.tasks.swap(0, position);
        }
        let task = &mut agent.tasks[0];
        let mut effect = ClaimEffect::default();
        let beat_index = claim.beat_index;
        match claim.kind {
            TaskClaimKind::Helping if task.flags & HELP_SET == 0 => {
                task.flags |= HELP_SET;
                task.help_deadline = due;
            }
            TaskClaimKind::Delivering | TaskClaimKind::Done => {
                if task.flags & DELIVERED == 0 {
                    task.flags |= DELIVERED;
                    effect.on_time_review = beat_index <= task.deadline;
                    if effect.on_time_review {
                        task.flags |= ON_TIME;
                    }
                }
                if claim.kind == TaskClaimKind::Done && task.flags & DONE_SEEN == 0 {
                    task.flags |= DONE_SEEN;
                    effect.help_fulfilled = task.flags & HELP_SET != 0 && beat_index <= task.help_deadline;
                }
            }
            _ => {}
        }
        task.last_window = claim.window;
        agent.tasks_last_window_min = agent.tasks_last_window_min.min(claim.window);
        Some(effect)
    }

    /// Window `closed` is reported: counts the tasks due in it and not
    /// delivered at or before their deadline, drops tasks whose last window
    /// is more than `ttl` windows before it, uncounts every agent from it,
    /// and forgets agents with nothing left to keep. One pass over the agents
    /// does it all. Returns the overdue count and the first `sample` overdue
    /// tasks as `agent_id/task_id` in bytewise `(agent_id, task_id)` order
    /// (only those are formatted).
    pub fn close(&mut self, closed: u64, ttl: u64, bar_length: u64, sample: usize) -> (u64, Vec<String>) {
        let oldest_kept = closed.checked_sub(ttl);
        let mut overdue = Overdue::new(sample);
        for slot in 0..self.slots.len() {
            let Some(agent) = self.slots[slot].as_mut() else {
                continue;
            };
            agent.open.retain(|w| *w > closed);
            if agent.open.spilled() && agent.open.len() <= agent.open.inline_size() {
                agent.open.shrink_to_fit();
            }
            // Before the time-to-live: a task dropped at this close is still
            // overdue in it.
            if agent.due_min <= closed {
                agent.due_min = overdue.count_in(agent, closed, bar_length);
            }
            if let Some(oldest_kept) = oldest_kept.filter(|&oldest| agent.tasks_last_window_min < oldest) {
                let before = agent.tasks.len();
                let mut kept = 0;
                for position in 0..before {
                    if agent.tasks[position].last_window >= oldest_kept {
                        agent.tags.swap(kept, position);
                        agent.tasks.swap(kept, position);
                        kept += 1;
                    }
                }
                agent.tags.truncate(kept);
                agent.tasks.truncate(kept);
                if agent.tasks.spilled() && kept <= TASKS_INLINE {
                    // Back inside the record: a spilled agent would pay a
                    // miss per claim for the rest of the fold.
                    agent.tags.shrink_to_fit();
                    agent.tasks.shrink_to_fit();
                }
                self.task_count -= before - kept;
                agent.tasks_last_window_min = agent
                    .tasks
                    .iter()
                    .map(|task| task.last_window)
                    .min()
                    .unwrap_or(u64::MAX);
            }
            if agent.open.is_empty() && agent.tasks.is_empty() && agent.last + AGENT_KEEP_WINDOWS <= closed {
                self.forget(slot as u32);
            }
        }
        overdue.finish()
    }

    /// Frees the slot of an agent with no task.
    fn forget(&mut self, slot: u32) {
        let agent = self.slots[slot as usize].take().expect("forgetting a live agent");
        let hash = self.hasher.hash_one(agent.agent_id.as_str());
        self.index
            .find_entry(hash, |&s| s == slot)
            .expect("live slots are indexed")
            .remove();
        self.free.push(slot);
    }
}

/// The roster as a checkpoint holds it (without the hash index, the tags
/// and the task count, rebuilt when it is read).
#[derive(Deserialize)]
struct RosterState {
    slots: Vec<Option<Agent>>,
    free: Vec<u32>,
}

impl<'de> Deserialize<'de> for Roster {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = RosterState::deserialize(deserializer)?;
        // A damaged state is refused here rather than indexed out of bounds
        // later (the `checkpoint` fuzz target found a free slot past the
        // slab): each free slot is an empty slot of the slab, listed once.
        let mut free_seen = vec![false; state.slots.len()];
        for &slot in &state.free {
            let listed = free_seen.get_mut(slot as usize);
            match (listed, state.slots.get(slot as usize)) {
                (Some(listed), Some(None)) if !*listed => *listed = true,
                _ => {
                    return Err(serde::de::Error::custom(
                        "a free roster slot is not an empty slot, once",
                    ))
                }
            }
        }
        let mut roster = Roster {
            slots: state.slots,
            free: state.free,
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            task_count: 0,
        };
        for agent in roster.slots.iter_mut().flatten() {
            agent.tags = agent
                .tasks
                .iter()
                .map(|task| task_tag(&roster.hasher, &task.task_id))
                .collect();
        }
        let mut agent_ids = std::collections::HashSet::new();
        for (slot, agent) in roster.slots.iter().enumerate() {
            if let Some(agent) = agent {
                if !agent_ids.insert(agent.agent_id.as_str()) {
                    return Err(serde::de::Error::custom("an agent appears twice in the roster"));
                }
                roster.task_count += agent.tasks.len();
                let hash = roster.hasher.hash_one(agent.agent_id.as_str());
                Self::index_slot(&mut roster.index, &roster.slots, &roster.hasher, hash, slot as u32);
            }
        }
        Ok(roster)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use proptest::prelude::*;

    /// The rules of SPEC §5 written as plainly as possible: one ordered map
    /// of tasks scanned whole at every close, and one set of agents per window.
    /// A task as SPEC §5 describes it.
    struct TaskEntry {
        deadline: u64,
        deadline_window: u64,
        help_deadline: Option<u64>,
        delivered_at: Option<u64>,
        done_seen: bool,
        last_window: u64,
    }

    #[derive(Default)]
    struct Model {
        tasks: BTreeMap<(String, String), TaskEntry>,
        counted: BTreeMap<u64, BTreeSet<String>>,
        /// Each agent's highest window counted.
        last: BTreeMap<String, u64>,
    }

    impl Model {
        fn count_in(&mut self, agent: &str, window: u64) -> bool {
            let last = self.last.entry(agent.to_string()).or_default();
            *last = (*last).max(window);
            self.counted.entry(window).or_default().insert(agent.to_string())
        }

        fn apply_claim(&mut self, agent: &str, claim: TaskClaim<'_>, bar: u64) -> ClaimEffect {
            let due = claim.beat_index + u64::from(claim.beats_left);
            let key = (agent.to_string(), claim.task_id.to_string());
            let entry = self.tasks.entry(key).or_insert(TaskEntry {
                deadline: due,
                deadline_window: due / bar,
                help_deadline: None,
                delivered_at: None,
                done_seen: false,
                last_window: claim.window,
            });
            let mut effect = ClaimEffect::default();
            if claim.kind == TaskClaimKind::Helping && entry.help_deadline.is_none() {
                entry.help_deadline = Some(due);
            }
            if matches!(claim.kind, TaskClaimKind::Delivering | TaskClaimKind::Done) && entry.delivered_at.is_none() {
                entry.delivered_at = Some(claim.beat_index);
                effect.on_time_review = claim.beat_index <= entry.deadline;
            }
            if claim.kind == TaskClaimKind::Done && !entry.done_seen {
                entry.done_seen = true;
                effect.help_fulfilled = entry.help_deadline.is_some_and(|h| claim.beat_index <= h);
            }
            entry.last_window = claim.window;
            effect
        }

        fn close(&mut self, window: u64, ttl: u64) -> Vec<String> {
            let overdue = self
                .tasks
                .iter()
                .filter(|(_, e)| e.deadline_window == window && e.delivered_at.is_none_or(|at| at > e.deadline))
                .map(|((a, t), _)| format!("{a}/{t}"))
                .collect();
            if let Some(oldest_kept) = window.checked_sub(ttl) {
                self.tasks.retain(|_, e| e.last_window >= oldest_kept);
            }
            self.counted.remove(&window);
            overdue
        }

        /// Agents kept after the close of `window`: with a task, or counted
        /// in one of the last windows.
        fn kept_agents(&self, window: u64) -> usize {
            self.last
                .iter()
                .filter(|&(agent, &last)| {
                    last + AGENT_KEEP_WINDOWS > window || self.tasks.keys().any(|(a, _)| a == agent)
                })
                .count()
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// agent, task (none for a claim without one), beat offset from the
        /// window start, beats_left, kind, window offset.
        Claim(u8, Option<u8>, u64, u32, u8, u8),
        Close,
        Checkpoint,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u8..6, proptest::option::weighted(0.8, 0u8..4), 0u64..4, 0u32..20, 0u8..4, 0u8..3)
                .prop_map(|(a, t, b, l, k, w)| Step::Claim(a, t, b, l, k, w)),
            2 => Just(Step::Close),
            1 => Just(Step::Checkpoint),
        ]
    }

    proptest! {
        /// The slab, its hash index and its lazy window indexes give what the
        /// plain model gives, through checkpoints too.
        #[test]
        fn the_roster_behaves_as_the_plain_rules(steps in proptest::collection::vec(step(), 1..200), ttl in 0u64..4) {
            const BAR: u64 = 4;
            let mut roster = Roster::default();
            let mut model = Model::default();
            let mut next_to_close = 0u64;
            for step in steps {
                match step {
                    Step::Claim(a, t, b, left, k, w) => {
                        let window = next_to_close + u64::from(w);
                        let agent = format!("agent-{a}");
                        let slot = roster.agent(&agent, u64::MAX).unwrap();
                        prop_assert_eq!(roster.count_in(slot, window), model.count_in(&agent, window));
                        if let Some(t) = t {
                            let task_id = format!("t{t}");
                            let claim = TaskClaim {
                                task_id: &task_id,
                                beat_index: window * BAR + b,
                                beats_left: left,
                                kind: [TaskClaimKind::Helping, TaskClaimKind::Delivering, TaskClaimKind::Done, TaskClaimKind::Other][k as usize],
                                window,
                            };
                            let got = roster.apply_task_claim(slot, claim, BAR, u64::MAX).unwrap();
                            prop_assert_eq!(got, model.apply_claim(&agent, claim, BAR));
                        }
                    }
                    Step::Close => {
                        let (count, first) = roster.close(next_to_close, ttl, BAR, 2);
                        let want = model.close(next_to_close, ttl);
                        prop_assert_eq!(count, want.len() as u64);
                        prop_assert_eq!(&first[..], &want[..want.len().min(2)]);
                        prop_assert_eq!(roster.task_count(), model.tasks.len());
                        prop_assert_eq!(roster.index.len(), model.kept_agents(next_to_close));
                        next_to_close += 1;
                    }
                    Step::Checkpoint => {
                        let bytes = postcard::to_stdvec(&roster).unwrap();
                        roster = postcard::from_bytes(&bytes).unwrap();
                    }
                }
            }
        }
    }

    /// A task claim in the tests below.
    fn task_claim(task_id: &str, beat_index: u64, beats_left: u32, kind: TaskClaimKind, window: u64) -> TaskClaim<'_> {
        TaskClaim {
            task_id,
            beat_index,
            beats_left,
            kind,
            window,
        }
    }

    #[test]
    fn a_checkpoint_holds_no_tags_and_reads_back_with_new_ones() {
        let mut roster = Roster::default();
        for (agent, task, beats_left) in [("a", "t1", 3), ("a", "t2", 9), ("b", "t1", 5)] {
            let slot = roster.agent(agent, u64::MAX).unwrap();
            let claim = task_claim(task, 1, beats_left, TaskClaimKind::Other, 0);
            roster.apply_task_claim(slot, claim, 4, u64::MAX).unwrap();
        }
        let bytes = postcard::to_stdvec(&roster).unwrap();
        let mut read: Roster = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_stdvec(&read).unwrap(), bytes);
        assert_eq!(read.task_count(), 3);
        // The tags are rebuilt with the new roster's hasher: a claim finds its task.
        let a = read.agent("a", u64::MAX).unwrap();
        let claim = task_claim("t2", 2, 0, TaskClaimKind::Delivering, 0);
        assert!(read.apply_task_claim(a, claim, 4, u64::MAX).unwrap().on_time_review);
        assert_eq!(read.task_count(), 3);
    }

    #[test]
    fn a_damaged_roster_is_refused_when_read() {
        let mut roster = Roster::default();
        for agent in ["a", "b"] {
            roster.agent(agent, u64::MAX).unwrap();
        }
        let read = |roster: &Roster| postcard::from_bytes::<Roster>(&postcard::to_stdvec(roster).unwrap());
        assert!(read(&roster).is_ok());
        // A free slot past the slab (found by the `checkpoint` fuzz target:
        // the next new agent indexed it), a live one, one listed twice.
        for free in [vec![64], vec![0], vec![2, 2]] {
            let mut spoiled = roster.clone();
            spoiled.slots.push(None);
            spoiled.free = free.clone();
            assert!(read(&spoiled).is_err(), "free slots {free:?}");
        }
        let mut spoiled = roster.clone();
        spoiled.slots[1].as_mut().unwrap().agent_id = "a".into();
        assert!(read(&spoiled).is_err(), "an agent twice");
    }

    #[test]
    fn a_task_dropped_at_the_close_of_its_deadline_window_is_overdue_there() {
        const BAR: u64 = 4;
        let mut roster = Roster::default();
        let a = roster.agent("a", u64::MAX).unwrap();
        // Due at beat 9 (window 2), last claimed in window 0: with a
        // time-to-live of 1, closing window 2 drops it, after counting it.
        let claim = task_claim("t", 1, 8, TaskClaimKind::Other, 0);
        roster.apply_task_claim(a, claim, BAR, u64::MAX).unwrap();
        assert_eq!(roster.close(0, 1, BAR, 5), (0, vec![]));
        assert_eq!(roster.close(1, 1, BAR, 5), (0, vec![]));
        assert_eq!(roster.close(2, 1, BAR, 5), (1, vec!["a/t".to_string()]));
        assert_eq!(roster.task_count(), 0);
        assert_eq!(roster.close(3, 1, BAR, 5), (0, vec![]));
    }

    #[test]
    fn an_agent_back_to_few_tasks_keeps_them_inside_its_record() {
        let mut roster = Roster::default();
        let a = roster.agent("a", u64::MAX).unwrap();
        // Nine tasks spill to the heap; one is claimed again later.
        for (task, window) in (0..=TASKS_INLINE).map(|t| (t, 0)).chain([(0, 1)]) {
            let task_id = format!("t{task}");
            roster
                .apply_task_claim(
                    a,
                    task_claim(&task_id, window * 4, 1, TaskClaimKind::Other, window),
                    4,
                    u64::MAX,
                )
                .unwrap();
        }
        assert!(roster.slots[a as usize].as_ref().unwrap().tasks.spilled());
        // With a time-to-live of 0, closing window 1 drops the tasks last claimed in window 0.
        roster.close(0, 0, 4, 5);
        roster.close(1, 0, 4, 5);
        let agent = roster.slots[a as usize].as_ref().unwrap();
        assert_eq!(agent.tasks.len(), 1);
        assert!(
            !agent.tasks.spilled() && !agent.tags.spilled(),
            "back inside the record"
        );
    }

    #[test]
    fn agents_are_forgotten_once_they_have_nothing_to_keep() {
        let mut roster = Roster::default();
        let a = roster.agent("a", u64::MAX).unwrap();
        assert!(roster.count_in(a, 0));
        assert!(!roster.count_in(a, 0));
        let claim = task_claim("t", 0, 1, TaskClaimKind::Other, 0);
        roster.apply_task_claim(a, claim, 4, u64::MAX).unwrap();
        for w in 0..=AGENT_KEEP_WINDOWS + 1 {
            roster.close(w, 1, 4, 5);
        }
        assert_eq!(roster.task_count(), 0);
        assert_eq!(roster.index.len(), 0, "forgotten once its task expired");
        assert_eq!(roster.free, [a]);
        assert_eq!(roster.agent("b", u64::MAX).unwrap(), a, "the slot is reused");
    }
}
