//! The pulse's own HTTP API: `POST /api/v1/tempo`, and the bodies of
//! `/api/v1/status` and `/ready` (served by `backbeat_service::admin`).
//!
//! Tempo changes are decided on the leader, which alone knows the next beat it
//! will emit. A follower checks the token, then **forwards** the request to the
//! leader and relays its answer; when it knows no leader it answers 503, and a
//! forwarded request that reaches a node which is no longer leader gets 421
//! with the leader it knows of (no second hop, so no forwarding loops). The
//! leader's admin address is what it told this node over raft (`/raft/info`),
//! since `--peers` names raft addresses.
//!
//! Raft RPC is not served here but on `--raft-listen` ([`crate::raft::rpc`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::ServerState;
use serde::Deserialize;
use serde_json::json;

use crate::clock::PulseClock;
use crate::config::Settings;
use crate::raft::contacts::Contacts;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{ClientWriteError, Raft};
use crate::state::Request;
use crate::status::SharedStatus;
use crate::tempo::{check_change, check_range, target_beat, At};

/// A change is aimed past any beat due sooner than this, so that it is committed
/// (a raft round trip and an fsync on a majority) before that beat is emitted.
pub const COMMIT_MARGIN: Duration = Duration::from_millis(100);
/// Marks a request forwarded by a follower.
pub const FORWARDED_HEADER: &str = "x-backbeat-forwarded-by";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub settings: Arc<Settings>,
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    pub contacts: Arc<Contacts>,
    pub status: Arc<SharedStatus>,
    pub client: reqwest::Client,
    /// Set once the node has connected to NATS.
    pub nats: Arc<std::sync::OnceLock<async_nats::Client>>,
    pub clock: Arc<PulseClock>,
    /// Shown in `/api/v1/status` (the counter itself is the emitter's).
    pub foreign_beats: prometheus::IntCounter,
}

/// `POST /api/v1/tempo`.
pub fn router(state: ApiState) -> Router {
    Router::new().route("/api/v1/tempo", post(tempo)).with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TempoRequest {
    bpm: u64,
    #[serde(default)]
    at: At,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": code, "message": message.into()}))).into_response()
}

/// `None` when the request carries the admin token, else the refusal to send.
fn refusal(settings: &Settings, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = settings.admin_token.as_deref() else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "tempo_changes_disabled",
            "tempo changes are disabled on this node: start it with --admin-token (BACKBEAT_ADMIN_TOKEN)",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if backbeat_service::secret::matches(token.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token")),
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <admin token>",
        )),
    }
}

async fn tempo(State(api): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = refusal(&api.settings, &headers) {
        return refusal;
    }
    let request: TempoRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("body must be {{\"bpm\": 1..1000, \"at\": \"next_downbeat\"|\"next_beat\"}}: {e}"),
            )
        }
    };
    let bpm = u32::try_from(request.bpm).unwrap_or(u32::MAX);
    // A request that no state could accept is answered as such, before a
    // pending change, the leader or the schedule is consulted.
    if let Err(e) = check_range(bpm) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "tempo_rejected", e.to_string());
    }
    let metrics = api.raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return forward(&api, metrics.current_leader, &headers, body).await;
    }
    if let Some(reason) = degraded_reason(&api) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            format!("this leader cannot take tempo changes now: {reason}"),
        );
    }
    let state = api.state_machine.current();
    if !state.is_configured() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the group is not configured yet",
        );
    }
    let now = api.clock.now_unix_us();
    // Under the status lock: the lowest beat whose tempo the emitter has not
    // fixed yet, and the gate that holds that beat until this write is decided.
    let gated = api.status.update_with(|s| {
        if s.tempo_gate.is_some() {
            return Err(());
        }
        let planned = s
            .next_beat
            .or_else(|| state.schedule().map(|schedule| schedule.next_beat(now, 0)));
        let next_unemitted = match (planned, s.locked_beat) {
            (Some(planned), Some(locked)) => Some(planned.max(locked + 1)),
            (planned, locked) => planned.or(locked.map(|l| l + 1)),
        };
        Ok(next_unemitted)
    });
    let Ok(next_unemitted) = gated else {
        return error(
            StatusCode::CONFLICT,
            "change_pending",
            "another tempo change is being committed; retry after it applies",
        );
    };
    let (current, at_beat) = match state.schedule() {
        None => (state.tempo_bpm, 0),
        Some(schedule) => {
            let next_unemitted = next_unemitted.unwrap_or_else(|| schedule.next_beat(now, 0));
            if let Some(pending) = state.pending.filter(|p| p.at_beat >= next_unemitted) {
                return error(
                    StatusCode::CONFLICT,
                    "change_pending",
                    format!(
                        "a change to {} bpm is pending at beat {}; retry after it applies",
                        pending.bpm, pending.at_beat
                    ),
                );
            }
            let too_close = schedule.due_unix_us(next_unemitted).saturating_sub(now) < COMMIT_MARGIN.as_micros() as i64;
            (
                schedule.bpm_of(next_unemitted),
                target_beat(request.at, next_unemitted, too_close, state.bar_length),
            )
        }
    };
    if let Err(e) = check_change(current, bpm) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "tempo_rejected", e.to_string());
    }
    // Close the gate at `at_beat` unless the emitter fixed that beat meanwhile.
    let closed = api.status.update_with(|s| {
        let beat_gone = state.epoch.is_some() && s.locked_beat.is_some_and(|locked| locked >= at_beat);
        if s.tempo_gate.is_some() || beat_gone {
            return false;
        }
        s.tempo_gate = Some(at_beat);
        true
    });
    if !closed {
        return error(
            StatusCode::CONFLICT,
            "change_pending",
            "the beat this change aimed at went out meanwhile, or another change is being committed; retry",
        );
    }
    let _open_on_exit = GateGuard(&api.status);
    let change = Request::ChangeTempo { bpm, at_beat };
    if let Err(reason) = change.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "tempo_rejected", reason.to_string());
    }
    let limit = api.settings.election_timeout;
    let write = tokio::time::timeout(limit, api.raft.client_write(change));
    let Ok(written) = write.await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_committed",
            format!(
                "the change was not committed within {limit:?} (quorum lost?); it may still apply \
                 if the group recovers: check GET /api/v1/status before retrying"
            ),
        );
    };
    match written {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "accepted": true,
                "from_bpm": current,
                "bpm": bpm,
                "at": request.at,
                "at_beat": if state.epoch.is_some() { Some(at_beat) } else { None },
            })),
        )
            .into_response(),
        Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            forward(&api, f.leader_id, &headers, body).await
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "raft_unavailable", e.to_string()),
    }
}

