//! Ingest benchmark: sustained accepted claims/s and p99 ack latency through
//! the gateway's NATS intake and its HTTP NDJSON batches, each as a ratio to a
//! raw async-nats JetStream publish of the same payloads (same headers, same
//! number of acks in flight) in the same run, on the same nats-server.
//!
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/backbeat-release cargo run --release -p backbeat-ingest --example ingest_bench -- [claims]
//! ```
//!
//! The server is a fresh nats-server with JetStream (file storage, a temporary
//! store). The gateway runs in this process on its own two connections, as the
//! binary does (intake and replies on one, JetStream publishes on the other);
//! the raw reference publishes on one connection from one task, as an agent
//! writing straight to JetStream would. The load generator shares the process.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_ingest::client::BeatNow;
use backbeat_ingest::gateway::{BatchReply, GatewayConfig, Reply, NDJSON_CONTENT_TYPE};
use backbeat_ingest::sim::Fleet;
use backbeat_schemas::names::{claim_msg_id, subject, SubjectKind};
use backbeat_schemas::validate_claim;
use backbeat_schemas::Phase;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt as _};

/// Acks (raw), requests (NATS intake) in flight.
const IN_FLIGHT: usize = 1024;
/// Lines per HTTP batch, and batches in flight.
const BATCH_LINES: usize = 1000;
const BATCHES_IN_FLIGHT: usize = 4;
/// Interleaved measurement rounds per path.
const ROUNDS: usize = 5;

struct Row {
    path: &'static str,
    claims: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    unit: &'static str,
}

