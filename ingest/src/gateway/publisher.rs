//! The JetStream side of the gateway: one input in, one [`Outcome`] out, with a
//! bounded number of publishes awaiting their ack.
//!
//! [`Publisher::submit`] only waits for an ack slot and for the publish to be
//! handed to the connection; it returns a future for the ack, so a caller can
//! send the next claim before the previous one is acknowledged (pipelining).
//! The slot travels with that future and is given back when the ack (or its
//! timeout) arrives, so memory is bounded by `acks_in_flight_max` whatever
//! JetStream's pace. When no slot frees within `backpressure_wait`, the input is
//! answered `unavailable` (the sender retries) rather than queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID};
use async_nats::jetstream;
use backbeat_schemas::names::{parse_subject, SubjectKind, EVENTS_STREAM, REJECTS_STREAM};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::{admit, Admission};
use super::clusters::AllowedClusters;
use super::dead_letter::{DeadLetterBody, RefusedLine, HEADER_LINES, HEADER_LINES_REFUSED};
use super::metrics::GatewayMetrics;
use crate::answer::Outcome;

/// Dead-letter header: the SPEC reason string, e.g. `invalid_field:progress`
/// (or the gateway's own: `invalid_cluster`, `cluster_not_allowed`). A batch's
/// dead letter: its first refused line's, as `Backbeat-Error` is
/// ([`super::dead_letter`] has the batch's other headers).
pub const HEADER_REASON: &str = "Backbeat-Reason";
/// Dead-letter header: the message for people naming the field and the rule.
pub const HEADER_ERROR: &str = "Backbeat-Error";
/// Dead-letter header: `nats` or `http`.
pub const HEADER_SOURCE: &str = "Backbeat-Source";
/// Dead-letter header: the intake subject (NATS) or the request path (HTTP) the input came on.
pub const HEADER_SUBJECT: &str = "Backbeat-Subject";
/// Dead-letter header, only on a dead letter that holds a prefix of its input:
/// the input's full length in bytes.
pub const HEADER_TRUNCATED: &str = "Backbeat-Truncated";

/// Where an input came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Nats,
    Http,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nats => "nats",
            Source::Http => "http",
        }
    }
}

/// One input as received.
#[derive(Debug, Clone)]
pub struct Input {
    /// The cluster token of the subject, or the path segment, exactly as received.
    pub cluster: String,
    /// The raw bytes; stored unchanged (claim) or kept as the dead letter's body.
    pub payload: Bytes,
    pub source: Source,
    /// The subject (NATS) or request path (HTTP) it arrived on, for the dead letter.
    pub origin: String,
}

/// Limits of the JetStream side.
#[derive(Debug, Clone, Copy)]
pub struct PublisherLimits {
    /// Publishes (claims and dead letters) awaiting their ack, at most.
    pub acks_in_flight_max: u32,
    /// How long an input waits for an ack slot before it is answered `unavailable`.
    pub backpressure_wait: Duration,
    /// A dead letter holds at most this many bytes of its input.
    pub dead_letter_bytes_max: usize,
}

/// Submits inputs to JetStream; shared by NATS and HTTP intake.
pub struct Publisher {
    js: jetstream::Context,
    slots: Arc<Semaphore>,
    limits: PublisherLimits,
    clusters: AllowedClusters,
    /// Set when a wait for a slot timed out: JetStream is not keeping up, so
    /// later inputs are answered at once instead of each waiting in turn.
    /// Cleared by the next input that finds a free slot.
    saturated: AtomicBool,
    /// Set on shutdown: no new input is taken.
    closed: AtomicBool,
    metrics: GatewayMetrics,
}

/// An outcome to come: resolves once JetStream answered (or at once).
pub type PendingOutcome = BoxFuture<'static, Outcome>;

/// The outcomes of a batch's lines to come, in line order: (line number, outcome).
pub type PendingBatch = BoxFuture<'static, Vec<(u64, Outcome)>>;

