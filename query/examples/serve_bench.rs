//! The query service's front ends, in one run on one machine: the same
//! queries through the engine alone, HTTP JSON and pg-wire; 64 concurrent
//! psycopg connections; and a BarReport's freshness (its publish to its
//! visibility in SQL) against raw JetStream delivery.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/backbeat-target-bench
//! cargo build --profile release-query -p backbeat-query --bin backbeat-query --examples
//! $CARGO_TARGET_DIR/release-query/examples/serve_bench [--archive DIR] [--claims 10000000]
//!     [--rounds 5] [--connections 64] [--pg-rounds 5] [--queries-per-round 20] [--fresh-samples 200]
//! ```
//!
//! The archive is `query_bench`'s (generated the same way when `--archive`
//! is absent or empty). A real nats-server (temporary store) and a
//! `backbeat-query serve` child (the binary built beside this example)
//! over that archive, with `--pg-listen`, `--max-concurrent-queries 64` and
//! `--pg-max-connections 72` (so 64 clients are neither refused nor cut
//! off by the defaults of 4 queries and 64 connections), `serve`'s other
//! defaults. In this process: the engine over the same archive as `serve`
//! builds it, the load generator and the clients.
//!
//! 1. **Front ends**: each query through the engine (`QueryEngine::execute`,
//!    the Arrow result collected), `POST /api/v1/sql` in JSON (the body read
//!    whole, not parsed) and pg-wire with tokio-postgres (binary results,
//!    every row received), interleaved, `--rounds` rounds after one not
//!    counted; medians and their ratio to the engine alone.
//! 2. **Concurrency**: `--connections` psycopg connections (threads of one
//!    `python3`), each running a small dashboard query `--queries-per-round`
//!    times a round; p50/p95/p99 of each round.
//! 3. **Freshness**: a BarReport of a cluster of its own published to
//!    `BACKBEAT_BARS`, then `SELECT count(*)` over HTTP until it is there;
//!    interleaved with the reference, a report published and received by an
//!    ordered consumer of the same stream.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use backbeat_query::engine::QueryEngine;
use backbeat_schemas::names::BARS_STREAM;
use backbeat_tests::NatsServer;
use futures::StreamExt as _;

#[path = "common/history.rs"]
mod history;
#[path = "common/serve.rs"]
mod serve;

use history::{build_archive, History, Shape, BAR};
use serve::{engine_over, flag, listed, load_average, median, percentile, serve_limits, ServeChild};

/// The concurrent clients: one thread and connection each, a barrier between rounds.
const PSYCOPG_SCRIPT: &str = r#"
import json, sys, threading, time
import psycopg
config = json.load(sys.stdin)
n, rounds, per = config["connections"], config["rounds"], config["queries_per_round"]
connections = [psycopg.connect(config["conninfo"], autocommit=True) for _ in range(n)]
barrier = threading.Barrier(n + 1)
latencies = [[[] for _ in range(n)] for _ in range(rounds)]
errors = [[] for _ in range(rounds)]
def client(i):
    for r in range(rounds):
        barrier.wait()
        for _ in range(per):
            started = time.perf_counter()
            try:
                connections[i].execute(config["sql"]).fetchall()
                latencies[r][i].append(time.perf_counter() - started)
            except Exception as e:
                errors[r].append(str(e).splitlines()[0])
        barrier.wait()
threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
out = []
for r in range(rounds):
    barrier.wait()
    started = time.perf_counter()
    barrier.wait()
    out.append({"wall": time.perf_counter() - started, "latencies": [x for c in latencies[r] for x in c]})
for t in threads:
    t.join()
for r in range(rounds):
    out[r]["errors"] = len(errors[r])
    out[r]["kinds"] = sorted(set(e[:80] for e in errors[r]))
print(json.dumps({"rounds": out}))
"#;

struct Query {
    name: &'static str,
    sql: String,
}

