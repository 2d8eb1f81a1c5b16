//! The admin HTTP every service serves: `/health`, `/ready`, `/metrics`,
//! `/api/v1/status`, plus the service's own routes, with a body-size limit and
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// Request bodies above this many bytes are refused with 413 unless a route sets its own limit.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

type ReadyFn = dyn Fn() -> Result<(), String> + Send + Sync;
type StatusFn = dyn Fn() -> serde_json::Value + Send + Sync;

/// What the common endpoints report.
#[derive(Clone)]
pub struct AdminState {
    /// The service's metrics; `/metrics` renders it in the Prometheus text format.
    pub registry: prometheus::Registry,
    ready: Arc<ReadyFn>,
    status: Arc<StatusFn>,
}

impl AdminState {
    /// `ready` answers `Ok` when the service does its job, else the reason it does not;
    /// `status` is the body of `/api/v1/status`.
    pub fn new(
        registry: prometheus::Registry,
        ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
        status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        AdminState {
            registry,
            ready: Arc::new(ready),
            status: Arc::new(status),
        }
    }
}

/// The common routes; merge the service's own routes into it.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .with_state(state)
}

async fn ready(State(state): State<AdminState>) -> Response {
    match (state.ready)() {
        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&state.registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn status(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json((state.status)())
}

/// Binds `listen`, serves `router` (with the default body limit) until
/// `shutdown` resolves, then drains open requests. Returns the bound address
/// through `on_bound` before serving, so `--listen 127.0.0.1:0` can be used.
pub async fn serve_admin(
    listen: &str,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding HTTP listener {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin HTTP listening");
    let router = router.layer(DefaultBodyLimit::max(ADMIN_BODY_BYTES_MAX));
    let handle = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    });
    Ok((addr, handle))
}
