//! The BACKBEAT pulse: a small openraft group whose leader, and only its
//! leader, emits BeatFrames (SPEC §2–§4) on an absolute-time schedule into
//! `BACKBEAT_EVENTS`, fenced by `Nats-Expected-Last-Subject-Sequence` (SPEC §8).
//!
//! The raft group replicates what every leader must agree on: the cluster id,
//! the bar length, the tempo, a pending tempo change and the schedule epoch.
//! The beat index itself is *not* replicated: the stream is the source of
//! truth, and a new leader continues after the last beat stored there.
//!
//! What this crate must never do: publish a beat without the expected-sequence
//! fence, publish a beat index twice or out of order, emit while it has no
//! quorum, or let a follower emit. It never reads claims and never folds.

pub mod config;
pub mod emitter;
pub mod http;
pub mod metrics;
pub mod node;
pub mod publisher;
pub mod raft;
pub mod schedule;
pub mod state;
pub mod status;
pub mod tempo;
