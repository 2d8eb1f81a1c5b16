//! Exactly-once BarReport output (SPEC §8).
//!
//! Reports of a cluster are published in window order to `backbeat.{cluster}.bar`
//! with `Nats-Msg-Id = window_id` and the expected last subject sequence of the
//! previous report. Before publishing, the last report on the subject tells what
//! was already published: a window at or below it is never published again,
//! even long after the stream's duplicate window has passed, and a second
//! processor racing on the same subject is refused by the server.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream::LastRawMessageErrorKind};
use backbeat_schemas::names::{subject, SubjectKind, BARS_STREAM};
use backbeat_schemas::BarReport;

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored now, at this stream sequence.
    Published(u64),
    /// It (or a later window) was already in the stream.
    AlreadyPublished,
}

/// The last report stored on a cluster's subject.
#[derive(Debug, Clone)]
struct LastBar {
    window_index: u64,
    seq: u64,
    payload: bytes::Bytes,
}

pub struct BarPublisher {
    js: jetstream::Context,
    /// Per cluster: the last report stored (None: the subject is empty).
    last: HashMap<String, Option<LastBar>>,
    /// Re-derived reports that differ from the stored ones (a determinism bug).
    pub mismatches: u64,
}

impl BarPublisher {
    pub fn new(js: jetstream::Context) -> Self {
        BarPublisher {
            js,
            last: HashMap::new(),
            mismatches: 0,
        }
    }

    async fn last_for(&mut self, cluster_id: &str) -> anyhow::Result<Option<LastBar>> {
        if let Some(last) = self.last.get(cluster_id) {
            return Ok(last.clone());
        }
        let stream = self.js.get_stream(BARS_STREAM).await.context("opening BACKBEAT_BARS")?;
        let last = match stream
            .get_last_raw_message_by_subject(&subject(cluster_id, SubjectKind::Bar))
            .await
        {
            Ok(message) => {
                let report: BarReport = serde_json::from_slice(&message.payload)
                    .with_context(|| format!("the last report of {cluster_id} in BACKBEAT_BARS is not a BarReport"))?;
                Some(LastBar {
                    window_index: report.window_index,
                    seq: message.sequence,
                    payload: message.payload,
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => None,
            Err(e) => return Err(e).context("reading the last report"),
        };
        self.last.insert(cluster_id.to_string(), last.clone());
        Ok(last)
    }

    /// Publishes `report` unless its window is already stored; waits for the ack.
    /// Transient failures are retried (with backoff) until `give_up_after`.
    pub async fn publish(&mut self, report: &BarReport, give_up_after: Duration) -> anyhow::Result<PublishOutcome> {
        let payload = bytes::Bytes::from(report.to_json());
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut backoff = Duration::from_millis(50);
        loop {
            let last = self.last_for(&report.cluster_id).await;
            let result = match last {
                Ok(Some(last)) if report.window_index <= last.window_index => {
                    if report.window_index == last.window_index && last.payload != payload {
                        self.mismatches += 1;
                        tracing::error!(
                            cluster = %report.cluster_id, window = report.window_index,
                            "re-derived report differs from the one stored in BACKBEAT_BARS"
                        );
                    }
                    return Ok(PublishOutcome::AlreadyPublished);
                }
                Ok(last) => self.send(report, payload.clone(), last.map_or(0, |l| l.seq)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    // Forget what we knew: the next try re-reads the subject.
                    self.last.remove(&report.cluster_id);
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e.context(format!("publishing report of window {}", report.window_index)));
                    }
                    tracing::warn!(error = %format!("{e:#}"), window = report.window_index, "report publish failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn send(
        &mut self,
        report: &BarReport,
        payload: bytes::Bytes,
        expected_seq: u64,
    ) -> anyhow::Result<PublishOutcome> {
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(&report.window_id)
            .expected_last_subject_sequence(expected_seq);
        let ack = self
            .js
            .send_publish(subject(&report.cluster_id, SubjectKind::Bar), publish)
            .await
            .context("sending report")?
            .await;
        match ack {
            Ok(ack) => {
                self.last.insert(
                    report.cluster_id.clone(),
                    Some(LastBar {
                        window_index: report.window_index,
                        seq: ack.sequence,
                        payload,
                    }),
                );
                Ok(if ack.duplicate {
                    PublishOutcome::AlreadyPublished
                } else {
                    PublishOutcome::Published(ack.sequence)
                })
            }
            Err(e) => {
                if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence {
                    tracing::warn!(cluster = %report.cluster_id, "another writer published reports; re-reading the subject");
                }
                Err(anyhow::Error::new(e).context("report not acknowledged"))
            }
        }
    }
}
