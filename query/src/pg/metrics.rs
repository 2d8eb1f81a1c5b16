//! The pg-wire front end's metrics, in the service's registry beside the
//! engine's (whose `backbeat_query_queries_total` counts every query of both
//! protocols).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct PgMetrics {
    /// Connections open now (admitted ones).
    pub connections: IntGauge,
    /// Connections by outcome: `admitted`, or `refused` past `--pg-max-connections`.
    pub connections_total: IntCounterVec,
    /// pg-wire statements by outcome: `ok` or the error kind.
    pub queries: IntCounterVec,
}

impl PgMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = PgMetrics {
            connections: IntGauge::new("backbeat_query_pg_connections", "pg-wire connections open now.")?,
            connections_total: IntCounterVec::new(
                Opts::new(
                    "backbeat_query_pg_connections_total",
                    "pg-wire connections by outcome (admitted, or refused past --pg-max-connections).",
                ),
                &["outcome"],
            )?,
            queries: IntCounterVec::new(
                Opts::new("backbeat_query_pg_queries_total", "pg-wire statements by outcome."),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.connections_total.clone()))?;
        registry.register(Box::new(metrics.queries.clone()))?;
        Ok(metrics)
    }
}
