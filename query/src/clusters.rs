//! `GET /api/v1/clusters`: each cluster's current beat and tempo (the last
//! beat in `beats`), its last window reported (`bar_reports`) and, with
//! `--pulse-urls`, its pulse group's leader. The console's cluster list.
//!
//! The leader is not in any stream, so it is asked of the pulse nodes
//! themselves: each node's `/api/v1/status`, fetched server-side (the console
//! only ever calls its own origin), all at once, each within
//! [`PULSE_STATUS_TIMEOUT`] and [`PULSE_STATUS_BYTES_MAX`]. A node that does
//! not answer is listed with the reason; it never fails the answer.
//!
//! The beats and windows are read with SQL through the [`QueryEngine`], so
//! they are what a query would see, within the same limits and counted in the
//! same metrics (a console refreshing every few seconds runs two small
//! aggregate queries per refresh).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::encode::{encode, Format};
use crate::engine::{QueryEngine, QueryOutput};
use crate::error::QueryError;
use crate::http::{authorize, error_response, ApiState};

/// How long one pulse node's status may take, connection included.
pub const PULSE_STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest status document read from a pulse node.
pub const PULSE_STATUS_BYTES_MAX: usize = 64 << 10;
/// The most pulse nodes `--pulse-urls` may name.
pub const PULSE_URLS_MAX: usize = 64;

/// The last beat of each cluster held in `beats`.
const BEATS_SQL: &str = "SELECT cluster_id, max(beat_index) AS current_beat, \
     first_value(window_index ORDER BY beat_index DESC) AS window_index, \
     first_value(tempo_bpm ORDER BY beat_index DESC) AS tempo_bpm, \
     first_value(hlc_time ORDER BY beat_index DESC) AS beat_time \
     FROM beats GROUP BY cluster_id";
/// The last window of each cluster held in `bar_reports`.
const WINDOWS_SQL: &str = "SELECT cluster_id, count(*) AS windows_held, \
     max(window_index) AS window_index, \
     first_value(window_id ORDER BY window_index DESC) AS window_id, \
     first_value(published_at ORDER BY window_index DESC) AS published_at, \
     first_value(agents_reporting ORDER BY window_index DESC) AS agents_reporting \
     FROM bar_reports GROUP BY cluster_id";

/// `--pulse-urls`, checked: http(s) URLs, at most [`PULSE_URLS_MAX`].
pub fn parse_pulse_urls(urls: &[String]) -> anyhow::Result<Vec<reqwest::Url>> {
    if urls.len() > PULSE_URLS_MAX {
        bail!("--pulse-urls names {} nodes; at most {PULSE_URLS_MAX}", urls.len());
    }
    urls.iter()
        .map(|text| {
            let url =
                reqwest::Url::parse(text.trim()).with_context(|| format!("--pulse-urls: {text:?} is not a URL"))?;
            if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
                bail!("--pulse-urls: {text:?} is not an http:// or https:// URL");
            }
            Ok(url)
        })
        .collect()
}

/// The pulse nodes `/api/v1/clusters` asks for their status.
#[derive(Debug, Clone)]
pub struct PulseGroup {
    urls: Vec<reqwest::Url>,
    http: reqwest::Client,
}

