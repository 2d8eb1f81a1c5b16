//! Shared pieces: an in-process gateway with its HTTP server, a beat emitter,
//! and readers of what the streams hold.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use backbeat_ingest::gateway::{Gateway, GatewayConfig};
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::{BeatFrame, BeatFrameType};
use backbeat_schemas::names::{beat_msg_id, subject, SubjectKind, EVENTS_STREAM, REJECTS_STREAM};
use backbeat_schemas::timestamp::format_utc_ms;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use backbeat_tests::NatsServer;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A gateway running in this process, with its HTTP server on a free port.
pub struct Running {
    pub gateway: Gateway,
    pub client: async_nats::Client,
    pub http_base: String,
    http_stop: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn start(nats_url: &str, config: GatewayConfig) -> Running {
        // As the binary does: intake and JetStream publishes on two connections.
        let nats = backbeat_service::NatsArgs::for_url(nats_url);
        let client = nats.connect("ingest-test-gateway").await.expect("gateway connects");
        let publish_client = nats.connect("ingest-test-publish").await.expect("gateway connects");
        let gateway = Gateway::start_with(client.clone(), publish_client, config)
            .await
            .expect("gateway starts");
        let (http_stop, stop_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let (addr, http) =
            backbeat_service::serve_http("127.0.0.1:0", gateway.router(), shutdown, gateway.http_limits())
                .await
                .expect("HTTP listens");
        Running {
            gateway,
            client,
            http_base: format!("http://{addr}"),
            http_stop: Some(http_stop),
            http: Some(http),
        }
    }

    pub fn claims_url(&self, cluster: &str) -> String {
        format!("{}/api/v1/clusters/{cluster}/claims", self.http_base)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.http_stop.take() {
            let _ = stop.send(());
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        self.gateway.shutdown(Duration::from_secs(5)).await;
    }
}

pub fn start_server() -> NatsServer {
    NatsServer::start().expect("nats-server starts (is nats-server on PATH? see deploy/install-nats.sh)")
}

pub async fn client(server: &NatsServer) -> async_nats::Client {
    server.client().await.expect("test client connects")
}

/// A valid claim of `agent` at `beat` (HLC from `physical_ms`).
pub fn claim(agent: &str, task: Option<&str>, beat: u64, physical_ms: u64) -> String {
    let task = task.map_or(String::new(), |t| format!(r#""task_id":"{t}","#));
    format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"{agent}",{task}"beat_index":{beat},"state":"executing","beats_left":3,"progress":0.5,"hlc":"{}"}}"#,
        Hlc::new(physical_ms, 0, 1)
    )
}

/// A stored message: stream sequence, subject, headers, payload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub headers: Option<async_nats::HeaderMap>,
    pub payload: Bytes,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
    }
}

/// Everything `stream` holds under `filter` now, in stream order.
pub async fn read_stream(client: &async_nats::Client, stream: &str, filter: &str) -> Vec<Stored> {
    let js = jetstream::new(client.clone());
    let mut handle = js.get_stream(stream).await.expect("stream exists");
    let info = handle.info().await.expect("stream info");
    if info.state.messages == 0 {
        return Vec::new();
    }
    let consumer = handle
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
        // No message under the filter at all: the consumer stays silent.
        let Ok(Some(message)) = next else { break };
        let message = message.expect("message");
        let info = message.info().expect("info");
        let pending = info.pending;
        out.push(Stored {
            seq: info.stream_sequence,
            subject: message.subject.to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
        if pending == 0 {
            break;
        }
    }
    out
}

pub async fn claims_stored(client: &async_nats::Client, cluster: &str) -> Vec<Stored> {
    read_stream(client, EVENTS_STREAM, &subject(cluster, SubjectKind::Claim)).await
}

pub async fn events_count(client: &async_nats::Client) -> u64 {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(EVENTS_STREAM).await.expect("events stream");
    stream.info().await.expect("info").state.messages
}

pub async fn dead_letters(client: &async_nats::Client) -> Vec<Stored> {
    read_stream(client, REJECTS_STREAM, "backbeat.*.reject").await
}

/// Publishes beat frames of `cluster` to JetStream every beat until dropped.
pub struct BeatEmitter {
    task: JoinHandle<()>,
}

impl BeatEmitter {
    pub fn start(client: async_nats::Client, cluster: &str, tempo_bpm: u32, bar_length: u64) -> BeatEmitter {
        let cluster = cluster.to_string();
        let task = tokio::spawn(async move {
            let js = jetstream::new(client);
            let interval = Duration::from_micros(60_000_000 / u64::from(tempo_bpm));
            let mut tick = tokio::time::interval(interval);
            let mut beat = 0u64;
            loop {
                tick.tick().await;
                let wall_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                let frame = BeatFrame {
                    kind: BeatFrameType,
                    cluster_id: cluster.clone(),
                    beat_index: beat,
                    downbeat: is_downbeat(beat, bar_length),
                    phase: phase_of(beat, bar_length),
                    hlc: Hlc::new(wall_ms, 0, 1),
                    deadline_at: format_utc_ms((wall_ms + interval.as_millis() as u64) as i64),
                    tempo_bpm,
                    window_id: window_id(&cluster, bar_length, window_of(beat, bar_length)),
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    beat_msg_id(&cluster, beat).as_str(),
                );
                let payload = serde_json::to_vec(&frame).unwrap();
                if let Ok(ack) = js
                    .publish_with_headers(subject(&cluster, SubjectKind::Beat), headers, payload.into())
                    .await
                {
                    let _ = ack.await;
                }
                beat += 1;
            }
        });
        BeatEmitter { task }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for BeatEmitter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The text of `/metrics`.
pub async fn metrics_text(http_base: &str) -> String {
    reqwest::get(format!("{http_base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of one sample line of `/metrics` (`name{labels}` exactly as printed).
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The JSON of `/api/v1/status`.
pub async fn status_json(http_base: &str) -> serde_json::Value {
    reqwest::get(format!("{http_base}/api/v1/status"))
        .await
        .expect("GET /api/v1/status")
        .json()
        .await
        .expect("status JSON")
}
