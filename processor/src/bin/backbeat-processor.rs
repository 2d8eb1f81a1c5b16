//! `backbeat-processor`: fold logs, run the live fold on JetStream, export and replay windows.

use std::io::{BufReader, BufWriter};

use anyhow::Context as _;
use backbeat_processor::config::FoldArgs;
use clap::{Parser, Subcommand};

/// BACKBEAT processor: folds beats and claims into BarReports (SPEC §5-§6).
#[derive(Debug, Parser)]
#[command(name = "backbeat-processor", version, about)]
struct Cli {
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
    }
}
