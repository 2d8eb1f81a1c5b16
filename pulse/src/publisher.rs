//! Fenced beat publishing (SPEC §8): every beat carries `Nats-Msg-Id =
//! {cluster}:{beat_index}` and `Nats-Expected-Last-Subject-Sequence` = the
//! stream sequence of the last message on the subject, so the server refuses a
//! beat from anyone who is not continuing the stream's own tail.
//!
//! Also reads that tail, which is where a (new) leader resumes. The beat subject
//! is open to any NATS client allowed to publish there, so the tail is read as
//! two things: the **fence** is the sequence of the last message on the subject,
//! whatever it is (the server compares against exactly that), while the
//! **resume point** (next index, HLC) is the last beat *this group* published,
//! recognised by its `Backbeat-Beat-Mac` ([`crate::auth`]). A foreign message
//! (garbage, a forged or overflowing beat) is counted and skipped: it can delay
//! nothing but the one publish it fenced, and it never moves the index or clock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::{BeatFrame, BEAT_INDEX_MAX};
use backbeat_schemas::names::{beat_msg_id, subject, SubjectKind};
use backbeat_schemas::timestamp::format_utc_ms;
use backbeat_schemas::validate::validate_beat;
use bytes::Bytes;
use futures::StreamExt as _;
use prometheus::IntCounter;
use serde::Deserialize;

use crate::auth::{GroupSecret, BEAT_MAC_HEADER};

/// Header carrying the publish time (µs since the Unix epoch), for delivery-latency
/// measurements; not part of the beat frame, which stays exactly SPEC §2.
pub const PUBLISHED_AT_US_HEADER: &str = "Backbeat-Published-At-Us";
/// Header carrying the time the schedule gave the beat (µs since the Unix epoch),
/// for jitter measurements by anyone reading the stream.
pub const DUE_AT_US_HEADER: &str = "Backbeat-Due-At-Us";
/// The most messages one search for the last authenticated beat reads; past
/// it, the search keeps the latest it found (the schedule's grid covers the rest).
pub const SCAN_MESSAGES_MAX: usize = 4096;
/// Foreign sequences remembered so that each is counted once.
const FOREIGN_REMEMBERED_MAX: usize = 4096;

/// When a beat was due and when it was actually published, µs since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishTimes {
    pub due_us: i64,
    pub published_us: i64,
}

/// A beat this group published, as stored in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBeat {
    pub beat_index: u64,
    /// Its stream sequence.
    pub sequence: u64,
    pub hlc: Hlc,
}

/// The beat subject's tail, as the next publish must see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    /// The sequence of the last message on the subject, whatever it is (0: none):
    /// the next publish's expected last subject sequence.
    pub fence_sequence: u64,
    /// The last beat of this group's found on the subject, if any: where the
    /// next index and the HLC resume from.
    pub last_beat: Option<LastBeat>,
}

/// Where a search for the last authenticated beat starts when the last message is foreign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchFrom {
    /// The stream sequence of a beat of this group's this node knows of.
    Sequence(u64),
    /// Messages stored at or after this time (µs since the Unix epoch).
    UnixUs(i64),
}

/// Why a beat was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// The stream's last message is not the one this node expected: another leader
    /// (or this node's earlier attempt, or a foreign writer) appended since.
    /// Re-read before going on.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A message with this beat's message id is already stored (within the stream's
    /// duplicate window): this index is taken, whoever took it.
    #[error("beat {beat_index} is already stored (sequence {sequence})")]
    Duplicate { beat_index: u64, sequence: u64 },
    /// NATS did not answer (disconnected, timed out, other error). The beat may or
    /// may not be stored; re-read before going on.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Publishes beats into `BACKBEAT_EVENTS` and reads the subject's tail back.
#[derive(Clone)]
pub struct BeatPublisher {
    client: async_nats::Client,
    js: Context,
    stream: Stream,
    secret: GroupSecret,
    foreign: ForeignCount,
}

/// Counts foreign messages once each, whichever read meets them first.
#[derive(Clone)]
struct ForeignCount {
    counter: IntCounter,
    seen: Arc<Mutex<ForeignSeen>>,
}

#[derive(Default)]
struct ForeignSeen {
    sequences: BTreeSet<u64>,
    /// When one was last logged: a flood is logged once a second, not once a message.
    logged_at: Option<std::time::Instant>,
}

