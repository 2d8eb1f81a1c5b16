//! The processor's integration tests: one binary (links once).
//!
//! - `conformance`: the hand-worked logs of `../shared/conformance`, byte for byte.
//! - `fence`: a deposed checkpoint writer's late manifest write is refused
//!   and its late chunks change nothing its successor reads; the successor
//!   resumes to the bytes of a fold never interrupted.
//! - `golden`: one scenario per rule under `tests/golden/`, byte for byte, and
//!   each folded as stop-after-event-k + resume-from-checkpoint for every k.
//! - `live`: `backbeat-processor run` as a child process on a real
//!   nats-server: golden bytes live, export/fold/replay agree, prompt
//!   rollup, bad input, admin endpoints and SIGTERM, a checkpoint of other
//!   clusters refused, folding on after nats-server restarts.
//! - `crash`: kill -9 at seeded random points, and a restart from behind its
//!   reports after the duplicate window: every report exactly once.
//! - `lease`: one `run` per `--name`: a second one waits untouching and takes
//!   over on SIGTERM or after the holder's kill -9; a stolen lease stops its holder.
//! - `hostile` (issue 16): garbage and forged reports on the bar subject and
//!   forged beats while `run` works (reports = fold of the export, forged
//!   ones counted), `/ready` red while the bars stream refuses writes, each cap.
//! - `replay`: `replay` starts from the newest checkpoint `run` kept before the
//!   window, with the published bytes; the history keeps only the newest ones.

mod conformance;
mod crash;
mod fence;
mod golden;
mod hostile;
mod lease;
mod live;
mod live_support;
mod replay;
mod support;
