//! The query engine: one DataFusion session per query over the tail's
//! tables, within every limit (memory pool, time, result rows and bytes,
//! concurrent queries). It answers a result or a [`QueryError`] that names
//! the rule or the limit. HTTP and pg-wire (`crate::pg`) both run every
//! statement through it: [`QueryEngine::execute`] (HTTP's SQL text),
//! [`QueryEngine::execute_statement`] (a statement pg-wire parsed in
//! PostgreSQL's dialect), [`QueryEngine::plan`] and
//! [`QueryEngine::execute_plan`] (pg-wire's prepared statements). Each checks
//! the read-only rules on the statement and on the plan, and runs within the
//! same limits, in [`QueryEngine::limited`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
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
    /// The memory pool of one query (sorts, aggregations, joins); past it a
    /// sort or an aggregation spills to disk (when `spill` allows), anything
    /// else fails the query.
    pub memory_bytes: usize,
    /// From arrival to last row.
    pub timeout: Duration,
    /// The most rows a result may have.
    pub result_rows_max: usize,
    /// The most bytes (Arrow in memory) a result may have.
    pub result_bytes_max: usize,
    /// Queries running at once; the next one is refused (429 / 53300).
    pub concurrent_max: usize,
    /// Where sorts and aggregations that outgrow `memory_bytes` spill; `None`:
    /// nothing spills, the query fails at its memory limit.
    pub spill: Option<SpillLimit>,
}

/// The disk queries may spill to: one directory, and the most bytes all the
/// running queries may hold there together (past it the query that asks
/// for more fails: 422 / 53100, `--query-spill-bytes-max`).
#[derive(Debug, Clone)]
pub struct SpillLimit {
    pub dir: PathBuf,
    pub bytes_max: u64,
}

/// The prefix of the directory DataFusion makes for its spill files inside
/// [`SpillLimit::dir`] (`datafusion-XXXXXX`, removed when the engine goes;
/// left behind by a killed process, and removed at the next start).
const SPILL_DIR_PREFIX: &str = "datafusion-";

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
    /// The archive's store, which the tables' Parquet scans read.
    archive_store: Arc<dyn ObjectStore>,
    limits: QueryLimits,
    permits: Arc<Semaphore>,
    /// Where queries run: a runtime of their own in `serve`, so a query busy
    /// on the CPU never delays `/health` or the tail; the caller's when None.
    runtime: Option<tokio::runtime::Handle>,
    metrics: Metrics,
    /// The one disk manager of every query (its spill bytes counted together).
    disk: Arc<DiskManager>,
    /// What every query's session starts from: the tables, the functions and
    /// the PostgreSQL catalog, built once (each query gets its own memory pool).
    template: Arc<SessionState>,
}

/// A statement planned and checked by [`QueryEngine::plan`] (its placeholders
/// `$1`… still in it), to run later with [`QueryEngine::execute_plan`]: a
/// pg-wire prepared statement. Only the engine makes one.
#[derive(Debug, Clone)]
pub struct CheckedPlan(LogicalPlan);

impl CheckedPlan {
    pub fn plan(&self) -> &LogicalPlan {
        &self.0
    }
}

