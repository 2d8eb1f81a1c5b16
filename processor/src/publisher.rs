//! Exactly-once BarReport output (SPEC §8), robust to foreign messages.
//!
//! Reports of a cluster are published in window order to `backbeat.{cluster}.bar`
//! with `Nats-Msg-Id = window_id` and, as a fence, the expected last subject
//! sequence: the subject's raw last sequence, whatever message is there, so a
//! second processor racing on the subject is refused by the server.
//!
//! Anyone allowed to publish on a bar subject can put anything there, so no
//! message is taken for a report of ours on its word. A report of window `W`
//! is "already published" only on evidence that a stored message IS this
//! processor's report of `W`: a message on the subject, after the last report
//! of ours it knows of (its bar-stream sequence is in the checkpoint), whose
//! payload is byte-equal to the re-derived report (the fold is deterministic,
//! so the exact bytes are known). Our reports are stored in window order, so
//! the search goes forward from that report, once; every other message it
//! passes is foreign: counted once ([`BarPublisher::foreign`]) and skipped. A
//! window is never skipped because a message claims a higher window index.
//!
//! A foreign message that holds a report's message id within the stream's
//! duplicate window would make the server answer "duplicate" to the real
//! report: the stored message is then compared too, and when it is not ours
//! the report is published again without the message id (the fence still
//! makes it exactly once) and counted ([`BarPublisher::msg_id_taken`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamError, PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{RawMessageError, RawMessageErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use backbeat_schemas::names::{subject, SubjectKind, BARS_STREAM};
use backbeat_schemas::BarReport;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::status::SharedStatus;

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored now, at this stream sequence.
    Published(u64),
    /// This very report is already stored (at this stream sequence).
    AlreadyPublished(u64),
}

/// Publishing failing for this long turns `/ready` red (a single refused
/// attempt, such as a fence lost to a foreign message, is retried at once).
pub const PUBLISH_FAILING_READY_AFTER: Duration = Duration::from_millis(1000);

/// A fence lost to a message stored meanwhile is retried at once this many
/// times in a row; then with backoff, as any failure (a flood of foreign
/// messages must not make the publisher spin).
const FENCE_RETRIES_AT_ONCE: u32 = 3;

/// What the publisher knows of one cluster's bar subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SubjectState {
    /// Bar-stream sequence of the last report of ours known on the subject
    /// (published by us, or found byte-equal); 0: none known.
    ours_seq: u64,
    /// Every message up to here was looked at (the foreign ones counted).
    examined_seq: u64,
    /// The subject's last sequence when known to be current (the fence); None: look again.
    last_seq: Option<u64>,
}

