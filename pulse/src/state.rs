//! The replicated state of the pulse group and the pure `apply` of raft requests.
//!
//! Every node applies the same committed requests in the same order and gets
//! the same state, so whichever node leads computes the same schedule. `apply`
//! reads no clock: times in it come from the request, written by the leader.

use backbeat_schemas::hlc::HLC_PHYSICAL_MAX;
use backbeat_schemas::message::BEAT_INDEX_MAX;
use backbeat_schemas::names::is_valid_cluster_id;
use serde::{Deserialize, Serialize};

use crate::config::{BAR_LENGTH_MAX, BPM_MAX};
use crate::schedule::{Schedule, TempoChange};

/// The latest time an epoch may name (µs): the latest an HLC can write (year 10889).
pub const EPOCH_UNIX_US_MAX: i64 = (HLC_PHYSICAL_MAX as i64) * 1000;

/// The point the schedule grid hangs from: `beat` is due at `unix_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub beat: u64,
    pub unix_us: i64,
}

/// What the group agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulseState {
    /// Set once by the first leader from its flags; the group keeps it for good.
    pub cluster_id: Option<String>,
    /// Beats per bar; 0 until configured.
    pub bar_length: u64,
    /// Tempo at the epoch (before `pending`).
    pub tempo_bpm: u32,
    /// A change accepted but not yet folded into the epoch.
    pub pending: Option<TempoChange>,
    /// None until the first leader anchors the schedule.
    pub epoch: Option<Epoch>,
}

/// A write to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first leader's flags. Applied only while the state is unconfigured.
    Configure {
        cluster_id: String,
        bar_length: u64,
        bpm: u32,
    },
    /// (Re-)anchor the grid: `beat` is due at `unix_us`.
    SetEpoch { beat: u64, unix_us: i64 },
    /// Beats `>= at_beat` run at `bpm`.
    ChangeTempo { bpm: u32, at_beat: u64 },
}

impl Request {
    /// Whether every field is within SPEC's and the pulse's limits. Checked
    /// where a request is made (HTTP, emitter) *and* where it is applied: an
    /// entry already in the log that fails it is skipped, never applied, so
    /// no node can be crashed by replaying it.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        let bpm_ok = |bpm: &u32| (1..=BPM_MAX).contains(bpm);
        match self {
            Request::Configure {
                cluster_id,
                bar_length,
                bpm,
            } => {
                if !is_valid_cluster_id(cluster_id) {
                    return Err(InvalidRequest::ClusterId(cluster_id.clone()));
                }
                if !(1..=BAR_LENGTH_MAX).contains(bar_length) {
                    return Err(InvalidRequest::BarLength(*bar_length));
                }
                if !bpm_ok(bpm) {
                    return Err(InvalidRequest::Tempo(*bpm));
                }
            }
            Request::SetEpoch { beat, unix_us } => {
                if *beat > BEAT_INDEX_MAX {
                    return Err(InvalidRequest::EpochBeat(*beat));
                }
                if !(0..=EPOCH_UNIX_US_MAX).contains(unix_us) {
                    return Err(InvalidRequest::EpochTime(*unix_us));
                }
            }
            Request::ChangeTempo { bpm, at_beat } => {
                if !bpm_ok(bpm) {
                    return Err(InvalidRequest::Tempo(*bpm));
                }
                if *at_beat > BEAT_INDEX_MAX {
                    return Err(InvalidRequest::TempoChangeBeat(*at_beat));
                }
            }
        }
        Ok(())
    }
}

/// The field of a [`Request`] out of SPEC's or the pulse's range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("cluster id {0:?} is not [A-Za-z0-9_-]{{1,64}}")]
    ClusterId(String),
    #[error("bar length {0} is not in 1..={BAR_LENGTH_MAX}")]
    BarLength(u64),
    #[error("tempo {0} bpm is not in 1..={BPM_MAX}")]
    Tempo(u32),
    #[error("epoch beat {0} is above {BEAT_INDEX_MAX}")]
    EpochBeat(u64),
    #[error("epoch time {0} µs is not in 0..={EPOCH_UNIX_US_MAX}")]
    EpochTime(i64),
    #[error("tempo change beat {0} is above {BEAT_INDEX_MAX}")]
    TempoChangeBeat(u64),
}

/// What applying a request did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to say (blank and membership entries).
    None,
    Applied,
    /// The request was valid raft-wise but left the state alone, and why.
    Ignored(String),
    /// The request is out of range and was not applied, and why.
    Invalid(String),
}

impl PulseState {
    /// Whether the first leader has configured the group.
    pub fn is_configured(&self) -> bool {
        self.cluster_id.is_some()
    }

