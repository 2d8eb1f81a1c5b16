//! Fenced beat publishing (SPEC §8): every beat carries `Nats-Msg-Id =
//! {cluster}:{beat_index}` and `Nats-Expected-Last-Subject-Sequence` = the
//! stream sequence of the previous beat on the subject, so the server refuses a
//! beat from anyone who is not continuing the stream's own last beat. Also reads
//! that last beat, which is where a (new) leader resumes.

use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::BeatFrame;
use backbeat_schemas::names::{beat_msg_id, subject, SubjectKind};
use bytes::Bytes;
use serde::Deserialize;

/// Header carrying the publish time (µs since the Unix epoch), for delivery-latency
/// measurements; not part of the beat frame, which stays exactly SPEC §2.
pub const PUBLISHED_AT_US_HEADER: &str = "Backbeat-Published-At-Us";
/// Header carrying the time the schedule gave the beat (µs since the Unix epoch),
/// for jitter measurements by anyone reading the stream.
pub const DUE_AT_US_HEADER: &str = "Backbeat-Due-At-Us";

/// When a beat was due and when it was actually published, µs since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishTimes {
    pub due_us: i64,
    pub published_us: i64,
}

/// The last beat stored on a cluster's beat subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBeat {
    pub beat_index: u64,
    /// Its stream sequence: the next beat's expected last subject sequence.
    pub sequence: u64,
    pub hlc: Hlc,
}

/// Why a beat was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// The stream's last beat is not the one this node continued: another leader
    /// (or this node's earlier attempt) appended since. Re-read before going on.
    #[error("fenced: {0}")]
    Fenced(String),
    /// NATS did not answer (disconnected, timed out, other error). The beat may or
    /// may not be stored; re-read before going on.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Publishes beats into `BACKBEAT_EVENTS` and reads the last one back.
#[derive(Clone)]
pub struct BeatPublisher {
    client: async_nats::Client,
    js: Context,
    stream: Stream,
}

#[derive(Deserialize)]
struct StoredBeat {
    beat_index: u64,
    hlc: Hlc,
}

impl BeatPublisher {
    pub fn new(client: async_nats::Client, js: Context, stream: Stream) -> BeatPublisher {
        BeatPublisher { client, js, stream }
    }

    /// Whether the NATS connection is up right now. A publish while it is down would
    /// sit in the client's buffer and reach the server late, so it is not tried.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The last beat stored for `cluster_id`, `None` when there is none, within `limit`.
    pub async fn last_beat(&self, cluster_id: &str, limit: Duration) -> Result<Option<LastBeat>, PublishFailure> {
        let beat_subject = subject(cluster_id, SubjectKind::Beat);
        let read = tokio::time::timeout(limit, self.stream.get_last_raw_message_by_subject(&beat_subject)).await;
        let message = match read {
            Err(_) => return Err(PublishFailure::Unavailable("reading the last beat timed out".into())),
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Ok(Err(e)) => return Err(PublishFailure::Unavailable(format!("reading the last beat: {e}"))),
            Ok(Ok(message)) => message,
        };
        // Only the pulse publishes here, always a valid frame; anything else is a
        // bug or a foreign writer, and guessing an index would risk a repeat.
        let stored: StoredBeat = serde_json::from_slice(&message.payload).map_err(|e| {
            PublishFailure::Unavailable(format!(
                "the last message on {beat_subject} (sequence {}) is not a beat frame: {e}",
                message.sequence
            ))
        })?;
        Ok(Some(LastBeat {
            beat_index: stored.beat_index,
            sequence: message.sequence,
            hlc: stored.hlc,
        }))
    }

    /// Publishes `frame` expecting `expected_sequence` (0: no beat yet) as the
    /// subject's last sequence; returns the new beat's stream sequence.
    pub async fn publish(
        &self,
        frame: &BeatFrame,
        expected_sequence: u64,
        times: PublishTimes,
        limit: Duration,
    ) -> Result<u64, PublishFailure> {
        let beat_subject = subject(&frame.cluster_id, SubjectKind::Beat);
        let payload = serde_json::to_vec(frame).expect("a beat frame always serializes");
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, beat_msg_id(&frame.cluster_id, frame.beat_index));
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected_sequence.to_string());
        headers.insert(PUBLISHED_AT_US_HEADER, times.published_us.to_string());
        headers.insert(DUE_AT_US_HEADER, times.due_us.to_string());
        let attempt = async {
            let ack = self
                .js
                .publish_with_headers(beat_subject, headers, Bytes::from(payload))
                .await
                .map_err(|e| PublishFailure::Unavailable(e.to_string()))?;
            match ack.await {
                // A duplicate means a beat with this index is already stored (another
                // leader, or this node's own attempt whose ack was lost): not ours now.
                Ok(ack) if ack.duplicate => Err(PublishFailure::Fenced(format!(
                    "beat {} is already stored (sequence {})",
                    frame.beat_index, ack.sequence
                ))),
                Ok(ack) => Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Err(PublishFailure::Fenced(e.to_string())),
                Err(e) => Err(PublishFailure::Unavailable(e.to_string())),
            }
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PublishFailure::Unavailable("no publish ack in time".into())),
        }
    }
}