impl Row {
    fn rate(&self) -> f64 {
        self.claims as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    latencies.sort_unstable();
    latencies[((latencies.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `start(item)` for every item with at most `in_flight` outstanding;
/// each future resolves to its own latency. Returns the latencies and the wall time.
async fn pipelined<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    in_flight: usize,
    mut start: F,
) -> (Vec<Duration>, Duration)
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut pending = FuturesUnordered::new();
    for item in items {
        pending.push(start(item));
        if pending.len() >= in_flight {
            latencies.push(pending.next().await.expect("a pending future"));
        }
    }
    while let Some(latency) = pending.next().await {
        latencies.push(latency);
    }
    (latencies, started.elapsed())
}

fn row(path: &'static str, claims: usize, mut latencies: Vec<Duration>, elapsed: Duration, unit: &'static str) -> Row {
    Row {
        path,
        claims,
        elapsed,
        p50: percentile(&mut latencies, 0.5),
        p99: percentile(&mut latencies, 0.99),
        unit,
    }
}

/// `n` distinct valid claims from the simulator's fleet.
fn payloads(n: usize) -> Vec<Bytes> {
    let mut fleet = Fleet::new(1000, 42);
    (0..n)
        .map(|i| {
            let beat = BeatNow {
                beat_index: 1000 + (i / 500) as u64,
                window_index: 0,
                window_id: String::new(),
                tempo_bpm: 120,
                phase: Phase::Execution,
                frame_hlc: None,
                free_running: false,
            };
            fleet.next_claim(&beat, 1_700_000_000_000 + i as u64)
        })
        .collect()
}

async fn raw(js: &jetstream::Context, cluster: &str, claims: &[Bytes]) -> Row {
    let claim_subject = subject(cluster, SubjectKind::Claim);
    let (latencies, elapsed) = pipelined(claims, IN_FLIGHT, |payload| {
        // The same work as the gateway's: validate, compute the message id.
        let claim = validate_claim(payload).expect("valid");
        let msg_id = claim_msg_id(
            cluster,
            &claim.agent_id,
            claim.task_id.as_deref(),
            claim.beat_index,
            &claim.hlc.to_string(),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        let publish = js.publish_with_headers(claim_subject.clone(), headers, payload.clone());
        let sent = Instant::now();
        async move {
            let ack = publish.await.expect("publish").await.expect("ack");
            assert!(!ack.duplicate);
            sent.elapsed()
        }
    })
    .await;
    row("raw JetStream publish", claims.len(), latencies, elapsed, "ack")
}

async fn nats_intake(client: &async_nats::Client, cluster: &str, claims: &[Bytes]) -> Row {
    let intake = subject(cluster, SubjectKind::Intake);
    let (latencies, elapsed) = pipelined(claims, IN_FLIGHT, |payload| {
        let request = client.request(intake.clone(), payload.clone());
        let sent = Instant::now();
        async move {
            let answer = request.await.expect("an answer");
            let reply: Reply = serde_json::from_slice(&answer.payload).expect("a reply");
            assert!(reply.ok && reply.duplicate == Some(false), "{reply:?}");
            sent.elapsed()
        }
    })
    .await;
    row(
        "gateway, NATS intake (request/reply)",
        claims.len(),
        latencies,
        elapsed,
        "reply",
    )
}

async fn http_batches(base: &str, cluster: &str, claims: &[Bytes]) -> Row {
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/clusters/{cluster}/claims");
    let (latencies, elapsed) = pipelined(claims.chunks(BATCH_LINES), BATCHES_IN_FLIGHT, |chunk| {
        let mut body = Vec::with_capacity(chunk.iter().map(|c| c.len() + 1).sum());
        for claim in chunk {
            body.extend_from_slice(claim);
            body.push(b'\n');
        }
        let request = http
            .post(&url)
            .header("content-type", NDJSON_CONTENT_TYPE)
            .body(body)
            .send();
        let lines = chunk.len() as u64;
        let sent = Instant::now();
        async move {
            let response = request.await.expect("HTTP answer");
            assert_eq!(response.status(), 202);
            let batch: BatchReply = response.json().await.expect("batch reply");
            assert_eq!(batch.accepted, lines, "every line accepted");
            sent.elapsed()
        }
    })
    .await;
    row(
        "gateway, HTTP NDJSON batches of 1000",
        claims.len(),
        latencies,
        elapsed,
        "batch",
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(250_000), |s| s.parse())?;
    let server = backbeat_tests::NatsServer::start()?;
    let client = server.client().await?;
    let js = jetstream::new(client.clone());
    let gateway_client = server.client().await?;
    let gateway_publish_client = server.client().await?;
    let gateway =
        backbeat_ingest::gateway::Gateway::start_with(gateway_client, gateway_publish_client, GatewayConfig::default())
            .await?;
    let (addr, _http) = backbeat_service::serve_http(
        "127.0.0.1:0",
        gateway.router(),
        futures::future::pending(),
        gateway.http_limits(),
    )
    .await?;
    let base = format!("http://{addr}");
    let claims = payloads(n);

    // Warm up each path (connections, stream files), then measure; the raw
    // reference is measured before and after the gateway runs and averaged.
    let warm = &claims[..2000.min(n)];
    raw(&js, "warm-raw", warm).await;
    nats_intake(&client, "warm-nats", warm).await;
    http_batches(&base, "warm-http", warm).await;

    // The machine is shared: paths are measured in interleaved rounds (raw,
    // NATS, HTTP, raw, …) and each path's median round is reported, so a burst
    // of outside load does not fall on one path alone.
    let mut raw_rows = Vec::new();
    let mut nats_rows = Vec::new();
    let mut http_rows = Vec::new();
    for round in 0..ROUNDS {
        let part = &claims[round * n / ROUNDS..(round + 1) * n / ROUNDS];
        raw_rows.push(raw(&js, &format!("raw{round}"), part).await);
        nats_rows.push(nats_intake(&client, &format!("nats{round}"), part).await);
        http_rows.push(http_batches(&base, &format!("http{round}"), part).await);
    }
    let median = |rows: &mut Vec<Row>| {
        rows.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        rows.remove(rows.len() / 2)
    };
    let raw_row = median(&mut raw_rows);
    let via_nats = median(&mut nats_rows);
    let via_http = median(&mut http_rows);
    let raw_rate = raw_row.rate();

    println!(
        "ingest benchmark: {ROUNDS} interleaved rounds of {} claims per path ({} bytes on average), median round shown; nats-server {}; {IN_FLIGHT} acks/requests in flight, {BATCHES_IN_FLIGHT} batches in flight",
        n / ROUNDS,
        claims.iter().map(|c| c.len()).sum::<usize>() / n,
        client.server_info().version,
    );
    println!();
    println!("| path | claims/s | ratio to raw | p50 | p99 (per) |");
    println!("|---|---:|---:|---:|---:|");
    for row in [&raw_row, &via_nats, &via_http] {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} ms | {:.2} ms ({}) |",
            row.path,
            row.rate(),
            row.rate() / raw_rate,
            row.p50.as_secs_f64() * 1000.0,
            row.p99.as_secs_f64() * 1000.0,
            row.unit
        );
    }
    println!();
    println!(
        "goals: NATS intake >= 0.70 of raw: {:.2}; HTTP batches >= 0.50 of raw: {:.2}",
        via_nats.rate() / raw_rate,
        via_http.rate() / raw_rate
    );
    gateway.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
