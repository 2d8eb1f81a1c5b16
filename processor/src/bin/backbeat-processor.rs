//! `backbeat-processor`: fold logs, run the live fold on JetStream, export and replay windows.

use std::io::{BufReader, BufWriter, Write as _};
use std::time::Duration;

use anyhow::{bail, Context as _};
use backbeat_processor::config::FoldArgs;
use backbeat_processor::driver::RunConfig;
use backbeat_processor::history::{self, WindowRange};
use backbeat_processor::metrics::Metrics;
use backbeat_processor::publisher::{BarPublisher, PublishOutcome};
use backbeat_processor::status::SharedStatus;
use backbeat_schemas::names::is_valid_cluster_id;
use backbeat_service::{init_logging, HttpArgs, HttpLimits, LogFormat, NatsArgs};
use clap::{Parser, Subcommand};

/// BACKBEAT processor: folds beats and claims into BarReports (SPEC §5-§6).
///
/// Every flag also reads the environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(name = "backbeat-processor", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "BACKBEAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fold a SPEC §7 log file and print its BarReports as JSON Lines on stdout.
    Fold {
        /// The log file, or `-` for stdin.
        #[arg(long, env = "BACKBEAT_LOG")]
        log: String,
        #[command(flatten)]
        fold: FoldArgs,
    },
    /// Fold BACKBEAT_EVENTS live; publish each BarReport exactly once to BACKBEAT_BARS.
    Run {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        fold: FoldArgs,
        /// Fold only these clusters (repeat the flag; default: every cluster).
        #[arg(long = "cluster", env = "BACKBEAT_CLUSTER", value_delimiter = ',')]
        clusters: Vec<String>,
        /// Name of the durable consumer, the checkpoint and the single-writer lease ([A-Za-z0-9_-]).
        #[arg(long, env = "BACKBEAT_NAME", default_value = "backbeat-processor")]
        name: String,
        /// Admin HTTP address (/health, /ready, /metrics, /api/v1/...).
        #[arg(long, env = "BACKBEAT_LISTEN", default_value = "127.0.0.1:8081")]
        listen: String,
        #[command(flatten)]
        http: HttpArgs,
        /// Checkpoint at most this often when reports are published, in milliseconds.
        #[arg(long, env = "BACKBEAT_CHECKPOINT_MIN_INTERVAL_MS", default_value_t = 1000)]
        checkpoint_min_interval_ms: u64,
        /// Checkpoint at least this often while events arrive, in milliseconds.
        #[arg(long, env = "BACKBEAT_CHECKPOINT_INTERVAL_MS", default_value_t = 5000)]
        checkpoint_interval_ms: u64,
        /// Messages per pull request.
        #[arg(long, env = "BACKBEAT_BATCH", default_value_t = 1000)]
        batch: usize,
        /// /ready answers 200 only within this many messages of the stream's end.
        #[arg(long, env = "BACKBEAT_READY_LAG_MAX", default_value_t = 1000)]
        ready_lag_max: u64,
        /// Replicas of the streams and buckets this service creates (3 on a NATS cluster).
        #[arg(long = "stream-replicas", env = "BACKBEAT_STREAM_REPLICAS", default_value_t = 1)]
        replicas: usize,
        /// Single-writer lease TTL, in milliseconds: one `run` per --name at a time. Another
        /// waits (not ready) until the holder stops or its lease expires this long after its
        /// last refresh (every TTL/3); a holder that cannot refresh within the TTL exits
        /// non-zero. The max_age of the lease bucket BACKBEAT_LEASES, set when this creates
        /// it; an existing bucket's max_age is the TTL in force.
        #[arg(long, env = "BACKBEAT_LEASE_TTL_MS", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(300..))]
        lease_ttl_ms: u64,
        /// Keep a checkpoint as history after at least this many reported windows (0: keep
        /// none). `replay` of a past window starts from the newest kept checkpoint before it
        /// instead of from the stream's start.
        #[arg(long, env = "BACKBEAT_HISTORY_EVERY", default_value_t = 100)]
        history_every: u64,
        /// Kept checkpoints at most; the oldest leave first (with their chunks).
        #[arg(long, env = "BACKBEAT_HISTORY_KEEP", default_value_t = 100)]
        history_keep: usize,
        /// Clusters the fold holds at most (its state grows with each). Events of a cluster
        /// beyond it are not folded: counted (backbeat_processor_cluster_cap_events_total,
        /// /api/v1/status) and logged once per cluster. Clusters a checkpoint holds stay.
        #[arg(long, env = "BACKBEAT_MAX_CLUSTERS", default_value_t = 1024,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_clusters: u64,
    },
    /// Write a cluster's events (or the slice of some windows) as a SPEC §7 log file.
    Export {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        fold: FoldArgs,
        /// The cluster whose events to write (SPEC §1 id).
        #[arg(long, env = "BACKBEAT_CLUSTER")]
        cluster: String,
        /// Start just after the event that closed the window before this one.
        #[arg(long, env = "BACKBEAT_FROM_WINDOW")]
        from_window: Option<u64>,
        /// Stop after the event that closed this window.
        #[arg(long, env = "BACKBEAT_TO_WINDOW")]
        to_window: Option<u64>,
        /// Output file (default stdout).
        #[arg(long, env = "BACKBEAT_OUT")]
        out: Option<std::path::PathBuf>,
        /// The `run` whose kept checkpoints to start from (its --name): the newest one taken
        /// before the window before --from-window was reported, with the same fold flags.
        /// None fits: the stream's start.
        #[arg(long, env = "BACKBEAT_NAME", default_value = "backbeat-processor")]
        name: String,
        /// Fold from the stream's start even when a kept checkpoint fits.
        #[arg(long, env = "BACKBEAT_FROM_STREAM_START")]
        from_stream_start: bool,
    },
    /// Re-derive past windows' reports from the stream and print them (byte-identical to the live run).
    /// Each is compared with the report published in BACKBEAT_BARS; the command fails, naming
    /// the first window, when one differs (the fold flags must be the live processor's).
    Replay {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        fold: FoldArgs,
        /// The cluster whose windows to re-derive (SPEC §1 id).
        #[arg(long, env = "BACKBEAT_CLUSTER")]
        cluster: String,
        /// The first window (its index, from_beat / bar length) to print.
        #[arg(long, env = "BACKBEAT_FROM_WINDOW")]
        from_window: u64,
        /// The last window to print (default: every window closed in the stream).
        #[arg(long, env = "BACKBEAT_TO_WINDOW")]
        to_window: Option<u64>,
        /// Also publish them (windows already in BACKBEAT_BARS are skipped).
        #[arg(long, env = "BACKBEAT_PUBLISH")]
        publish: bool,
        /// The `run` whose kept checkpoints to start from (its --name): the newest one taken
        /// before the first window, made with the same fold flags. None fits: the stream's start.
        #[arg(long, env = "BACKBEAT_NAME", default_value = "backbeat-processor")]
        name: String,
        /// Fold from the stream's start even when a kept checkpoint fits.
        #[arg(long, env = "BACKBEAT_FROM_STREAM_START")]
        from_stream_start: bool,
    },
}

