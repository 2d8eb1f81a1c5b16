//! The processor's admin HTTP: the common endpoints plus `/api/v1/windows`
//! (open windows and recent reports per cluster) and `/api/v1/windows/{id}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backbeat_schemas::BarReport;
use backbeat_service::admin::{admin_router, AdminState};
use serde::Serialize;

use crate::metrics::Metrics;
use crate::status::{ClusterView, OpenWindow, SharedStatus};

/// The whole router; `connected` tells whether NATS is connected right now.
pub fn router(metrics: &Metrics, status: SharedStatus, connected: impl Fn() -> bool + Send + Sync + 'static) -> Router {
    let ready_status = status.clone();
    let status_for_body = status.clone();
    let admin = AdminState::new(
        metrics.registry.clone(),
        move || {
            let s = ready_status.get();
            if !connected() {
                Err("not connected to NATS".into())
            } else if let Some(error) = s.error {
                Err(error)
            } else if let Some(reason) = s.lease.not_ready_reason() {
                Err(reason)
            } else if let Some(reason) = s.publish_error {
                Err(reason)
            } else if !s.started {
                Err("starting: loading the checkpoint and creating the consumer".into())
            } else if !s.caught_up {
                Err(format!("catching up: {} messages behind", s.consumer_lag))
            } else {
                Ok(())
            }
        },
        move || {
            let mut s = status_for_body.get();
            // The status page is a summary; the windows endpoint has the reports.
            for cluster in s.clusters.values_mut() {
                cluster.recent_reports.clear();
            }
            serde_json::to_value(s).unwrap_or_default()
        },
    );
    admin_router(admin).merge(
        Router::new()
            .route("/api/v1/windows", get(windows))
            .route("/api/v1/windows/{id}", get(window))
            .with_state(status),
    )
}

/// Serialized from the structs themselves (not through `serde_json::Value`,
/// which would sort keys), so each report reads in SPEC §2 field order.
#[derive(Serialize)]
struct WindowsBody<'a> {
    clusters: &'a BTreeMap<String, ClusterView>,
}

#[derive(Serialize)]
struct ClosedWindow<'a> {
    state: &'static str,
    report: &'a BarReport,
}

#[derive(Serialize)]
struct OpenWindowBody<'a> {
    state: &'static str,
    cluster_id: &'a str,
    window: &'a OpenWindow,
}

async fn windows(State(status): State<SharedStatus>) -> Response {
    let s = status.get();
    Json(WindowsBody { clusters: &s.clusters }).into_response()
}

async fn window(State(status): State<SharedStatus>, Path(id): Path<String>) -> Response {
    let s = status.get();
    for cluster in s.clusters.values() {
        if let Some(report) = cluster.recent_reports.iter().find(|r| r.window_id == id) {
            return Json(ClosedWindow {
                state: "closed",
                report,
            })
            .into_response();
        }
        if let Some(open) = cluster.open_windows.iter().find(|w| w.window_id == id) {
            return Json(OpenWindowBody {
                state: "open",
                cluster_id: &cluster.cluster_id,
                window: open,
            })
            .into_response();
        }
    }
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "error": format!("window {id} is neither open nor among the recent reports; query BACKBEAT_BARS or use `backbeat-processor replay`")
        })),
    )
        .into_response()
}
