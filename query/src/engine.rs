//! The query engine: one DataFusion session per query over the tail's
//! tables, within every limit (memory pool, time, result rows and bytes,
//! concurrent queries). It answers a result or a [`QueryError`] that names
//! the rule or the limit; the same engine serves HTTP now and pg-wire next.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt as _;
use tokio::sync::Semaphore;

use object_store::ObjectStore;

use crate::archive::Archive;
use crate::error::{ErrorKind, QueryError};
use crate::metrics::Metrics;
use crate::readonly::{check_plan, check_statement, parse_one_statement, TABLE_FUNCTIONS};
use crate::tables::provider::TailTable;
use crate::tables::{Table, TailTables};

/// How long a query cancelled at its time limit is waited for to stop.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// What one query may use. Each is a flag of `serve`.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// The memory pool of one query (sorts, aggregations, joins); past it the
    /// query fails: nothing spills to disk.
    pub memory_bytes: usize,
    /// From arrival to last row.
    pub timeout: Duration,
    /// The most rows a result may have.
    pub result_rows_max: usize,
    /// The most bytes (Arrow in memory) a result may have.
    pub result_bytes_max: usize,
    /// Queries running at once; the next one is refused (429 / 53300).
    pub concurrent_max: usize,
}

/// A query's answer: its columns and rows.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Runs queries over the tables (the archive's files and the tail's rows).
#[derive(Clone)]
pub struct QueryEngine {
    tables: Arc<Mutex<TailTables>>,
    /// The archive's store, which the tables' Parquet scans read.
    archive_store: Arc<dyn ObjectStore>,
    limits: QueryLimits,
    permits: Arc<Semaphore>,
    /// Where queries run: a runtime of their own in `serve`, so a query busy
    /// on the CPU never delays `/health` or the tail; the caller's when None.
    runtime: Option<tokio::runtime::Handle>,
    metrics: Metrics,
}

impl QueryEngine {
    pub fn new(
        tables: Arc<Mutex<TailTables>>,
        archive_store: Arc<dyn ObjectStore>,
        limits: QueryLimits,
        runtime: Option<tokio::runtime::Handle>,
        metrics: Metrics,
    ) -> Self {
        QueryEngine {
            permits: Arc::new(Semaphore::new(limits.concurrent_max)),
            tables,
            archive_store,
            limits,
            runtime,
            metrics,
        }
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Runs one SQL statement within the limits. Counted in the metrics by outcome.
    pub async fn execute(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        let result = self.execute_uncounted(sql).await;
        self.metrics.query_seconds.observe(started.elapsed().as_secs_f64());
        self.record(result.as_ref().err().map(|e| e.kind));
        result
    }

    /// Counts one query's outcome (`None` = answered).
    pub fn record(&self, error: Option<ErrorKind>) {
        let outcome = error.map_or("ok", ErrorKind::as_str);
        self.metrics.queries.with_label_values(&[outcome]).inc();
    }

    async fn execute_uncounted(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        if sql.trim().is_empty() {
            return Err(QueryError::new(ErrorKind::BadRequest, "the query is empty"));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(QueryError::new(
                ErrorKind::TooManyQueries,
                format!(
                    "concurrent query limit of {} (--max-concurrent-queries) reached; retry later",
                    self.limits.concurrent_max
                ),
            ));
        };
        let running = Running::start(&self.metrics.queries_running);
        let context = self.session()?;
        let limits = self.limits.clone();
        let sql = sql.to_string();
        let work = async move {
            let output = run(&context, &sql, &limits).await;
            drop((permit, running));
            output
        };
        let mut task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
        match tokio::time::timeout(self.limits.timeout, &mut task).await {
            Ok(Ok(output)) => output,
            Ok(Err(join_error)) => Err(QueryError::internal(format!("the query's task failed: {join_error}"))),
            Err(_) => {
                // Dropping the task's future at its next await point stops
                // every operator of the query (DataFusion yields cooperatively).
                task.abort();
                // Answer once the query's slot and memory are free, so the
                // next query is not refused for this one (bounded: an
                // operator that never yields cannot hold the answer back).
                let _ = tokio::time::timeout(ABORT_WAIT, task).await;
                Err(QueryError::new(
                    ErrorKind::Timeout,
                    format!(
                        "query time limit of {} ms (--query-timeout-ms) reached; the query was cancelled",
                        self.limits.timeout.as_millis()
                    ),
                ))
            }
        }
    }

    /// A fresh session: its own memory pool, no disk, the four tables and
    /// `information_schema`, and nothing that reads files or URLs.
    fn session(&self) -> Result<SessionContext, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)))
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()
            .map_err(|e| QueryError::internal(format!("building the query runtime: {e}")))?;
        // Only the archive's store: a query names no file or URL of its own.
        runtime.register_object_store(Archive::store_url().as_ref(), self.archive_store.clone());
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(2);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        // A DataFusion upgrade that registers a file-reading table function
        // by default must not slip one in.
        if let Some(name) = state
            .table_functions()
            .keys()
            .find(|f| !TABLE_FUNCTIONS.contains(&f.as_str()))
        {
            return Err(QueryError::internal(format!(
                "the session holds table function {name}, which the read-only rules do not allow"
            )));
        }
        let context = SessionContext::new_with_state(state);
        for table in Table::ALL {
            context
                .register_table(table.name(), Arc::new(TailTable::new(table, self.tables.clone())))
                .map_err(|e| QueryError::internal(format!("registering {}: {e}", table.name())))?;
        }
        Ok(context)
    }
}

/// A query counted in `backbeat_query_queries_running` until dropped (with
/// its task: answered, failed or aborted at the time limit).
struct Running(prometheus::IntGauge);

impl Running {
    fn start(gauge: &prometheus::IntGauge) -> Running {
        gauge.inc();
        Running(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Parses, checks, plans and runs `sql`, collecting at most the result limits.
async fn run(context: &SessionContext, sql: &str, limits: &QueryLimits) -> Result<QueryOutput, QueryError> {
    let state = context.state();
    let statement = parse_one_statement(sql, state.config().options().sql_parser.recursion_limit.get())?;
    check_statement(&statement)?;
    let plan = state.statement_to_plan(statement).await?;
    check_plan(&plan)?;
    let frame = context.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| with_limit_named(e.into(), limits))?;
    let (mut batches, mut rows, mut bytes) = (Vec::new(), 0usize, 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| with_limit_named(e.into(), limits))?;
        rows += batch.num_rows();
        bytes += batch.get_array_memory_size();
        if rows > limits.result_rows_max {
            return Err(QueryError::new(
                ErrorKind::ResultTooLarge,
                format!(
                    "result row limit of {} (--max-result-rows) reached; add a LIMIT or a narrower WHERE",
                    limits.result_rows_max
                ),
            ));
        }
        if bytes > limits.result_bytes_max {
            return Err(QueryError::new(
                ErrorKind::ResultTooLarge,
                format!(
                    "result size limit of {} bytes (--max-result-bytes) reached; select fewer rows or columns",
                    limits.result_bytes_max
                ),
            ));
        }
        batches.push(batch);
    }
    Ok(QueryOutput { schema, batches })
}

/// A memory error names the flag that sets the limit.
fn with_limit_named(error: QueryError, limits: &QueryLimits) -> QueryError {
    if error.kind == ErrorKind::MemoryLimit {
        return QueryError::new(
            ErrorKind::MemoryLimit,
            format!(
                "query memory limit of {} bytes (--query-memory-bytes) reached: {}",
                limits.memory_bytes, error.message
            ),
        );
    }
    error
}
