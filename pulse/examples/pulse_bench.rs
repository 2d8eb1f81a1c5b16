//! Pulse benchmark: a single-node pulse (in this process, on its own emitter
//! thread) against a real nats-server on loopback, at 120 and 600 BPM.
//!
//! For every beat a core-NATS subscriber records the schedule time and the
//! publish time the pulse put in the headers (`Backbeat-Due-At-Us`,
//! `Backbeat-Published-At-Us`) and its own receive time. Printed per tempo:
//! publish jitter (published − scheduled) p50/p95/p99/max, delivery latency
//! to the subscriber (received − published) p50/p95/p99, and the last beat's
//! offset from a schedule the benchmark computes itself (the first beat's due
//! time plus n intervals): the proof that sleep error does not accumulate. The
//! reference, measured on the same server *during* each tempo's run (so under
//! the same load): raw async-nats JetStream publish round trips (publish, await
//! the ack), one every 10 ms, from a client of the benchmark's own.
//!
//! Run: `cargo run --release -p backbeat-pulse --example pulse_bench [-- --seconds 60]`

use std::time::{SystemTime, UNIX_EPOCH};

use backbeat_pulse::config::Config;
use backbeat_pulse::publisher::{DUE_AT_US_HEADER, PUBLISHED_AT_US_HEADER};
use backbeat_pulse::schedule::interval_us;
use backbeat_tests::{free_port, NatsServer};
use bytes::Bytes;
use clap::Parser as _;
use futures::StreamExt as _;

/// Beats right after the node becomes leader are not measured (start-up).
const WARMUP_BEATS: usize = 2;
/// Pause between two raw JetStream publishes of the reference.
const REFERENCE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The `q`-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    assert!(!sorted.is_empty(), "no samples");
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(us: i64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

struct BeatSample {
    beat_index: u64,
    due_us: i64,
    published_us: i64,
    received_us: i64,
}

struct TempoResult {
    bpm: u32,
    beats: usize,
    jitter_sorted: Vec<i64>,
    delivery_sorted: Vec<i64>,
    last_offset_us: i64,
    gaps: u64,
    reference_sorted: Vec<i64>,
}

fn header_i64(message: &async_nats::Message, name: &str) -> Option<i64> {
    message.headers.as_ref()?.get(name)?.as_str().parse().ok()
}

async fn run_tempo(nats: &NatsServer, bpm: u32, seconds: u64) -> anyhow::Result<TempoResult> {
    let cluster = format!("bench{bpm}");
    let data_dir = tempfile::Builder::new().prefix("backbeat-pulse-bench-").tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = Config::parse_from([
        "backbeat-pulse".to_string(),
        "--node-id=1".into(),
        format!("--peers=1={listen}"),
        format!("--listen={listen}"),
        format!("--data-dir={}", data_dir.path().display()),
        format!("--nats={}", nats.url()),
        format!("--cluster={cluster}"),
        format!("--bpm={bpm}"),
        "--bar-length=120".into(),
    ]);
    let settings = config.validate()?;

    // The subscriber runs on a thread and runtime of its own, as a separate
    // consumer process would: its connection task and its loop share that thread.
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let subscriber = {
        let url = nats.url();
        let subject = format!("backbeat.{cluster}.beat");
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(subscribe(url, subject, seconds, subscribed_tx))
        })
    };
    subscribed_rx.await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(backbeat_pulse::node::run_until(settings, async {
        let _ = stop_rx.await;
    }));
    let (reference_stop_tx, reference_stop_rx) = tokio::sync::watch::channel(false);
    let reference = tokio::spawn(reference(nats.client().await?, bpm, reference_stop_rx));

    let samples = tokio::task::spawn_blocking(move || subscriber.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the subscriber thread panicked"))??;
    let _ = stop_tx.send(());
    let _ = reference_stop_tx.send(true);
    node.await??;
    let mut reference_sorted = reference.await??;
    reference_sorted.sort_unstable();

    let measured = &samples[WARMUP_BEATS..];
    let first = &measured[0];
    let last = measured.last().expect("beats measured");
    let interval = interval_us(bpm);
    let mut jitter: Vec<i64> = measured.iter().map(|s| s.published_us - s.due_us).collect();
    let mut delivery: Vec<i64> = measured.iter().map(|s| s.received_us - s.published_us).collect();
    jitter.sort_unstable();
    delivery.sort_unstable();
    // The benchmark's own schedule: the first measured beat's due time plus whole intervals.
    let own_schedule_us = first.due_us + (last.beat_index - first.beat_index) as i64 * interval;
    let gaps = measured.windows(2).map(|w| w[1].beat_index - w[0].beat_index - 1).sum();
    Ok(TempoResult {
        bpm,
        beats: measured.len(),
        jitter_sorted: jitter,
        delivery_sorted: delivery,
        last_offset_us: last.published_us - own_schedule_us,
        gaps,
        reference_sorted,
    })
}

