//! The simulated fleet's behaviour, without I/O: each agent works through
//! tasks (planning → executing → reviewing → done), some help others, some
//! fail, some rotate secrets, some run over their promise. Seeded: one seed
//! gives the same sequence of claims for the same sequence of beats.

use backbeat_schemas::message::ClaimState;
use bytes::Bytes;

use crate::client::{Agent, BeatNow, ClaimDraft};
use crate::rng::SplitMix64;

/// Odds of the life cycle, per task (or per claim where it says so).
const IDLE_CHANCE: f64 = 0.08;
const HELP_CHANCE: f64 = 0.12;
const SECRET_ROTATION_CHANCE: f64 = 0.06;
const SECRET_ROTATION_FAIL_CHANCE: f64 = 0.25;
const FAIL_CHANCE: f64 = 0.04;
const OVERDUE_CHANCE: f64 = 0.12;
/// Per claim while executing: the agent is waiting or blocked for a moment.
const STALL_CHANCE: f64 = 0.05;
/// Promised task lengths, in beats.
const PROMISE_BEATS_MIN: u64 = 6;
const PROMISE_BEATS_MAX: u64 = 60;
const WORK_KINDS: [&str; 5] = ["build", "test", "deploy", "docs", "migrate"];

/// How a task will end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    OnTime,
    Overdue,
    /// Fails once this share of the work is done.
    Fail(f64),
}

#[derive(Debug, Clone)]
struct Task {
    id: String,
    helping: bool,
    started_beat: u64,
    promised_beats: u64,
    /// How long it really takes.
    actual_beats: u64,
    fate: Fate,
}

/// One simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    agent: Agent,
    rng: SplitMix64,
    task: Option<Task>,
    tasks_started: u64,
}

/// The fleet: agents take turns, round robin.
#[derive(Debug, Clone)]
pub struct Fleet {
    agents: Vec<SimAgent>,
    next: usize,
}

/// The id of simulated agent `index`.
pub fn agent_id(index: usize) -> String {
    format!("sim-{index:05}")
}

impl Fleet {
    pub fn new(agents: usize, seed: u64) -> Self {
        assert!(agents >= 1, "a fleet has at least one agent");
        let mut seeder = SplitMix64::new(seed);
        let agents = (0..agents)
            .map(|i| SimAgent {
                // HLC node ids are 16 bits; agents beyond that share node ids,
                // which HLC order tolerates (node only breaks ties).
                agent: Agent::new(agent_id(i), (i % 0x1_0000) as u16),
                rng: seeder.fork(),
                task: None,
                tasks_started: 0,
            })
            .collect();
        Fleet { agents, next: 0 }
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// The next agent's claim at `beat`, stamped with `wall_ms`.
    pub fn next_claim(&mut self, beat: &BeatNow, wall_ms: u64) -> Bytes {
        let fleet_len = self.agents.len();
        let index = self.next;
        self.next = (self.next + 1) % fleet_len;
        let agent = &mut self.agents[index];
        let draft = agent.draft(index, fleet_len, beat.beat_index);
        agent.agent.stamp(&draft, beat, wall_ms)
    }
}

impl SimAgent {
    /// What the agent says at `beat`; moves its task along.
    fn draft(&mut self, index: usize, fleet_len: usize, beat: u64) -> ClaimDraft {
        if self.task.is_none() {
            if self.rng.chance(IDLE_CHANCE) {
                return ClaimDraft::new(ClaimState::Idle);
            }
            self.task = Some(self.new_task(index, fleet_len, beat));
        }
        let task = self.task.as_ref().expect("a task was just set");
        let elapsed = beat.saturating_sub(task.started_beat);
        let done_share = (elapsed as f64 / task.actual_beats as f64).min(1.0);
        let beats_left = (task.started_beat + task.promised_beats).saturating_sub(beat);
        let beats_left = u32::try_from(beats_left).unwrap_or(u32::MAX);
        let state = match task.fate {
            Fate::Fail(at) if done_share >= at => ClaimState::Failed,
            _ if task.helping => {
                if done_share >= 1.0 {
                    ClaimState::Done
                } else {
                    ClaimState::Helping
                }
            }
            _ if elapsed == 0 || done_share < 0.15 => ClaimState::Planning,
            _ if done_share < 0.75 => {
                if self.rng.chance(STALL_CHANCE) {
                    if self.rng.chance(0.5) {
                        ClaimState::Waiting
                    } else {
                        ClaimState::Blocked
                    }
                } else {
                    ClaimState::Executing
                }
            }
            _ if done_share < 1.0 => ClaimState::Reviewing,
            _ => ClaimState::Done,
        };
        let mut draft = ClaimDraft::new(state)
            .task(task.id.clone())
            .beats_left(beats_left)
            .progress(if state == ClaimState::Done { 1.0 } else { done_share });
        match state {
            ClaimState::Failed => draft = draft.notes(format!("gave up after {elapsed} beats")),
            ClaimState::Blocked => draft = draft.notes("blocked on a dependency"),
            _ if task.fate == Fate::Overdue && beats_left == 0 && state != ClaimState::Done => {
                draft = draft.notes("running over the promise")
            }
            _ => {}
        }
        if matches!(state, ClaimState::Done | ClaimState::Failed) {
            self.task = None;
        }
        draft
    }

