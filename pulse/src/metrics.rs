//! The pulse's Prometheus metrics. The first four names are the original
//! prototype's, which users' dashboards already chart (`backbeat_beats_total`,
//! `backbeat_pulse_jitter_seconds`, `backbeat_is_leader`,
//! `backbeat_current_tempo_bpm`); the others are the pulse's own failure counters.

use backbeat_service::metrics::{boxed, register_all};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Jitter buckets, in seconds: fine from 50 µs up to a whole second.
pub const JITTER_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0,
];

/// Every metric the pulse exports, registered in `registry`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Beats this node published and the stream stored.
    pub beats_total: IntCounter,
    /// Actual − scheduled publish time of each beat this node emitted.
    pub jitter_seconds: Histogram,
    /// 1 while this node leads with a lease from a majority (and so emits), else 0.
    pub is_leader: IntGauge,
    /// The tempo of the last beat emitted (or the configured tempo before that).
    pub current_tempo_bpm: IntGauge,
    /// Times this node saw the group's leader change.
    pub leader_changes_total: IntCounter,
    /// Publishes that failed (no ack, timeout, refused by the fence).
    pub publish_failures_total: IntCounter,
    /// Beats the schedule called for while this node led but that are not in the stream
    /// because NATS was unreachable.
    pub beats_unpublished_total: IntCounter,
    /// Messages on the cluster's beat subject that are not the group's own
    /// (no valid `Backbeat-Beat-Mac`): counted once each, never resumed from.
    pub foreign_beats_total: IntCounter,
    /// Raft requests refused for a missing, stale or wrong authenticator.
    pub raft_auth_failures_total: IntCounter,
    /// Committed raft entries skipped because they are out of range.
    pub invalid_raft_entries_total: IntCounter,
    /// Times the watchdog gave up this node's leadership (its emitter stalled or died).
    pub watchdog_stepdowns_total: IntCounter,
}

impl Metrics {
    /// Creates the metrics and registers them through [`register_all`]. Panics
    /// only on a name registered twice, a programmer's error.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let beats_total = IntCounter::new("backbeat_beats_total", "Beats published by this node").expect("metric");
        let jitter_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "backbeat_pulse_jitter_seconds",
                "Actual minus scheduled publish time of each beat",
            )
            .buckets(JITTER_BUCKETS_SECONDS.to_vec()),
        )
        .expect("metric");
        let is_leader = IntGauge::new("backbeat_is_leader", "1 on the raft leader, else 0").expect("metric");
        let current_tempo_bpm =
            IntGauge::new("backbeat_current_tempo_bpm", "Tempo of the last beat, beats per minute").expect("metric");
        let leader_changes_total = IntCounter::new(
            "backbeat_pulse_leader_changes_total",
            "Leader changes seen by this node",
        )
        .expect("metric");
        let publish_failures_total =
            IntCounter::new("backbeat_pulse_publish_failures_total", "Beat publishes that failed").expect("metric");
        let beats_unpublished_total = IntCounter::new(
            "backbeat_pulse_beats_unpublished_total",
            "Scheduled beats not published because NATS was unreachable",
        )
        .expect("metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("metric");
        let foreign_beats_total = counter(
            "backbeat_pulse_foreign_beats_total",
            "Messages on the beat subject not authenticated as this group's beats (skipped)",
        );
        let raft_auth_failures_total = counter(
            "backbeat_pulse_raft_auth_failures_total",
            "Raft requests refused: missing, stale or wrong authenticator",
        );
        let invalid_raft_entries_total = counter(
            "backbeat_pulse_invalid_raft_entries_total",
            "Committed raft entries skipped because they are out of range",
        );
        let watchdog_stepdowns_total = counter(
            "backbeat_pulse_watchdog_stepdowns_total",
            "Times the watchdog gave up leadership because the emitter stalled or died",
        );
        register_all(
            &registry,
            [
                boxed(&beats_total),
                boxed(&jitter_seconds),
                boxed(&is_leader),
                boxed(&current_tempo_bpm),
                boxed(&leader_changes_total),
                boxed(&publish_failures_total),
                boxed(&beats_unpublished_total),
                boxed(&foreign_beats_total),
                boxed(&raft_auth_failures_total),
                boxed(&invalid_raft_entries_total),
                boxed(&watchdog_stepdowns_total),
            ],
        );
        Metrics {
            registry,
            beats_total,
            jitter_seconds,
            is_leader,
            current_tempo_bpm,
            leader_changes_total,
            publish_failures_total,
            beats_unpublished_total,
            foreign_beats_total,
            raft_auth_failures_total,
            invalid_raft_entries_total,
            watchdog_stepdowns_total,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dashboards chart these names: renaming one is a breaking change.
    #[test]
    fn every_metric_is_exported_under_its_name() {
        let metrics = Metrics::new();
        let mut names: Vec<String> = metrics.registry.gather().iter().map(|f| f.name().to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "backbeat_beats_total",
                "backbeat_current_tempo_bpm",
                "backbeat_is_leader",
                "backbeat_pulse_beats_unpublished_total",
                "backbeat_pulse_foreign_beats_total",
                "backbeat_pulse_invalid_raft_entries_total",
                "backbeat_pulse_jitter_seconds",
                "backbeat_pulse_leader_changes_total",
                "backbeat_pulse_publish_failures_total",
                "backbeat_pulse_raft_auth_failures_total",
                "backbeat_pulse_watchdog_stepdowns_total",
            ]
        );
    }
}
