//! Catch-up of `run` against raw JetStream consumption, in one run on one machine:
//! `cargo run --release -p backbeat-processor --example catchup_bench -- [CLAIMS] [AGENTS] [ROUNDS]`.
//!
//! Starts a real nats-server (temporary store), stores CLAIMS claims (default
//! 1M) from AGENTS agents (default 10k) with their beats in
//! `BACKBEAT_EVENTS`, then times, on the same stored stream:
//! - raw: an async-nats ordered pull consumer reading every message (the floor);
//! - raw durable: a durable pull consumer configured as `run`'s (batch, acks every 1000);
//! - run: [`backbeat_processor::driver::run`] (what `backbeat-processor run`
//!   executes) from an empty checkpoint until it has folded the last event and
//!   published every report exactly once to `BACKBEAT_BARS`.
//!
//! The three are timed in ROUNDS (default 3) interleaved rounds, so that no
//! reader alone profits from a quiet moment or a warm store; each round's `run`
//! starts from an empty checkpoint and an empty `BACKBEAT_BARS`. The figure of
//! merit is the best raw seconds over the best run seconds (goal ≥ 0.8); the
//! medians are shown too. The CPU seconds of this process (every thread, not
//! nats-server's) show what `run` adds to a raw read.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use backbeat_processor::driver::RunConfig;
use backbeat_processor::metrics::Metrics;
use backbeat_processor::status::SharedStatus;
use backbeat_processor::FoldConfig;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_tests::bench::{cpu_seconds, read_stream_ordered};
use backbeat_tests::NatsServer;
use futures::StreamExt as _;

#[path = "common/generator.rs"]
mod generator;
use generator::{log_chunks, BAR};

const BATCH: usize = 1000;

