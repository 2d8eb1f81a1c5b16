//! The query service's metrics (`/metrics`), all in one registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the service exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Queries by outcome: `ok`, or the error kind (`forbidden`, `timeout`, …).
    pub queries: IntCounterVec,
    /// Queries running now.
    pub queries_running: IntGauge,
    /// Time from a query's arrival to its last row, answered or not.
    pub query_seconds: Histogram,
    /// Rows each table holds in memory.
    pub rows_held: IntGaugeVec,
    /// Rows let go from the in-memory tail (the oldest, past `--tail-rows-max`).
    pub rows_evicted: IntCounterVec,
    /// Messages of a stream not yet read by the tail.
    pub tail_lag: IntGaugeVec,
    /// Messages on a bar subject left out of `bar_reports`: `invalid` (not a
    /// valid BarReport of its cluster) or `superseded` (a later message of the
    /// same window replaced it).
    pub foreign_bars: IntCounterVec,
    /// Messages on a beat or claim subject that are not a valid beat or claim.
    pub foreign_events: IntCounterVec,
    /// Consumer restarts of the tail after an error.
    pub tail_restarts: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let metrics = Metrics {
            queries: IntCounterVec::new(
                Opts::new("backbeat_query_queries_total", "SQL queries by outcome."),
                &["outcome"],
            )?,
            queries_running: IntGauge::new("backbeat_query_queries_running", "SQL queries running now.")?,
            query_seconds: Histogram::with_opts(
                HistogramOpts::new("backbeat_query_duration_seconds", "Query latency, arrival to last row.")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            )?,
            rows_held: IntGaugeVec::new(
                Opts::new("backbeat_query_rows_held", "Rows held in memory per table."),
                &["table"],
            )?,
            rows_evicted: IntCounterVec::new(
                Opts::new(
                    "backbeat_query_rows_evicted_total",
                    "Rows let go from the in-memory tail past --tail-rows-max.",
                ),
                &["table"],
            )?,
            tail_lag: IntGaugeVec::new(
                Opts::new("backbeat_query_tail_lag_messages", "Messages of a stream not yet read by the tail."),
                &["stream"],
            )?,
            foreign_bars: IntCounterVec::new(
                Opts::new(
                    "backbeat_query_foreign_bars_total",
                    "Messages on a bar subject left out of bar_reports (invalid, or superseded by a later one of the same window).",
                ),
                &["reason"],
            )?,
            foreign_events: IntCounterVec::new(
                Opts::new(
                    "backbeat_query_foreign_events_total",
                    "Messages on a beat or claim subject that are not a valid beat frame or claim.",
                ),
                &["kind"],
            )?,
            tail_restarts: IntCounter::new(
                "backbeat_query_tail_restarts_total",
                "Times a stream's tail consumer was created again after an error.",
            )?,
            registry,
        };
        let r = &metrics.registry;
        r.register(Box::new(metrics.queries.clone()))?;
        r.register(Box::new(metrics.queries_running.clone()))?;
        r.register(Box::new(metrics.query_seconds.clone()))?;
        r.register(Box::new(metrics.rows_held.clone()))?;
        r.register(Box::new(metrics.rows_evicted.clone()))?;
        r.register(Box::new(metrics.tail_lag.clone()))?;
        r.register(Box::new(metrics.foreign_bars.clone()))?;
        r.register(Box::new(metrics.foreign_events.clone()))?;
        r.register(Box::new(metrics.tail_restarts.clone()))?;
        Ok(metrics)
    }
}
