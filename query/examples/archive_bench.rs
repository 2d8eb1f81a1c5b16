//! Archiving: the events stream into Parquet by a `backbeat-query serve`
//! (the binary built beside this example) against a raw async-nats ordered
//! consume of the same stream, in one run on one machine, with the
//! server's memory along the way.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/backbeat-target-bench
//! cargo build --profile release-query -p backbeat-query --bin backbeat-query --examples
//! $CARGO_TARGET_DIR/release-query/examples/archive_bench [--claims 10000000] [--rounds 2]
//!     [--clusters 4] [--agents-per-cluster 5000]
//! ```
//!
//! Starts a real nats-server (temporary store) and stores the generated
//! history of `common/history.rs` (claims and beats in `BACKBEAT_EVENTS`,
//! each window's reports in `BACKBEAT_BARS`). Then, in `--rounds`
//! interleaved rounds:
//! - raw: an ordered consumer of `BACKBEAT_EVENTS` reading every message;
//! - archive: `serve --archive DIR --seal-interval-ms 1000` into a fresh
//!   directory (other flags at their defaults: 1M tail rows, 64k-row row
//!   groups), from its start until `/api/v1/status` says every event is
//!   archived (`_positions/BACKBEAT_EVENTS` at the last sequence); the
//!   archive's `claims` are then counted over SQL. Its `VmRSS` is read from
//!   `/proc` at every look (every 100 ms): the table gives it at the start,
//!   halfway and at the end, and the peak (`VmHWM`).
//!
//! The figure is claims/s archived over claims/s read raw (goal ≥ 0.8),
//! medians of the rounds; and the peak RSS (goal ≤ 500 MB).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_schemas::names::EVENTS_STREAM;
use backbeat_tests::bench::{cpu_seconds, read_stream_ordered};
use backbeat_tests::NatsServer;

#[path = "common/history.rs"]
mod history;
#[path = "common/serve.rs"]
mod serve;

use history::{History, Shape, BAR};
use serve::{flag, listed, load_average, median, rss_mb, ServeChild};

/// Stores the history; returns (claims, last event sequence).
async fn store(js: &jetstream::Context, shape: Shape) -> anyhow::Result<(u64, u64)> {
    let (mut claims, mut last_seq) = (0, 0);
    let mut acks = VecDeque::new();
    for window in History::new(shape) {
        for event in window.events {
            acks.push_back(js.publish(event.subject, event.payload.into()).await?);
            if acks.len() >= 4096 {
                acks.pop_front().expect("not empty").await?;
            }
            last_seq = event.seq;
        }
        for (cluster, report) in window.reports {
            acks.push_back(js.publish(format!("backbeat.{cluster}.bar"), report.into()).await?);
        }
        claims += window.claims;
    }
    for ack in acks {
        ack.await?;
    }
    Ok((claims, last_seq))
}

/// One archiving round.
struct Archived {
    seconds: f64,
    /// VmRSS at the first look, halfway, at the end; VmHWM at the end (MB).
    rss_start: f64,
    rss_middle: f64,
    rss_end: f64,
    rss_peak: f64,
    cpu_seconds: f64,
}

/// `serve` archiving the whole stream into a fresh directory under `dir`.
async fn archive(
    nats_url: &str,
    dir: &std::path::Path,
    round: usize,
    last_seq: u64,
    claims: u64,
) -> anyhow::Result<Archived> {
    let archive_dir = dir.join(format!("archive-{round}"));
    let archive_arg = archive_dir.to_str().expect("a UTF-8 path");
    let started = Instant::now();
    let server = ServeChild::start(
        nats_url,
        &["--archive", archive_arg, "--seal-interval-ms", "1000"],
        &dir.join(format!("serve-{round}.log")),
    )?;
    let (mut rss_start, mut rss_middle) = (None, None);
    let seconds = loop {
        let status = server.get_json("/api/v1/status").await?;
        let position = status["archive"]["positions"][EVENTS_STREAM].as_u64().unwrap_or(0);
        let (rss, _) = rss_mb(server.pid());
        rss_start.get_or_insert(rss);
        if position >= last_seq / 2 {
            rss_middle.get_or_insert(rss);
        }
        if position >= last_seq {
            break started.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "not archived after an hour:\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (rss_end, rss_peak) = rss_mb(server.pid());
    let cpu_seconds = cpu_seconds(&server.pid().to_string());
    let body = server.sql_json("SELECT count(*) FROM claims").await?;
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    anyhow::ensure!(
        value["rows"][0][0] == claims,
        "the archive holds {} claims, not {claims}",
        value["rows"][0][0]
    );
    server.stop()?;
    std::fs::remove_dir_all(&archive_dir)?;
    Ok(Archived {
        seconds,
        rss_start: rss_start.unwrap_or(0.0),
        rss_middle: rss_middle.unwrap_or(0.0),
        rss_end,
        rss_peak,
        cpu_seconds,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shape = Shape::from_flags();
    let rounds: usize = flag("--rounds", 2usize).max(1);
    let temporary = tempfile::Builder::new().prefix("backbeat-archive-bench-").tempdir()?;

    let nats = NatsServer::start()?;
    let js = jetstream::new(nats.client().await?);
    backbeat_service::streams::ensure_all_streams(&js, Default::default()).await?;
    let started = Instant::now();
    let (claims, last_seq) = store(&js, shape).await?;
    eprintln!(
        "stored {claims} claims ({last_seq} events) in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let load_before = load_average();
    let (mut raw, mut archived) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let read = read_stream_ordered(&js, EVENTS_STREAM).await?;
        anyhow::ensure!(
            read == last_seq,
            "the ordered consumer read {read} of {last_seq} events"
        );
        raw.push(started.elapsed().as_secs_f64());
        archived.push(archive(&nats.url(), temporary.path(), round, last_seq, claims).await?);
        eprintln!("round {} done", round + 1);
    }

    println!(
        "{claims} claims ({last_seq} events: claims and beats), {} clusters x {} agents, L = {BAR}, {rounds} rounds; \
         load average {load_before} before, {} after",
        shape.clusters,
        shape.agents_per_cluster,
        load_average()
    );
    let archive_seconds: Vec<f64> = archived.iter().map(|a| a.seconds).collect();
    let (raw_median, archive_median) = (median(&raw), median(&archive_seconds));
    println!("| reader | median s | claims/s | ratio to raw | rounds s |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw ordered consumer | {raw_median:.1} | {:.0} | 1.00 | {} |",
        claims as f64 / raw_median,
        listed(&raw, 1.0, 1)
    );
    println!(
        "| serve: tail + seal into Parquet | {archive_median:.1} | {:.0} | **{:.2}** | {} |",
        claims as f64 / archive_median,
        raw_median / archive_median,
        listed(&archive_seconds, 1.0, 1)
    );
    println!("\n| round | serve RSS start MB | middle MB | end MB | peak (VmHWM) MB | serve CPU s |");
    println!("|---|---|---|---|---|---|");
    for (round, a) in archived.iter().enumerate() {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            round + 1,
            a.rss_start,
            a.rss_middle,
            a.rss_end,
            a.rss_peak,
            a.cpu_seconds
        );
    }
    println!("\ngoals: archive / raw >= 0.8 (claims/s); peak RSS <= 500 MB");
    Ok(())
}