impl QueryEngine {
    pub fn new(
        tables: Arc<Mutex<TailTables>>,
        archive_store: Arc<dyn ObjectStore>,
        limits: QueryLimits,
        runtime: Option<tokio::runtime::Handle>,
        metrics: Metrics,
    ) -> Result<Self, QueryError> {
        let template = Arc::new(template_state(&tables)?);
        let disk = Arc::new(disk_manager(limits.spill.as_ref())?);
        Ok(QueryEngine {
            permits: Arc::new(Semaphore::new(limits.concurrent_max)),
            disk,
            archive_store,
            limits,
            runtime,
            metrics,
            template,
        })
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Runs one SQL statement (DataFusion's dialect) within the limits. Counted in the metrics by outcome.
    pub async fn execute(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        if sql.trim().is_empty() {
            let error = QueryError::new(ErrorKind::BadRequest, "the query is empty");
            self.record(Some(error.kind));
            return Err(error);
        }
        let sql = sql.to_string();
        self.limited(std::future::pending(), move |context, limits, metrics| async move {
            let recursion_limit = context.state().config().options().sql_parser.recursion_limit.get();
            let statement = parse_one_statement(&sql, recursion_limit)?;
            let plan = plan_checked(&context, statement).await?;
            collect(&context, plan, &limits, metrics).await
        })
        .await
    }

    /// Runs one parsed statement (pg-wire's simple protocol) within the
    /// limits, or until `cancel` resolves. Counted like [`Self::execute`].
    pub async fn execute_statement(
        &self,
        statement: DfStatement,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<QueryOutput, QueryError> {
        self.limited(cancel, move |context, limits, metrics| async move {
            let plan = plan_checked(&context, statement).await?;
            collect(&context, plan, &limits, metrics).await
        })
        .await
    }

    /// Checks and plans one parsed statement without running it (pg-wire's
    /// Parse). A refusal is counted by its outcome; the run is counted by
    /// [`Self::execute_plan`].
    pub async fn plan(&self, statement: DfStatement) -> Result<CheckedPlan, QueryError> {
        let result = async {
            let context = self.session()?;
            plan_checked(&context, statement).await.map(CheckedPlan)
        }
        .await;
        if let Err(e) = &result {
            self.record(Some(e.kind));
        }
        result
    }

    /// Runs a checked plan with its parameters' values (pg-wire's Execute)
    /// within the limits, or until `cancel` resolves.
    pub async fn execute_plan(
        &self,
        plan: &CheckedPlan,
        params: ParamValues,
        cancel: impl Future<Output = ()> + Send,
    ) -> Result<QueryOutput, QueryError> {
        let plan = plan.0.clone();
        self.limited(cancel, move |context, limits, metrics| async move {
            let plan = plan.replace_params_with_values(&params)?;
            // The values are literals now; checked again all the same.
            check_plan(&plan)?;
            collect(&context, plan, &limits, metrics).await
        })
        .await
    }

    /// Counts one query's outcome (`None` = answered).
    pub fn record(&self, error: Option<ErrorKind>) {
        let outcome = error.map_or("ok", ErrorKind::as_str);
        self.metrics.queries.with_label_values(&[outcome]).inc();
    }

    /// Every query's one path: a slot of `--max-concurrent-queries` (or a
    /// refusal), a fresh session with its memory pool, `work` on the query
    /// runtime, cancelled at the time limit or when `cancel` resolves; counted
    /// in the metrics by outcome and duration.
    async fn limited<W, F>(&self, cancel: impl Future<Output = ()> + Send, work: W) -> Result<QueryOutput, QueryError>
    where
        W: FnOnce(SessionContext, QueryLimits, Metrics) -> F,
        F: Future<Output = Result<QueryOutput, QueryError>> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.limited_uncounted(cancel, work).await;
        self.metrics.query_seconds.observe(started.elapsed().as_secs_f64());
        self.record(result.as_ref().err().map(|e| e.kind));
        result
    }

    async fn limited_uncounted<W, F>(
        &self,
        cancel: impl Future<Output = ()> + Send,
        work: W,
    ) -> Result<QueryOutput, QueryError>
    where
        W: FnOnce(SessionContext, QueryLimits, Metrics) -> F,
        F: Future<Output = Result<QueryOutput, QueryError>> + Send + 'static,
    {
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
        let work = work(context, self.limits.clone(), self.metrics.clone());
        let work = async move {
            let output = work.await;
            drop((permit, running));
            output
        };
        let task = match &self.runtime {
            Some(runtime) => runtime.spawn(work),
            None => tokio::spawn(work),
        };
        // Dropping this future (a client gone) stops the query too.
        let mut task = AbortOnDrop(task);
        let stopped = tokio::select! {
            joined = tokio::time::timeout(self.limits.timeout, &mut task.0) => match joined {
                Ok(Ok(output)) => return output,
                Ok(Err(join_error)) => return Err(QueryError::internal(format!("the query's task failed: {join_error}"))),
                Err(_) => QueryError::new(
                    ErrorKind::Timeout,
                    format!(
                        "query time limit of {} ms (--query-timeout-ms) reached; the query was cancelled",
                        self.limits.timeout.as_millis()
                    ),
                ),
            },
            () = cancel => QueryError::new(ErrorKind::Cancelled, "canceling statement due to user request"),
        };
        // Dropping the task's future at its next await point stops every
        // operator of the query (DataFusion yields cooperatively). Answer once
        // the query's slot and memory are free, so the next query is not
        // refused for this one (bounded: an operator that never yields cannot
        // hold the answer back).
        task.0.abort();
        let _ = tokio::time::timeout(ABORT_WAIT, &mut task.0).await;
        Err(stopped)
    }

    /// A fresh session: the template's tables and functions, its own memory
    /// pool, the engine's one disk manager.
    fn session(&self) -> Result<SessionContext, QueryError> {
        let mut runtime =
            RuntimeEnvBuilder::new().with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)));
        runtime.disk_manager = Some(self.disk.clone());
        let runtime = runtime
            .build_arc()
            .map_err(|e| QueryError::internal(format!("building the query runtime: {e}")))?;
        // Only the archive's store: a query names no file or URL of its own.
        runtime.register_object_store(Archive::store_url().as_ref(), self.archive_store.clone());
        let mut state = SessionStateBuilder::new_from_existing(self.template.as_ref().clone())
            .with_runtime_env(runtime)
            .build();
        // What a sort keeps back for merging its spill files: DataFusion's
        // 10 MB, or a quarter of a smaller pool (else a sort in a small pool
        // could never merge what it spilled).
        let options = &mut state.config_mut().options_mut().execution;
        options.sort_spill_reservation_bytes = options.sort_spill_reservation_bytes.min(self.limits.memory_bytes / 4);
        Ok(SessionContext::new_with_state(state))
    }
}

