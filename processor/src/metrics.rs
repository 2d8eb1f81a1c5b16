//! The processor's Prometheus metrics: the original reverb names, plus lag,
//! rollup latency and checkpoints.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use backbeat_fold::Outcome;
use backbeat_service::metrics::{boxed, register_all};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `backbeat_reverb_agents_reporting{cluster}`: of the last report.
    pub agents_reporting: IntGaugeVec,
    /// `backbeat_reverb_on_time_reviews{cluster}`: of the last report.
    pub on_time_reviews: IntGaugeVec,
    pub windows_completed: IntCounterVec,
    /// From the closing event's arrival to the report's publication (or skip).
    pub window_processing: Histogram,
    pub claims_processed: IntCounterVec,
    pub beats_processed: IntCounterVec,
    pub consumer_lag: IntGauge,
    /// Closing beat's arrival to the report's ack.
    pub rollup_latency: Histogram,
    pub reports_published: IntCounter,
    pub reports_skipped: IntCounter,
    pub report_mismatches: IntCounter,
    pub checkpoints: IntCounter,
    /// Checkpoints kept as history (for replay).
    pub checkpoints_kept: IntCounter,
    pub checkpoint_bytes: IntGauge,
    pub last_seq: IntGauge,
    /// 1 while this process holds its name's lease (copied by [`crate::lease::follow`]).
    pub lease_held: IntGauge,
    pub lease_lost: IntCounter,
    /// Messages on a bar subject that are not this processor's reports (read, counted once, skipped).
    pub foreign_bars: IntCounter,
    /// Reports published without their `Nats-Msg-Id` because a foreign message held it.
    pub report_msg_id_taken: IntCounter,
    /// 1 while a report cannot be published (retrying); /ready is red meanwhile.
    pub publish_failing: IntGauge,
    pub publish_failures: IntCounter,
    /// Clusters the fold holds.
    pub clusters: IntGauge,
    /// Events of clusters beyond `--max-clusters`, not folded.
    pub cluster_cap_events: IntCounter,
    /// Distinct clusters refused by `--max-clusters` (those remembered, at most [`crate::worker::REFUSED_CLUSTERS_MAX`]).
    pub clusters_refused: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let latency_buckets = exponential_buckets(0.0001, 2.0, 18).expect("valid buckets");
        let m = Metrics {
            agents_reporting: IntGaugeVec::new(
                Opts::new(
                    "backbeat_reverb_agents_reporting",
                    "Agents reporting in the last closed window",
                ),
                &["cluster"],
            )
            .unwrap(),
            on_time_reviews: IntGaugeVec::new(
                Opts::new(
                    "backbeat_reverb_on_time_reviews",
                    "On-time reviews in the last closed window",
                ),
                &["cluster"],
            )
            .unwrap(),
            windows_completed: IntCounterVec::new(
                Opts::new("backbeat_reverb_windows_completed_total", "Windows reported"),
                &["cluster"],
            )
            .unwrap(),
            window_processing: Histogram::with_opts(
                HistogramOpts::new(
                    "backbeat_reverb_window_processing_seconds",
                    "Time from a window's closing event to its report being stored",
                )
                .buckets(latency_buckets.clone()),
            )
            .unwrap(),
            claims_processed: IntCounterVec::new(
                Opts::new("backbeat_reverb_claims_processed_total", "Claims folded, by outcome"),
                &["outcome"],
            )
            .unwrap(),
            beats_processed: IntCounterVec::new(
                Opts::new(
                    "backbeat_processor_beats_processed_total",
                    "Beat frames folded, by outcome",
                ),
                &["outcome"],
            )
            .unwrap(),
            consumer_lag: IntGauge::new(
                "backbeat_processor_consumer_lag_messages",
                "Messages in the stream not yet folded",
            )
            .unwrap(),
            rollup_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "backbeat_processor_rollup_latency_seconds",
                    "Closing beat's arrival at the processor to the report's ack",
                )
                .buckets(latency_buckets),
            )
            .unwrap(),
            reports_published: IntCounter::new("backbeat_processor_reports_published_total", "Reports stored").unwrap(),
            reports_skipped: IntCounter::new(
                "backbeat_processor_reports_skipped_total",
                "Re-derived reports already in BACKBEAT_BARS (after a restart)",
            )
            .unwrap(),
            report_mismatches: IntCounter::new(
                "backbeat_processor_report_mismatches_total",
                "Re-derived reports whose bytes differ from the stored ones (must stay 0)",
            )
            .unwrap(),
            checkpoints: IntCounter::new("backbeat_processor_checkpoints_total", "Checkpoints written").unwrap(),
            checkpoints_kept: IntCounter::new(
                "backbeat_processor_checkpoints_kept_total",
                "Checkpoints kept as history, for replay to start from",
            )
            .unwrap(),
            checkpoint_bytes: IntGauge::new("backbeat_processor_checkpoint_bytes", "Size of the last checkpoint")
                .unwrap(),
            last_seq: IntGauge::new(
                "backbeat_processor_last_seq",
                "Stream sequence of the last event folded",
            )
            .unwrap(),
            lease_held: IntGauge::new(
                "backbeat_processor_lease_held",
                "1 while this process holds the single-writer lease of its --name",
            )
            .unwrap(),
            lease_lost: IntCounter::new(
                "backbeat_processor_lease_lost_total",
                "Leases lost while held (taken by another process, or not refreshed within the TTL)",
            )
            .unwrap(),
            foreign_bars: IntCounter::new(
                "backbeat_processor_foreign_bars_total",
                "Messages on a backbeat.*.bar subject that are not this processor's reports: counted, skipped",
            )
            .unwrap(),
            report_msg_id_taken: IntCounter::new(
                "backbeat_processor_report_msg_id_taken_total",
                "Reports published without Nats-Msg-Id because a foreign message held their window id \
                 in the duplicate window (the expected-last-subject-sequence fence still applies)",
            )
            .unwrap(),
            publish_failing: IntGauge::new(
                "backbeat_processor_publish_failing",
                "1 while a report cannot be published to BACKBEAT_BARS (retrying; /ready answers 503)",
            )
            .unwrap(),
            publish_failures: IntCounter::new(
                "backbeat_processor_publish_failures_total",
                "Failed attempts to publish a report (each is retried)",
            )
            .unwrap(),
            clusters: IntGauge::new("backbeat_processor_clusters", "Clusters the fold holds").unwrap(),
            cluster_cap_events: IntCounter::new(
                "backbeat_processor_cluster_cap_events_total",
                "Events of clusters beyond --max-clusters: not folded",
            )
            .unwrap(),
            clusters_refused: IntGauge::new(
                "backbeat_processor_clusters_refused",
                "Distinct clusters whose events are refused by --max-clusters (the first 1024 remembered)",
            )
            .unwrap(),
            registry,
        };
        register_all(
            &m.registry,
            [
                boxed(&m.agents_reporting),
                boxed(&m.on_time_reviews),
                boxed(&m.windows_completed),
                boxed(&m.window_processing),
                boxed(&m.claims_processed),
                boxed(&m.beats_processed),
                boxed(&m.consumer_lag),
                boxed(&m.rollup_latency),
                boxed(&m.reports_published),
                boxed(&m.reports_skipped),
                boxed(&m.report_mismatches),
                boxed(&m.checkpoints),
                boxed(&m.checkpoints_kept),
                boxed(&m.checkpoint_bytes),
                boxed(&m.last_seq),
                boxed(&m.lease_held),
                boxed(&m.lease_lost),
                boxed(&m.foreign_bars),
                boxed(&m.report_msg_id_taken),
                boxed(&m.publish_failing),
                boxed(&m.publish_failures),
                boxed(&m.clusters),
                boxed(&m.cluster_cap_events),
                boxed(&m.clusters_refused),
            ],
        );
        m
    }

    /// Counts events by outcome (`counts[outcome as usize]`).
    pub fn count_many(&self, counts: &[u64; Outcome::ALL.len()]) {
        for (outcome, &n) in Outcome::ALL.iter().zip(counts) {
            if n == 0 {
                continue;
            }
            match outcome {
                Outcome::Ignored | Outcome::AlreadyApplied => {}
                Outcome::ClusterRefused => self.cluster_cap_events.inc_by(n),
                Outcome::BeatApplied | Outcome::BeatStale | Outcome::BeatRejected => {
                    self.beats_processed.with_label_values(&[outcome.as_str()]).inc_by(n)
                }
                Outcome::ClaimApplied | Outcome::ClaimLate | Outcome::ClaimRejected => {
                    self.claims_processed.with_label_values(&[outcome.as_str()]).inc_by(n)
                }
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