/// Relays a tempo request to `leader`, once.
async fn forward(api: &ApiState, leader: Option<u64>, headers: &HeaderMap, body: Bytes) -> Response {
    let Some(leader) = leader else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "no leader is known (no quorum); retry later",
        );
    };
    let leader_addr = if leader == api.settings.node_id {
        Some(api.settings.listen.clone())
    } else {
        api.contacts.admin_addr(leader)
    };
    let Some(addr) = leader_addr else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            format!("leader {leader} has not told its admin address yet; retry later"),
        );
    };
    if headers.contains_key(FORWARDED_HEADER) || leader == api.settings.node_id {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            Json(json!({
                "error": "not_leader",
                "message": format!("node {} is not the leader; send to node {leader}", api.settings.node_id),
                "leader_id": leader,
                "leader_url": format!("http://{addr}/api/v1/tempo"),
            })),
        )
            .into_response();
    }
    let mut request = api
        .client
        .post(format!("http://{addr}/api/v1/tempo"))
        .header(FORWARDED_HEADER, api.settings.node_id.to_string())
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .timeout(Duration::from_secs(10))
        .body(body.to_vec());
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, auth.as_bytes());
    }
    match request.send().await {
        Ok(response) => {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            match response.bytes().await {
                Ok(bytes) => (
                    status,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    bytes.to_vec(),
                )
                    .into_response(),
                Err(e) => error(StatusCode::BAD_GATEWAY, "leader_unreachable", e.to_string()),
            }
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            "leader_unreachable",
            format!("forwarding to leader {leader} at {addr}: {e}"),
        ),
    }
}

/// Why this node cannot do its job, if so: no NATS, no leader, a leader without quorum,
/// a leader out of touch, or an emitter problem on the leader.
pub fn degraded_reason(api: &ApiState) -> Option<String> {
    match api.nats.get() {
        None => return Some("connecting to NATS".into()),
        Some(client) if client.connection_state() != async_nats::connection::State::Connected => {
            return Some("NATS disconnected".into())
        }
        Some(_) => {}
    }
    let metrics = api.raft.metrics().borrow().clone();
    let election_timeout = api.settings.election_timeout;
    match (metrics.state, metrics.current_leader) {
        (_, None) => Some("no leader: the group has no quorum".into()),
        (ServerState::Leader, _) => {
            let emitter = api.status.get();
            if emitter.emitting {
                None
            } else {
                Some(
                    emitter
                        .problem
                        .unwrap_or_else(|| "leader without quorum: not emitting".into()),
                )
            }
        }
        (_, Some(leader)) => {
            let fresh = api
                .contacts
                .since_raft_contact(leader)
                .is_some_and(|since| since < election_timeout);
            (!fresh).then(|| format!("leader {leader} not heard from within the election timeout"))
        }
    }
}

/// The body of `/api/v1/status`.
pub fn status_json(api: &ApiState) -> serde_json::Value {
    let metrics = api.raft.metrics().borrow().clone();
    let state = api.state_machine.current();
    let emitter = api.status.get();
    let degraded = degraded_reason(api);
    let role = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    // The tempo in force: of the last beat this node emitted or saw, or else
    // of the beat the grid has reached by now.
    let current_tempo = match state.schedule() {
        Some(schedule) => {
            let grid_beat = schedule
                .first_beat_due_at_or_after(api.clock.now_unix_us().saturating_add(1))
                .saturating_sub(1);
            schedule.bpm_of(emitter.last_beat_seen.map_or(grid_beat, |seen| seen.max(grid_beat)))
        }
        None => state.tempo_bpm,
    };
    json!({
        "node_id": api.settings.node_id,
        "leader_id": metrics.current_leader,
        "term": metrics.current_term,
        "role": role,
        "cluster_id": state.cluster_id.as_deref().unwrap_or(&api.settings.cluster_id),
        "bar_length": if state.is_configured() { state.bar_length } else { api.settings.bar_length },
        "tempo_bpm": current_tempo,
        "pending_change": state.pending,
        "epoch": state.epoch,
        "emitting": emitter.emitting,
        "last_beat": emitter.last_beat_seen,
        "last_beat_emitted": emitter.last_beat_emitted,
        "next_beat": emitter.next_beat,
        "peers": api.contacts.health(&api.settings.peers),
        "raft_listen": api.settings.raft_listen,
        "foreign_beats": api.foreign_beats.get(),
        "raft": {
            "last_log_index": metrics.last_log_index,
            "last_applied": metrics.last_applied.map(|l| l.index),
            "millis_since_quorum_ack": metrics.millis_since_quorum_ack,
        },
        "degraded": degraded.is_some(),
        "degraded_reason": degraded,
    })
}

/// Opens the tempo gate when the write it guarded is decided (or abandoned).
struct GateGuard<'a>(&'a crate::status::SharedStatus);

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        self.0.update(|s| s.tempo_gate = None);
    }
}
