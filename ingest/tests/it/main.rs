//! The ingest crate's integration tests, against real nats-server processes
//! (one binary, so the crate links its tests once).
//!
//! - `corpus`: every kind of bad input, over NATS and HTTP, gets its reason and
//!   a dead letter, and nothing reaches `BACKBEAT_EVENTS`.
//! - `duplicates`: a claim sent again (NATS, HTTP, within a batch) is stored once.
//! - `http_batch`: per-line results, status codes, limits, batches larger than
//!   the ack limit.
//! - `backpressure`: JetStream stalled: 503 with Retry-After and NATS error
//!   replies within the ack limit, then recovery.
//! - `outage`: nats-server killed and restarted under load; every claim
//!   answered `ok` is in the stream exactly once.
//! - `client`: beat following (prediction, free-running), BarReports.
//! - `inboxes`: answers go to inboxes only (`_INBOX.` and configured custom
//!   prefixes); a reply subject on a stream gets nothing, and is counted.
//! - `clusters`: the allow-list (`--clusters`) over NATS and HTTP.
//! - `binaries`: `backbeat-ingest` (help, readiness, metrics, SIGTERM) and
//!   `backbeat-agent-sim` against it over NATS and HTTP, claims valid for the fold.

mod backpressure;
mod binaries;
mod client;
mod clusters;
mod corpus;
mod duplicates;
mod http_batch;
mod inboxes;
mod outage;
mod support;