/// Stores the generated log; returns the sequence of its last event.
async fn store_log(js: &jetstream::Context, claims: u64, agents: u64) -> anyhow::Result<u64> {
    let mut last_seq = 0;
    for chunk in log_chunks(claims, agents) {
        let mut acks = std::collections::VecDeque::new();
        for (seq, subject, payload) in chunk {
            acks.push_back(js.publish(subject, payload.into()).await?);
            if acks.len() >= 4096 {
                acks.pop_front().expect("not empty").await?;
            }
            last_seq = seq;
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(last_seq)
}

/// Reads every message with a durable pull consumer configured as `run`'s.
async fn raw_durable(js: &jetstream::Context) -> anyhow::Result<u64> {
    let stream = js.get_stream(EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw-durable".into()),
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending: 1_000_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut count = 0u64;
    let mut bytes = 0usize;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        count += 1;
        bytes += message.payload.len();
        let pending = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
        if pending == 0 || count.is_multiple_of(1000) {
            message
                .ack_with(AckKind::Ack)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if pending == 0 {
            break;
        }
    }
    std::hint::black_box(bytes);
    stream.delete_consumer("raw-durable").await?;
    Ok(count)
}

/// Runs the processor's driver from scratch until it has folded `last_seq`
/// and published `reports` reports; returns the reports it published.
async fn run_catch_up(client: async_nats::Client, name: String, last_seq: u64, reports: u64) -> anyhow::Result<u64> {
    let metrics = Metrics::new();
    let status = SharedStatus::default();
    let config = RunConfig {
        fold: FoldConfig::with_bar_length(BAR),
        name,
        clusters: Vec::new(),
        checkpoint_min_interval: Duration::from_millis(1000),
        checkpoint_interval: Duration::from_millis(5000),
        batch: BATCH,
        replicas: 1,
        ready_lag_max: 1000,
        lease_ttl: Duration::from_secs(10),
        history_every: 100,
        history_keep: 100,
        max_clusters: 1024,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(backbeat_processor::driver::run(
        client,
        config,
        metrics.clone(),
        status,
        async move {
            let _ = stop_rx.await;
        },
    ));
    // The figure is seconds; a 1 ms look at the counters costs nothing measurable.
    while (metrics.last_seq.get() as u64) < last_seq || metrics.reports_published.get() < reports {
        if driver.is_finished() {
            driver.await??;
            anyhow::bail!("the driver stopped early");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let published = metrics.reports_published.get();
    let _ = stop_tx.send(());
    driver.await??;
    Ok(published)
}

fn expected_reports(claims: u64, agents: u64) -> u64 {
    // Fold the same log in memory: the number of reports run must publish.
    let mut fold = backbeat_processor::Fold::new(FoldConfig::with_bar_length(BAR));
    let mut out = Vec::new();
    for chunk in log_chunks(claims, agents) {
        for (seq, subject, payload) in &chunk {
            fold.apply(*seq, subject, payload, &mut out);
        }
    }
    out.len() as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let claims = args.first().copied().unwrap_or(1_000_000);
    let agents = args.get(1).copied().unwrap_or(10_000);

    let server = NatsServer::start()?;
    let client = server.client().await?;
    let js = jetstream::new(client.clone());
    backbeat_service::streams::ensure_all_streams(&js, Default::default()).await?;
    let started = Instant::now();
    let last_seq = store_log(&js, claims, agents).await?;
    eprintln!("stored {last_seq} events in {:.1} s", started.elapsed().as_secs_f64());
    let reports = expected_reports(claims, agents);

    let rounds = args.get(2).copied().unwrap_or(3).max(1);
    const READERS: [&str; 3] = [
        "raw ordered consumer",
        "raw durable pull (run's settings)",
        "run: fold + publish reports",
    ];
    // Per reader: (seconds, client CPU seconds) of each round.
    let mut times: [Vec<(f64, f64)>; 3] = Default::default();
    for round in 0..rounds {
        let (started, cpu) = (Instant::now(), cpu_seconds("self"));
        let n = read_stream_ordered(&js, EVENTS_STREAM).await?;
        anyhow::ensure!(n == last_seq, "the ordered consumer read {n} of {last_seq} events");
        times[0].push((started.elapsed().as_secs_f64(), cpu_seconds("self") - cpu));

        let (started, cpu) = (Instant::now(), cpu_seconds("self"));
        let n = raw_durable(&js).await?;
        anyhow::ensure!(n == last_seq, "the durable consumer read {n} of {last_seq} events");
        times[1].push((started.elapsed().as_secs_f64(), cpu_seconds("self") - cpu));

        // An empty BACKBEAT_BARS (and its duplicate window) and a fresh name:
        // every round's run publishes every report.
        js.delete_stream(BARS_STREAM).await?;
        backbeat_service::streams::ensure_all_streams(&js, Default::default()).await?;
        let (started, cpu) = (Instant::now(), cpu_seconds("self"));
        let published = run_catch_up(client.clone(), format!("catchup-bench-{round}"), last_seq, reports).await?;
        times[2].push((started.elapsed().as_secs_f64(), cpu_seconds("self") - cpu));
        anyhow::ensure!(
            published == reports,
            "run published {published} reports, expected {reports}"
        );
        let mut bars = js.get_stream(BARS_STREAM).await?;
        anyhow::ensure!(
            bars.info().await?.state.messages == reports,
            "BACKBEAT_BARS holds other than {reports} reports"
        );
    }

    let best = |reader: &[(f64, f64)]| {
        reader
            .iter()
            .copied()
            .fold((f64::INFINITY, 0.0), |b, t| if t.0 < b.0 { t } else { b })
    };
    let median = |reader: &[(f64, f64)]| {
        let mut seconds: Vec<f64> = reader.iter().map(|t| t.0).collect();
        seconds.sort_by(f64::total_cmp);
        seconds[seconds.len() / 2]
    };
    let raw_best = best(&times[0]).0.min(best(&times[1]).0);
    let raw_median = median(&times[0]).min(median(&times[1]));
    println!("{claims} claims, {agents} agents, {last_seq} events, {reports} reports, L = {BAR}, {rounds} rounds");
    println!("| reader | best s | messages/s | raw best s / this best s | median s | client CPU s (best round) |");
    println!("|---|---|---|---|---|---|");
    for (what, reader) in READERS.iter().zip(&times) {
        let (seconds, cpu) = best(reader);
        println!(
            "| {what} | {seconds:.2} | {:.0} | {:.2} | {:.2} | {cpu:.2} |",
            last_seq as f64 / seconds,
            raw_best / seconds,
            median(reader)
        );
    }
    println!(
        "\ncatch-up ratio (raw best / run best) = {:.2}, of medians = {:.2} (goal >= 0.8)",
        raw_best / best(&times[2]).0,
        raw_median / median(&times[2])
    );
    Ok(())
}
