//! Raft RPC server: the `/raft/*` routes a node serves to its peers on its own
//! listener (`--raft-listen`), never on the public admin one. Bodies are JSON;
//! the answer is openraft's `Result` as JSON, so remote errors travel back.
//!
//! Every request must carry a valid `Backbeat-Raft-Auth` ([`crate::auth`]);
//! one without is refused with 401 and counted, before its body is parsed.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::contacts::Contacts;
use super::{NodeId, Raft, TypeConfig};
use crate::auth::{GroupSecret, RAFT_AUTH_HEADER};
use crate::clock::wall_unix_us;
use crate::watchdog::RaftIsolation;

/// The largest raft request body read (entries are a few hundred bytes each;
/// the state machine's snapshot is a few hundred bytes in all).
pub const RAFT_BODY_BYTES_MAX: usize = 1024 * 1024;

/// What `GET /raft/info` answers: how peers find this node's admin HTTP and
/// whether it could emit if it led.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    pub node_id: NodeId,
    /// This node's `--listen` address (tempo requests are forwarded there).
    pub admin_addr: String,
    /// Connected to NATS (the watchdog hands leadership only to a ready peer).
    pub ready: bool,
}

/// What the raft routes need besides raft itself.
#[derive(Clone)]
pub struct RpcContext {
    pub contacts: Arc<Contacts>,
    pub secret: GroupSecret,
    pub auth_failures: IntCounter,
    pub isolation: Arc<RaftIsolation>,
    /// This node's answer to `GET /raft/info`.
    pub info: Arc<dyn Fn() -> PeerInfo + Send + Sync>,
}

#[derive(Clone)]
struct RpcState {
    raft: Raft,
    context: RpcContext,
}

/// Routes `/raft/append`, `/raft/vote`, `/raft/snapshot` and `/raft/info`, all authenticated.
pub fn router(raft: Raft, context: RpcContext) -> Router {
    let state = RpcState { raft, context };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/info", get(info))
        .layer(DefaultBodyLimit::max(RAFT_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

fn refusal(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Checks the authenticator over method, path, stamp and body, in constant time.
async fn authenticate(State(state): State<RpcState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, RAFT_BODY_BYTES_MAX).await else {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("raft requests are at most {RAFT_BODY_BYTES_MAX} bytes"),
        );
    };
    let header = parts.headers.get(RAFT_AUTH_HEADER).and_then(|v| v.to_str().ok());
    let checked = state.context.secret.verify_raft_auth(
        header,
        parts.method.as_str(),
        parts.uri.path(),
        &body,
        wall_unix_us() / 1000,
    );
    if let Err(reason) = checked {
        state.context.auth_failures.inc();
        tracing::warn!(path = parts.uri.path(), %reason, "refused an unauthenticated raft request");
        return refusal(StatusCode::UNAUTHORIZED, "unauthorized", reason.to_string());
    }
    if state.context.isolation.is_isolated() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "isolated",
            "this node has given up leadership and is out of raft for a moment".into(),
        );
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

async fn info(State(state): State<RpcState>) -> Json<PeerInfo> {
    Json((state.context.info)())
}

async fn append(
    State(state): State<RpcState>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<serde_json::Value> {
    state.context.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.append_entries(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}

async fn vote(State(state): State<RpcState>, Json(request): Json<VoteRequest<NodeId>>) -> Json<serde_json::Value> {
    state.context.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.vote(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}

async fn snapshot(
    State(state): State<RpcState>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<serde_json::Value> {
    state.context.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.install_snapshot(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}
