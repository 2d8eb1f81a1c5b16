//! The BACKBEAT processor: the fold of SPEC §5–§6 and what runs it.
//!
//! [`fold`] is the product's heart and is pure: no async, no clock, no I/O.
//! Everything else here (the JetStream driver, checkpoints, replay, admin HTTP)
//! is a thin shell around it, and must never change what the fold computes:
//! live, replayed from the stream and folded from a log file, the reports are
//! the same bytes. This crate never uses `ingest` or `query`.

pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod fold;
pub mod history;
pub mod http;
pub mod lease;
pub mod logfold;
pub mod metrics;
pub mod publisher;
pub mod status;
pub mod worker;

pub use fold::{fold_all, Fold, FoldConfig, Outcome};
