//! Pure fold throughput and memory: `cargo run --release -p backbeat-processor --example fold_bench -- [CLAIMS] [AGENTS] [--write-log FILE]`.
//!
//! Generates a log of CLAIMS claims (default 10M) from AGENTS agents (default
//! 100k) with beats interleaved (L = 120, each agent claims about once a
//! window, tasks of a few windows, some failing), in chunks that are made
//! before the clock starts. Prints claims/s through `Fold::apply`, the time
//! SPEC §5 validation alone (`backbeat-schemas`) takes on the same events (a
//! floor under the fold), and the peak resident set size (VmHWM) of the process.

use std::io::Write as _;
use std::time::{Duration, Instant};

use backbeat_processor::{Fold, FoldConfig};

#[path = "common/generator.rs"]
mod generator;
use backbeat_schemas::{validate_beat, validate_claim};
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
    let args: Vec<u64> = all
        .iter()
        .filter(|a| a.parse::<u64>().is_ok())
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let total_claims = args.first().copied().unwrap_or(10_000_000);
    let agents = args.get(1).copied().unwrap_or(100_000);
    let mut generator = Generator::new(agents);
    let mut fold = Fold::new(FoldConfig::with_bar_length(BAR));
    let mut reports = Vec::new();
    let mut report_count = 0u64;
    let mut folded = Duration::ZERO;
    let mut validated = Duration::ZERO;
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
        if let Some(log) = &mut log {
            for (seq, subject, payload) in &chunk {
                writeln!(log, "{}", backbeat_schemas::format_line(*seq, subject, payload)).expect("writing the log");
            }
        }
        report_count += reports.len() as u64;
        reports.clear();
        // The floor under the fold: SPEC §5 validation alone (backbeat-schemas), on the same events.
        let start = Instant::now();
        for (_, subject, payload) in &chunk {
            if *subject == BEAT_SUBJECT {
                std::hint::black_box(validate_beat(payload, CLUSTER, BAR).is_ok());
            } else {
                std::hint::black_box(validate_claim(payload).is_ok());
            }
        }
        validated += start.elapsed();
    }
    let rate = total_claims as f64 / folded.as_secs_f64();
    // Peak RSS before the state is serialized below (that buffer is the bench's, not the fold's).
    let peak_rss_mb = peak_rss_mb();
    println!(
        "| claims | agents | events | MB of payload | reports | fold time s | claims/s | MB/s | \
         validation alone s | validation share | state MB | peak RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {total_claims} | {agents} | {} | {:.0} | {report_count} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0}% | {:.1} | {:.0} |",
        generator.seq,
        bytes as f64 / 1e6,
        folded.as_secs_f64(),
        rate,
        bytes as f64 / 1e6 / folded.as_secs_f64(),
        validated.as_secs_f64(),
        100.0 * validated.as_secs_f64() / folded.as_secs_f64(),
        // The fold's own state, as a checkpoint holds it: what must stay flat.
        fold.to_checkpoint().len() as f64 / 1e6,
        peak_rss_mb
    );
}
