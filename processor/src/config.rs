//! Command-line configuration shared by the processor's subcommands.

use backbeat_fold::{ConfigError, FoldConfig};

/// The fold's flags (SPEC §5), the same on `fold`, `run` and `replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct FoldArgs {
    /// L: beats per window (bar length); at least 1.
    #[arg(long, env = "BACKBEAT_BAR_LENGTH", default_value_t = 120)]
    pub bar_length: u64,
    /// A: lateness in beats; window w closes at beat (w+1)·L + A.
    #[arg(long, env = "BACKBEAT_LATENESS", default_value_t = 0)]
    pub lateness: u64,
    /// F: a claim more than F beats past the current beat is rejected (future_beat).
    #[arg(long, env = "BACKBEAT_FUTURE", default_value_t = 2)]
    pub future: u64,
    /// J: a beat more than J beats past the current one is rejected (beat_jump); default 10·L.
    #[arg(long, env = "BACKBEAT_MAX_JUMP")]
    pub max_jump: Option<u64>,
    /// T: a task entry is dropped T windows after its last claim.
    #[arg(long, env = "BACKBEAT_TASK_TTL", default_value_t = 10)]
    pub task_ttl: u64,
    /// Cap: task entries one agent may hold; a claim that would add one more is rejected
    /// (rejected_claims, reason too_many_tasks). At least 1.
    #[arg(long, env = "BACKBEAT_MAX_TASKS_PER_AGENT", default_value_t = backbeat_fold::MAX_TASKS_PER_AGENT_DEFAULT)]
    pub max_tasks_per_agent: u64,
    /// Cap: agents one cluster's state may hold; a claim of one more agent is rejected
    /// (rejected_claims, reason too_many_agents). At least 1.
    #[arg(long, env = "BACKBEAT_MAX_AGENTS_PER_CLUSTER", default_value_t = backbeat_fold::MAX_AGENTS_PER_CLUSTER_DEFAULT)]
    pub max_agents_per_cluster: u64,
}

impl FoldArgs {
    /// The validated fold configuration.
    pub fn to_config(&self) -> Result<FoldConfig, ConfigError> {
        let config = FoldConfig {
            bar_length: self.bar_length,
            lateness: self.lateness,
            future: self.future,
            max_jump: self.max_jump.unwrap_or(self.bar_length.saturating_mul(10)),
            task_ttl: self.task_ttl,
            max_tasks_per_agent: self.max_tasks_per_agent,
            max_agents_per_cluster: self.max_agents_per_cluster,
        };
        config.validate()?;
        Ok(config)
    }
}
