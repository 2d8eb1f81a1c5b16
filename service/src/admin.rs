//! The admin HTTP every service serves: `/health`, `/ready`, `/metrics`,
//! `/api/v1/status`, plus the service's own routes, within [`HttpLimits`]
//! (body size, header and request timeouts, connections, concurrency) and with
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::metrics::{boxed, register_all};
use crate::ServiceError;

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

/// What one HTTP listener allows a client, so that slow clients and idle
/// connections cannot exhaust memory or file descriptors.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// A request body above this many bytes is refused with 413: by its
    /// `Content-Length` before a byte of it is read, else once the bytes read pass it.
    pub body_bytes_max: usize,
    /// A request's head (line and headers) must arrive within this time of the
    /// connection being ready for it; an idle keep-alive connection is closed
    /// after it too. Slowloris clients are cut off here.
    pub header_read_timeout: Duration,
    /// The whole request, body reading and handler, must be done within this
    /// time, else 408. A body trickled a byte at a time is cut off here.
    pub request_timeout: Duration,
    /// At most this many open connections; the next one is accepted and closed
    /// at once (counted in `backbeat_http_connections_refused_total`).
    pub connections_max: usize,
    /// At most this many requests are handled at once; the others wait for a
    /// turn up to [`QUEUE_WAIT`], then are answered 503 with `Retry-After`
    /// (counted in `backbeat_http_requests_shed_total`).
    pub concurrency_max: usize,
    /// Where the listener's own metrics go (the service's registry), if anywhere.
    pub registry: Option<prometheus::Registry>,
    /// The names of those metrics start with this (`{prefix}_connections_open`,
    /// `{prefix}_connections_refused_total`): a second listener of one
    /// service (the pulse's raft listener) registers under a prefix of its own.
    pub metrics_prefix: &'static str,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            body_bytes_max: ADMIN_BODY_BYTES_MAX,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connections_max: 512,
            concurrency_max: 128,
            registry: None,
            metrics_prefix: "backbeat_http",
        }
    }
}

/// The flags that set a listener's [`HttpLimits`], flattened into each
/// service's `Config` (`#[command(flatten)]`); the defaults are
/// [`HttpLimits::default`]'s. A service with more than one listener applies
/// them to each; its body limit stays its own (it depends on what its routes take).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// HTTP: milliseconds a client has to send a request's head once its
    /// connection is open or idle (an idle keep-alive connection is closed then too).
    #[arg(
        long = "http-header-timeout-ms",
        env = "BACKBEAT_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_timeout_ms: u64,
    /// HTTP: milliseconds a whole request (body and answer) may take, else 408
    /// [default: 30000; backbeat-query: its --query-timeout-ms + 5000].
    #[arg(long = "http-request-timeout-ms", env = "BACKBEAT_HTTP_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// HTTP: most open connections; the next one is closed at once
    /// (backbeat_http_connections_refused_total).
    #[arg(
        long = "http-connections-max",
        env = "BACKBEAT_HTTP_CONNECTIONS_MAX",
        default_value_t = 512
    )]
    pub connections_max: usize,
    /// HTTP: most requests handled at once; the others wait up to 1 s for a turn, then get 503 with Retry-After.
    #[arg(
        long = "http-concurrency-max",
        env = "BACKBEAT_HTTP_CONCURRENCY_MAX",
        default_value_t = 128
    )]
    pub concurrency_max: usize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        let limits = HttpLimits::default();
        HttpArgs {
            header_timeout_ms: limits.header_read_timeout.as_millis() as u64,
            request_timeout_ms: None,
            connections_max: limits.connections_max,
            concurrency_max: limits.concurrency_max,
        }
    }
}

impl HttpArgs {
    /// The limits these flags set, over `base` (the service's body limit and
    /// registry); `base`'s request timeout stays when the flag is absent.
    /// Zero timeouts and caps are raised to 1 (ms, connection, request): a
    /// listener that refuses everything is never what was meant.
    pub fn limits(&self, base: HttpLimits) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(self.header_timeout_ms.max(1)),
            request_timeout: self
                .request_timeout_ms
                .map_or(base.request_timeout, |ms| Duration::from_millis(ms.max(1))),
            connections_max: self.connections_max.max(1),
            concurrency_max: self.concurrency_max.max(1),
            ..base
        }
    }
}