    /// The grid, once anchored.
    pub fn schedule(&self) -> Option<Schedule> {
        self.epoch.map(|epoch| Schedule {
            anchor_beat: epoch.beat,
            anchor_unix_us: epoch.unix_us,
            bpm: self.tempo_bpm,
            pending: self.pending,
        })
    }

    /// Applies one committed request; one out of range ([`Request::check`]) is
    /// refused (`Response::Invalid`) and leaves the state alone.
    pub fn apply(&mut self, request: &Request) -> Response {
        if let Err(reason) = request.check() {
            return Response::Invalid(reason.to_string());
        }
        match request {
            Request::Configure {
                cluster_id,
                bar_length,
                bpm,
            } => {
                if self.is_configured() {
                    return Response::Ignored("already configured".into());
                }
                self.cluster_id = Some(cluster_id.clone());
                self.bar_length = *bar_length;
                self.tempo_bpm = *bpm;
                Response::Applied
            }
            Request::SetEpoch { beat, unix_us } => {
                // A change that is due at or before the new anchor becomes the base
                // tempo; a later one stays pending.
                if let Some(change) = self.pending {
                    if change.at_beat <= *beat {
                        self.tempo_bpm = change.bpm;
                        self.pending = None;
                    }
                }
                self.epoch = Some(Epoch {
                    beat: *beat,
                    unix_us: *unix_us,
                });
                Response::Applied
            }
            Request::ChangeTempo { bpm, at_beat } => {
                let Some(schedule) = self.schedule() else {
                    // Nothing emitted yet: the tempo simply starts as asked.
                    self.tempo_bpm = *bpm;
                    self.pending = None;
                    return Response::Applied;
                };
                if let Some(previous) = self.pending {
                    if previous.at_beat <= *at_beat {
                        // Fold the earlier change into the anchor so at most one stays pending;
                        // the grid up to `at_beat` is unchanged by this.
                        let anchor_beat = previous.at_beat.max(schedule.anchor_beat);
                        self.epoch = Some(Epoch {
                            beat: anchor_beat,
                            unix_us: schedule.due_unix_us(anchor_beat),
                        });
                        self.tempo_bpm = previous.bpm;
                    }
                    // Otherwise the later change is superseded; the HTTP layer refuses
                    // such requests, so this is only reached by a defensive rule.
                }
                self.pending = Some(TempoChange {
                    bpm: *bpm,
                    at_beat: *at_beat,
                });
                Response::Applied
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured() -> PulseState {
        let mut state = PulseState::default();
        let configure = Request::Configure {
            cluster_id: "c1".into(),
            bar_length: 4,
            bpm: 120,
        };
        assert_eq!(state.apply(&configure), Response::Applied);
        state
    }

    #[test]
    fn configure_applies_once() {
        let mut state = configured();
        let again = Request::Configure {
            cluster_id: "other".into(),
            bar_length: 8,
            bpm: 60,
        };
        assert!(matches!(state.apply(&again), Response::Ignored(_)));
        assert_eq!(state.cluster_id.as_deref(), Some("c1"));
        assert_eq!(state.bar_length, 4);
    }

    #[test]
    fn tempo_before_epoch_applies_at_once() {
        let mut state = configured();
        state.apply(&Request::ChangeTempo { bpm: 130, at_beat: 8 });
        assert_eq!(state.tempo_bpm, 130);
        assert_eq!(state.pending, None);
    }

    #[test]
    fn successive_changes_fold_without_moving_the_grid() {
        let mut state = configured();
        state.apply(&Request::SetEpoch {
            beat: 0,
            unix_us: 1_000_000,
        });
        state.apply(&Request::ChangeTempo { bpm: 130, at_beat: 4 });
        let before = state.schedule().unwrap();
        state.apply(&Request::ChangeTempo { bpm: 140, at_beat: 8 });
        let after = state.schedule().unwrap();
        assert_eq!(state.epoch.unwrap().beat, 4);
        assert_eq!(state.tempo_bpm, 130);
        assert_eq!(state.pending, Some(TempoChange { bpm: 140, at_beat: 8 }));
        // Beats from the new anchor on keep their due times (earlier ones are already emitted).
        for beat in 4..=8 {
            assert_eq!(before.due_unix_us(beat), after.due_unix_us(beat), "beat {beat}");
        }
        assert_eq!(after.bpm_of(7), 130);
        assert_eq!(after.bpm_of(8), 140);
    }

    #[test]
    fn re_anchoring_folds_a_reached_change() {
        let mut state = configured();
        state.apply(&Request::SetEpoch { beat: 0, unix_us: 0 });
        state.apply(&Request::ChangeTempo { bpm: 130, at_beat: 4 });
        state.apply(&Request::SetEpoch {
            beat: 2,
            unix_us: 5_000_000,
        });
        assert_eq!(state.tempo_bpm, 120, "change at 4 not reached by an anchor at 2");
        assert!(state.pending.is_some());
        state.apply(&Request::SetEpoch {
            beat: 10,
            unix_us: 9_000_000,
        });
        assert_eq!(state.tempo_bpm, 130);
        assert_eq!(state.pending, None);
    }

    #[test]
    fn a_change_committed_after_its_beat_is_repaired_by_re_anchoring_at_the_promise() {
        let mut state = configured();
        state.apply(&Request::SetEpoch { beat: 0, unix_us: 0 });
        // Beat 5 was emitted at 120 BPM and promised beat 6 at 3.0 s ...
        let promised_6 = state.schedule().unwrap().due_unix_us(6);
        assert_eq!(promised_6, 3_000_000);
        // ... then a change aimed at beat 5 commits: the grid would move beat 6.
        state.apply(&Request::ChangeTempo { bpm: 130, at_beat: 5 });
        assert_ne!(state.schedule().unwrap().due_unix_us(6), promised_6);
        // The emitter re-anchors at the promise: beat 6 stays where it was said
        // to be, and the new tempo runs from there.
        state.apply(&Request::SetEpoch {
            beat: 6,
            unix_us: promised_6,
        });
        let schedule = state.schedule().unwrap();
        assert_eq!(schedule.due_unix_us(6), promised_6);
        assert_eq!(schedule.bpm_of(6), 130);
        assert_eq!(schedule.due_unix_us(7), promised_6 + 60_000_000 / 130);
        assert_eq!(state.pending, None);
    }

    #[test]
    fn out_of_range_requests_are_refused_and_leave_the_state_alone() {
        let mut state = configured();
        state.apply(&Request::SetEpoch { beat: 0, unix_us: 0 });
        let before = state.clone();
        for bad in [
            Request::ChangeTempo { bpm: 0, at_beat: 4 },
            Request::ChangeTempo { bpm: 1001, at_beat: 4 },
            Request::ChangeTempo {
                bpm: u32::MAX,
                at_beat: 4,
            },
            Request::ChangeTempo {
                bpm: 120,
                at_beat: u64::MAX,
            },
            Request::ChangeTempo {
                bpm: 120,
                at_beat: BEAT_INDEX_MAX + 1,
            },
            Request::SetEpoch {
                beat: u64::MAX,
                unix_us: 0,
            },
            Request::SetEpoch { beat: 1, unix_us: -1 },
            Request::SetEpoch {
                beat: 1,
                unix_us: i64::MAX,
            },
        ] {
            assert!(matches!(state.apply(&bad), Response::Invalid(_)), "{bad:?}");
            assert_eq!(state, before, "{bad:?} changed the state");
        }
        let mut fresh = PulseState::default();
        for bad in [
            Request::Configure {
                cluster_id: "a.b".into(),
                bar_length: 4,
                bpm: 120,
            },
            Request::Configure {
                cluster_id: "c".into(),
                bar_length: 0,
                bpm: 120,
            },
            Request::Configure {
                cluster_id: "c".into(),
                bar_length: u64::MAX,
                bpm: 120,
            },
            Request::Configure {
                cluster_id: "c".into(),
                bar_length: 4,
                bpm: 0,
            },
        ] {
            assert!(matches!(fresh.apply(&bad), Response::Invalid(_)), "{bad:?}");
            assert!(!fresh.is_configured());
        }
        // The reason names the field and its range (logged, and the 422 answer's message).
        assert_eq!(
            Request::ChangeTempo { bpm: 0, at_beat: 1 }.check(),
            Err(InvalidRequest::Tempo(0))
        );
        assert_eq!(
            fresh.apply(&Request::SetEpoch { beat: 1, unix_us: -1 }),
            Response::Invalid(format!("epoch time -1 µs is not in 0..={EPOCH_UNIX_US_MAX}"))
        );
        // At the limits: applied.
        assert_eq!(
            state.apply(&Request::ChangeTempo {
                bpm: 1000,
                at_beat: BEAT_INDEX_MAX
            }),
            Response::Applied
        );
        assert_eq!(
            state.apply(&Request::SetEpoch {
                beat: BEAT_INDEX_MAX,
                unix_us: EPOCH_UNIX_US_MAX
            }),
            Response::Applied
        );
        let _ = state.schedule().unwrap().due_unix_us(u64::MAX);
    }

    #[test]
    fn apply_is_deterministic() {
        let requests = [
            Request::SetEpoch { beat: 3, unix_us: 77 },
            Request::ChangeTempo { bpm: 125, at_beat: 8 },
            Request::ChangeTempo { bpm: 130, at_beat: 12 },
        ];
        let mut a = configured();
        let mut b = configured();
        for r in &requests {
            a.apply(r);
            b.apply(r);
        }
        assert_eq!(a, b);
    }
}
