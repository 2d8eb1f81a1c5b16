//! nats-server's own figures in Prometheus' text format. nats-server serves
//! them only as JSON on its monitoring port (`/varz`, `/jsz`), and no exporter
//! installs from the registries this project uses, so a service that knows the
//! monitoring address renders them on each scrape. The names are those of the
//! upstream `prometheus-nats-exporter` (`gnatsd_varz_*`, `jetstream_*`), so
//! dashboards written for it read these too.
//!
//! Pure: the caller fetches the two documents; this module only reads them.

use prometheus::core::Collector;
use prometheus::{Encoder as _, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::Deserialize;

/// The part of `/varz` rendered.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Varz {
    pub server_id: String,
    pub server_name: String,
    pub connections: i64,
    pub total_connections: i64,
    pub subscriptions: i64,
    pub slow_consumers: i64,
    pub routes: i64,
    pub remotes: i64,
    pub leafnodes: i64,
    pub mem: i64,
    pub cores: i64,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// The part of `/jsz?streams=true&consumers=true` rendered.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Jsz {
    pub streams: i64,
    pub consumers: i64,
    pub messages: i64,
    pub bytes: i64,
    pub memory: i64,
    pub storage: i64,
    pub account_details: Vec<AccountDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AccountDetail {
    pub name: String,
    pub stream_detail: Vec<StreamDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamDetail {
    pub name: String,
    pub cluster: Option<StreamCluster>,
    pub state: StreamState,
    pub consumer_detail: Vec<ConsumerDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamCluster {
    pub leader: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamState {
    pub messages: i64,
    pub bytes: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub consumer_count: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ConsumerDetail {
    pub name: String,
    pub num_pending: i64,
    pub num_ack_pending: i64,
    pub num_redelivered: i64,
    pub num_waiting: i64,
}

/// The monitoring URL's paths this module reads.
pub const VARZ_PATH: &str = "/varz";
pub const JSZ_PATH: &str = "/jsz?streams=true&consumers=true";

/// `/varz` and `/jsz` as Prometheus text. Every series carries `server_id`
/// (and `server_name`), as the upstream exporter's do.
pub fn render(varz: &Varz, jsz: Option<&Jsz>) -> String {
    let registry = Registry::new();
    let server = [varz.server_id.as_str(), varz.server_name.as_str()];
    let server_labels = ["server_id", "server_name"];

    let gauges: [(&str, &str, i64); 9] = [
        ("gnatsd_varz_connections", "Client connections open", varz.connections),
        (
            "gnatsd_varz_total_connections",
            "Client connections since start",
            varz.total_connections,
        ),
        ("gnatsd_varz_subscriptions", "Subscriptions", varz.subscriptions),
        (
            "gnatsd_varz_slow_consumers",
            "Slow consumers since start",
            varz.slow_consumers,
        ),
        ("gnatsd_varz_routes", "Cluster routes", varz.routes),
        ("gnatsd_varz_remotes", "Cluster remotes", varz.remotes),
        ("gnatsd_varz_leafnodes", "Leaf node connections", varz.leafnodes),
        ("gnatsd_varz_mem", "Resident memory, bytes", varz.mem),
        ("gnatsd_varz_cores", "CPU cores", varz.cores),
    ];
    for (name, help, value) in gauges {
        let gauge = gauge_vec(&registry, name, help, &server_labels);
        gauge.with_label_values(&server).set(value);
    }
    // Totals since the server started, typed as gauges as the upstream
    // exporter types them (`rate()` reads them all the same), so the names
    // stay theirs without promtool's `_total` rule for counters.
    let totals: [(&str, &str, u64); 4] = [
        ("gnatsd_varz_in_msgs", "Messages received since start", varz.in_msgs),
        ("gnatsd_varz_out_msgs", "Messages sent since start", varz.out_msgs),
        ("gnatsd_varz_in_bytes", "Bytes received since start", varz.in_bytes),
        ("gnatsd_varz_out_bytes", "Bytes sent since start", varz.out_bytes),
    ];
    for (name, help, value) in totals {
        let gauge = gauge_vec(&registry, name, help, &server_labels);
        gauge
            .with_label_values(&server)
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    if let Some(jsz) = jsz {
        let totals: [(&str, &str, i64); 6] = [
            ("jetstream_server_total_streams", "Streams", jsz.streams),
            ("jetstream_server_total_consumers", "Consumers", jsz.consumers),
            ("jetstream_server_total_messages", "Messages stored", jsz.messages),
            ("jetstream_server_total_message_bytes", "Bytes stored", jsz.bytes),
            (
                "jetstream_server_total_memory_bytes",
                "Memory used by streams",
                jsz.memory,
            ),
            (
                "jetstream_server_total_storage_bytes",
                "Storage used by streams",
                jsz.storage,
            ),
        ];
        for (name, help, value) in totals {
            let gauge = gauge_vec(&registry, name, help, &server_labels);
            gauge.with_label_values(&server).set(value);
        }

        let stream_labels = ["server_id", "account", "stream_name", "is_stream_leader"];
        let stream_gauges = [
            ("jetstream_stream_total_messages", "Messages in the stream"),
            ("jetstream_stream_total_bytes", "Bytes in the stream"),
            ("jetstream_stream_first_seq", "First sequence in the stream"),
            ("jetstream_stream_last_seq", "Last sequence in the stream"),
            ("jetstream_stream_consumers", "Consumers of the stream"),
        ]
        .map(|(name, help)| gauge_vec(&registry, name, help, &stream_labels));
        let consumer_labels = ["server_id", "account", "stream_name", "consumer_name"];
        let consumer_gauges = [
            (
                "jetstream_consumer_num_pending",
                "Messages not yet delivered to the consumer",
            ),
            (
                "jetstream_consumer_num_ack_pending",
                "Messages delivered, not yet acknowledged",
            ),
            ("jetstream_consumer_num_redelivered", "Messages redelivered"),
            ("jetstream_consumer_num_waiting", "Pull requests waiting"),
        ]
        .map(|(name, help)| gauge_vec(&registry, name, help, &consumer_labels));

        for account in &jsz.account_details {
            for stream in &account.stream_detail {
                // Without a cluster every stream is led by its one server.
                let leader = stream.cluster.as_ref().and_then(|c| c.leader.as_deref());
                let is_leader = leader.is_none_or(|l| l == varz.server_id || l == varz.server_name);
                let labels = [
                    varz.server_id.as_str(),
                    account.name.as_str(),
                    stream.name.as_str(),
                    if is_leader { "true" } else { "false" },
                ];
                let state = &stream.state;
                let values = [
                    state.messages,
                    state.bytes,
                    state.first_seq,
                    state.last_seq,
                    state.consumer_count,
                ];
                for (gauge, value) in stream_gauges.iter().zip(values) {
                    gauge.with_label_values(&labels).set(value);
                }
                for consumer in &stream.consumer_detail {
                    let labels = [
                        varz.server_id.as_str(),
                        account.name.as_str(),
                        stream.name.as_str(),
                        consumer.name.as_str(),
                    ];
                    let values = [
                        consumer.num_pending,
                        consumer.num_ack_pending,
                        consumer.num_redelivered,
                        consumer.num_waiting,
                    ];
                    for (gauge, value) in consumer_gauges.iter().zip(values) {
                        gauge.with_label_values(&labels).set(value);
                    }
                }
            }
        }
    }

    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text encoder writes UTF-8")
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

/// Each name is registered once per render, from the constants above.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    let metric = metric.expect("a valid metric name and labels");
    registry.register(Box::new(metric.clone())).expect("each name once");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    const VARZ: &str = r#"{"server_id":"NSERVER","server_name":"n1","connections":7,"total_connections":9,
        "subscriptions":40,"slow_consumers":0,"routes":2,"remotes":2,"leafnodes":0,"mem":1048576,"cores":2,
        "in_msgs":1000,"out_msgs":2000,"in_bytes":30000,"out_bytes":60000,"version":"2.15.1"}"#;
    const JSZ: &str = r#"{"streams":2,"consumers":1,"messages":11,"bytes":500,"memory":0,"storage":500,
        "account_details":[{"name":"$G","stream_detail":[
          {"name":"BACKBEAT_EVENTS","cluster":{"leader":"n2"},
           "state":{"messages":10,"bytes":400,"first_seq":1,"last_seq":10,"consumer_count":1},
           "consumer_detail":[{"name":"tail","num_pending":3,"num_ack_pending":0,"num_redelivered":0,"num_waiting":1}]},
          {"name":"BACKBEAT_BARS","state":{"messages":1,"bytes":100,"first_seq":1,"last_seq":1,"consumer_count":0}}
        ]}]}"#;

    fn rendered() -> String {
        let varz: Varz = serde_json::from_str(VARZ).unwrap();
        let jsz: Jsz = serde_json::from_str(JSZ).unwrap();
        render(&varz, Some(&jsz))
    }

    #[test]
    fn server_figures_carry_the_server() {
        let text = rendered();
        assert!(
            text.contains("gnatsd_varz_connections{server_id=\"NSERVER\",server_name=\"n1\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE gnatsd_varz_in_msgs gauge\n"), "{text}");
        assert!(
            text.contains("gnatsd_varz_in_msgs{server_id=\"NSERVER\",server_name=\"n1\"} 1000\n"),
            "{text}"
        );
        assert!(text.contains("jetstream_server_total_streams{server_id=\"NSERVER\",server_name=\"n1\"} 2\n"));
    }

    #[test]
    fn streams_and_consumers_are_labelled_with_the_leader() {
        let text = rendered();
        assert!(text.contains(
            "jetstream_stream_last_seq{account=\"$G\",is_stream_leader=\"false\",server_id=\"NSERVER\",stream_name=\"BACKBEAT_EVENTS\"} 10\n"
        ), "{text}");
        // No cluster: the one server leads.
        assert!(text.contains(
            "jetstream_stream_total_messages{account=\"$G\",is_stream_leader=\"true\",server_id=\"NSERVER\",stream_name=\"BACKBEAT_BARS\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "jetstream_consumer_num_pending{account=\"$G\",consumer_name=\"tail\",server_id=\"NSERVER\",stream_name=\"BACKBEAT_EVENTS\"} 3\n"
        ), "{text}");
    }

    #[test]
    fn without_jetstream_only_the_server_is_rendered() {
        let varz: Varz = serde_json::from_str(VARZ).unwrap();
        let text = render(&varz, None);
        assert!(text.contains("gnatsd_varz_mem"));
        assert!(!text.contains("jetstream_"));
    }

    #[test]
    fn unknown_and_missing_fields_are_tolerated() {
        let varz: Varz = serde_json::from_str(r#"{"server_id":"X","new_field":{"a":1}}"#).unwrap();
        assert!(render(&varz, None).contains("gnatsd_varz_connections{server_id=\"X\",server_name=\"\"} 0"));
    }
}
