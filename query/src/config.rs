//! The flags of `backbeat-query serve` and `backbeat-query sql`, each also
//! read from its `BACKBEAT_…` environment variable, validated once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use backbeat_service::secret::{self, SecretError};
use backbeat_service::{HttpArgs, LogFormat, NatsArgs};

use crate::archive::writer::ArchiveOptions;
use crate::engine::{QueryLimits, SpillLimit};

/// The largest `--bar-length` (as the pulse's).
pub const BAR_LENGTH_MAX: u64 = 1_000_000;

/// `backbeat-query serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// HTTP address: the console at /, /api/v1/sql, /api/v1/windows, /api/v1/clusters,
    /// /health, /ready, /metrics, /api/v1/status.
    #[arg(long, env = "BACKBEAT_LISTEN", default_value = "127.0.0.1:8084")]
    pub listen: String,
    /// Log format.
    #[arg(long, env = "BACKBEAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Beats per bar, for `window_index` of claims and beats and for checking
    /// beat frames (as the processor's --bar-length, default 120; 1..=1000000).
    #[arg(long, env = "BACKBEAT_BAR_LENGTH", default_value_t = 120)]
    pub bar_length: u64,
    /// The most rows each table holds in memory (bar_reports: windows); past it the oldest go.
    #[arg(long, env = "BACKBEAT_TAIL_ROWS_MAX", default_value_t = 1_000_000)]
    pub tail_rows_max: usize,
    /// Memory pool of one query (sorts, aggregations, joins), in bytes; past it sorts and
    /// aggregations spill to DATA_DIR/spill (up to --query-spill-bytes-max).
    #[arg(long, env = "BACKBEAT_QUERY_MEMORY_BYTES", default_value_t = 256 << 20)]
    pub query_memory_bytes: usize,
    /// The most bytes all running queries together may spill to DATA_DIR/spill
    /// (the query asking for more fails, 422 / SQLSTATE 53100); 0: nothing spills.
    #[arg(long, env = "BACKBEAT_QUERY_SPILL_BYTES_MAX", default_value_t = 4 << 30)]
    pub query_spill_bytes_max: u64,
    /// Time limit of one query, from arrival to its last row.
    #[arg(long, env = "BACKBEAT_QUERY_TIMEOUT_MS", default_value_t = 30_000)]
    pub query_timeout_ms: u64,
    /// The most rows a result may have.
    #[arg(long, env = "BACKBEAT_MAX_RESULT_ROWS", default_value_t = 100_000)]
    pub max_result_rows: usize,
    /// The most bytes (in Arrow's memory layout) a result may have.
    #[arg(long, env = "BACKBEAT_MAX_RESULT_BYTES", default_value_t = 64 << 20)]
    pub max_result_bytes: usize,
    /// Queries running at once; one more is refused with 429.
    #[arg(long, env = "BACKBEAT_MAX_CONCURRENT_QUERIES", default_value_t = 4)]
    pub max_concurrent_queries: usize,
    /// Worker threads of the runtime queries run on (apart from HTTP and the tail).
    #[arg(long, env = "BACKBEAT_QUERY_THREADS", default_value_t = 2)]
    pub query_threads: usize,
    /// The largest request body (the SQL text in its JSON), in bytes.
    #[arg(long, env = "BACKBEAT_MAX_SQL_BYTES", default_value_t = 1 << 20)]
    pub max_sql_bytes: usize,
    /// Bearer token the /api/v1/sql, /api/v1/windows and /api/v1/clusters routes need (none when unset).
    /// Prefer --token-file or the environment: a command line is visible to every user.
    // Its own id: the NATS flags already have a `token` (--nats-token).
    #[arg(id = "bearer_token", long = "token", env = "BACKBEAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (surrounding whitespace ignored); instead of --token.
    #[arg(long, env = "BACKBEAT_TOKEN_FILE", conflicts_with = "bearer_token")]
    pub token_file: Option<PathBuf>,
    /// nats-server's monitoring address (`http://127.0.0.1:8222`): its /varz and /jsz
    /// are served as Prometheus text on GET /metrics/nats (off when unset).
    #[arg(long, env = "BACKBEAT_NATS_MONITOR_URL")]
    pub nats_monitor_url: Option<String>,
    /// The pulse nodes' HTTP base URLs, comma-separated (http://127.0.0.1:7001,...):
    /// /api/v1/clusters and the console show each cluster's leader from their
    /// /api/v1/status. None when unset.
    #[arg(long, env = "BACKBEAT_PULSE_URLS", value_delimiter = ',')]
    pub pulse_urls: Vec<String>,
    /// Directory for local state; the archive is DATA_DIR/archive unless --archive names another place.
    #[arg(long, env = "BACKBEAT_DATA_DIR", default_value = "backbeat-query-data")]
    pub data_dir: PathBuf,
    /// The Parquet archive: a local directory, or s3://bucket/prefix (credentials from
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL).
    #[arg(long, env = "BACKBEAT_ARCHIVE")]
    pub archive: Option<String>,
    /// How often the archive's writer seals what is reported into Parquet files.
    #[arg(long, env = "BACKBEAT_SEAL_INTERVAL_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub seal_interval_ms: u64,
    /// How often a node that does not write the archive lists it again.
    #[arg(long, env = "BACKBEAT_ARCHIVE_REFRESH_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub archive_refresh_ms: u64,
    /// Rows per Parquet row group (the grain of row-group pruning).
    #[arg(long, env = "BACKBEAT_ARCHIVE_ROW_GROUP_ROWS", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub archive_row_group_rows: u64,
    /// TTL of the archive writer's lease (bucket BACKBEAT_LEASES, name query-archive); a
    /// killed writer's lease frees after it. Creating the bucket sets its max_age to it;
    /// an existing bucket's max_age is the TTL in force.
    #[arg(long, env = "BACKBEAT_LEASE_TTL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,
    /// Replicas of the lease bucket when this service creates it.
    #[arg(long, env = "BACKBEAT_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=5))]
    pub replicas: u64,
    #[command(flatten)]
    pub pg: crate::pg::PgArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `serve`'s configuration, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub nats: NatsArgs,
    pub listen: String,
    pub log_format: LogFormat,
    pub bar_length: u64,
    pub tail_rows_max: usize,
    pub limits: QueryLimits,
    pub query_threads: usize,
    pub max_sql_bytes: usize,
    pub token: Option<String>,
    pub nats_monitor_url: Option<String>,
    pub pulse_urls: Vec<reqwest::Url>,
    /// Where the archive is (a directory or s3://…).
    pub archive: String,
    pub archive_options: ArchiveOptions,
    /// The pg-wire front end, when --pg-listen is set.
    pub pg: Option<crate::pg::PgConfig>,
    /// The HTTP listener's limits (flags).
    pub http: HttpArgs,
}

