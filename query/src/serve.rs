//! `backbeat-query serve`: connects to NATS, starts the tail of the three
//! streams, and answers SQL over HTTP (and pg-wire with --pg-listen) until SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use backbeat_service::admin::admin_router;
use backbeat_service::streams::{ensure_all_streams, StreamOptions};
use backbeat_service::{serve_http, shutdown_signal, AdminState, HttpLimits};

use crate::config::ServeConfig;
use crate::engine::QueryEngine;
use crate::http::{api_router, ApiState};
use crate::metrics::Metrics;
use crate::tables::TailTables;
use crate::tail::Tail;

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
    let tail = Tail::new(
        TailTables::new(config.bar_length, config.tail_rows_max),
        metrics.clone(),
    );
    tail.spawn(js);

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
        move || {
            serde_json::json!({
                "service": "backbeat-query",
                "bar_length": bar_length,
                "tail": tail.status(),
                "limits": {
                    "query_memory_bytes": limits.memory_bytes,
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
        tail,
        token: config.token.as_deref().map(Into::into),
    };
    let router = admin_router(admin).merge(api_router(api));
    let limits = HttpLimits {
        body_bytes_max: config.max_sql_bytes,
        request_timeout: config.limits.timeout + REQUEST_SLACK,
        registry: Some(metrics.registry.clone()),
        ..HttpLimits::default()
    };
    let (_addr, server) = serve_http(&config.listen, router, shutdown_signal(), limits).await?;
    server.await.context("the HTTP server task")??;
    tracing::info!("stopped");
    Ok(())
}
