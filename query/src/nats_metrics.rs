//! `GET /metrics/nats`: nats-server's own figures (its monitoring port's
//! `/varz` and `/jsz`) in Prometheus' text format, fetched on each scrape, so
//! Prometheus charts the server beside the services without an exporter
//! (none installs from the registries; see `backbeat_service::nats_monitor`).
//! Served only with `--nats-monitor-url`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use backbeat_service::nats_monitor::{render, Jsz, Varz, JSZ_PATH, VARZ_PATH};

/// A scrape waits this long for nats-server at most (Prometheus' own default timeout is 10 s).
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct Monitor {
    base: String,
    http: reqwest::Client,
}

/// The route, for the monitoring port at `base` (`http://host:8222`).
pub fn router(base: &str) -> anyhow::Result<Router> {
    let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
    let monitor = Monitor {
        base: base.trim_end_matches('/').to_string(),
        http,
    };
    Ok(Router::new().route("/metrics/nats", get(scrape)).with_state(monitor))
}

async fn scrape(State(monitor): State<Monitor>) -> Response {
    let varz: Varz = match fetch(&monitor, VARZ_PATH).await {
        Ok(varz) => varz,
        // Prometheus marks the target down (`up` 0): the server is unreachable.
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("nats-server monitoring: {e}\n")).into_response(),
    };
    // A server without JetStream answers /jsz with an error: its figures are left out.
    let jsz: Option<Jsz> = fetch(&monitor, JSZ_PATH).await.ok();
    let text = render(&varz, jsz.as_ref());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn fetch<T: serde::de::DeserializeOwned>(monitor: &Monitor, path: &str) -> anyhow::Result<T> {
    let url = format!("{}{path}", monitor.base);
    let response = monitor.http.get(&url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}