/// The disk manager of `spill`: its directory made, what a killed process
/// left there removed; spilling disabled when `None`.
fn disk_manager(spill: Option<&SpillLimit>) -> Result<DiskManager, QueryError> {
    let Some(spill) = spill else {
        return DiskManagerBuilder::default()
            .with_mode(DiskManagerMode::Disabled)
            .build()
            .map_err(|e| QueryError::internal(format!("building the disk manager: {e}")));
    };
    let io = |what: &str, path: &Path, e: std::io::Error| {
        QueryError::internal(format!("{what} {} (--query-spill-bytes-max): {e}", path.display()))
    };
    std::fs::create_dir_all(&spill.dir).map_err(|e| io("creating the spill directory", &spill.dir, e))?;
    for entry in std::fs::read_dir(&spill.dir).map_err(|e| io("reading the spill directory", &spill.dir, e))? {
        let entry = entry.map_err(|e| io("reading the spill directory", &spill.dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(SPILL_DIR_PREFIX) {
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| io("removing an old spill directory", &entry.path(), e))?;
        }
    }
    DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::Directories(vec![spill.dir.clone()]))
        .with_max_temp_directory_size(spill.bytes_max)
        .build()
        .map_err(|e| QueryError::internal(format!("building the disk manager in {}: {e}", spill.dir.display())))
}

/// The session every query's starts from: the four tables,
/// `information_schema`, PostgreSQL's catalog and functions (`crate::pg::catalog`),
/// and nothing that reads files or URLs.
fn template_state(tables: &Arc<Mutex<TailTables>>) -> Result<SessionState, QueryError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(crate::pg::catalog::DATABASE, "public")
        .with_target_partitions(2);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let context = SessionContext::new_with_state(state);
    for table in Table::ALL {
        context
            .register_table(table.name(), Arc::new(TailTable::new(table, tables.clone())))
            .map_err(|e| QueryError::internal(format!("registering {}: {e}", table.name())))?;
    }
    crate::pg::catalog::install(&context)?;
    let state = context.state();
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
    Ok(state)
}

/// The task of a query, aborted when its awaiting future is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A query counted in `backbeat_query_queries_running` until dropped (with
/// its task: answered, failed or aborted at the time limit); pg-wire counts
/// its open connections with it too.
pub(crate) struct Running(prometheus::IntGauge);