/// Foreign messages are logged at most this often (each one is counted).
const FOREIGN_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl ForeignCount {
    fn count(&self, sequence: u64, subject: &str) {
        let mut seen = self.seen.lock().expect("foreign set lock");
        let sequences = &mut seen.sequences;
        let forgotten =
            sequences.len() >= FOREIGN_REMEMBERED_MAX && sequences.first().is_some_and(|low| sequence < *low);
        if forgotten || !sequences.insert(sequence) {
            return;
        }
        if sequences.len() > FOREIGN_REMEMBERED_MAX {
            sequences.pop_first();
        }
        self.counter.inc();
        if seen.logged_at.is_none_or(|at| at.elapsed() >= FOREIGN_LOG_INTERVAL) {
            seen.logged_at = Some(std::time::Instant::now());
            tracing::warn!(
                sequence,
                subject,
                total = self.counter.get(),
                "a message on the beat subject is not this group's beat; skipped"
            );
        }
    }
}

#[derive(Deserialize)]
struct StoredBeat {
    beat_index: u64,
    hlc: Hlc,
}

/// A beat of this group's when `headers` carry a MAC of `payload` on `subject`
/// by `secret` and the payload reads as a beat; otherwise `None` (foreign).
fn authenticated(
    secret: &GroupSecret,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    sequence: u64,
) -> Option<LastBeat> {
    let mac = headers?.get(BEAT_MAC_HEADER)?;
    if !secret.beat_mac_matches(subject, payload, mac.as_str()) {
        return None;
    }
    // Authenticated means written by a node of this group, so this parses; the
    // bound is kept anyway, so that no stored number can overflow the schedule.
    let stored: StoredBeat = serde_json::from_slice(payload).ok()?;
    (stored.beat_index <= BEAT_INDEX_MAX).then_some(LastBeat {
        beat_index: stored.beat_index,
        sequence,
        hlc: stored.hlc,
    })
}

impl BeatPublisher {
    /// `secret` signs this node's beats and recognises the group's; `foreign_beats`
    /// counts the messages on the beat subject that it does not recognise.
    pub fn new(
        client: async_nats::Client,
        js: Context,
        stream: Stream,
        secret: GroupSecret,
        foreign_beats: IntCounter,
    ) -> BeatPublisher {
        BeatPublisher {
            client,
            js,
            stream,
            secret,
            foreign: ForeignCount {
                counter: foreign_beats,
                seen: Arc::default(),
            },
        }
    }

    /// Whether the NATS connection is up right now. A publish while it is down would
    /// sit in the client's buffer and reach the server late, so it is not tried.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The last message on `cluster_id`'s beat subject: its sequence (the fence) and,
    /// when it is one of this group's beats, that beat. A foreign one is counted.
    pub async fn peek_tail(&self, cluster_id: &str, limit: Duration) -> Result<Tail, PublishFailure> {
        let beat_subject = subject(cluster_id, SubjectKind::Beat);
        let read = tokio::time::timeout(limit, self.stream.get_last_raw_message_by_subject(&beat_subject)).await;
        let message = match read {
            Err(_) => return Err(PublishFailure::Unavailable("reading the last beat timed out".into())),
            Ok(Err(e)) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(Tail::default()),
            Ok(Err(e)) => return Err(PublishFailure::Unavailable(format!("reading the last beat: {e}"))),
            Ok(Ok(message)) => message,
        };
        let last_beat = authenticated(
            &self.secret,
            &beat_subject,
            Some(&message.headers),
            &message.payload,
            message.sequence,
        );
        if last_beat.is_none() {
            self.foreign.count(message.sequence, &beat_subject);
        }
        Ok(Tail {
            fence_sequence: message.sequence,
            last_beat,
        })
    }

    /// The index of the last message on the beat subject when it is a valid
    /// SPEC beat of `cluster_id` with `bar_length` (whoever wrote it); `None` otherwise.
    pub async fn last_well_formed_beat(&self, cluster_id: &str, bar_length: u64, limit: Duration) -> Option<u64> {
        let beat_subject = subject(cluster_id, SubjectKind::Beat);
        let read = tokio::time::timeout(limit, self.stream.get_last_raw_message_by_subject(&beat_subject));
        let message = read.await.ok()?.ok()?;
        let frame = validate_beat(&message.payload, cluster_id, bar_length).ok()?;
        (frame.beat_index < BEAT_INDEX_MAX).then_some(frame.beat_index)
    }

