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
use backbeat_schemas::names::{EVENTS_STREAM, REJECTS_STREAM};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::{admit, Admission};
use super::metrics::GatewayMetrics;
use crate::answer::Outcome;

/// Dead-letter header: the SPEC reason string, e.g. `invalid_field:progress`.
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

impl Publisher {
    /// `js` should have an ack timeout (its context timeout) shorter than a
    /// sender's request timeout, so a sender hears `unavailable` before it gives up.
    pub fn new(js: jetstream::Context, limits: PublisherLimits, metrics: GatewayMetrics) -> Self {
        assert!(limits.acks_in_flight_max >= 1, "acks_in_flight_max must be at least 1");
        Publisher {
            js,
            slots: Arc::new(Semaphore::new(limits.acks_in_flight_max as usize)),
            limits,
            saturated: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            metrics,
        }
    }

    /// Decides about `input` and starts its publish (claim or dead letter).
    /// Awaiting this only waits for an ack slot; await the returned future for the outcome.
    pub async fn submit(&self, input: Input) -> PendingOutcome {
        self.metrics
            .claims_received
            .with_label_values(&[input.source.as_str()])
            .inc();
        let admission = admit(&input.cluster, &input.payload);
        let Some(slot) = self.ack_slot().await else {
            self.metrics.claims_unavailable.inc();
            let message = if self.closed.load(Ordering::Relaxed) {
                "the gateway is shutting down; retry (another gateway may take it)"
            } else {
                "too many claims awaiting a JetStream ack; retry later"
            };
            return futures::future::ready(Outcome::unavailable(message)).boxed();
        };
        match admission {
            Admission::Accept { claim_subject, msg_id } => self.publish_claim(claim_subject, msg_id, input, slot).await,
            Admission::Reject {
                reject_subject,
                reason,
                message,
            } => {
                self.metrics.claims_rejected.with_label_values(&[&reason]).inc();
                self.metrics.claims_rejected_all.inc();
                self.publish_dead_letter(reject_subject, reason, message, input, slot)
                    .await
            }
        }
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

    async fn publish_claim(&self, subject: String, msg_id: String, input: Input, slot: AckSlot) -> PendingOutcome {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, msg_id.as_str());
        // A claim lands in BACKBEAT_EVENTS or nowhere: with another stream
        // bound to the subject, the publish fails instead of going astray.
        headers.insert(NATS_EXPECTED_STREAM, EVENTS_STREAM);
        let started = Instant::now();
        let metrics = self.metrics.clone();
        match self.js.publish_with_headers(subject, headers, input.payload).await {
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

    /// Keeps the input in `BACKBEAT_REJECTS` and answers the rejection once
    /// JetStream has it. A dead letter JetStream refuses is logged and counted;
    /// the sender is still told why its input was refused (retrying a bad
    /// claim cannot make it good).
    async fn publish_dead_letter(
        &self,
        subject: String,
        reason: String,
        message: String,
        input: Input,
        slot: AckSlot,
    ) -> PendingOutcome {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_STREAM, REJECTS_STREAM);
        headers.insert(HEADER_REASON, header_value(&reason).as_str());
        headers.insert(HEADER_ERROR, header_value(&message).as_str());
        headers.insert(HEADER_SOURCE, input.source.as_str());
        headers.insert(HEADER_SUBJECT, header_value(&input.origin).as_str());
        let payload_len = input.payload.len();
        // An input larger than a message may be is kept as its prefix, saying
        // so, rather than lost to a refused publish.
        let mut payload = input.payload;
        if payload_len > self.limits.dead_letter_bytes_max {
            headers.insert(HEADER_TRUNCATED, payload_len.to_string().as_str());
            payload.truncate(self.limits.dead_letter_bytes_max);
        }
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let outcome = Outcome::Rejected { reason, message };
        match self.js.publish_with_headers(subject.clone(), headers, payload).await {
            Err(e) => {
                drop(slot);
                metrics.dead_letters_failed.inc();
                tracing::error!(%subject, payload_len, error = %e, "dead letter not published");
                futures::future::ready(outcome).boxed()
            }
            Ok(ack) => async move {
                let result = ack.await;
                metrics.publish_latency.observe(started.elapsed().as_secs_f64());
                drop(slot);
                if let Err(e) = result {
                    metrics.dead_letters_failed.inc();
                    tracing::error!(%subject, payload_len, error = %e, "dead letter not acknowledged");
                }
                outcome
            }
            .boxed(),
        }
    }
}

/// A NATS header value cannot hold CR or LF (the client panics on them), and
/// control characters would confuse readers of the dead letter: replace them.
fn header_value(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
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
        assert_eq!(header_value("a\r\nb\tc é"), "a??b?c é");
    }
}
