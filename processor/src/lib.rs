//! The BACKBEAT processor: the shell around the fold of SPEC §5–§6.
//!
//! The fold itself is the `backbeat-fold` crate, pure by construction: no
//! async, no clock, no I/O. Everything here (the JetStream driver,
//! checkpoints, replay, admin HTTP) is a thin shell around it, and must never
//! change what the fold computes: live, replayed from the stream and folded
//! from a log file, the reports are the same bytes. This crate never uses
//! `ingest` or `query`.

pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod history;
pub mod http;
pub mod lease;
pub mod logfold;
pub mod metrics;
pub mod publisher;
pub mod status;
pub mod worker;

/// The fold the processor runs, under the names its tests and benchmarks use.
pub use backbeat_fold::{fold_all, Fold, FoldConfig, Outcome};
