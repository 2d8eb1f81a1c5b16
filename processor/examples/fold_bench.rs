//! Pure fold throughput and memory: `cargo run --release -p backbeat-processor --example fold_bench -- [CLAIMS] [AGENTS] [--rounds N] [--write-log FILE]`.
//!
//! Generates a log of CLAIMS claims (default 10M) from AGENTS agents (default
//! 100k) with beats interleaved (L = 120, each agent claims about once a
//! window, tasks of a few windows, some failing), in chunks that are made
//! before the clock starts. Prints claims/s through `Fold::apply`, the time
//! SPEC §5 validation alone (`backbeat-schemas`) takes on the same events (a
//! floor under the fold), and the peak resident set size (VmHWM) of the process.
//! The reference is this machine's memory latency, measured in the same run: a
//! large fleet's state is not in cache, so a claim costs a few loads from memory.
//! `--rounds N` folds the same log N times, each from an empty state, and
//! reports the median round (this machine's speed varies from run to run).

use std::io::Write as _;
use std::time::{Duration, Instant};

use backbeat_processor::{Fold, FoldConfig};

#[path = "common/generator.rs"]
mod generator;
use backbeat_schemas::window::WindowIdCache;
use backbeat_schemas::{validate_beat_tick, validate_claim};
use generator::{Generator, BAR, BEAT_SUBJECT, CLUSTER};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Nanoseconds per load when each load's address comes from the one before,
/// over `mb` MB in random order: what the fold pays for a claim whose agent's
/// state is not in cache (the reference for the fold's time per claim).
fn dependent_load_ns(mb: usize) -> f64 {
    let lines = mb * 1024 * 1024 / 64;
    // A random cycle through the lines (Sattolo's algorithm, xorshift64).
    let mut order: Vec<usize> = (0..lines).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    let mut next = vec![0usize; lines * 8];
    for k in 0..lines {
        next[order[k] * 8] = order[(k + 1) % lines] * 8;
    }
    let steps = 2_000_000;
    let mut at = 0;
    let start = Instant::now();
    for _ in 0..steps {
        at = next[at];
    }
    std::hint::black_box(at);
    start.elapsed().as_nanos() as f64 / steps as f64
}

/// One fold of the generated log, from an empty state.
struct Round {
    fold: Fold,
    events: u64,
    bytes: u64,
    reports: u64,
    folded: Duration,
    validated: Duration,
}

/// Generates the log chunk by chunk (untimed), folds each chunk (timed), and
/// times SPEC §5 validation alone on it; writes it to `log` when given.
fn fold_once(total_claims: u64, agents: u64, mut log: Option<&mut std::io::BufWriter<std::fs::File>>) -> Round {
    let mut generator = Generator::new(agents);
    let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
    let mut reports = Vec::new();
    let mut report_count = 0u64;
    let mut folded = Duration::ZERO;
    let mut validated = Duration::ZERO;
    let mut done = 0u64;
    let mut chunk = Vec::with_capacity(200_000);
    let mut bytes = 0u64;
    let mut window_ids = WindowIdCache::default();
    while done < total_claims {
        chunk.clear();
        done += generator.fill(&mut chunk, (total_claims - done).min(100_000));
        bytes += chunk.iter().map(|(_, _, p)| p.len() as u64).sum::<u64>();
        let start = Instant::now();
        for (seq, subject, payload) in &chunk {
            fold.apply(*seq, subject, payload, &mut reports);
        }
        folded += start.elapsed();
        if let Some(log) = log.as_mut() {
            for (seq, subject, payload) in &chunk {
                writeln!(log, "{}", backbeat_schemas::format_line(*seq, subject, payload)).expect("writing the log");
            }
        }
        report_count += reports.len() as u64;
        reports.clear();
        // The floor under the fold: SPEC §5 validation alone (backbeat-schemas), on
        // the same events, keeping the last window id as the fold does.
        let start = Instant::now();
        for (_, subject, payload) in &chunk {
            if *subject == BEAT_SUBJECT {
                std::hint::black_box(validate_beat_tick(payload, CLUSTER, BAR, &mut window_ids).is_ok());
            } else {
                std::hint::black_box(validate_claim(payload).is_ok());
            }
        }
        validated += start.elapsed();
    }
    Round {
        fold,
        events: generator.seq,
        bytes,
        reports: report_count,
        folded,
        validated,
    }
}

fn main() {
    // `--write-log FILE`: also write the generated log there (SPEC §7), e.g. to
    // time `backbeat-processor fold --bar-length 120 --log FILE` on it.
    let all: Vec<String> = std::env::args().skip(1).collect();
    let log_path = all
        .iter()
        .position(|a| a == "--write-log")
        .map(|i| all.get(i + 1).expect("--write-log FILE").clone());
    let mut log = log_path
        .map(|path| std::io::BufWriter::new(std::fs::File::create(&path).unwrap_or_else(|e| panic!("{path}: {e}"))));
    let rounds = all
        .iter()
        .position(|a| a == "--rounds")
        .map_or(1, |i| {
            all.get(i + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .expect("--rounds N")
        })
        .max(1);
    // The numbers that are not an option's value.
    let args: Vec<u64> = all
        .iter()
        .enumerate()
        .filter(|(i, a)| a.parse::<u64>().is_ok() && (*i == 0 || all[i - 1] != "--rounds"))
        .map(|(_, a)| a.parse().expect("numbers"))
        .collect();
    let total_claims = args.first().copied().unwrap_or(10_000_000);
    let agents = args.get(1).copied().unwrap_or(100_000);
    let mut round_rates = Vec::new();
    let mut last = None;
    for _ in 0..rounds {
        // The last round's state goes before the next is made (peak RSS is one fold's).
        drop(last.take());
        let round = fold_once(total_claims, agents, log.as_mut());
        // The log is written once.
        log = None;
        round_rates.push(total_claims as f64 / round.folded.as_secs_f64());
        last = Some(round);
    }
    let round = last.expect("at least one round");
    let mut sorted = round_rates.clone();
    sorted.sort_by(f64::total_cmp);
    let rate = sorted[sorted.len() / 2];
    // Peak RSS before the state is serialized below (that buffer is the bench's, not the fold's).
    let peak_rss_mb = peak_rss_mb();
    let (near, far) = (dependent_load_ns(1), dependent_load_ns(64));
    let per_claim_ns = 1e9 / rate;
    println!(
        "reference: a dependent load takes {near:.0} ns over 1 MB and {far:.0} ns over 64 MB on this machine; \
         a claim took {per_claim_ns:.0} ns = {:.1} loads from memory",
        per_claim_ns / far
    );
    println!(
        "| claims | agents | events | MB of payload | reports | fold time s | claims/s | MB/s | \
         validation alone s | validation share | state MB | peak RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {total_claims} | {agents} | {} | {:.0} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0}% | {:.1} | {:.0} |",
        round.events,
        round.bytes as f64 / 1e6,
        round.reports,
        total_claims as f64 / rate,
        rate,
        round.bytes as f64 / 1e6 * rate / total_claims as f64,
        round.validated.as_secs_f64(),
        100.0 * round.validated.as_secs_f64() * rate / total_claims as f64,
        // The fold's own state, as a checkpoint holds it: what must stay flat.
        round.fold.to_checkpoint().len() as f64 / 1e6,
        peak_rss_mb
    );
    if rounds > 1 {
        let rates: Vec<String> = round_rates.iter().map(|r| format!("{:.2}M", r / 1e6)).collect();
        println!(
            "claims/s of each round: {} (the table gives the median; of an even count, the higher middle one)",
            rates.join(", ")
        );
    }
}
