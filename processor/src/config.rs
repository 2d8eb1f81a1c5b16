//! Command-line configuration shared by the processor's subcommands.

use crate::fold::FoldConfig;

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
}

impl FoldArgs {
    /// The validated fold configuration.
    pub fn to_config(&self) -> anyhow::Result<FoldConfig> {
        let config = FoldConfig {
            bar_length: self.bar_length,
            lateness: self.lateness,
            future: self.future,
            max_jump: self.max_jump.unwrap_or(self.bar_length.saturating_mul(10)),
            task_ttl: self.task_ttl,
        };
        config.validate()?;
        Ok(config)
    }
}
