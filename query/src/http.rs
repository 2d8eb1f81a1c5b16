//! The HTTP API on `--listen`: `POST /api/v1/sql` (JSON, CSV or Arrow IPC by
//! `Accept`), `GET /api/v1/windows` and `GET /api/v1/windows/{window_id}`
//! (BarReports of the archive and the tail, as SPEC §2 documents), beside the common `/health`, `/ready`, `/metrics`
//! and `/api/v1/status`. With a token configured, the API routes need
//! `Authorization: Bearer <token>`; the common routes never do.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use backbeat_schemas::names::is_valid_cluster_id;
use backbeat_schemas::BarReport;
use serde::Deserialize;

use crate::encode::{encode, Format};
use crate::engine::QueryEngine;
use crate::error::{ErrorKind, QueryError};
use crate::tables::bar_reports::reports_from_batches;
use crate::tables::columns::int64;

/// The most windows one `/api/v1/windows` answer holds.
pub const WINDOWS_PER_ANSWER_MAX: usize = 10_000;

/// What the API routes share.
#[derive(Clone)]
pub struct ApiState {
    pub engine: QueryEngine,
    /// The bearer token the API routes need, if any.
    pub token: Option<Arc<str>>,
}

/// The API routes (merge into the common admin router).
pub fn api_router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/windows", get(windows))
        .route("/api/v1/windows/{window_id}", get(window))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(State(state): State<ApiState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        state.engine.record(Some(e.kind));
        return error_response(&e);
    }
    let request: SqlRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            let error = QueryError::new(
                ErrorKind::BadRequest,
                format!("the body must be a JSON object {{\"sql\": \"...\"}}: {e}"),
            );
            state.engine.record(Some(error.kind));
            return error_response(&error);
        }
    };
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match state.engine.execute(&request.sql).await {
        Ok(output) => match encode(&output, format) {
            Ok(bytes) => ([(header::CONTENT_TYPE, format.content_type())], bytes).into_response(),
            Err(e) => error_response(&QueryError::internal(format!("encoding the result: {e}"))),
        },
        Err(e) => error_response(&e),
    }
}

#[derive(Debug, Deserialize)]
struct WindowsQuery {
    cluster: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
}

/// The reports of `cluster` (every cluster when absent) with a window index
/// in `from..=to`, archived or in the tail, by cluster and window, as a JSON
/// array of their documents.
async fn windows(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<WindowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return error_response(&e);
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => {
            return error_response(&QueryError::new(
                ErrorKind::BadRequest,
                format!("cluster, from, to (window indices) and limit: {e}"),
            ))
        }
    };
    let limit = query.limit.unwrap_or(1000).min(WINDOWS_PER_ANSWER_MAX);
    let mut filter = format!(
        "window_index BETWEEN {} AND {}",
        int64(query.from.unwrap_or(0)),
        int64(query.to.unwrap_or(u64::MAX))
    );
    if let Some(cluster) = &query.cluster {
        if !is_valid_cluster_id(cluster) {
            return error_response(&QueryError::new(
                ErrorKind::BadRequest,
                format!("cluster {cluster:?} is not a cluster id (SPEC §1)"),
            ));
        }
        // A valid id is [a-z0-9-] only: nothing to quote.
        filter.push_str(&format!(" AND cluster_id = '{cluster}'"));
    }
    match reports(&state, &filter, limit).await {
        Ok(documents) => json_array(&documents),
        Err(e) => error_response(&e),
    }
}

async fn window(State(state): State<ApiState>, headers: HeaderMap, Path(window_id): Path<String>) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return error_response(&e);
    }
    // A window id is 32 lowercase hex digits (SPEC §4); anything else names no window.
    let is_window_id = window_id.len() == 32 && window_id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let found = if is_window_id {
        reports(&state, &format!("window_id = '{window_id}'"), 1).await
    } else {
        Ok(Vec::new())
    };
    match found {
        Ok(documents) => match documents.into_iter().next() {
            Some(document) => ([(header::CONTENT_TYPE, "application/json")], document).into_response(),
            None => error_response(&QueryError::new(
                ErrorKind::NotFound,
                format!("no report of window {window_id} is held"),
            )),
        },
        Err(e) => error_response(&e),
    }
}

/// The reports matching `filter` (SQL over `bar_reports`: the archive and the
/// tail, within the query limits), by cluster and window, at most `limit`,
/// each as its SPEC §2 JSON document.
async fn reports(state: &ApiState, filter: &str, limit: usize) -> Result<Vec<String>, QueryError> {
    let sql = format!("SELECT * FROM bar_reports WHERE {filter} ORDER BY cluster_id, window_index LIMIT {limit}");
    let output = state.engine.execute(&sql).await?;
    let reports = reports_from_batches(&output.batches)
        .map_err(|e| QueryError::internal(format!("bar_reports rows as reports: {e}")))?;
    Ok(reports.iter().map(BarReport::to_json).collect())
}

/// Documents (each valid JSON) as one JSON array, their bytes unchanged.
fn json_array(documents: &[String]) -> Response {
    let mut body = String::with_capacity(documents.iter().map(|d| d.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (index, document) in documents.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(document);
    }
    body.push(']');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(crate) fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), QueryError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if backbeat_service::secret::matches(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(QueryError::new(
            ErrorKind::Unauthorized,
            "this server needs Authorization: Bearer <token> (--token)",
        ))
    }
}

/// `{"error": {"kind", "sqlstate", "message"}}` with the kind's status.
pub fn error_response(error: &QueryError) -> Response {
    let status = StatusCode::from_u16(error.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error": {
        "kind": error.kind.as_str(),
        "sqlstate": error.kind.sqlstate(),
        "message": error.message,
    }});
    let mut response = (status, axum::Json(body)).into_response();
    if error.kind == ErrorKind::TooManyQueries {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}
