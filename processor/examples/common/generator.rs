//! The benchmarks' generated log: one cluster, L = 120, beats interleaved with
//! claims (each agent claims about once a window, tasks of a few windows, some
//! failing), deterministic from a fixed seed.

// Each benchmark includes this file and uses a part of it.
#![allow(dead_code)]

use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};

pub const CLUSTER: &str = "bench";
pub const BAR: u64 = 120;
pub const BEAT_SUBJECT: &str = "backbeat.bench.beat";
pub const CLAIM_SUBJECT: &str = "backbeat.bench.claim";

pub struct Generator {
    agents: u64,
    claims_per_beat: u64,
    beat: u64,
    claim_in_beat: u64,
    next_agent: u64,
    /// Events made so far (= the sequence of the last one).
    pub seq: u64,
    rng: u64,
}

impl Generator {
    /// About one claim per agent per window.
    pub fn new(agents: u64) -> Self {
        Generator {
            agents,
            claims_per_beat: agents.div_ceil(BAR).max(1),
            beat: 0,
            claim_in_beat: 0,
            next_agent: 0,
            seq: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn beat_payload(&self, index: u64) -> String {
        let ms = 1_700_000_000_000 + index * 500;
        format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{CLUSTER}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{ms:x}:0000:0001","deadline_at":"2023-11-14T22:13:20.500Z","tempo_bpm":120,"window_id":"{}"}}"#,
            is_downbeat(index, BAR),
            phase_of(index, BAR),
            window_id(CLUSTER, BAR, window_of(index, BAR))
        )
    }

    /// Fills `chunk` with events until it holds `claims` claims; returns claims added.
    pub fn fill(&mut self, chunk: &mut Vec<(u64, &'static str, Vec<u8>)>, claims: u64) -> u64 {
        let mut added = 0;
        while added < claims {
            if self.claim_in_beat == 0 {
                self.seq += 1;
                chunk.push((self.seq, BEAT_SUBJECT, self.beat_payload(self.beat).into_bytes()));
            }
            let agent = self.next_agent % self.agents;
            self.next_agent += 1;
            let r = self.next_random();
            let window = self.beat / BAR;
            let task = (window / 3) ^ (agent & 7);
            let (state, kind) = match r % 20 {
                0 => (
                    "failed",
                    if r.is_multiple_of(3) {
                        "secret-rotation"
                    } else {
                        "build"
                    },
                ),
                1..=3 => ("reviewing", "build"),
                4..=5 => ("done", "build"),
                6 => ("helping", "review"),
                _ => ("executing", "build"),
            };
            let payload = format!(
                r#"{{"type":"backbeat.statusclaim.v1","agent_id":"agent-{agent}","task_id":"{kind}:{task}","beat_index":{},"state":"{state}","beats_left":{},"progress":0.5,"hlc":"{:x}:0000:00a1"}}"#,
                self.beat,
                r % 400,
                1_700_000_000_000 + self.beat * 500
            );
            self.seq += 1;
            chunk.push((self.seq, CLAIM_SUBJECT, payload.into_bytes()));
            added += 1;
            self.claim_in_beat += 1;
            if self.claim_in_beat == self.claims_per_beat {
                self.claim_in_beat = 0;
                self.beat += 1;
            }
        }
        added
    }

    /// Appends the beats that close every window still open (the log's end).
    pub fn close_open_windows(&mut self, chunk: &mut Vec<(u64, &'static str, Vec<u8>)>) {
        let end = (self.beat / BAR + 1) * BAR;
        let first = if self.claim_in_beat == 0 {
            self.beat
        } else {
            self.beat + 1
        };
        for index in first..=end {
            self.seq += 1;
            chunk.push((self.seq, BEAT_SUBJECT, self.beat_payload(index).into_bytes()));
        }
        self.beat = end + 1;
        self.claim_in_beat = 0;
    }
}

/// One generated event: `(seq, subject, payload)`.
pub type Event = (u64, &'static str, Vec<u8>);

/// The whole log of `claims` claims from `agents` agents, in chunks of at most
/// 100k claims (with their beats), ending with the beats that close every window.
pub fn log_chunks(claims: u64, agents: u64) -> impl Iterator<Item = Vec<Event>> {
    let mut generator = Generator::new(agents);
    let mut done = 0;
    let mut finished = false;
    std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let mut chunk = Vec::with_capacity(120_000);
        done += generator.fill(&mut chunk, (claims - done).min(100_000));
        if done >= claims {
            generator.close_open_windows(&mut chunk);
            finished = true;
        }
        Some(chunk)
    })
}
