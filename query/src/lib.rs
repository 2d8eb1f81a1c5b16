//! The BACKBEAT query service (next milestone): DataFusion tables over
//! `BACKBEAT_BARS`, `BACKBEAT_EVENTS` and Parquet archives of sealed windows,
//! answering SQL over HTTP and the PostgreSQL wire protocol.
//!
//! What it must never do: write to a stream, run DDL or DML, read local files
//! named in a query, or run a query without memory and time limits. It holds
//! its place in the workspace so the core is shaped for it (see
//! `../shared/DESIGN.md`); DataFusion's arrow will be the only arrow here.