/// Where `/ready` and the metrics learn that publishing is failing.
/// Why a report could not be published (each try's failure is retried until
/// the caller's deadline, then [`ReportPublishError::GaveUp`]).
#[derive(Debug, thiserror::Error)]
pub enum ReportPublishError {
    #[error("opening {BARS_STREAM}")]
    OpenStream(#[source] GetStreamError),
    #[error("reading the bar subject")]
    ReadSubject(#[source] RawMessageError),
    #[error("reading the bar subject's last message")]
    ReadLast(#[source] RawMessageError),
    #[error("reading the message holding the report's id")]
    ReadIdHolder(#[source] RawMessageError),
    /// Not sent; `WrongLastSequence` when the subject moved past the fence.
    #[error("sending report")]
    Send(#[source] PublishError),
    /// Sent, not stored; `WrongLastSequence` when the subject moved past the fence.
    #[error("report not acknowledged")]
    Ack(#[source] PublishError),
    #[error("publishing report of window {window}")]
    GaveUp {
        window: u64,
        #[source]
        source: Box<ReportPublishError>,
    },
}

/// An error and its causes, `: `-separated (as `{:#}` of an `anyhow` error).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Clone)]
pub struct PublishHealth {
    pub status: SharedStatus,
    pub metrics: Metrics,
}

pub struct BarPublisher {
    js: jetstream::Context,
    stream: Option<jetstream::stream::Stream>,
    subjects: HashMap<String, SubjectState>,
    health: Option<PublishHealth>,
    /// Stored reports of the same window as a re-derived one, with other bytes
    /// (a determinism bug, or a forgery): the re-derived one is published.
    pub mismatches: u64,
    /// Foreign messages read on bar subjects, each counted once.
    pub foreign: u64,
    /// Reports published without their message id (a foreign message held it).
    pub msg_id_taken: u64,
}

impl BarPublisher {
    /// A publisher that knows no report of its own yet: the first report of
    /// each cluster is searched for from the subject's start.
    pub fn new(js: jetstream::Context) -> Self {
        BarPublisher {
            js,
            stream: None,
            subjects: HashMap::new(),
            health: None,
            mismatches: 0,
            foreign: 0,
            msg_id_taken: 0,
        }
    }

    /// Tells `/ready` (through `health.status.publish_error`) and the metrics
    /// while publishing fails.
    pub fn with_health(mut self, health: PublishHealth) -> Self {
        self.health = Some(health);
        self
    }

    /// Starts from the bar-stream sequences of each cluster's last report of
    /// ours (as a checkpoint recorded them): the search for a report already
    /// published starts after them.
    pub fn resume_after(&mut self, last_reports: &BTreeMap<String, u64>) {
        for (cluster_id, &seq) in last_reports {
            self.subjects.insert(
                cluster_id.clone(),
                SubjectState {
                    ours_seq: seq,
                    examined_seq: seq,
                    last_seq: None,
                },
            );
        }
    }

    /// Each cluster's last report of ours known, by bar-stream sequence (for the checkpoint).
    pub fn last_reports(&self) -> BTreeMap<String, u64> {
        self.subjects
            .iter()
            .filter(|(_, state)| state.ours_seq > 0)
            .map(|(cluster_id, state)| (cluster_id.clone(), state.ours_seq))
            .collect()
    }

    /// Publishes `report` unless this very report is already stored after
    /// the last one of ours; waits for the ack. Failures are retried (with
    /// backoff) until `give_up_after`.
    pub async fn publish(
        &mut self,
        report: &BarReport,
        give_up_after: Duration,
    ) -> Result<PublishOutcome, ReportPublishError> {
        let payload = bytes::Bytes::from(report.to_json());
        let started = Instant::now();
        let deadline = started + give_up_after;
        let mut backoff = Duration::from_millis(50);
        let mut failing = false;
        let mut fences_lost = 0u32;
        // Cleared once a foreign message is found holding the report's id.
        let mut with_message_id = true;
        loop {
            match self.try_publish(report, &payload, &mut with_message_id).await {
                Ok(outcome) => {
                    if failing {
                        tracing::info!(cluster = %report.cluster_id, window = report.window_index, "report published again");
                        self.set_failing(None);
                    }
                    return Ok(outcome);
                }
                Err(e) => {
                    // Look at the subject again on the next try.
                    if let Some(state) = self.subjects.get_mut(&report.cluster_id) {
                        state.last_seq = None;
                    }
                    if let Some(health) = &self.health {
                        health.metrics.publish_failures.inc();
                    }
                    let fence_lost = matches!(&e, ReportPublishError::Send(p) | ReportPublishError::Ack(p)
                        if p.kind() == PublishErrorKind::WrongLastSequence);
                    if fence_lost && fences_lost < FENCE_RETRIES_AT_ONCE {
                        // A message arrived after the subject was read: read it again at once.
                        fences_lost += 1;
                        tracing::debug!(cluster = %report.cluster_id, "the bar subject moved; reading it again");
                        continue;
                    }
                    let failing_for = started.elapsed();
                    if failing_for >= PUBLISH_FAILING_READY_AFTER {
                        failing = true;
                        self.set_failing(Some(format!(
                            "cannot publish the report of window {} of {} to {BARS_STREAM} for {} ms: {}",
                            report.window_index,
                            report.cluster_id,
                            failing_for.as_millis(),
                            chain(&e)
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(ReportPublishError::GaveUp {
                            window: report.window_index,
                            source: Box::new(e),
                        });
                    }
                    tracing::warn!(error = %chain(&e), window = report.window_index, "report publish failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn set_failing(&self, reason: Option<String>) {
        if let Some(health) = &self.health {
            health.metrics.publish_failing.set(i64::from(reason.is_some()));
            health.status.update(|s| s.publish_error = reason);
        }
    }

    async fn stream(&mut self) -> Result<jetstream::stream::Stream, ReportPublishError> {
        if let Some(stream) = &self.stream {
            return Ok(stream.clone());
        }
        let stream = self
            .js
            .get_stream(BARS_STREAM)
            .await
            .map_err(ReportPublishError::OpenStream)?;
        self.stream = Some(stream.clone());
        Ok(stream)
    }

    async fn try_publish(
        &mut self,
        report: &BarReport,
        payload: &bytes::Bytes,
        with_message_id: &mut bool,
    ) -> Result<PublishOutcome, ReportPublishError> {
        let cluster_id = report.cluster_id.as_str();
        let mut state = self.subjects.get(cluster_id).copied().unwrap_or_default();
        let result = self
            .try_publish_with(report, payload, &mut state, with_message_id)
            .await;
        self.subjects.insert(cluster_id.to_string(), state);
        result
    }

    async fn try_publish_with(
        &mut self,
        report: &BarReport,
        payload: &bytes::Bytes,
        state: &mut SubjectState,
        with_message_id: &mut bool,
    ) -> Result<PublishOutcome, ReportPublishError> {
        let stream = self.stream().await?;
        let bar_subject = subject(&report.cluster_id, SubjectKind::Bar);
        // Only when something may follow our last report (or nothing of
        // ours is known): in the steady state the subject ends with ours.
        if state.last_seq != Some(state.ours_seq) {
            if let Some(seq) = self.search(&stream, &bar_subject, report, payload, state).await? {
                state.ours_seq = seq;
                return Ok(PublishOutcome::AlreadyPublished(seq));
            }
        }
        let fence = state.last_seq.unwrap_or(state.examined_seq);
        let message_id = with_message_id.then_some(report.window_id.as_str());
        let ack = self.send(&bar_subject, payload, message_id, fence).await?;
        let seq = if ack.duplicate {
            // The id is held: by this very report (an earlier try stored
            // it), or by a foreign message within the duplicate window.
            let stored = stream
                .get_raw_message(ack.sequence)
                .await
                .map_err(ReportPublishError::ReadIdHolder)?;
            if stored.payload == *payload && stored.subject.as_str() == bar_subject {
                state.ours_seq = ack.sequence;
                state.examined_seq = state.examined_seq.max(ack.sequence);
                state.last_seq = None;
                return Ok(PublishOutcome::AlreadyPublished(ack.sequence));
            }
            self.msg_id_taken += 1;
            *with_message_id = false;
            tracing::warn!(
                cluster = %report.cluster_id, window = report.window_index, foreign_seq = ack.sequence,
                "a foreign message holds the report's message id; publishing it without one"
            );
            self.send(&bar_subject, payload, None, fence).await?.sequence
        } else {
            ack.sequence
        };
        // The fence held: nothing lies between the last message looked at and ours.
        *state = SubjectState {
            ours_seq: seq,
            examined_seq: seq,
            last_seq: Some(seq),
        };
        Ok(PublishOutcome::Published(seq))
    }

    /// Reads the subject forward from the first message not yet looked at,
    /// one message at a time, until its end or a message byte-equal to
    /// `payload` (returned: the report is already stored there). Every other
    /// message passed is foreign. Leaves `state.last_seq` at the subject's
    /// last sequence (the fence for the next publish).
    async fn search(
        &mut self,
        stream: &jetstream::stream::Stream,
        bar_subject: &str,
        report: &BarReport,
        payload: &bytes::Bytes,
        state: &mut SubjectState,
    ) -> Result<Option<u64>, ReportPublishError> {
        loop {
            let mut next = state.examined_seq + 1;
            loop {
                let message = match stream.get_first_raw_message_by_subject(bar_subject, next).await {
                    Ok(message) => message,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(ReportPublishError::ReadSubject(e)),
                };
                let seq = message.sequence;
                state.examined_seq = state.examined_seq.max(seq);
                if message.payload == *payload {
                    state.last_seq = None;
                    return Ok(Some(seq));
                }
                self.foreign += 1;
                self.note_foreign(report, seq, &message.payload);
                next = seq + 1;
            }
            // The fence is the subject's raw last sequence, whatever is there;
            // a message stored since the scan ended is read first.
            let last = match stream.get_last_raw_message_by_subject(bar_subject).await {
                Ok(message) => message.sequence,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => 0,
                Err(e) => return Err(ReportPublishError::ReadLast(e)),
            };
            if last <= state.examined_seq {
                // Below it only when the stream was emptied or made anew.
                state.last_seq = Some(last);
                return Ok(None);
            }
        }
    }

    /// Logs a foreign message (an error when it claims the same window: a
    /// forgery, or a determinism bug).
    fn note_foreign(&mut self, report: &BarReport, seq: u64, stored: &[u8]) {
        let same_window = serde_json::from_slice::<BarReport>(stored)
            .is_ok_and(|other| other.cluster_id == report.cluster_id && other.window_index == report.window_index);
        if same_window {
            self.mismatches += 1;
            tracing::error!(
                cluster = %report.cluster_id, window = report.window_index, seq,
                "a stored report of this window differs from the re-derived one (forged, or a determinism bug); \
                 publishing the re-derived one"
            );
        } else {
            tracing::warn!(cluster = %report.cluster_id, seq, bytes = stored.len(), "foreign message on the bar subject; skipped");
        }
    }

    async fn send(
        &self,
        bar_subject: &str,
        payload: &bytes::Bytes,
        message_id: Option<&str>,
        expected_seq: u64,
    ) -> Result<jetstream::publish::PublishAck, ReportPublishError> {
        let mut publish = PublishMessage::build()
            .payload(payload.clone())
            .expected_last_subject_sequence(expected_seq);
        if let Some(id) = message_id {
            publish = publish.message_id(id);
        }
        let ack = self
            .js
            .send_publish(bar_subject.to_string(), publish)
            .await
            .map_err(ReportPublishError::Send)?
            .await;
        ack.map_err(ReportPublishError::Ack)
    }
}