    /// The tail, with the last beat of this group's found even when foreign
    /// messages follow it: when the last message is foreign, the subject is read
    /// from `from` up to it (at most [`SCAN_MESSAGES_MAX`] messages, within
    /// `limit`), and the latest authenticated beat read is the resume point.
    /// `known` (a beat this node saw, e.g. its own last publish) is kept when
    /// nothing later is found. `Err` only when NATS does not answer.
    pub async fn read_tail(
        &self,
        cluster_id: &str,
        known: Option<LastBeat>,
        from: SearchFrom,
        limit: Duration,
    ) -> Result<Tail, PublishFailure> {
        let started = tokio::time::Instant::now();
        let mut tail = self.peek_tail(cluster_id, limit).await?;
        if tail.last_beat.is_some() || tail.fence_sequence == 0 {
            return Ok(tail);
        }
        let known = known.filter(|k| k.sequence < tail.fence_sequence);
        let from = known.map_or(from, |k| SearchFrom::Sequence(k.sequence));
        let remaining = limit.saturating_sub(started.elapsed());
        let found = self.search(cluster_id, from, tail.fence_sequence, remaining).await;
        tail.last_beat = match found {
            Ok(found) => found.or(known),
            Err(reason) => {
                tracing::warn!(%reason, "searching for the last authenticated beat; resuming from what this node knows");
                known
            }
        };
        Ok(tail)
    }

    /// The latest beat of this group's on the beat subject from `from` up to
    /// sequence `up_to`, reading at most [`SCAN_MESSAGES_MAX`] messages.
    async fn search(
        &self,
        cluster_id: &str,
        from: SearchFrom,
        up_to: u64,
        limit: Duration,
    ) -> Result<Option<LastBeat>, String> {
        let beat_subject = subject(cluster_id, SubjectKind::Beat);
        let deliver_policy = match from {
            SearchFrom::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            SearchFrom::UnixUs(unix_us) => by_start_time(unix_us)?,
        };
        let deadline = tokio::time::Instant::now() + limit;
        let consumer = tokio::time::timeout_at(
            deadline,
            self.stream.create_consumer(OrderedConfig {
                filter_subject: beat_subject.clone(),
                deliver_policy,
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| "creating the search consumer timed out".to_string())?
        .map_err(|e| format!("creating the search consumer: {e}"))?;
        let mut messages = tokio::time::timeout_at(deadline, consumer.messages())
            .await
            .map_err(|_| "starting the search timed out".to_string())?
            .map_err(|e| format!("starting the search: {e}"))?;
        let mut found = None;
        for _ in 0..SCAN_MESSAGES_MAX {
            let Ok(next) = tokio::time::timeout_at(deadline, messages.next()).await else {
                tracing::warn!(?found, "the search for the last authenticated beat ran out of time");
                break;
            };
            let Some(message) = next.transpose().map_err(|e| format!("reading the beat subject: {e}"))? else {
                break;
            };
            let (sequence, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => return Err(format!("a delivered message without its stream sequence: {e}")),
            };
            if sequence > up_to {
                break;
            }
            match authenticated(
                &self.secret,
                &beat_subject,
                message.headers.as_ref(),
                &message.payload,
                sequence,
            ) {
                Some(beat) => found = Some(beat),
                None => self.foreign.count(sequence, &beat_subject),
            }
            if sequence == up_to || pending == 0 {
                break;
            }
        }
        Ok(found)
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
        headers.insert(BEAT_MAC_HEADER, self.secret.beat_mac(&beat_subject, &payload));
        let attempt = async {
            let ack = self
                .js
                .publish_with_headers(beat_subject, headers, Bytes::from(payload))
                .await
                .map_err(|e| PublishFailure::Unavailable(e.to_string()))?;
            match ack.await {
                // A duplicate means a beat with this index is already stored (another
                // leader, or this node's own attempt whose ack was lost): not ours now.
                Ok(ack) if ack.duplicate => Err(PublishFailure::Duplicate {
                    beat_index: frame.beat_index,
                    sequence: ack.sequence,
                }),
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

/// A consumer start at `unix_us`. async-nats names the time with a type of the
/// `time` crate; it is built from its RFC 3339 form rather than by adding that
/// crate for one value.
fn by_start_time(unix_us: i64) -> Result<DeliverPolicy, String> {
    let start_time = format_utc_ms(unix_us.div_euclid(1000).max(0));
    serde_json::from_value(serde_json::json!({
        "deliver_policy": "by_start_time",
        "opt_start_time": start_time,
    }))
    .map_err(|e| format!("a start time of {start_time}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_time_policy_is_built_from_microseconds() {
        let policy = by_start_time(1_700_000_000_123_456).unwrap();
        let json = serde_json::to_value(policy).unwrap();
        assert_eq!(json["deliver_policy"], "by_start_time");
        assert_eq!(json["opt_start_time"], "2023-11-14T22:13:20.123Z");
        assert!(by_start_time(-5).is_ok(), "before 1970 reads as 1970");
    }
}
