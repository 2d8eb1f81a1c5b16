//! BACKBEAT ingest: the claim gateway, the agent client library and the agent simulator.
//!
//! - [`gateway`] takes status claims from agents (NATS `backbeat.*.intake`, and
//!   HTTP `POST /api/v1/clusters/{cluster}/claims`), validates them with the very
//!   rules the processor applies ([`backbeat_schemas::validate_claim`]), appends
//!   accepted claims to `BACKBEAT_EVENTS` under their SPEC §8 message id, and keeps
//!   every refused input in `BACKBEAT_REJECTS` with its reason.
//! - [`client`] is what an agent links: follow the beats with a local beat timer,
//!   stamp claims with `beat_index` and HLC, send them with safe retries, and read
//!   BarReports.
//! - [`sim`] is a seeded fleet of simulated agents built on [`client`].
//! - [`answer`] holds the gateway's answers, which both sides read and write.
//!
//! Feature `server` (default) builds the gateway and the binaries. An agent
//! depends on this crate with `default-features = false` and gets the client
//! (NATS and an HTTP client) without axum, prometheus or the service crate.
//!
//! What the gateway must never do: rewrite a payload (the stored bytes are the
//! agent's bytes), acknowledge a claim before JetStream acknowledged it, drop an
//! input without a dead letter or an answer, or grow its memory when JetStream is
//! slow (it answers "unavailable, retry" instead). A dead letter keeps the
//! input's bytes, only cut to a marked prefix (`Backbeat-Truncated`) when the
//! input is larger than a message may be. It has no opinion about beats
//! or windows: lateness is the fold's business.

pub mod answer;
pub mod client;
#[cfg(feature = "server")]
pub mod gateway;
pub mod rng;
pub mod sim;