impl ServeArgs {
    pub fn validate(self) -> anyhow::Result<ServeConfig> {
        if !(1..=BAR_LENGTH_MAX).contains(&self.bar_length) {
            bail!("--bar-length must be in 1..={BAR_LENGTH_MAX}");
        }
        let positive = [
            ("--tail-rows-max", self.tail_rows_max),
            ("--query-memory-bytes", self.query_memory_bytes),
            ("--max-result-rows", self.max_result_rows),
            ("--max-result-bytes", self.max_result_bytes),
            ("--max-concurrent-queries", self.max_concurrent_queries),
            ("--query-threads", self.query_threads),
            ("--max-sql-bytes", self.max_sql_bytes),
        ];
        for (flag, value) in positive {
            if value == 0 {
                bail!("{flag} must be at least 1");
            }
        }
        if !(1..=3_600_000).contains(&self.query_timeout_ms) {
            bail!("--query-timeout-ms must be in 1..=3600000 (an hour)");
        }
        let token = token_from(self.token, self.token_file.as_deref(), "--token")?;
        if let Some(url) = &self.nats_monitor_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--nats-monitor-url must be an http:// or https:// URL, got {url:?}");
            }
        }
        let pulse_urls = crate::clusters::parse_pulse_urls(&self.pulse_urls)?;
        Ok(ServeConfig {
            nats: self.nats,
            listen: self.listen,
            log_format: self.log_format,
            bar_length: self.bar_length,
            tail_rows_max: self.tail_rows_max,
            limits: QueryLimits {
                memory_bytes: self.query_memory_bytes,
                timeout: Duration::from_millis(self.query_timeout_ms),
                result_rows_max: self.max_result_rows,
                result_bytes_max: self.max_result_bytes,
                concurrent_max: self.max_concurrent_queries,
                spill: (self.query_spill_bytes_max > 0).then(|| SpillLimit {
                    dir: self.data_dir.join("spill"),
                    bytes_max: self.query_spill_bytes_max,
                }),
            },
            query_threads: self.query_threads,
            max_sql_bytes: self.max_sql_bytes,
            token,
            nats_monitor_url: self.nats_monitor_url,
            pulse_urls,
            archive: self
                .archive
                .unwrap_or_else(|| self.data_dir.join("archive").to_string_lossy().into_owned()),
            archive_options: ArchiveOptions {
                seal_interval: Duration::from_millis(self.seal_interval_ms),
                refresh_interval: Duration::from_millis(self.archive_refresh_ms),
                row_group_rows: self.archive_row_group_rows as usize,
                lease_ttl: Duration::from_millis(self.lease_ttl_ms),
                replicas: self.replicas as usize,
            },
            pg: self.pg.validate()?,
            http: self.http,
        })
    }
}

/// `--token` or the contents of `--token-file` (read by [`secret::token_from`],
/// as the pulse's admin token); an empty token is refused.
pub fn token_from(token: Option<String>, file: Option<&Path>, flag: &str) -> anyhow::Result<Option<String>> {
    match secret::token_from(token, file) {
        Ok(token) => Ok(token),
        Err(SecretError::EmptyValue | SecretError::EmptyFile { .. }) => {
            bail!("{flag} must not be empty (leave it unset for none)")
        }
        Err(SecretError::Read { path, source }) => {
            Err(source).with_context(|| format!("{flag}-file {}", path.display()))
        }
        Err(too_long @ SecretError::TooLong { .. }) => Err(too_long).with_context(|| format!("{flag}-file")),
    }
}

/// `backbeat-query sql`: against a server (`--url`) or offline over an archive (`--archive`).
#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    /// The statement (SELECT, WITH, EXPLAIN or SHOW).
    pub sql: String,
    /// The server's HTTP address.
    #[arg(long, env = "BACKBEAT_URL", default_value = "http://127.0.0.1:8084")]
    pub url: String,
    /// Instead of a server: query an archive offline (a directory or s3://bucket/prefix;
    /// no server and no NATS needed). The limits are serve's defaults.
    #[arg(long, env = "BACKBEAT_ARCHIVE", conflicts_with = "url")]
    pub archive: Option<String>,
    /// Output: an aligned table, JSON ({"columns","rows"}) or CSV.
    #[arg(long, env = "BACKBEAT_FORMAT", value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Bearer token, when the server has one.
    #[arg(long, env = "BACKBEAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token; instead of --token.
    #[arg(long, env = "BACKBEAT_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, env = "BACKBEAT_TIMEOUT_MS", default_value_t = 60_000)]
    pub timeout_ms: u64,
}

/// `sql --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}
