//! The query service's metrics (`/metrics`), all in one registry.

use backbeat_service::metrics::{boxed, register_all};
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

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
    /// Spill files written by queries' sorts and aggregations past their memory pool.
    pub spills: IntCounter,
    /// Bytes those spill files held.
    pub spilled_bytes: IntCounter,
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
    /// Times the tail waited for a seal (the archive's writer over `--tail-rows-max`).
    pub tail_waits: IntCounter,
    /// Rows written to the archive, per table.
    pub archive_rows: IntCounterVec,
    /// Parquet files written to the archive, per table.
    pub archive_files: IntCounterVec,
    /// Windows reported but not yet sealed into the archive.
    pub archive_lag_windows: IntGauge,
    /// When the last seal round ended (Unix seconds).
    pub archive_last_seal: Gauge,
    /// 1 while this node holds the archive's lease (writes the archive).
    pub archive_writer: IntGauge,
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
            spills: IntCounter::new(
                "backbeat_query_spills_total",
                "Spill files written by queries' sorts and aggregations past --query-memory-bytes.",
            )?,
            spilled_bytes: IntCounter::new(
                "backbeat_query_spilled_bytes_total",
                "Bytes written to spill files by queries' sorts and aggregations.",
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
            tail_waits: IntCounter::new(
                "backbeat_query_tail_waits_total",
                "Times the tail waited for a seal: the archive's writer held more than --tail-rows-max rows.",
            )?,
            archive_rows: IntCounterVec::new(
                Opts::new("backbeat_query_archive_rows_total", "Rows written to the archive."),
                &["table"],
            )?,
            archive_files: IntCounterVec::new(
                Opts::new("backbeat_query_archive_files_total", "Parquet files written to the archive."),
                &["table"],
            )?,
            archive_lag_windows: IntGauge::new(
                "backbeat_query_archive_lag_windows",
                "Windows reported but not yet sealed into the archive (on the writer).",
            )?,
            archive_last_seal: Gauge::new(
                "backbeat_query_archive_last_seal_timestamp_seconds",
                "When the last seal round ended (Unix seconds; 0: none yet).",
            )?,
            archive_writer: IntGauge::new(
                "backbeat_query_archive_writer",
                "1 while this node holds the archive's lease and writes the archive.",
            )?,
            registry,
        };
        register_all(
            &metrics.registry,
            [
                boxed(&metrics.queries),
                boxed(&metrics.queries_running),
                boxed(&metrics.query_seconds),
                boxed(&metrics.spills),
                boxed(&metrics.spilled_bytes),
                boxed(&metrics.rows_held),
                boxed(&metrics.rows_evicted),
                boxed(&metrics.tail_lag),
                boxed(&metrics.foreign_bars),
                boxed(&metrics.foreign_events),
                boxed(&metrics.tail_restarts),
                boxed(&metrics.tail_waits),
                boxed(&metrics.archive_rows),
                boxed(&metrics.archive_files),
                boxed(&metrics.archive_lag_windows),
                boxed(&metrics.archive_last_seal),
                boxed(&metrics.archive_writer),
            ],
        );
        Ok(metrics)
    }
}