impl Publisher {
    /// `js` should have an ack timeout (its context timeout) shorter than a
    /// sender's request timeout, so a sender hears `unavailable` before it gives up.
    pub fn new(
        js: jetstream::Context,
        limits: PublisherLimits,
        clusters: AllowedClusters,
        metrics: GatewayMetrics,
    ) -> Self {
        assert!(limits.acks_in_flight_max >= 1, "acks_in_flight_max must be at least 1");
        Publisher {
            js,
            slots: Arc::new(Semaphore::new(limits.acks_in_flight_max as usize)),
            limits,
            clusters,
            saturated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// Decides about `input` and starts its publish (claim or dead letter).
    /// Awaiting this only waits for an ack slot; await the returned future for the outcome.
    pub async fn submit(&self, input: Input) -> PendingOutcome {
        self.count_received(input.source);
        let admission = self.admit(&input.cluster, &input.payload);
        let Some(slot) = self.ack_slot().await else {
            return futures::future::ready(self.unavailable()).boxed();
        };
        match admission {
            Admission::Accept { claim_subject, msg_id } => {
                self.publish_claim(claim_subject, msg_id, input.payload, slot).await
            }
            Admission::Reject {
                reject_subject,
                reason,
                message,
            } => {
                self.count_rejected(&reason);
                let body = DeadLetterBody::single(input.payload, self.limits.dead_letter_bytes_max);
                let about = DeadLetterAbout {
                    reason: &reason,
                    message: &message,
                    source: input.source,
                    origin: &input.origin,
                };
                let kept = self.publish_dead_letter(reject_subject, about, body, slot).await;
                // The sender is told why even when the dead letter was not
                // stored: retrying a bad claim cannot make it good.
                async move {
                    kept.await;
                    Outcome::Rejected { reason, message }
                }
                .boxed()
            }
        }
    }

    /// Decides about each line of an HTTP batch for `cluster`: accepted lines
    /// are published one by one (pipelined, as [`Publisher::submit`] does),
    /// the refused ones together in one dead letter ([`DeadLetterBody::batch`]).
    /// Awaiting this waits for the ack slots; await the returned future for
    /// every line's outcome. A refused line is answered with its reason once
    /// the dead letter was handed to JetStream, or `unavailable` when no ack
    /// slot was free for it (so that the sender retries and nothing is lost).
    pub async fn submit_batch(&self, cluster: &str, origin: &str, lines: Vec<(u64, Bytes)>) -> PendingBatch {
        enum Line {
            Claim(tokio::task::JoinHandle<Outcome>),
            Unavailable(Outcome),
            /// Index into `refused`.
            Refused(usize),
        }
        let mut answers = Vec::with_capacity(lines.len());
        let mut refused: Vec<RefusedLine> = Vec::new();
        let mut reject_subject = None;
        for (number, payload) in lines {
            self.count_received(Source::Http);
            match self.admit(cluster, &payload) {
                Admission::Accept { claim_subject, msg_id } => {
                    let line = match self.ack_slot().await {
                        None => Line::Unavailable(self.unavailable()),
                        // Each ack is awaited in its own task from the start, so the
                        // slots of acknowledged lines come back while later lines of a
                        // batch larger than the ack limit wait for one (an ack future
                        // that nobody polls would hold its slot until the whole batch
                        // was submitted: a batch would starve itself).
                        Some(slot) => Line::Claim(tokio::spawn(
                            self.publish_claim(claim_subject, msg_id, payload, slot).await,
                        )),
                    };
                    answers.push((number, line));
                }
                Admission::Reject {
                    reject_subject: subject,
                    reason,
                    message,
                } => {
                    // The lines of a batch share their cluster, so their reject subject.
                    reject_subject.get_or_insert(subject);
                    answers.push((number, Line::Refused(refused.len())));
                    refused.push(RefusedLine {
                        line: number,
                        payload,
                        reason,
                        message,
                    });
                }
            }
        }
        let mut kept = None;
        if let Some(subject) = reject_subject {
            if let Some(slot) = self.ack_slot().await {
                for line in &refused {
                    self.count_rejected(&line.reason);
                }
                let first = &refused[0];
                let body = DeadLetterBody::batch(&refused, self.limits.dead_letter_bytes_max);
                let about = DeadLetterAbout {
                    reason: &first.reason,
                    message: &first.message,
                    source: Source::Http,
                    origin,
                };
                kept = Some(self.publish_dead_letter(subject, about, body, slot).await);
            }
        }
        let refused_outcomes: Vec<Outcome> = refused
            .into_iter()
            .map(|line| {
                if kept.is_some() {
                    Outcome::Rejected {
                        reason: line.reason,
                        message: line.message,
                    }
                } else {
                    self.unavailable()
                }
            })
            .collect();
        async move {
            if let Some(kept) = kept {
                kept.await;
            }
            let mut outcomes = Vec::with_capacity(answers.len());
            for (number, line) in answers {
                let outcome = match line {
                    Line::Claim(ack) => ack
                        .await
                        .unwrap_or_else(|e| Outcome::unavailable(format!("the ack task failed: {e}"))),
                    Line::Unavailable(outcome) => outcome,
                    Line::Refused(i) => refused_outcomes[i].clone(),
                };
                outcomes.push((number, outcome));
            }
            outcomes
        }
        .boxed()
    }

    /// Stops taking inputs: every later [`Publisher::submit`] answers `unavailable`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Waits until every publish in flight has its ack (or its timeout), at most `wait`.
    /// Returns whether all were drained.
    pub async fn drain(&self, wait: Duration) -> bool {
        let all = self.limits.acks_in_flight_max;
        matches!(
            tokio::time::timeout(wait, self.slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Publishes awaiting their ack now.
    pub fn acks_in_flight(&self) -> u32 {
        self.limits.acks_in_flight_max - self.slots.available_permits() as u32
    }

    pub fn limits(&self) -> PublisherLimits {
        self.limits
    }

    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }

    /// The clusters this gateway takes.
    pub fn clusters(&self) -> &AllowedClusters {
        &self.clusters
    }

    /// The allow-list first, then SPEC admission ([`admit`] checks the id's
    /// form before the allow-list is asked, see [`AllowedClusters::refusal`]).
    fn admit(&self, cluster: &str, payload: &[u8]) -> Admission {
        self.clusters
            .refusal(cluster)
            .unwrap_or_else(|| admit(cluster, payload))
    }

    fn count_received(&self, source: Source) {
        self.metrics.claims_received.with_label_values(&[source.as_str()]).inc();
    }

    fn count_rejected(&self, reason: &str) {
        self.metrics.claims_rejected.with_label_values(&[reason]).inc();
        self.metrics.claims_rejected_all.inc();
    }

    /// The answer to an input that found no ack slot (counted).
    fn unavailable(&self) -> Outcome {
        self.metrics.claims_unavailable.inc();
        Outcome::unavailable(if self.closed.load(Ordering::Relaxed) {
            "the gateway is shutting down; retry (another gateway may take it)"
        } else {
            "too many claims awaiting a JetStream ack; retry later"
        })
    }

    async fn ack_slot(&self) -> Option<AckSlot> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            self.saturated.store(false, Ordering::Relaxed);
            return Some(AckSlot::new(permit, &self.metrics));
        }
        if self.saturated.load(Ordering::Relaxed) {
            return None;
        }
        match tokio::time::timeout(self.limits.backpressure_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(AckSlot::new(permit, &self.metrics)),
            _ => {
                self.saturated.store(true, Ordering::Relaxed);
                tracing::warn!(
                    acks_in_flight_max = self.limits.acks_in_flight_max,
                    "no JetStream ack slot freed in time; answering 'unavailable' until one does"
                );
                None
            }
        }
    }

    /// Every JetStream publish of the gateway goes through here, and only to
    /// a claim or a reject subject: whatever a sender writes, nothing the
    /// gateway stores can land on a beat, bar or intake subject (the NATS
    /// replies, the only other thing it publishes, go to inboxes only: [`super::reply`]).
    /// `expected_stream` makes the server refuse the publish when another
    /// stream is bound to the subject, instead of letting it go astray.
    async fn publish(
        &self,
        subject: String,
        mut headers: HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let expected_stream = match parse_subject(&subject) {
            Some((_, SubjectKind::Claim)) => EVENTS_STREAM,
            Some((_, SubjectKind::Reject)) => REJECTS_STREAM,
            _ => panic!("the gateway publishes only to claim and reject subjects; not to {subject:?}"),
        };
        headers.insert(NATS_EXPECTED_STREAM, expected_stream);
        self.js.publish_with_headers(subject, headers, payload).await
    }

    async fn publish_claim(&self, subject: String, msg_id: String, payload: Bytes, slot: AckSlot) -> PendingOutcome {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, msg_id.as_str());
        let started = Instant::now();
        let metrics = self.metrics.clone();
        match self.publish(subject, headers, payload).await {
            Err(e) => {
                drop(slot);
                metrics.claims_unavailable.inc();
                futures::future::ready(Outcome::unavailable(format!("JetStream publish failed: {e}"))).boxed()
            }
            Ok(ack) => async move {
                let result = ack.await;
                metrics.publish_latency.observe(started.elapsed().as_secs_f64());
                drop(slot);
                match result {
                    Ok(ack) => {
                        if ack.duplicate {
                            metrics.claims_duplicate.inc();
                        } else {
                            metrics.claims_accepted.inc();
                        }
                        Outcome::Accepted {
                            seq: ack.sequence,
                            duplicate: ack.duplicate,
                        }
                    }
                    Err(e) => {
                        metrics.claims_unavailable.inc();
                        Outcome::unavailable(format!("JetStream did not acknowledge the claim: {e}"))
                    }
                }
            }
            .boxed(),
        }
    }

    /// Keeps `body` in `BACKBEAT_REJECTS`; the returned future resolves once
    /// JetStream answered. A dead letter JetStream refuses is logged and counted.
    async fn publish_dead_letter(
        &self,
        subject: String,
        about: DeadLetterAbout<'_>,
        body: DeadLetterBody,
        slot: AckSlot,
    ) -> BoxFuture<'static, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_REASON,
            header_value(about.reason, HEADER_VALUE_BYTES_MAX).as_str(),
        );
        headers.insert(
            HEADER_ERROR,
            header_value(about.message, HEADER_VALUE_BYTES_MAX).as_str(),
        );
        headers.insert(HEADER_SOURCE, about.source.as_str());
        headers.insert(
            HEADER_SUBJECT,
            header_value(about.origin, HEADER_VALUE_BYTES_MAX).as_str(),
        );
        // An input larger than a message may be is kept as its prefix, saying
        // so, rather than lost to a refused publish.
        if let Some(full_len) = body.truncated_from_bytes {
            headers.insert(HEADER_TRUNCATED, full_len.to_string().as_str());
            self.metrics.dead_letters_truncated.inc();
        }
        if let Some(lines) = &body.lines {
            // Bounded with the payload, by the dead letter's size limit.
            headers.insert(HEADER_LINES, header_value(&lines.listed, usize::MAX).as_str());
            headers.insert(HEADER_LINES_REFUSED, lines.refused.to_string().as_str());
        }
        let payload_len = body.payload.len();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        match self.publish(subject.clone(), headers, body.payload).await {
            Err(e) => {
                drop(slot);
                metrics.dead_letters_failed.inc();
                tracing::error!(%subject, payload_len, error = %e, "dead letter not published");
                futures::future::ready(()).boxed()
            }
            Ok(ack) => async move {
                let result = ack.await;
                metrics.publish_latency.observe(started.elapsed().as_secs_f64());
                drop(slot);
                if let Err(e) = result {
                    metrics.dead_letters_failed.inc();
                    tracing::error!(%subject, payload_len, error = %e, "dead letter not acknowledged");
                }
            }
            .boxed(),
        }
    }
}