fn queries(shape: Shape) -> Vec<Query> {
    let cluster = shape.cluster(1);
    // 20 windows of one cluster: 20 x agents rows (100k at the default 5000 agents).
    let windows = 100_000u64.div_ceil(shape.agents_per_cluster).min(shape.windows());
    let from = shape.windows().saturating_sub(windows) / 2;
    vec![
        Query {
            name: "GROUP BY window_index, count(DISTINCT agent_id) and KPIs",
            sql: "SELECT window_index, count(*) AS claims, count(DISTINCT agent_id) AS agents, \
                  sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS done, avg(progress) AS progress_avg, \
                  max(beats_left) AS beats_left_max FROM claims GROUP BY window_index ORDER BY window_index"
                .into(),
        },
        Query {
            name: "one cluster, 5 minutes of hlc_time",
            sql: format!(
                "SELECT agent_id, task_id, state, progress, beats_left, hlc_time FROM claims \
                 WHERE cluster_id = '{}' AND hlc_time >= TIMESTAMP '2026-01-01T22:00:00Z' \
                 AND hlc_time < TIMESTAMP '2026-01-01T22:05:00Z'",
                shape.cluster(shape.clusters / 2)
            ),
        },
        Query {
            name: "100k rows (one cluster, 20 windows, 9 columns)",
            sql: format!(
                "SELECT stream_seq, agent_id, task_id, beat_index, window_index, state, beats_left, progress, hlc_time \
                 FROM claims WHERE cluster_id = '{cluster}' AND window_index >= {from} AND window_index < {}",
                from + windows
            ),
        },
    ]
}

/// The three front ends' seconds for one query, and the rows each answered.
async fn front_ends(
    engine: &QueryEngine,
    server: &ServeChild,
    pg: &tokio_postgres::Client,
    sql: &str,
) -> anyhow::Result<[(f64, usize); 3]> {
    let started = Instant::now();
    let output = engine.execute(sql).await?;
    let engine_alone = (started.elapsed().as_secs_f64(), output.rows());
    drop(output);

    let started = Instant::now();
    let body = server.sql_json(sql).await?;
    let http = started.elapsed().as_secs_f64();
    let value: serde_json::Value = serde_json::from_slice(&body)?;
    let http = (http, value["rows"].as_array().map_or(0, Vec::len));

    let started = Instant::now();
    let rows = pg.query(sql, &[]).await?;
    let pg_wire = (started.elapsed().as_secs_f64(), rows.len());
    Ok([engine_alone, http, pg_wire])
}

/// One round of the concurrent clients: wall seconds, the answered
/// queries' latencies, and the failed queries with their kinds of error.
struct ClientsRound {
    wall: f64,
    latencies: Vec<f64>,
    errors: u64,
    kinds: String,
}