/// Binds `listen` and serves `router` with the default [`HttpLimits`]; see [`serve_http`].
pub async fn serve_admin(
    listen: &str,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServiceError> {
    serve_http(listen, router, shutdown, HttpLimits::default()).await
}

/// Binds `listen`, serves `router` within `limits` until `shutdown` resolves,
/// then lets open requests finish (at most `request_timeout` more) and closes
/// idle connections. Returns the bound address, so `--listen 127.0.0.1:0`
/// can be used, and the serving task, which ends once drained (a failed
/// accept or connection is logged, never the end of the listener).
/// The only error is [`ServiceError::Bind`]: the address is taken, or not one.
///
/// HTTP/1.1 only, served by hyper directly rather than `axum::serve`, because
/// the header-read timeout and the connection limit are set per connection.
pub async fn serve_http(
    listen: &str,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: HttpLimits,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServiceError> {
    let bind = |source| ServiceError::Bind {
        listen: listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(bind)?;
    let addr = listener.local_addr().map_err(bind)?;
    tracing::info!(%addr, "HTTP listening");
    let metrics = ListenerMetrics::new(limits.registry.as_ref(), limits.metrics_prefix);
    let router = router
        .layer(DefaultBodyLimit::max(limits.body_bytes_max))
        .layer(RequestBodyLimitLayer::new(limits.body_bytes_max))
        .layer(axum::middleware::from_fn_with_state(
            Shedder {
                slots: Arc::new(Semaphore::new(limits.concurrency_max)),
                shed: metrics.requests_shed.clone(),
            },
            shed_over_capacity,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ));
    let handle = tokio::spawn(accept_loop(listener, router, shutdown, limits, metrics));
    Ok((addr, handle))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: HttpLimits,
    metrics: ListenerMetrics,
) {
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let service = TowerToHyperService::new(router);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin, and go on.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        let open = metrics.connections_open.clone();
        open.inc();
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; not an error of ours.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    let drain = limits.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "HTTP connections still open after the drain time; closing");
    }
}

/// The listener's own metrics; unregistered when the service gave no registry.
/// How long a request waits for one of the listener's `concurrency_max`
/// turns before it is shed: answered 503 with `Retry-After`, so that an
/// overload is told to clients at once instead of queueing without end.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Shedder {
    slots: Arc<Semaphore>,
    shed: prometheus::IntCounter,
}

async fn shed_over_capacity(
    State(shedder): State<Shedder>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(QUEUE_WAIT, shedder.slots.clone().acquire_owned()).await {
        Ok(Ok(_turn)) => next.run(request).await,
        _ => {
            shedder.shed.inc();
            let mut response = Json(serde_json::json!({
                "error": "overloaded",
                "message": "too many requests at once (--http-concurrency-max); retry after 1 s",
            }))
            .into_response();
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
    }
}

struct ListenerMetrics {
    connections_open: prometheus::IntGauge,
    connections_refused: prometheus::IntCounter,
    requests_shed: prometheus::IntCounter,
}

impl ListenerMetrics {
    /// Panics when `registry` has them already (two listeners on one
    /// registry): a programmer's error, as every name registered twice.
    fn new(registry: Option<&prometheus::Registry>, prefix: &str) -> Self {
        let metrics = ListenerMetrics {
            connections_open: prometheus::IntGauge::new(format!("{prefix}_connections_open"), "Open HTTP connections.")
                .expect("a valid metric name"),
            connections_refused: prometheus::IntCounter::new(
                format!("{prefix}_connections_refused_total"),
                "HTTP connections closed at once because the connection limit was reached.",
            )
            .expect("a valid metric name"),
            requests_shed: prometheus::IntCounter::new(
                format!("{prefix}_requests_shed_total"),
                "HTTP requests answered 503 (Retry-After) because every request turn stayed taken for 1 s.",
            )
            .expect("a valid metric name"),
        };
        if let Some(registry) = registry {
            register_all(
                registry,
                [
                    boxed(&metrics.connections_open),
                    boxed(&metrics.connections_refused),
                    boxed(&metrics.requests_shed),
                ],
            );
        }
        metrics
    }
}
