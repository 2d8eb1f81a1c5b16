//! `backbeat-pulse`: one node of the raft group that emits a cluster's beats.

use clap::Parser as _;

use backbeat_pulse::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    backbeat_service::init_logging(config.log_format);
    let settings = config.validate()?;
    backbeat_pulse::node::run(settings).await?;
    Ok(())
}