impl Running {
    pub(crate) fn start(gauge: &prometheus::IntGauge) -> Running {
        gauge.inc();
        Running(gauge.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Checks `statement` by the read-only rules, plans it, and checks the plan.
async fn plan_checked(context: &SessionContext, statement: DfStatement) -> Result<LogicalPlan, QueryError> {
    check_statement(&statement)?;
    let plan = context.state().statement_to_plan(statement).await?;
    check_plan(&plan)?;
    Ok(plan)
}

/// Runs a checked plan, collecting at most the result limits.
async fn collect(
    context: &SessionContext,
    plan: LogicalPlan,
    limits: &QueryLimits,
    metrics: Metrics,
) -> Result<QueryOutput, QueryError> {
    let frame = context.execute_logical_plan(plan).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let physical = frame
        .create_physical_plan()
        .await
        .map_err(|e| with_limit_named(e.into(), limits))?;
    let mut stream = datafusion::physical_plan::execute_stream(physical.clone(), context.task_ctx())
        .map_err(|e| with_limit_named(e.into(), limits))?;
    // Counted however the query ends (an error past a spill included).
    let _spills = SpillCount {
        plan: physical,
        metrics,
    };
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

/// Adds what one query's plan spilled (its operators' metrics) to the
/// service's counters when the query ends.
struct SpillCount {
    plan: Arc<dyn ExecutionPlan>,
    metrics: Metrics,
}

impl Drop for SpillCount {
    fn drop(&mut self) {
        fn add(plan: &Arc<dyn ExecutionPlan>, totals: &mut (usize, usize)) {
            if let Some(metrics) = plan.metrics() {
                totals.0 += metrics.spill_count().unwrap_or(0);
                totals.1 += metrics.spilled_bytes().unwrap_or(0);
            }
            for child in plan.children() {
                add(child, totals);
            }
        }
        let mut totals = (0, 0);
        add(&self.plan, &mut totals);
        if totals.0 > 0 {
            self.metrics.spills.inc_by(totals.0 as u64);
            self.metrics.spilled_bytes.inc_by(totals.1 as u64);
        }
    }
}

/// A memory or spill error names the flag that sets the limit.
fn with_limit_named(error: QueryError, limits: &QueryLimits) -> QueryError {
    match error.kind {
        ErrorKind::MemoryLimit => QueryError::new(
            ErrorKind::MemoryLimit,
            format!(
                "query memory limit of {} bytes (--query-memory-bytes) reached{}: {}",
                limits.memory_bytes,
                if limits.spill.is_some() {
                    " by an operator that cannot spill"
                } else {
                    " (spilling is off)"
                },
                error.message
            ),
        ),
        ErrorKind::SpillLimit => QueryError::new(
            ErrorKind::SpillLimit,
            format!(
                "query spill limit of {} bytes (--query-spill-bytes-max, all running queries together) reached: {}",
                limits.spill.as_ref().map_or(0, |spill| spill.bytes_max),
                error.message
            ),
        ),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray as _;
    use datafusion::arrow::datatypes::Int64Type;

    /// 2,000,000 distinct values, not in order (a permutation modulo a prime),
    /// in 5 groups: several times 16 MB of distinct sets.
    const GROUPED_DISTINCT: &str = "SELECT value % 5 AS g, count(DISTINCT value * 48271 % 2147483647) AS n \
     FROM generate_series(1, 2000000) GROUP BY g ORDER BY g";

    fn engine(spill: Option<SpillLimit>) -> (QueryEngine, Metrics) {
        let metrics = Metrics::new().unwrap();
        let limits = QueryLimits {
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(60),
            result_rows_max: 100,
            result_bytes_max: 1 << 20,
            concurrent_max: 2,
            spill,
        };
        let tables = Arc::new(Mutex::new(TailTables::new(120, 1000)));
        let store = Arc::new(object_store::memory::InMemory::new());
        let engine = QueryEngine::new(tables, store, limits, None, metrics.clone()).unwrap();
        (engine, metrics)
    }

    #[tokio::test]
    async fn an_aggregation_past_its_memory_spills_and_answers_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join("datafusion-left-by-a-killed-process");
        std::fs::create_dir(&left).unwrap();
        let (engine, metrics) = engine(Some(SpillLimit {
            dir: dir.path().to_path_buf(),
            bytes_max: 1 << 30,
        }));
        assert!(!left.exists(), "an old spill directory is removed at start");
        let output = engine.execute(GROUPED_DISTINCT).await.unwrap();
        let counts: Vec<i64> = output
            .batches
            .iter()
            .flat_map(|batch| batch.column(1).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(counts, vec![400_000; 5]);
        assert!(metrics.spills.get() > 0, "the aggregation spilled");
        assert!(metrics.spilled_bytes.get() > 0);
        assert_eq!(
            engine.disk.used_disk_space(),
            0,
            "the spill files are gone with the query"
        );
    }

    #[tokio::test]
    async fn spilling_past_its_limit_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, metrics) = engine(Some(SpillLimit {
            dir: dir.path().to_path_buf(),
            bytes_max: 1024,
        }));
        let error = engine.execute(GROUPED_DISTINCT).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::SpillLimit, "{error}");
        assert_eq!(error.kind.sqlstate(), "53100");
        assert!(error.message.contains("--query-spill-bytes-max"), "{error}");
        assert_eq!(metrics.queries.with_label_values(&["spill_limit"]).get(), 1);
        // The engine answers the next query.
        assert_eq!(engine.execute("SELECT 1").await.unwrap().rows(), 1);
    }

    #[tokio::test]
    async fn without_spilling_the_memory_limit_refuses_and_says_so() {
        let (engine, _) = engine(None);
        let error = engine.execute(GROUPED_DISTINCT).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::MemoryLimit, "{error}");
        assert!(error.message.contains("--query-memory-bytes"), "{error}");
        assert!(error.message.contains("spilling is off"), "{error}");
    }
}
