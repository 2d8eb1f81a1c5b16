//! The BACKBEAT query service: DataFusion tables (`bar_reports`, `claims`,
//! `beats`, `rejects`) over a Parquet archive of what is sealed (a local
//! directory or S3, one writer at a time) and the in-memory tail of
//! `BACKBEAT_EVENTS`, `BACKBEAT_BARS` and `BACKBEAT_REJECTS`, answering
//! read-only SQL over HTTP (JSON, CSV, Arrow IPC) and the PostgreSQL wire
//! protocol (`pg`), serving the built-in web
//! console at `/`, and a CLI client (against
//! a server, or offline over an archive).
//!
//! What it must never do: write to a stream, run DDL or DML, read a file or
//! URL named in a query, run a query without memory, time, result-size and
//! concurrency limits, or take a foreign message on a bar subject for a
//! report without checking it. It reads the streams only: it never imports
//! the processor's fold or state (only `backbeat-schemas` and
//! `backbeat-service`). DataFusion's arrow is the only arrow here.
//!
//! Both protocols run every statement through [`engine::QueryEngine`]; each
//! [`error::QueryError`] kind has an HTTP status and a PostgreSQL SQLSTATE.

pub mod archive;
pub mod client;
pub mod clusters;
pub mod config;
pub mod console;
pub mod encode;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod nats_metrics;
pub mod pg;
pub mod readonly;
pub mod serve;
pub mod tables;
pub mod tail;