/// The most bytes of a reason, message or origin a dead letter's header
/// keeps: an HTTP path can be tens of kilobytes, and is kept whole nowhere.
const HEADER_VALUE_BYTES_MAX: usize = 1024;

/// What a dead letter's common headers say about its input.
struct DeadLetterAbout<'a> {
    /// `Backbeat-Reason`.
    reason: &'a str,
    /// `Backbeat-Error`.
    message: &'a str,
    /// `Backbeat-Source`.
    source: Source,
    /// `Backbeat-Subject`.
    origin: &'a str,
}

/// A NATS header value cannot hold CR or LF (the client panics on them), and
/// control characters would confuse readers of the dead letter: replace them.
/// At most `bytes_max` bytes of `s` are kept (whole characters).
fn header_value(s: &str, bytes_max: usize) -> String {
    let mut value = String::with_capacity(s.len().min(bytes_max));
    for c in s.chars() {
        if value.len() + c.len_utf8() > bytes_max {
            break;
        }
        value.push(if c.is_control() { '?' } else { c });
    }
    value
}

/// One ack in flight; gives its slot back (and lowers the gauge) when dropped.
struct AckSlot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl AckSlot {
    fn new(permit: OwnedSemaphorePermit, metrics: &GatewayMetrics) -> Self {
        metrics.acks_in_flight.inc();
        AckSlot {
            _permit: permit,
            gauge: metrics.acks_in_flight.clone(),
        }
    }
}

impl Drop for AckSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_lose_control_characters() {
        assert_eq!(header_value("a\r\nb\tc é", 100), "a??b?c é");
    }

    #[test]
    fn header_values_are_bounded_on_a_character_boundary() {
        assert_eq!(header_value("abcdef", 4), "abcd");
        assert_eq!(header_value("aéb", 2), "a");
        assert_eq!(
            header_value(&"x".repeat(60_000), HEADER_VALUE_BYTES_MAX).len(),
            HEADER_VALUE_BYTES_MAX
        );
    }
}
