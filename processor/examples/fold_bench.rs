//! Pure fold throughput and memory: `cargo run --release -p backbeat-processor --example fold_bench -- [CLAIMS] [AGENTS]`.
//!
//! Generates a log of CLAIMS claims (default 10M) from AGENTS agents (default
//! 100k) with beats interleaved (L = 120, each agent claims about once a
//! window, tasks of a few windows, some failing), in chunks that are made
//! before the clock starts. Prints claims/s through `Fold::apply` and the peak
//! resident set size (VmHWM) of the process.

use std::time::{Duration, Instant};

use backbeat_processor::{Fold, FoldConfig};
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};

const CLUSTER: &str = "bench";
const BAR: u64 = 120;

struct Generator {
    agents: u64,
    claims_per_beat: u64,
    beat: u64,
    claim_in_beat: u64,
    next_agent: u64,
    seq: u64,
    rng: u64,
}

impl Generator {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn beat_payload(&self, index: u64) -> String {
        let ms = 1_700_000_000_000 + index * 500;
        format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{CLUSTER}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{ms:x}:0000:0001","deadline_at":"2023-11-14T22:13:20.500Z","tempo_bpm":120,"window_id":"{}"}}"#,
            is_downbeat(index, BAR),
            phase_of(index, BAR),
            window_id(CLUSTER, BAR, window_of(index, BAR))
        )
    }

    /// Fills `chunk` with events until it holds `claims` claims; returns claims added.
    fn fill(&mut self, chunk: &mut Vec<(u64, &'static str, Vec<u8>)>, claims: u64) -> u64 {
        let mut added = 0;
        while added < claims {
            if self.claim_in_beat == 0 {
                self.seq += 1;
                chunk.push((
                    self.seq,
                    "backbeat.bench.beat",
                    self.beat_payload(self.beat).into_bytes(),
                ));
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
            chunk.push((self.seq, "backbeat.bench.claim", payload.into_bytes()));
            added += 1;
            self.claim_in_beat += 1;
            if self.claim_in_beat == self.claims_per_beat {
                self.claim_in_beat = 0;
                self.beat += 1;
            }
        }
        added
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let total_claims = args.first().copied().unwrap_or(10_000_000);
    let agents = args.get(1).copied().unwrap_or(100_000);
    // About one claim per agent per window.
    let claims_per_beat = agents.div_ceil(BAR).max(1);
    let mut generator = Generator {
        agents,
        claims_per_beat,
        beat: 0,
        claim_in_beat: 0,
        next_agent: 0,
        seq: 0,
        rng: 0x9e37_79b9_7f4a_7c15,
    };
    let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
    let mut reports = Vec::new();
    let mut report_count = 0u64;
    let mut folded = Duration::ZERO;
    let mut done = 0u64;
    let mut chunk = Vec::with_capacity(200_000);
    let mut bytes = 0u64;
    while done < total_claims {
        chunk.clear();
        done += generator.fill(&mut chunk, (total_claims - done).min(100_000));
        bytes += chunk.iter().map(|(_, _, p)| p.len() as u64).sum::<u64>();
        let start = Instant::now();
        for (seq, subject, payload) in &chunk {
            fold.apply(*seq, subject, payload, &mut reports);
        }
        folded += start.elapsed();
        report_count += reports.len() as u64;
        reports.clear();
    }
    let rate = total_claims as f64 / folded.as_secs_f64();
    println!("| claims | agents | events | MB of payload | reports | fold time s | claims/s | MB/s | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {total_claims} | {agents} | {} | {:.0} | {report_count} | {:.2} | {:.0} | {:.0} | {:.0} |",
        generator.seq,
        bytes as f64 / 1e6,
        folded.as_secs_f64(),
        rate,
        bytes as f64 / 1e6 / folded.as_secs_f64(),
        peak_rss_mb()
    );
}