/// The concurrent psycopg clients, round by round.
fn concurrent_clients(
    conninfo: &str,
    sql: &str,
    connections: usize,
    rounds: usize,
    per: usize,
) -> anyhow::Result<Vec<ClientsRound>> {
    use std::io::Write as _;
    let config = serde_json::json!({
        "conninfo": conninfo, "sql": sql, "connections": connections,
        "rounds": rounds, "queries_per_round": per,
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", PSYCOPG_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(config.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "the psycopg script failed (bash deploy/install-psycopg.sh)"
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rounds = answer["rounds"].as_array().map_or(&[][..], Vec::as_slice);
    Ok(rounds
        .iter()
        .map(|r| ClientsRound {
            wall: r["wall"].as_f64().unwrap_or(f64::NAN),
            latencies: r["latencies"]
                .as_array()
                .map_or(Vec::new(), |l| l.iter().filter_map(serde_json::Value::as_f64).collect()),
            errors: r["errors"].as_u64().unwrap_or(0),
            kinds: r["kinds"].to_string(),
        })
        .collect())
}

/// Publishes window `window`'s report of `cluster`; the publish's start.
async fn publish_report(js: &jetstream::Context, cluster: &str, window: u64) -> anyhow::Result<Instant> {
    let payload = History::report(cluster, window, 10, 10, 0, 0);
    let started = Instant::now();
    js.publish(format!("backbeat.{cluster}.bar"), payload.into())
        .await?
        .await?;
    Ok(started)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shape = Shape::from_flags();
    // 0 skips the front ends (so does 0 for --connections and --fresh-samples).
    let rounds: usize = flag("--rounds", 5);
    let connections: usize = flag("--connections", 64);
    let pg_rounds: usize = flag("--pg-rounds", 5);
    let per: usize = flag("--queries-per-round", 20);
    let fresh_samples: usize = flag("--fresh-samples", 200);
    let temporary = tempfile::Builder::new().prefix("backbeat-serve-bench-").tempdir()?;
    let dir: PathBuf = flag("--archive", temporary.path().join("archive"));
    if dir.join("claims").is_dir() {
        eprintln!("using the archive in {} as it is", dir.display());
    } else {
        let built = build_archive(&dir, shape, 1).await?;
        eprintln!("archived {} claims in {} files", built.claims, built.files);
    }

    let nats = NatsServer::start()?;
    let archive_arg = dir.to_str().expect("a UTF-8 path");
    let server = ServeChild::start(
        &nats.url(),
        &[
            "--archive",
            archive_arg,
            "--pg-listen",
            "127.0.0.1:0",
            "--max-concurrent-queries",
            "64",
            "--pg-max-connections",
            "72",
        ],
        &temporary.path().join("serve.log"),
    )?;
    server.wait_ready().await?;
    let engine = engine_over(&dir, serve_limits(256 << 20), 2).await?;
    let (pg, pg_connection) = tokio_postgres::connect(&server.pg_conninfo(), tokio_postgres::NoTls).await?;
    tokio::spawn(pg_connection);

    // 1. Front ends.
    let load_before = load_average();
    let queries = queries(shape);
    // Per query, per front end: the seconds of each counted round; the rows; a refusal.
    let mut seconds = vec![[Vec::new(), Vec::new(), Vec::new()]; queries.len()];
    let mut rows = vec![0usize; queries.len()];
    let mut refused: Vec<Option<String>> = vec![None; queries.len()];
    for round in (0..=rounds).filter(|_| rounds > 0) {
        for (index, query) in queries.iter().enumerate() {
            if refused[index].is_some() {
                continue;
            }
            match front_ends(&engine, &server, &pg, &query.sql).await {
                Ok(answers) => {
                    anyhow::ensure!(
                        answers.iter().all(|a| a.1 == answers[0].1),
                        "{}: the front ends answered different row counts: {answers:?}",
                        query.name
                    );
                    rows[index] = answers[0].1;
                    if round > 0 {
                        for (path, answer) in answers.iter().enumerate() {
                            seconds[index][path].push(answer.0);
                        }
                    }
                }
                Err(e) => refused[index] = Some(format!("{e:#}")),
            }
        }
    }
    drop(pg);
    if rounds > 0 {
        println!(
            "## Front ends: {} claims archived, {rounds} rounds; load average {load_before} before, {} after",
            shape.claims,
            load_average()
        );
        println!("| query | rows | engine alone median ms | HTTP JSON median ms (ratio) | pg-wire binary median ms (ratio) | rounds engine / HTTP / pg-wire (ms) |");
        println!("|---|---|---|---|---|---|");
        for (index, query) in queries.iter().enumerate() {
            if let Some(error) = &refused[index] {
                println!("| {} | – | refused: {error} | – | – | – |", query.name);
                continue;
            }
            let [engine_alone, http, pg_wire] = &seconds[index];
            let base = median(engine_alone);
            println!(
                "| {} | {} | {:.1} | {:.1} ({:.2}) | {:.1} (**{:.2}**) | {} / {} / {} |",
                query.name,
                rows[index],
                base * 1e3,
                median(http) * 1e3,
                median(http) / base,
                median(pg_wire) * 1e3,
                median(pg_wire) / base,
                listed(engine_alone, 1e3, 0),
                listed(http, 1e3, 0),
                listed(pg_wire, 1e3, 0),
            );
        }
        println!("goal: pg-wire <= 1.10 x the engine alone at 100k rows\n");
    }

    // 2. Concurrent psycopg clients.
    if connections > 0 {
        let last = shape.windows().saturating_sub(10);
        let sql = format!(
            "SELECT window_index, agents_reporting, claims_accepted, claims_late FROM bar_reports \
             WHERE cluster_id = '{}' AND window_index >= {last} ORDER BY window_index",
            shape.cluster(0)
        );
        let load_before = load_average();
        let results = concurrent_clients(&server.pg_conninfo(), &sql, connections, pg_rounds, per)?;
        println!(
            "## {connections} concurrent psycopg connections, {per} queries each a round (the last 10 windows' reports \
             of a cluster); load average {load_before} before, {} after",
            load_average()
        );
        println!("| round | answered | failed | wall s | answered/s | p50 ms | p95 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (round, r) in results.iter().enumerate() {
            let (wall, latencies) = (r.wall, &r.latencies);
            println!(
                "| {} | {} | {} | {wall:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
                round + 1,
                latencies.len(),
                r.errors,
                latencies.len() as f64 / wall,
                percentile(latencies, 0.5) * 1e3,
                percentile(latencies, 0.95) * 1e3,
                percentile(latencies, 0.99) * 1e3,
                percentile(latencies, 1.0) * 1e3,
            );
        }
        for (round, r) in results.iter().enumerate().filter(|(_, r)| r.errors > 0) {
            println!("round {}: {}", round + 1, r.kinds);
        }
        println!();
    }

    // 3. Freshness.
    if fresh_samples > 0 {
        let client = nats.client().await?;
        let js = jetstream::new(client);
        let stream = js.get_stream(BARS_STREAM).await?;
        let reference = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::New,
                filter_subject: "backbeat.rawref.bar".into(),
                ..Default::default()
            })
            .await?;
        let mut delivered = reference.messages().await?;
        let load_before = load_average();
        let (mut fresh, mut raw, mut polls) = (Vec::new(), Vec::new(), Vec::new());
        for window in 0..fresh_samples as u64 {
            let published = publish_report(&js, "fresh", window).await?;
            let sql =
                format!("SELECT count(*) AS n FROM bar_reports WHERE cluster_id = 'fresh' AND window_index = {window}");
            loop {
                let poll = Instant::now();
                let body = server.sql_json(&sql).await?;
                polls.push(poll.elapsed().as_secs_f64());
                let value: serde_json::Value = serde_json::from_slice(&body)?;
                if value["rows"][0][0] == 1 {
                    fresh.push(published.elapsed().as_secs_f64());
                    break;
                }
                anyhow::ensure!(
                    published.elapsed() < Duration::from_secs(10),
                    "report {window} not visible after 10 s"
                );
            }
            let published = publish_report(&js, "rawref", window).await?;
            let message = delivered
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("the reference consumer ended"))??;
            raw.push(published.elapsed().as_secs_f64());
            drop(message);
            // Reports come a window apart; not back to back.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "## Freshness: {fresh_samples} reports, L = {BAR}; load average {load_before} before, {} after",
            load_average()
        );
        println!("| path | p50 ms | p95 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        for (what, samples) in [
            ("raw: publish to ordered-consumer receive", &raw),
            ("publish to visible in SQL (HTTP)", &fresh),
            ("one poll (HTTP SQL count)", &polls),
        ] {
            println!(
                "| {what} | {:.2} | {:.2} | {:.2} | {:.2} |",
                percentile(samples, 0.5) * 1e3,
                percentile(samples, 0.95) * 1e3,
                percentile(samples, 0.99) * 1e3,
                percentile(samples, 1.0) * 1e3,
            );
        }
        println!("goal: p95 publish to visible <= 50 ms");
    }
    server.stop()?;
    Ok(())
}
