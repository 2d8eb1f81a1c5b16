//! The claim gateway's pure decisions about the bytes it is sent: whether a
//! claim is admitted ([`admission`]), how an HTTP request body is read within
//! its limits and an NDJSON batch split into lines ([`batch`]), and what a dead
//! letter keeps ([`dead_letter`]).
//!
//! No I/O: no NATS, no HTTP server, no async runtime. `backbeat-ingest`'s
//! gateway calls these (and re-exports them under `gateway::`), and the fuzz
//! targets (`fuzz/`) build this crate alone.

pub mod admission;
pub mod batch;
pub mod dead_letter;
