//! SQL over the Parquet archive: the query engine against DuckDB, in one run
//! on one machine, on the same files.
//!
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/backbeat-target-bench
//! cargo build --profile release-query -p backbeat-query --bin backbeat-query --examples
//! $CARGO_TARGET_DIR/release-query/examples/query_bench [--claims 10000000] [--clusters 4]
//!     [--agents-per-cluster 5000] [--seal-windows 1] [--rounds 5] [--archive DIR]
//!     [--query-memory-bytes 268435456] [--explain]
//! ```
//!
//! Generates `--claims` claims (and their beats and reports) over whole
//! windows and writes them as the service's archive writer does (a seal
//! every `--seal-windows` windows, `serve`'s default row groups; see
//! `common/history.rs`) into `--archive DIR` (a temporary directory when
//! absent; an archive already there is used as it is). Then times each
//! query through [`QueryEngine::execute`] (what HTTP runs: a fresh session,
//! `serve`'s limits, its own 2-thread runtime) and through DuckDB
//! (`python3 -m pip install duckdb`; 2 threads, `read_parquet` of the same
//! files with `hive_partitioning`), timed inside Python around a `CREATE
//! TEMP TABLE … AS` of the query, so that both engines end with the whole
//! result materialized in their own columnar form. One round runs each
//! query once on each engine, one after the other; a first round warms the
//! page cache and is not counted. The figure is the engine's median over
//! DuckDB's median (goal ≤ 1.5, stretch ≤ 1); both engines' answers are
//! checked to agree.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use backbeat_query::engine::{QueryEngine, QueryOutput};
use datafusion::arrow::array::{Array, AsArray as _};
use datafusion::arrow::datatypes::Int64Type;

#[path = "common/history.rs"]
mod history;
#[path = "common/serve.rs"]
mod serve;

use history::{build_archive, Shape, BAR};
use serve::{engine_over, flag, listed, load_average, median, serve_limits};

/// DuckDB's side: each query once, timed around a CTAS of it; then the
/// result's rows and the sum of its first integer column (the check).
const DUCKDB_SCRIPT: &str = r#"
import json, sys, time
import duckdb
config = json.load(sys.stdin)
con = duckdb.connect()
con.execute(f"SET threads = {config['threads']}")
# DuckDB 2 draws its progress bar on stdout, where the answer is read.
con.execute("SET enable_progress_bar = false")
for table in ("claims", "beats", "bar_reports"):
    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{config['dir']}/{table}/**/*.parquet', hive_partitioning = true)")
out = []
for query in config["queries"]:
    started = time.perf_counter()
    con.execute("CREATE OR REPLACE TEMP TABLE bench_result AS " + query["sql"])
    seconds = time.perf_counter() - started
    rows = con.execute("SELECT count(*) FROM bench_result").fetchone()[0]
    check = con.execute(f"SELECT coalesce(sum({query['check']}), 0) FROM bench_result").fetchone()[0]
    out.append({"seconds": seconds, "rows": rows, "check": int(check)})
print(json.dumps(out))
"#;

/// A query, in each engine's dialect (they differ in time literals only),
/// and the integer column whose sum checks that both answered the same.
struct Query {
    name: &'static str,
    datafusion: String,
    duckdb: String,
    check: &'static str,
}

fn queries(shape: Shape) -> Vec<Query> {
    let kpis = "SELECT window_index, count(*) AS claims, count(DISTINCT agent_id) AS agents, \
                sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS done, \
                sum(CASE WHEN state IN ('failed', 'blocked') THEN 1 ELSE 0 END) AS troubled, \
                avg(progress) AS progress_avg, max(beats_left) AS beats_left_max \
                FROM claims GROUP BY window_index ORDER BY window_index";
    // Five minutes (five windows) of one cluster, two hours in.
    let cluster = shape.cluster(shape.clusters / 2);
    let range = |from: &str, to: &str| {
        format!(
            "SELECT agent_id, task_id, state, progress, beats_left, hlc_time FROM claims \
             WHERE cluster_id = '{cluster}' AND hlc_time >= {from} AND hlc_time < {to}"
        )
    };
    vec![
        Query {
            name: "GROUP BY window_index, count(DISTINCT agent_id) and KPIs",
            datafusion: kpis.to_string(),
            duckdb: kpis.to_string(),
            check: "agents",
        },
        Query {
            name: "one cluster, 5 minutes of hlc_time",
            datafusion: range("TIMESTAMP '2026-01-01T22:00:00Z'", "TIMESTAMP '2026-01-01T22:05:00Z'"),
            duckdb: range(
                "TIMESTAMPTZ '2026-01-01 22:00:00+00'",
                "TIMESTAMPTZ '2026-01-01 22:05:00+00'",
            ),
            check: "beats_left",
        },
    ]
}

/// Rows, and the sum of `column` (an integer column), of an answer.
fn rows_and_check(output: &QueryOutput, column: &str) -> anyhow::Result<(u64, i64)> {
    let index = output.schema.index_of(column)?;
    let mut sum = 0i64;
    for batch in &output.batches {
        let values =
            datafusion::arrow::compute::cast(batch.column(index), &datafusion::arrow::datatypes::DataType::Int64)?;
        let values = values.as_primitive::<Int64Type>();
        sum += values.iter().flatten().sum::<i64>();
        debug_assert_eq!(values.null_count(), 0);
    }
    Ok((output.rows() as u64, sum))
}

