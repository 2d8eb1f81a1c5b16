//! The processor's integration tests: one binary (links once).
//!
//! - `conformance`: the hand-worked logs of `../shared/conformance`, byte for byte.
//! - `golden`: one scenario per rule under `tests/golden/`, byte for byte, and
//!   each folded as stop-after-event-k + resume-from-checkpoint for every k.

mod conformance;
mod golden;
mod support;
