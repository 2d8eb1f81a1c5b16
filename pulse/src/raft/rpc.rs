//! Raft RPC server: the `/raft/*` routes a node serves to its peers. Bodies are
//! JSON; the answer is openraft's `Result` as JSON, so remote errors travel back.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use super::contacts::Contacts;
use super::{NodeId, Raft, TypeConfig};

#[derive(Clone)]
struct RpcState {
    raft: Raft,
    contacts: Arc<Contacts>,
}

/// Routes `/raft/append`, `/raft/vote`, `/raft/snapshot`.
pub fn router(raft: Raft, contacts: Arc<Contacts>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .with_state(RpcState { raft, contacts })
}

async fn append(
    State(state): State<RpcState>,
    Json(request): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<serde_json::Value> {
    state.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.append_entries(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}

async fn vote(State(state): State<RpcState>, Json(request): Json<VoteRequest<NodeId>>) -> Json<serde_json::Value> {
    state.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.vote(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}

async fn snapshot(
    State(state): State<RpcState>,
    Json(request): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<serde_json::Value> {
    state.contacts.record_contact(request.vote.leader_id().node_id);
    let result = state.raft.install_snapshot(request).await;
    Json(serde_json::to_value(result).unwrap_or_default())
}