/// One DuckDB round (a `python3` process): per query (seconds, rows, check).
fn duckdb_round(dir: &std::path::Path, queries: &[Query]) -> anyhow::Result<Vec<(f64, u64, i64)>> {
    use std::io::Write as _;
    let config = serde_json::json!({
        "dir": dir,
        "threads": 2,
        "queries": queries.iter().map(|q| serde_json::json!({"sql": q.duckdb, "check": q.check})).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting python3 (with duckdb: python3 -m pip install duckdb)")?;
    child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(config.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "the DuckDB script failed (is duckdb installed?)"
    );
    let answers: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    answers
        .iter()
        .map(|a| {
            Ok((
                a["seconds"].as_f64().context("seconds")?,
                a["rows"].as_u64().context("rows")?,
                a["check"].as_i64().context("check")?,
            ))
        })
        .collect()
}

/// One engine round: per query (seconds, rows, check), or the engine's refusal.
async fn engine_round(engine: &QueryEngine, queries: &[Query]) -> Vec<Result<(f64, u64, i64), String>> {
    let mut out = Vec::new();
    for query in queries {
        let started = Instant::now();
        let answer = engine.execute(&query.datafusion).await;
        let seconds = started.elapsed().as_secs_f64();
        out.push(match answer {
            Ok(output) => rows_and_check(&output, query.check)
                .map(|(rows, check)| (seconds, rows, check))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        });
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shape = Shape::from_flags();
    let seal_windows: u64 = flag("--seal-windows", 1);
    let rounds: usize = flag("--rounds", 5usize).max(1);
    let memory_bytes: usize = flag("--query-memory-bytes", 256 << 20);
    let explain = std::env::args().any(|a| a == "--explain");
    let temporary = tempfile::Builder::new().prefix("backbeat-query-bench-").tempdir()?;
    let dir: PathBuf = flag("--archive", temporary.path().to_path_buf());

    if dir.join("claims").is_dir() {
        eprintln!("using the archive in {} as it is", dir.display());
    } else {
        let started = Instant::now();
        let built = build_archive(&dir, shape, seal_windows).await?;
        eprintln!(
            "archived {} claims of {} windows: {} files, {:.0} MB, in {:.1} s",
            built.claims,
            built.windows,
            built.files,
            built.bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    let engine = engine_over(&dir, serve_limits(memory_bytes), 2).await?;
    let queries = queries(shape);
    if explain {
        for query in &queries {
            let plan = engine.execute(&format!("EXPLAIN ANALYZE {}", query.datafusion)).await?;
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan.batches)?;
            eprintln!("{}\n{text}", query.name);
        }
    }

    let load_before = load_average();
    // Per query: the engine's and DuckDB's seconds of each counted round.
    let mut engine_seconds = vec![Vec::new(); queries.len()];
    let mut duckdb_seconds = vec![Vec::new(); queries.len()];
    let mut answers = vec![(0u64, 0i64); queries.len()];
    let mut refused: Vec<Option<String>> = vec![None; queries.len()];
    for round in 0..=rounds {
        let ours = engine_round(&engine, &queries).await;
        let theirs = duckdb_round(&dir, &queries)?;
        for (index, (ours, theirs)) in ours.into_iter().zip(theirs).enumerate() {
            let (seconds, rows, check) = theirs;
            answers[index] = (rows, check);
            match ours {
                Ok((ours_seconds, ours_rows, ours_check)) => {
                    anyhow::ensure!(
                        (ours_rows, ours_check) == (rows, check),
                        "{}: the engine answered {ours_rows} rows (check {ours_check}), DuckDB {rows} (check {check})",
                        queries[index].name
                    );
                    if round > 0 {
                        engine_seconds[index].push(ours_seconds);
                    }
                }
                Err(e) => refused[index] = Some(e),
            }
            if round > 0 {
                duckdb_seconds[index].push(seconds);
            }
        }
    }

    println!(
        "{} claims, {} clusters x {} agents, L = {BAR}, a seal every {seal_windows} window(s), {rounds} rounds; \
         load average {load_before} before, {} after",
        shape.claims,
        shape.clusters,
        shape.agents_per_cluster,
        load_average()
    );
    println!("| query | result rows | engine median s | DuckDB median s | engine / DuckDB | engine rounds (ms) | DuckDB rounds (ms) |");
    println!("|---|---|---|---|---|---|---|");
    for (index, query) in queries.iter().enumerate() {
        let theirs = median(&duckdb_seconds[index]);
        match &refused[index] {
            Some(error) => println!(
                "| {} | {} | refused: {error} | {theirs:.3} | – | – | {} |",
                query.name,
                answers[index].0,
                listed(&duckdb_seconds[index], 1e3, 0)
            ),
            None => {
                let ours = median(&engine_seconds[index]);
                println!(
                    "| {} | {} | {ours:.3} | {theirs:.3} | **{:.2}** | {} | {} |",
                    query.name,
                    answers[index].0,
                    ours / theirs,
                    listed(&engine_seconds[index], 1e3, 0),
                    listed(&duckdb_seconds[index], 1e3, 0)
                );
            }
        }
    }
    println!("\ngoal: engine / DuckDB <= 1.5 (stretch <= 1)");
    Ok(())
}
