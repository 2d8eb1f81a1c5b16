//! HTTP intake: `POST /api/v1/clusters/{cluster}/claims`.
//!
//! One JSON claim per request, or, with `Content-Type: application/x-ndjson`, a
//! batch of claims one per line. Status codes: 202 accepted (a batch: at least
//! one line stored or all fine), 400 invalid (a batch: every line refused),
//! 403 `cluster_not_allowed` (the cluster is not on the gateway's `--clusters`;
//! a batch: each line says so too), 413 too large (the body, the line count,
//! or a single claim over 8 KiB), 503 with `Retry-After` when JetStream did
//! not acknowledge in time (a batch: when any line was not acknowledged; its
//! results say which). The refused lines of a batch are kept in one dead letter.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt as _;

use super::clusters::REASON_CLUSTER_NOT_ALLOWED;
use super::publisher::{Input, Publisher, Source};
use crate::answer::{BatchReply, LineResult, Outcome, Reply};
pub use backbeat_ingest_core::batch::{body_bytes_read_max, ndjson_lines, TooManyLines};
use backbeat_ingest_core::batch::{declared_too_large, is_ndjson, BodyReader};

/// The reason given for a batch without a single non-blank line (no dead letter:
/// nothing was sent). Not a SPEC reason: the fold never sees batches.
pub const REASON_EMPTY_BATCH: &str = "empty_batch";

/// Limits of HTTP intake.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request body (single claim or batch) is at most this many bytes.
    pub batch_bytes_max: usize,
    /// A batch holds at most this many non-blank lines.
    pub batch_lines_max: usize,
    /// The `Retry-After` of a 503, in seconds.
    pub retry_after_secs: u32,
}

struct HttpIntake {
    publisher: Arc<Publisher>,
    limits: HttpLimits,
}

impl HttpIntake {
    /// Counts a request refused whole (`reason`: one of [`super::metrics::REQUEST_REFUSALS`]).
    fn refused(&self, reason: &str) {
        self.publisher
            .metrics()
            .requests_refused
            .with_label_values(&[reason])
            .inc();
    }
}

/// The claims route, to merge into the admin router.
pub fn claims_router(publisher: Arc<Publisher>, limits: HttpLimits) -> Router {
    Router::new()
        .route("/api/v1/clusters/{cluster}/claims", post(post_claims))
        .with_state(Arc::new(HttpIntake { publisher, limits }))
}

async fn post_claims(
    State(intake): State<Arc<HttpIntake>>,
    Path(cluster): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = intake.limits.batch_bytes_max;
    // A body far beyond the limit is refused before it is read; one a little
    // over it is read (and dropped) first, so the client, still sending it,
    // gets the 413 instead of a reset connection.
    let declared_len = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared_too_large(declared_len, limit) {
        return body_too_large(&intake, limit);
    }
    let discard_max = body_bytes_read_max(limit);
    // The admin router's default body limit does not apply to a raw `Body`:
    // this route reads it with its own, larger one.
    let bytes = match read_body(body, limit, discard_max).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return body_too_large(&intake, limit),
        // The listener's own limit (the same bytes) cut a body without a
        // Content-Length (chunked) short: too large, not malformed.
        Err(e) if is_length_limit(&e) => return body_too_large(&intake, limit),
        Err(e) => {
            intake.refused("invalid_body");
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("reading the body: {e}"),
            );
        }
    };
    let is_batch = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_ndjson);
    let origin = uri.path().to_string();
    if is_batch {
        post_batch(&intake, cluster, origin, bytes).await
    } else {
        let input = Input {
            cluster,
            payload: bytes,
            source: Source::Http,
            origin,
        };
        let outcome = intake.publisher.submit(input).await.await;
        let status = match &outcome {
            Outcome::Accepted { .. } => StatusCode::ACCEPTED,
            Outcome::Rejected { reason, .. } if reason == "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Rejected { reason, .. } if reason == REASON_CLUSTER_NOT_ALLOWED => StatusCode::FORBIDDEN,
            Outcome::Rejected { .. } => StatusCode::BAD_REQUEST,
            Outcome::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        with_retry_after(status, Json(outcome.to_reply()), intake.limits.retry_after_secs)
    }
}

async fn post_batch(intake: &HttpIntake, cluster: String, origin: String, body: Bytes) -> Response {
    let lines = match ndjson_lines(&body, intake.limits.batch_lines_max) {
        Ok(lines) => lines,
        Err(TooManyLines { lines_max }) => {
            intake.refused("too_many_lines");
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("a batch holds at most {lines_max} lines (--batch-lines-max); got more"),
            );
        }
    };
    if lines.is_empty() {
        intake.refused("empty_batch");
        return error_response(StatusCode::BAD_REQUEST, REASON_EMPTY_BATCH, "the batch holds no claim");
    }
    // Every line is submitted before any ack is awaited: the publishes are pipelined.
    let outcomes = intake.publisher.submit_batch(&cluster, &origin, lines).await.await;
    let mut reply = BatchReply {
        results: Vec::with_capacity(outcomes.len()),
        accepted: 0,
        rejected: 0,
        unavailable: 0,
    };
    let mut not_allowed = 0;
    for (line, outcome) in outcomes {
        match &outcome {
            Outcome::Accepted { .. } => reply.accepted += 1,
            Outcome::Rejected { reason, .. } => {
                reply.rejected += 1;
                if reason == REASON_CLUSTER_NOT_ALLOWED {
                    not_allowed += 1;
                }
            }
            Outcome::Unavailable { .. } => reply.unavailable += 1,
        }
        reply.results.push(LineResult {
            line,
            reply: outcome.to_reply(),
        });
    }
    let status = if reply.unavailable > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if not_allowed > 0 {
        // The cluster is the request's, so every line is refused for it.
        StatusCode::FORBIDDEN
    } else if reply.accepted == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    with_retry_after(status, Json(reply), intake.limits.retry_after_secs)
}

fn with_retry_after(status: StatusCode, body: impl IntoResponse, retry_after_secs: u32) -> Response {
    let mut response = (status, body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    }
    response
}

fn body_too_large(intake: &HttpIntake, limit: usize) -> Response {
    intake.refused("body_too_large");
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("a request body is at most {limit} bytes (--batch-bytes-max)"),
    )
}

fn error_response(status: StatusCode, reason: &str, message: &str) -> Response {
    (status, Json(Reply::error(reason, message))).into_response()
}

/// Whether reading a body failed because the listener's body limit
/// (`RequestBodyLimitLayer`) was passed.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Reads at most `limit` bytes of `body`; `None` when it is longer. The
/// excess is read and dropped up to `discard_max` bytes in all (memory stays
/// at `limit`), beyond that the rest is not read.
async fn read_body(body: Body, limit: usize, discard_max: usize) -> Result<Option<Bytes>, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut reader = BodyReader::new(limit, discard_max);
    while let Some(chunk) = stream.next().await {
        if !reader.chunk(&chunk?) {
            return Ok(None);
        }
    }
    Ok(reader.finish())
}
