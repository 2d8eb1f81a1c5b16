//! The BACKBEAT pulse: a small openraft group whose leader, and only its
//! leader, emits BeatFrames (SPEC §2–§4) on an absolute-time schedule into
//! `BACKBEAT_EVENTS`, fenced by `Nats-Expected-Last-Subject-Sequence` (SPEC §8).
//!
//! The raft group replicates what every leader must agree on: the cluster id,
//! the bar length, the tempo, a pending tempo change and the schedule epoch.
//! The beat index itself is *not* replicated: the stream is the source of
//! truth, and a new leader continues after the last beat stored there.
//!
//! Timing: beat `k` is due at `epoch + Σ interval(bpm(j))` (µs, `interval =
//! floor(60e6 / bpm)`, the interval the processor's drift check expects), so
//! sleep error never accumulates; a new leader keeps the replicated grid, and
//! beats nobody emitted while there was no leader (or no NATS) are simply
//! absent from the stream, which the processor counts as missing beats.
//!
//! HTTP on `--listen`: `/health`, `/ready` (503 with the reason while the node
//! is degraded: no NATS, no quorum, or a leader that cannot emit), `/metrics`,
//! `GET /api/v1/status`, `POST /api/v1/tempo` (bearer `--admin-token`;
//! `{"bpm":N,"at":"next_downbeat"|"next_beat"}`; at most ±10% per request;
//! a follower forwards it to the leader). Raft RPC is on a listener of its own
//! (`--raft-listen`), every request signed with the group secret ([`auth`]).
//!
//! What this crate must never do: publish a beat without the expected-sequence
//! fence, publish a beat index twice or out of order, emit while it has no
//! quorum, or let a follower emit; resume from, or move its clock by, a message
//! on the beat subject that is not its group's own (authenticated) beat; apply
//! a raft command out of range; serve raft unauthenticated or on `--listen`.
//! It never reads claims and never folds.

pub mod auth;
pub mod clock;
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
pub mod watchdog;
