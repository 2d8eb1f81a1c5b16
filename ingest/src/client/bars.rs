//! Reading a cluster's BarReports from `BACKBEAT_BARS` with an ordered consumer
//! (no acks, no server-side state to clean up; it re-creates itself on gaps).

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use backbeat_schemas::names::{subject, SubjectKind, BARS_STREAM};
use backbeat_schemas::report::BarReport;
use futures::{Stream, StreamExt as _};

use super::ClientError;

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarsFrom {
    /// Every stored report of the cluster, then the new ones.
    Start,
    /// Only reports published from now on.
    New,
    /// The latest stored report, then the new ones.
    Last,
}

/// A cluster's BarReports.
pub struct BarReports;

impl BarReports {
    /// A stream of `(stream sequence, report)`; a report that does not parse is an error item.
    pub async fn subscribe(
        client: async_nats::Client,
        cluster: &str,
        from: BarsFrom,
    ) -> Result<impl Stream<Item = Result<(u64, BarReport), ClientError>>, ClientError> {
        let js = jetstream::new(client);
        let stream = js
            .get_stream(BARS_STREAM)
            .await
            .map_err(|e| ClientError::Nats(format!("stream {BARS_STREAM}: {e}")))?;
        let deliver_policy = match from {
            BarsFrom::Start => DeliverPolicy::All,
            BarsFrom::New => DeliverPolicy::New,
            BarsFrom::Last => DeliverPolicy::LastPerSubject,
        };
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                // Named, so its creation names the filter (see `consumer_name`).
                name: Some(super::consumer_name("bars")),
                filter_subject: subject(cluster, SubjectKind::Bar),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| ClientError::Nats(format!("ordered consumer on {BARS_STREAM}: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ClientError::Nats(format!("reading {BARS_STREAM}: {e}")))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|e| ClientError::Nats(format!("reading {BARS_STREAM}: {e}")))?;
            let seq = message
                .info()
                .map(|info| info.stream_sequence)
                .map_err(|e| ClientError::Protocol(format!("message info: {e}")))?;
            let report = serde_json::from_slice::<BarReport>(&message.payload)
                .map_err(|e| ClientError::Protocol(format!("BarReport at seq {seq}: {e}")))?;
            Ok((seq, report))
        }))
    }
}