/// Records every beat on `subject` until `seconds` after the warm-up.
async fn subscribe(
    url: String,
    subject: String,
    seconds: u64,
    subscribed: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Vec<BeatSample>> {
    let client = async_nats::connect(url).await?;
    let mut subscription = client.subscribe(subject).await?;
    client.flush().await?;
    let _ = subscribed.send(());
    let mut samples = Vec::new();
    let mut end_us = None;
    while let Some(message) = subscription.next().await {
        let received_us = now_us();
        let frame: backbeat_schemas::message::BeatFrame = serde_json::from_slice(&message.payload)?;
        let (Some(due_us), Some(published_us)) = (
            header_i64(&message, DUE_AT_US_HEADER),
            header_i64(&message, PUBLISHED_AT_US_HEADER),
        ) else {
            anyhow::bail!("beat {} lacks the timing headers", frame.beat_index);
        };
        samples.push(BeatSample {
            beat_index: frame.beat_index,
            due_us,
            published_us,
            received_us,
        });
        if samples.len() == WARMUP_BEATS + 1 {
            end_us = Some(received_us + seconds as i64 * 1_000_000);
        }
        if end_us.is_some_and(|end| received_us >= end) {
            break;
        }
    }
    Ok(samples)
}

/// Raw async-nats JetStream publish round trips (publish, await the ack) on the
/// same server, one every [`REFERENCE_PAUSE`], until `stop`.
async fn reference(
    client: async_nats::Client,
    bpm: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<i64>> {
    let js = async_nats::jetstream::new(client);
    let subject = format!("bench.reference.{bpm}");
    js.create_stream(async_nats::jetstream::stream::Config {
        name: format!("BENCH_REFERENCE_{bpm}"),
        subjects: vec![subject.clone()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; 300]);
    let mut round_trips = Vec::new();
    while !*stop.borrow() {
        let start = now_us();
        js.publish(subject.clone(), payload.clone()).await?.await?;
        round_trips.push(now_us() - start);
        tokio::select! {
            _ = tokio::time::sleep(REFERENCE_PAUSE) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(round_trips)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(60),
        None => 60,
    };
    let nats = NatsServer::start()?;
    let mut results = Vec::new();
    for bpm in [120, 600] {
        eprintln!("measuring {bpm} BPM for {seconds} s …");
        results.push(run_tempo(&nats, bpm, seconds).await?);
    }

    println!("\npulse benchmark: single node, loopback nats-server, {seconds} s per tempo (times in ms)\n");
    println!("| tempo | beats | gaps | jitter p50 | jitter p95 | jitter p99 | jitter max | delivery p50 | delivery p95 | delivery p99 | last beat offset | reference JS RTT p50 | p95 | p99 | delivery p95 / RTT p95 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        let delivery_p95 = quantile(&r.delivery_sorted, 0.95);
        let reference_p95 = quantile(&r.reference_sorted, 0.95);
        println!(
            "| {} BPM | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            r.bpm,
            r.beats,
            r.gaps,
            ms(quantile(&r.jitter_sorted, 0.5)),
            ms(quantile(&r.jitter_sorted, 0.95)),
            ms(quantile(&r.jitter_sorted, 0.99)),
            ms(*r.jitter_sorted.last().unwrap()),
            ms(quantile(&r.delivery_sorted, 0.5)),
            ms(delivery_p95),
            ms(quantile(&r.delivery_sorted, 0.99)),
            ms(r.last_offset_us),
            ms(quantile(&r.reference_sorted, 0.5)),
            ms(reference_p95),
            ms(quantile(&r.reference_sorted, 0.99)),
            delivery_p95 as f64 / reference_p95.max(1) as f64,
        );
    }
    println!("\ngoals: jitter p95 <= 1 ms, delivery p95 <= 2 ms, last beat offset <= 1 ms");
    println!("reference: raw async-nats JetStream publish round trip (publish + ack), measured during each run");
    Ok(())
}
