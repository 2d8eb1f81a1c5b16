//! `backbeat-query serve`: opens the archive, connects to NATS, starts the
//! tail of the three streams from the archive's record, the archive's
//! writer (while it holds the lease), and answers SQL over HTTP (and pg-wire with --pg-listen)
//! until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use backbeat_service::admin::admin_router;
use backbeat_service::streams::{ensure_all_streams, StreamOptions};
use backbeat_service::{serve_http, shutdown_signal, AdminState, HttpLimits};

use crate::archive::writer::Archiver;
use crate::archive::Archive;
use crate::clusters::{clusters_router, ClustersState, PulseGroup};
use crate::config::ServeConfig;
use crate::console::console_router;
use crate::engine::QueryEngine;
use crate::http::{api_router, ApiState};
use crate::metrics::Metrics;
use crate::tables::TailTables;
use crate::tail::{Tail, STREAMS};

/// How much longer than a query's time limit the HTTP request may take
/// (reading the body, encoding the answer), so a query's timeout is answered
/// as such (408 naming the limit) before the listener's own timeout cuts in.
const REQUEST_SLACK: Duration = Duration::from_secs(5);

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("creating the metrics")?;
    let client = config.nats.connect("backbeat-query").await?;
    let js = jetstream::new(client.clone());
    // As every service: the streams are created when missing, used as they are otherwise.
    ensure_all_streams(&js, StreamOptions::default()).await?;
    // Where the tail starts: the archive's positions, read before its
    // listing (written after the files they count on, so the listing holds
    // at least those); rows read again are dropped by the listing's ranges.
    let archive = Archive::open(&config.archive)?;
    let mut start = [0u64; 3];
    for (position, stream) in start.iter_mut().zip(STREAMS) {
        *position = archive.position(stream).await?;
    }
    let mut tables = TailTables::new(config.bar_length, config.tail_rows_max);
    tables.install(archive.list().await?);
    tracing::info!(archive = %archive.location, ?start, "reading the streams after the archive's positions");
    let tail = Tail::new(tables, metrics.clone(), start);
    tail.spawn(js.clone());
    let archiver = Archiver::new(
        archive.clone(),
        tail.clone(),
        metrics.clone(),
        config.archive_options.clone(),
    );
    let mut archiver_task = tokio::spawn(archiver.clone().run(js));

    // Queries get worker threads of their own: a query busy on the CPU must
    // not delay the tail or /health. The runtime lives as long as the process.
    let query_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.query_threads)
        .thread_name("backbeat-query-sql")
        .enable_all()
        .build()
        .context("starting the query runtime")?;
    let query_runtime: &'static tokio::runtime::Runtime = Box::leak(Box::new(query_runtime));
    let engine = QueryEngine::new(
        tail.tables.clone(),
        archive.store.clone(),
        config.limits.clone(),
        Some(query_runtime.handle().clone()),
        metrics.clone(),
    )
    .context("building the query engine")?;

    let ready = {
        let (tail, client) = (tail.clone(), client.clone());
        move || {
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err("not connected to NATS".to_string());
            }
            tail.ready()
        }
    };
    let status = {
        let (tail, limits, bar_length) = (tail.clone(), config.limits.clone(), config.bar_length);
        let archiver = archiver.clone();
        move || {
            let holds = tail.tables.lock().map(|t| t.archive().summary()).unwrap_or_default();
            let state = archiver.state.lock().map(|s| s.clone()).unwrap_or_default();
            serde_json::json!({
                "service": "backbeat-query",
                "bar_length": bar_length,
                "tail": tail.status(),
                "archive": {
                    "location": archiver.archive.location,
                    "writer": state.writer,
                    "lease": state.lease,
                    "holds": holds,
                    "files_written": state.files_written,
                    "rows_written": state.rows_written,
                    "positions": state.positions,
                    "last_seal_unix_ms": state.last_seal_unix_ms,
                    "last_error": state.last_error,
                },
                "limits": {
                    "query_memory_bytes": limits.memory_bytes,
                    "query_spill_bytes_max": limits.spill.as_ref().map_or(0, |spill| spill.bytes_max),
                    "query_timeout_ms": limits.timeout.as_millis() as u64,
                    "max_result_rows": limits.result_rows_max,
                    "max_result_bytes": limits.result_bytes_max,
                    "max_concurrent_queries": limits.concurrent_max,
                },
            })
        }
    };
    if let Some(pg) = &config.pg {
        crate::pg::spawn(pg, engine.clone(), &metrics.registry).await?;
    }
    let admin = AdminState::new(metrics.registry.clone(), ready, status);
    let api = ApiState {
        engine,
        token: config.token.as_deref().map(Into::into),
    };
    let clusters = ClustersState {
        api: api.clone(),
        pulse: Arc::new(PulseGroup::new(config.pulse_urls.clone())?),
    };
    let mut router = admin_router(admin)
        .merge(api_router(api))
        .merge(clusters_router(clusters))
        .merge(console_router());
    if let Some(url) = &config.nats_monitor_url {
        router = router.merge(crate::nats_metrics::router(url)?);
    }
    let limits = config.http.limits(HttpLimits {
        body_bytes_max: config.max_sql_bytes,
        request_timeout: config.limits.timeout + REQUEST_SLACK,
        registry: Some(metrics.registry.clone()),
        ..HttpLimits::default()
    });
    let (_addr, mut server) = serve_http(&config.listen, router, shutdown_signal(), limits).await?;
    tokio::select! {
        result = &mut server => {
            result.context("the HTTP server task")?;
            // SIGTERM: the archiver releases its lease.
            let _ = tokio::time::timeout(Duration::from_secs(5), archiver_task).await;
        }
        result = &mut archiver_task => {
            result.context("the archive's task")?.context("the archive")?;
            server.await.context("the HTTP server task")?;
        }
    }
    tracing::info!("stopped");
    Ok(())
}
