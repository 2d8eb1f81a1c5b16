//! Validation throughput: `cargo run --release -p backbeat-schemas --example validate_bench -- [DOCUMENTS] [ROUNDS]`.
//!
//! Makes DOCUMENTS (default 100k) realistic status claims of about 230 bytes
//! (and as many beat frames) before the clock starts, then reads them all
//! ROUNDS times (default 20) with each reader and prints documents per second.
//! The reference, measured in the same run on the same bytes, is
//! `serde_json::from_slice` into a `serde_json::Value` (a tree, no SPEC rule
//! checked); the ratio is the reader's rate over the reference's. The tree of
//! `backbeat_schemas::json::parse` (what validation used to build) is shown too.

use std::hint::black_box;
use std::time::Instant;

use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use backbeat_schemas::{json, validate_beat, validate_claim};

const CLUSTER: &str = "bench";
const BAR: u64 = 120;

/// xorshift64*: deterministic, no dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn claims(count: usize) -> Vec<Vec<u8>> {
    const STATES: [&str; 6] = ["executing", "planning", "reviewing", "helping", "done", "waiting"];
    const NOTES: [&str; 4] = [
        "fetching inputs",
        "waiting on review from agent-17",
        "rotating the staging secret",
        "tests green, opening the pull request",
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15;
    (0..count as u64)
        .map(|i| {
            let r = next_random(&mut rng);
            let beat = 1_000_000 + i / 800;
            format!(
                r#"{{"type":"backbeat.statusclaim.v1","agent_id":"worker-{:05}.eu-west","task_id":"secret-rotation:{}","beat_index":{beat},"state":"{}","beats_left":{},"progress":0.{},"notes":"{}","hlc":"{:x}:{:04x}:00a1"}}"#,
                r % 100_000,
                r % 5000,
                STATES[(r % 6) as usize],
                r % 40,
                r % 100,
                NOTES[(r % 4) as usize],
                1_700_000_000_000 + beat * 500,
                r % 3,
            )
            .into_bytes()
        })
        .collect()
}

fn beats(count: usize) -> Vec<Vec<u8>> {
    (0..count as u64)
        .map(|index| {
            let ms = 1_700_000_000_000 + index * 500;
            format!(
                r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{CLUSTER}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{ms:x}:0000:0001","deadline_at":"2023-11-14T22:13:20.500Z","tempo_bpm":120,"window_id":"{}"}}"#,
                is_downbeat(index, BAR),
                phase_of(index, BAR),
                window_id(CLUSTER, BAR, window_of(index, BAR))
            )
            .into_bytes()
        })
        .collect()
}

/// Documents per second of `read` over `docs`, `rounds` times (the best round).
fn rate(docs: &[Vec<u8>], rounds: usize, read: impl Fn(&[u8]) -> bool) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let start = Instant::now();
        for doc in docs {
            assert!(black_box(read(black_box(doc))), "{}", String::from_utf8_lossy(doc));
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    docs.len() as f64 / best
}

/// What a table row measures: the documents' kind, the documents, the reader's name, the reader.
type Row<'d> = (&'static str, &'d [Vec<u8>], &'static str, &'d dyn Fn(&[u8]) -> bool);

fn serde_tree(doc: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(doc).is_ok()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: validate_bench [DOCUMENTS (100000)] [ROUNDS (20)]");
        println!("Prints documents/s of validate_claim, validate_beat and json::parse,");
        println!("each with its ratio to serde_json::from_slice into a Value on the same documents.");
        return;
    }
    let count: usize = args
        .first()
        .map_or(100_000, |a| a.parse().expect("DOCUMENTS is a number"));
    let rounds: usize = args.get(1).map_or(20, |a| a.parse().expect("ROUNDS is a number"));
    let claims = claims(count);
    let beats = beats(count);
    let mean_bytes = |docs: &[Vec<u8>]| docs.iter().map(Vec::len).sum::<usize>() as f64 / docs.len() as f64;

    println!("| documents | mean bytes | reader | documents/s | reference (serde_json Value) /s | ratio |");
    println!("|---|---|---|---|---|---|");
    let rows: [Row; 4] = [
        ("claims", &claims, "validate_claim", &|d| validate_claim(d).is_ok()),
        ("claims", &claims, "json::parse (tree)", &|d| json::parse(d).is_ok()),
        ("beats", &beats, "validate_beat", &|d| {
            validate_beat(d, CLUSTER, BAR).is_ok()
        }),
        ("beats", &beats, "json::parse (tree)", &|d| json::parse(d).is_ok()),
    ];
    for (kind, docs, reader, read) in rows {
        let ours = rate(docs, rounds, read);
        let reference = rate(docs, rounds, serde_tree);
        println!(
            "| {} {kind} | {:.0} | {reader} | {:.2}M | {:.2}M | {:.2} |",
            docs.len(),
            mean_bytes(docs),
            ours / 1e6,
            reference / 1e6,
            ours / reference
        );
    }
}