    fn new_task(&mut self, index: usize, fleet_len: usize, beat: u64) -> Task {
        self.tasks_started += 1;
        let n = self.tasks_started;
        let promised_beats = self.rng.range(PROMISE_BEATS_MIN, PROMISE_BEATS_MAX + 1);
        let (id, helping, fate) = if fleet_len > 1 && self.rng.chance(HELP_CHANCE) {
            let other = (index + 1 + self.rng.range(0, fleet_len as u64 - 1) as usize) % fleet_len;
            (format!("help:{}-{n}", agent_id(other)), true, self.fate(FAIL_CHANCE))
        } else if self.rng.chance(SECRET_ROTATION_CHANCE) {
            (
                format!("secret-rotation:{}-{n}", agent_id(index)),
                false,
                self.fate(SECRET_ROTATION_FAIL_CHANCE),
            )
        } else {
            let kind = WORK_KINDS[self.rng.range(0, WORK_KINDS.len() as u64) as usize];
            (format!("{kind}:{}-{n}", agent_id(index)), false, self.fate(FAIL_CHANCE))
        };
        let actual_beats = match fate {
            // Done a little early: 60-100 % of the promise.
            Fate::OnTime | Fate::Fail(_) => (promised_beats * self.rng.range(60, 101) / 100).max(1),
            Fate::Overdue => promised_beats * self.rng.range(150, 301) / 100,
        };
        Task {
            id,
            helping,
            started_beat: beat,
            promised_beats,
            actual_beats,
            fate,
        }
    }

    fn fate(&mut self, fail_chance: f64) -> Fate {
        if self.rng.chance(fail_chance) {
            Fate::Fail(0.2 + 0.7 * self.rng.next_f64())
        } else if self.rng.chance(OVERDUE_CHANCE) {
            Fate::Overdue
        } else {
            Fate::OnTime
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use backbeat_schemas::validate_claim;

    fn beat(index: u64) -> BeatNow {
        BeatNow {
            beat_index: index,
            window_index: index / 120,
            window_id: String::new(),
            tempo_bpm: 120,
            phase: backbeat_schemas::window::phase_of(index, 120),
            frame_hlc: None,
            free_running: false,
        }
    }

    fn run(seed: u64) -> Vec<Bytes> {
        let mut fleet = Fleet::new(50, seed);
        let mut claims = Vec::new();
        for b in 0..2_000u64 {
            for _ in 0..5 {
                claims.push(fleet.next_claim(&beat(b), 1_700_000_000_000 + b * 500));
            }
        }
        claims
    }

    #[test]
    fn a_seed_reproduces_the_claims_and_every_claim_is_valid() {
        let claims = run(7);
        assert_eq!(claims, run(7), "seed 7 reproduces");
        assert_ne!(claims, run(8));
        let mut states = BTreeMap::new();
        let mut kinds = BTreeMap::new();
        let mut overdue_notes = 0;
        for bytes in &claims {
            let claim = validate_claim(bytes).unwrap_or_else(|r| panic!("{r:?}: {}", String::from_utf8_lossy(bytes)));
            *states.entry(claim.state.as_str()).or_insert(0u32) += 1;
            if let Some(kind) = claim.task_kind() {
                *kinds.entry(kind.to_string()).or_insert(0u32) += 1;
            }
            overdue_notes += u32::from(claim.notes.as_deref() == Some("running over the promise"));
        }
        // The whole life cycle shows up, with helping, failures, secret rotations and overdue work.
        for state in ClaimState::ALL {
            assert!(states.contains_key(state.as_str()), "no {state} claim: {states:?}");
        }
        for kind in ["build", "help", "secret-rotation"] {
            assert!(kinds.contains_key(kind), "no {kind} task: {kinds:?}");
        }
        assert!(overdue_notes > 0);
    }
}
