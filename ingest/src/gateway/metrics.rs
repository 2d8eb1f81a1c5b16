//! The gateway's Prometheus metrics. Every limit the gateway enforces shows up
//! here when it is hit (unavailable answers, failed dead letters).

use backbeat_service::metrics::{boxed, register_all};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::reply::RefusedReply;

/// The reasons of `backbeat_ingest_requests_refused_total`.
pub const REQUEST_REFUSALS: [&str; 4] = ["body_too_large", "too_many_lines", "empty_batch", "invalid_body"];

/// Counters, gauges and histograms, registered in [`GatewayMetrics::registry`].
#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    /// Inputs taken, by `source` (`nats`, `http`).
    pub claims_received: IntCounterVec,
    /// Claims JetStream acknowledged as new.
    pub claims_accepted: IntCounter,
    /// Inputs refused, by SPEC `reason` (or `invalid_cluster`).
    pub claims_rejected: IntCounterVec,
    /// The sum of `claims_rejected` over reasons, for `/api/v1/status` (not exported).
    pub claims_rejected_all: IntCounter,
    /// Claims JetStream acknowledged as duplicates of a stored one.
    pub claims_duplicate: IntCounter,
    /// Inputs answered `unavailable` (no ack slot, ack timeout, shutting down).
    pub claims_unavailable: IntCounter,
    /// Dead letters JetStream did not acknowledge (the sender was still told why).
    pub dead_letters_failed: IntCounter,
    /// Dead letters that hold only a prefix of their input (`Backbeat-Truncated`).
    pub dead_letters_truncated: IntCounter,
    /// NATS requests answered with nothing because their reply subject is not
    /// an inbox, by `reason` ([`super::reply::RefusedReply`]); their claim is still taken.
    pub replies_refused: IntCounterVec,
    /// HTTP requests refused whole, before any claim in them was looked at, by
    /// `reason` ([`REQUEST_REFUSALS`]): limits hit by a body, not by a claim.
    pub requests_refused: IntCounterVec,
    /// From sending a publish to its JetStream ack.
    pub publish_latency: Histogram,
    /// JetStream publishes (claims and dead letters) awaiting their ack.
    pub acks_in_flight: IntGauge,
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let claims_received = IntCounterVec::new(
            Opts::new("backbeat_ingest_claims_received_total", "Claims taken, by source."),
            &["source"],
        )
        .expect("valid metric");
        let claims_accepted = IntCounter::new(
            "backbeat_ingest_claims_accepted_total",
            "Claims stored in BACKBEAT_EVENTS (not counting duplicates).",
        )
        .expect("valid metric");
        let claims_rejected = IntCounterVec::new(
            Opts::new(
                "backbeat_ingest_claims_rejected_total",
                "Inputs refused and kept in BACKBEAT_REJECTS, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let claims_rejected_all =
            IntCounter::new("backbeat_ingest_claims_rejected_all", "Sum of claims_rejected.").expect("valid metric");
        let claims_duplicate = IntCounter::new(
            "backbeat_ingest_claims_duplicate_total",
            "Claims JetStream already held (same Nats-Msg-Id).",
        )
        .expect("valid metric");
        let claims_unavailable = IntCounter::new(
            "backbeat_ingest_claims_unavailable_total",
            "Claims answered 'unavailable' (JetStream slow or down, too many acks in flight, shutting down).",
        )
        .expect("valid metric");
        let dead_letters_failed = IntCounter::new(
            "backbeat_ingest_dead_letters_failed_total",
            "Dead letters JetStream did not acknowledge.",
        )
        .expect("valid metric");
        let dead_letters_truncated = IntCounter::new(
            "backbeat_ingest_dead_letters_truncated_total",
            "Dead letters holding only a prefix of their input (an input or batch over --dead-letter-bytes-max).",
        )
        .expect("valid metric");
        let replies_refused = IntCounterVec::new(
            Opts::new(
                "backbeat_ingest_replies_refused_total",
                "NATS requests not answered because their reply subject is not an inbox (--inbox-prefixes), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in RefusedReply::ALL {
            replies_refused.with_label_values(&[reason.as_str()]);
        }
        let requests_refused = IntCounterVec::new(
            Opts::new(
                "backbeat_ingest_requests_refused_total",
                "HTTP requests refused whole (body over --batch-bytes-max, more lines than --batch-lines-max, no line, unreadable body), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in REQUEST_REFUSALS {
            requests_refused.with_label_values(&[reason]);
        }
        let publish_latency = Histogram::with_opts(
            HistogramOpts::new(
                "backbeat_ingest_publish_latency_seconds",
                "Time from sending a JetStream publish to its ack.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let acks_in_flight = IntGauge::new(
            "backbeat_ingest_acks_in_flight",
            "JetStream publishes awaiting their ack.",
        )
        .expect("valid metric");
        register_all(
            &registry,
            [
                boxed(&claims_received),
                boxed(&claims_accepted),
                boxed(&claims_rejected),
                boxed(&claims_duplicate),
                boxed(&claims_unavailable),
                boxed(&dead_letters_failed),
                boxed(&dead_letters_truncated),
                boxed(&replies_refused),
                boxed(&requests_refused),
                boxed(&publish_latency),
                boxed(&acks_in_flight),
            ],
        );
        GatewayMetrics {
            registry,
            claims_received,
            claims_accepted,
            claims_rejected,
            claims_rejected_all,
            claims_duplicate,
            claims_unavailable,
            dead_letters_failed,
            dead_letters_truncated,
            replies_refused,
            requests_refused,
            publish_latency,
            acks_in_flight,
        }
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