impl PulseGroup {
    pub fn new(urls: Vec<reqwest::Url>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(PULSE_STATUS_TIMEOUT)
            .connect_timeout(PULSE_STATUS_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client for --pulse-urls")?;
        Ok(PulseGroup { urls, http })
    }

    /// Every node's status, in the order of `--pulse-urls`.
    pub async fn statuses(&self) -> Vec<PulseNode> {
        let asks = self.urls.iter().map(|url| async move {
            match self.status_of(url).await {
                Ok(status) => PulseNode {
                    url: url.to_string(),
                    status: Some(status),
                    error: None,
                },
                Err(e) => PulseNode {
                    url: url.to_string(),
                    status: None,
                    error: Some(format!("{e:#}")),
                },
            }
        });
        futures::future::join_all(asks).await
    }

    async fn status_of(&self, base: &reqwest::Url) -> anyhow::Result<PulseStatus> {
        let url = base.join("api/v1/status").context("the status URL")?;
        let mut response = self.http.get(url).send().await.map_err(without_url)?;
        if !response.status().is_success() {
            bail!("/api/v1/status answered {}", response.status());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(without_url)? {
            if body.len() + chunk.len() > PULSE_STATUS_BYTES_MAX {
                bail!("/api/v1/status is larger than {PULSE_STATUS_BYTES_MAX} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).context("/api/v1/status is not a pulse status")
    }
}

/// reqwest's errors name the URL, which the answer already gives beside them.
fn without_url(error: reqwest::Error) -> anyhow::Error {
    let timed_out = error.is_timeout();
    let error = error.without_url();
    if timed_out {
        anyhow::anyhow!("no answer within {} ms", PULSE_STATUS_TIMEOUT.as_millis())
    } else {
        anyhow::Error::new(error)
    }
}

/// One pulse node as asked: its status, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct PulseNode {
    pub url: String,
    #[serde(flatten)]
    pub status: Option<PulseStatus>,
    pub error: Option<String>,
}

/// The fields of a pulse node's `/api/v1/status` read here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulseStatus {
    pub node_id: u64,
    pub cluster_id: String,
    pub role: String,
    pub leader_id: Option<u64>,
    #[serde(default)]
    pub term: Option<u64>,
    pub tempo_bpm: Option<u32>,
    pub last_beat: Option<u64>,
    #[serde(default)]
    pub degraded: bool,
}

/// A cluster's pulse leader, as its nodes tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Leader {
    pub node_id: u64,
    /// The leader's own URL and status when it answered; else only a follower named it.
    pub url: Option<String>,
    pub term: Option<u64>,
    pub tempo_bpm: Option<u32>,
    pub last_beat: Option<u64>,
    pub degraded: Option<bool>,
}

/// The leader of `cluster`: the node of that cluster that says it leads, or
/// else the leader a node of that cluster names; `None` when none knows one.
pub fn leader_of(cluster: &str, nodes: &[PulseNode]) -> Option<Leader> {
    let of_cluster = || {
        nodes
            .iter()
            .filter_map(|n| Some((n, n.status.as_ref()?)))
            .filter(|(_, s)| s.cluster_id == cluster)
    };
    if let Some((node, status)) = of_cluster().find(|(_, s)| s.role == "leader") {
        return Some(Leader {
            node_id: status.node_id,
            url: Some(node.url.clone()),
            term: status.term,
            tempo_bpm: status.tempo_bpm,
            last_beat: status.last_beat,
            degraded: Some(status.degraded),
        });
    }
    let (_, named) = of_cluster().find(|(_, s)| s.leader_id.is_some())?;
    Some(Leader {
        node_id: named.leader_id?,
        url: None,
        term: named.term,
        tempo_bpm: None,
        last_beat: None,
        degraded: None,
    })
}

/// The route's state: the API's, and the pulse nodes to ask.
#[derive(Clone)]
pub struct ClustersState {
    pub api: ApiState,
    pub pulse: Arc<PulseGroup>,
}

/// `GET /api/v1/clusters` (merge into the service's router).
pub fn clusters_router(state: ClustersState) -> Router {
    Router::new().route("/api/v1/clusters", get(clusters)).with_state(state)
}

async fn clusters(State(state): State<ClustersState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state.api, &headers) {
        state.api.engine.record(Some(e.kind));
        return error_response(&e);
    }
    // One query after the other (each takes one of --max-concurrent-queries),
    // while the pulse nodes are asked.
    let tables = async {
        let beats = rows_by_cluster(&state.api.engine, BEATS_SQL).await?;
        let windows = rows_by_cluster(&state.api.engine, WINDOWS_SQL).await?;
        Ok::<_, QueryError>((beats, windows))
    };
    match tokio::join!(tables, state.pulse.statuses()) {
        (Ok((beats, windows)), nodes) => Json(clusters_json(&beats, &windows, &nodes)).into_response(),
        (Err(e), _) => error_response(&e),
    }
}

/// The answer: one entry per cluster seen in `beats`, `bar_reports` or a pulse node's status.
fn clusters_json(
    beats: &BTreeMap<String, Map<String, Value>>,
    windows: &BTreeMap<String, Map<String, Value>>,
    nodes: &[PulseNode],
) -> Value {
    let mut ids: Vec<&str> = beats.keys().chain(windows.keys()).map(String::as_str).collect();
    ids.extend(
        nodes
            .iter()
            .filter_map(|n| Some(n.status.as_ref()?.cluster_id.as_str())),
    );
    ids.sort_unstable();
    ids.dedup();
    let field = |rows: &BTreeMap<String, Map<String, Value>>, id: &str, name: &str| {
        rows.get(id)
            .and_then(|row| row.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let clusters: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let last_window = windows.get(id).map(|_| {
                serde_json::json!({
                    "window_index": field(windows, id, "window_index"),
                    "window_id": field(windows, id, "window_id"),
                    "published_at": field(windows, id, "published_at"),
                    "agents_reporting": field(windows, id, "agents_reporting"),
                })
            });
            serde_json::json!({
                "cluster_id": id,
                "current_beat": field(beats, id, "current_beat"),
                "window_index": field(beats, id, "window_index"),
                "tempo_bpm": field(beats, id, "tempo_bpm"),
                "beat_time": field(beats, id, "beat_time"),
                "windows_held": field(windows, id, "windows_held"),
                "last_window": last_window,
                "leader": leader_of(id, nodes),
            })
        })
        .collect();
    serde_json::json!({"clusters": clusters, "pulse_nodes": nodes})
}

/// Runs `sql` (whose first column is `cluster_id`) and keys its rows, as JSON objects, by cluster.
async fn rows_by_cluster(engine: &QueryEngine, sql: &str) -> Result<BTreeMap<String, Map<String, Value>>, QueryError> {
    let output = engine.execute(sql).await?;
    Ok(rows_as_objects(&output)?
        .into_iter()
        .filter_map(|row| Some((row.get("cluster_id")?.as_str()?.to_string(), row)))
        .collect())
}

/// A result's rows as JSON objects, valued as the HTTP API's JSON writes them.
fn rows_as_objects(output: &QueryOutput) -> Result<Vec<Map<String, Value>>, QueryError> {
    let bytes = encode(output, Format::Json).map_err(|e| QueryError::internal(format!("encoding the result: {e}")))?;
    let answer: Value =
        serde_json::from_slice(&bytes).map_err(|e| QueryError::internal(format!("reading the result: {e}")))?;
    let names: Vec<String> = output.schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows = answer["rows"].as_array().cloned().unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|row| match row {
            Value::Array(cells) => names.iter().cloned().zip(cells).collect(),
            _ => Map::new(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(url: &str, status: Option<(u64, &str, &str, Option<u64>)>) -> PulseNode {
        PulseNode {
            url: url.to_string(),
            status: status.map(|(node_id, cluster_id, role, leader_id)| PulseStatus {
                node_id,
                cluster_id: cluster_id.to_string(),
                role: role.to_string(),
                leader_id,
                term: Some(3),
                tempo_bpm: Some(120),
                last_beat: Some(99),
                degraded: false,
            }),
            error: status.is_none().then(|| "refused".to_string()),
        }
    }

    #[test]
    fn the_leader_is_the_node_that_leads_else_the_one_named() {
        let nodes = [
            node("http://a/", Some((1, "c", "follower", Some(2)))),
            node("http://b/", Some((2, "c", "leader", Some(2)))),
            node("http://x/", None),
            node("http://d/", Some((7, "d", "follower", Some(8)))),
        ];
        let leader = leader_of("c", &nodes).unwrap();
        assert_eq!((leader.node_id, leader.url.as_deref()), (2, Some("http://b/")));
        assert_eq!(leader.tempo_bpm, Some(120));
        let named = leader_of("d", &nodes).unwrap();
        assert_eq!((named.node_id, named.url, named.tempo_bpm), (8, None, None));
        assert_eq!(leader_of("e", &nodes), None);
        let no_leader = [node("http://a/", Some((1, "c", "candidate", None)))];
        assert_eq!(leader_of("c", &no_leader), None);
    }

    #[test]
    fn pulse_urls_are_http_urls() {
        let urls = parse_pulse_urls(&["http://127.0.0.1:7001".into(), " https://p:7002/base/ ".into()]).unwrap();
        assert_eq!(
            urls[0].join("api/v1/status").unwrap().as_str(),
            "http://127.0.0.1:7001/api/v1/status"
        );
        assert_eq!(
            urls[1].join("api/v1/status").unwrap().as_str(),
            "https://p:7002/base/api/v1/status"
        );
        for bad in ["127.0.0.1:7001", "ftp://h/", "not a url"] {
            assert!(parse_pulse_urls(&[bad.into()]).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=PULSE_URLS_MAX).map(|i| format!("http://h:{i}")).collect();
        assert!(parse_pulse_urls(&many).is_err());
    }

    #[test]
    fn every_cluster_seen_anywhere_is_listed() {
        let row = |pairs: &[(&str, Value)]| -> Map<String, Value> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
        };
        let beats = BTreeMap::from([(
            "c".to_string(),
            row(&[("current_beat", 41.into()), ("tempo_bpm", 120.into())]),
        )]);
        let windows = BTreeMap::from([(
            "b".to_string(),
            row(&[("window_index", 9.into()), ("windows_held", 10.into())]),
        )]);
        let nodes = [node("http://a/", Some((1, "c", "leader", Some(1))))];
        let answer = clusters_json(&beats, &windows, &nodes);
        let clusters = answer["clusters"].as_array().unwrap();
        let ids: Vec<&str> = clusters.iter().map(|c| c["cluster_id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(clusters[0]["last_window"]["window_index"], 9);
        assert_eq!(clusters[0]["current_beat"], Value::Null);
        assert_eq!(clusters[0]["leader"], Value::Null);
        assert_eq!(clusters[1]["current_beat"], 41);
        assert_eq!(clusters[1]["last_window"], Value::Null);
        assert_eq!(clusters[1]["leader"]["node_id"], 1);
        assert_eq!(answer["pulse_nodes"][0]["role"], "leader");
    }
}
