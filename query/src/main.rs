//! `backbeat-query`: `serve` answers SQL over BACKBEAT's streams on HTTP;
//! `sql` sends one statement to a running server and prints the answer.

use clap::{Parser, Subcommand};

use backbeat_query::config::{ServeArgs, SqlArgs};

#[derive(Debug, Parser)]
#[command(
    name = "backbeat-query",
    version,
    about = "Read-only SQL over BACKBEAT's history (DataFusion). Every flag also reads BACKBEAT_<FLAG>."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tail the streams into tables and answer SQL over HTTP.
    Serve(Box<ServeArgs>),
    /// Send one statement to a running server and print the answer.
    Sql(SqlArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            let config = args.validate()?;
            backbeat_service::init_logging(config.log_format);
            backbeat_query::serve::serve(config).await
        }
        Command::Sql(args) => {
            let text = backbeat_query::client::run_sql(args).await?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
