//! `backbeat-query sql`: sends one statement to a running server and prints
//! the answer: an aligned table (read from the Arrow IPC answer), or the
//! server's JSON or CSV as it came. With `--archive`, runs it offline over
//! an archive's files instead (no server, no NATS), under the same read-only
//! rules and serve's default limits, printed the same ways.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::archive::Archive;
use crate::config::{token_from, OutputFormat, SqlArgs};
use crate::encode::{encode, Format};
use crate::engine::{QueryEngine, QueryLimits, SpillLimit};
use crate::metrics::Metrics;
use crate::tables::TailTables;

/// Runs the statement; the text to print, or an error naming the server's answer.
pub async fn run_sql(args: SqlArgs) -> anyhow::Result<String> {
    if let Some(location) = &args.archive {
        return run_offline(location, &args).await;
    }
    let token = token_from(args.token, args.token_file.as_deref(), "--token")?;
    let format = match args.format {
        OutputFormat::Table => Format::ArrowStream,
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let mut request = client
        .post(&url)
        .header(reqwest::header::ACCEPT, format.content_type())
        .json(&serde_json::json!({"sql": args.sql}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body = response.bytes().await.context("reading the answer")?;
    if !status.is_success() {
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let error = &error["error"];
        match (error["message"].as_str(), error["sqlstate"].as_str()) {
            (Some(message), Some(sqlstate)) => bail!("{status} (SQLSTATE {sqlstate}): {message}"),
            _ => bail!("{status}: {}", String::from_utf8_lossy(&body)),
        }
    }
    match args.format {
        OutputFormat::Table => {
            let reader = StreamReader::try_new(std::io::Cursor::new(body), None).context("reading the Arrow answer")?;
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .context("reading the Arrow answer")?;
            Ok(pretty_format_batches(&batches)?.to_string())
        }
        OutputFormat::Json | OutputFormat::Csv => Ok(String::from_utf8_lossy(&body).into_owned()),
    }
}

/// The statement over the archive at `location` alone.
async fn run_offline(location: &str, args: &SqlArgs) -> anyhow::Result<String> {
    if !location.contains("://") && !std::path::Path::new(location).is_dir() {
        bail!("--archive {location}: no such directory");
    }
    let archive = Archive::open(location)?;
    let mut tables = TailTables::new(1, 1);
    tables.install(archive.list().await?);
    // serve's default limits; spills go to a directory of the system's
    // temporary one, removed when the statement is answered.
    let spill_dir = tempfile::Builder::new()
        .prefix("backbeat-query-spill-")
        .tempdir()
        .context("creating a spill directory")?;
    let limits = QueryLimits {
        memory_bytes: 256 << 20,
        timeout: Duration::from_millis(args.timeout_ms),
        result_rows_max: 100_000,
        result_bytes_max: 64 << 20,
        concurrent_max: 1,
        spill: Some(SpillLimit {
            dir: spill_dir.path().to_path_buf(),
            bytes_max: 4 << 30,
        }),
    };
    let metrics = Metrics::new().context("creating the metrics")?;
    let engine = QueryEngine::new(
        Arc::new(Mutex::new(tables)),
        archive.store.clone(),
        limits,
        None,
        metrics,
    )
    .map_err(|e| anyhow::anyhow!("building the query engine: {}", e.message))?;
    let output = engine
        .execute(&args.sql)
        .await
        .map_err(|e| anyhow::anyhow!("{} (SQLSTATE {}): {}", e.kind.as_str(), e.kind.sqlstate(), e.message))?;
    let format = match args.format {
        OutputFormat::Table => return Ok(pretty_format_batches(&output.batches)?.to_string()),
        OutputFormat::Json => Format::Json,
        OutputFormat::Csv => Format::Csv,
    };
    let bytes = encode(&output, format).context("encoding the result")?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