/// Where `replay` or `export` starts folding: the newest checkpoint of `run`
/// `name` that can re-derive window `window` of `cluster` (see
/// `checkpoint::replay_start`), or the stream's start; it says which.
async fn checkpoint_start(
    js: &async_nats::jetstream::Context,
    name: &str,
    cluster: &str,
    config: &backbeat_processor::FoldConfig,
    window: u64,
) -> anyhow::Result<Option<(u64, backbeat_processor::Fold)>> {
    match backbeat_processor::checkpoint::replay_start(js, name, cluster, config, window).await? {
        Some((manifest, fold)) => {
            tracing::info!(
                name,
                seq = manifest.seq,
                generation = manifest.generation,
                "folding from a kept checkpoint"
            );
            Ok(Some((manifest.seq, fold)))
        }
        None => Ok(start_from_stream()),
    }
}

fn start_from_stream() -> Option<(u64, backbeat_processor::Fold)> {
    tracing::info!("folding from the stream's start");
    None
}

fn check_cluster(cluster: &str) -> anyhow::Result<()> {
    if !is_valid_cluster_id(cluster) {
        bail!("cluster id {cluster:?} must match [A-Za-z0-9_-]{{1,64}}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Fold { log, fold } => {
            let config = fold.to_config()?;
            let stdout = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            if log == "-" {
                backbeat_processor::logfold::fold_log(config, std::io::stdin().lock(), stdout)?;
            } else {
                let file = std::fs::File::open(&log).with_context(|| format!("opening log {log}"))?;
                backbeat_processor::logfold::fold_log(config, BufReader::with_capacity(1 << 20, file), stdout)
                    .with_context(|| format!("folding {log}"))?;
            }
            Ok(())
        }
        Command::Run {
            nats,
            fold,
            clusters,
            name,
            listen,
            http,
            checkpoint_min_interval_ms,
            checkpoint_interval_ms,
            batch,
            ready_lag_max,
            replicas,
            lease_ttl_ms,
            history_every,
            history_keep,
            max_clusters,
        } => {
            for cluster in &clusters {
                check_cluster(cluster)?;
            }
            check_cluster(&name).context("--name")?;
            let config = RunConfig {
                fold: fold.to_config()?,
                name,
                clusters,
                checkpoint_min_interval: Duration::from_millis(checkpoint_min_interval_ms),
                checkpoint_interval: Duration::from_millis(checkpoint_interval_ms.max(1)),
                batch: batch.clamp(1, 10_000),
                replicas,
                ready_lag_max,
                lease_ttl: Duration::from_millis(lease_ttl_ms),
                history_every,
                history_keep,
                max_clusters: usize::try_from(max_clusters).unwrap_or(usize::MAX),
            };
            let metrics = Metrics::new();
            let status = SharedStatus::default();
            status.update(|s| {
                s.name = config.name.clone();
                s.clusters_filter = config.clusters.clone();
                s.bar_length = config.fold.bar_length;
            });
            let client = nats.connect("backbeat-processor").await?;
            let connected_client = client.clone();
            let router = backbeat_processor::http::router(&metrics, status.clone(), move || {
                connected_client.connection_state() == async_nats::connection::State::Connected
            });
            let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
            let limits = http.limits(HttpLimits {
                registry: Some(metrics.registry.clone()),
                ..HttpLimits::default()
            });
            let (_addr, http) = backbeat_service::serve_http(
                &listen,
                router,
                async move {
                    let _ = stop_http_rx.await;
                },
                limits,
            )
            .await?;
            let result = backbeat_processor::driver::run(
                client.clone(),
                config,
                metrics,
                status.clone(),
                backbeat_service::shutdown_signal(),
            )
            .await;
            if let Err(e) = &result {
                status.update(|s| s.error = Some(format!("{e:#}")));
                tracing::error!(error = %format!("{e:#}"), "processor stopped");
            }
            let _ = stop_http_tx.send(());
            let _ = http.await;
            client.flush().await.ok();
            result
        }
        Command::Export {
            nats,
            fold,
            cluster,
            from_window,
            to_window,
            out,
            name,
            from_stream_start,
        } => {
            check_cluster(&cluster)?;
            check_cluster(&name).context("--name")?;
            let client = nats.connect("backbeat-processor-export").await?;
            let js = async_nats::jetstream::new(client);
            let range = WindowRange {
                from: from_window.unwrap_or(0),
                to: to_window,
            };
            let config = fold.to_config()?;
            // The slice starts after the event that closed window from − 1.
            let start = match range.from.checked_sub(1) {
                Some(before) if !from_stream_start => checkpoint_start(&js, &name, &cluster, &config, before).await?,
                _ => start_from_stream(),
            };
            let written = match out {
                Some(path) => {
                    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                    history::export(&js, config, &cluster, range, start, BufWriter::new(file)).await?
                }
                None => history::export(&js, config, &cluster, range, start, BufWriter::new(std::io::stdout())).await?,
            };
            tracing::info!(written, "exported");
            Ok(())
        }
        Command::Replay {
            nats,
            fold,
            cluster,
            from_window,
            to_window,
            publish,
            name,
            from_stream_start,
        } => {
            check_cluster(&cluster)?;
            check_cluster(&name).context("--name")?;
            let client = nats.connect("backbeat-processor-replay").await?;
            let js = async_nats::jetstream::new(client);
            let range = WindowRange {
                from: from_window,
                to: to_window,
            };
            let mut derived = Vec::new();
            let config = fold.to_config()?;
            let start = if from_stream_start {
                start_from_stream()
            } else {
                checkpoint_start(&js, &name, &cluster, &config, from_window).await?
            };
            history::replay(&js, config, &cluster, range, start, |report| {
                derived.push(report);
                Ok(())
            })
            .await?;
            let mut stdout = std::io::stdout().lock();
            for report in &derived {
                writeln!(stdout, "{}", report.to_json())?;
            }
            stdout.flush()?;
            drop(stdout);
            // Replay = live: say whether these are the published bytes.
            let published = history::published_reports(&js, &cluster, range).await?;
            if published.foreign > 0 {
                tracing::warn!(
                    messages = published.foreign,
                    "messages on the bar subject that are not reports of this cluster were skipped"
                );
            }
            let comparison = history::compare(&derived, &published.by_window, config.bar_length);
            tracing::info!(
                replayed = derived.len(),
                identical = comparison.identical,
                unpublished = comparison.unpublished,
                differing = comparison.differing.len(),
                "compared with BACKBEAT_BARS"
            );
            if !comparison.differing.is_empty() {
                let hint = match comparison.published_bar_length {
                    Some(l) => format!("the published reports have bar length {l}: pass --bar-length {l}"),
                    None => "pass the fold flags the live processor runs with (--bar-length, --lateness, \
                             --future, --max-jump, --task-ttl)"
                        .to_string(),
                };
                anyhow::bail!(
                    "{} window(s) replayed differently from the reports published in BACKBEAT_BARS (first: window {}); {hint}",
                    comparison.differing.len(),
                    comparison.differing[0]
                );
            }
            if publish {
                let mut publisher = BarPublisher::new(js);
                for report in &derived {
                    match publisher.publish(report, Duration::from_secs(30)).await? {
                        PublishOutcome::Published(seq) => {
                            tracing::info!(window = report.window_index, seq, "published")
                        }
                        PublishOutcome::AlreadyPublished(_) => {
                            tracing::info!(window = report.window_index, "already in BACKBEAT_BARS")
                        }
                    }
                }
                if publisher.foreign > 0 {
                    tracing::warn!(
                        messages = publisher.foreign,
                        "messages on the bar subject that are not these reports were skipped"
                    );
                }
                if publisher.mismatches > 0 {
                    bail!("{} replayed reports differ from the stored ones", publisher.mismatches);
                }
            }
            if derived.is_empty() {
                tracing::warn!("no window in that range has closed in the stream");
            }
            Ok(())
        }
    }
}
