//! Beat scheduling on absolute time: when beat `k` is due.
//!
//! Beat `k` is due at `anchor time + Σ_{j=anchor}^{k-1} interval(bpm(j))`, with
//! `interval(bpm) = floor(60 000 000 / bpm)` µs, the same interval the processor's
//! tempo drift (SPEC §5) expects. Every due time is computed from the anchor,
//! never from the previous beat's actual time, so sleep error never accumulates;
//! and every node computes the same grid from the replicated state, so a new
//! leader keeps the old leader's rhythm. Pure: no clock is read here.

use serde::{Deserialize, Serialize};

/// Microseconds between beat `k` and `k+1` at `bpm` (SPEC §5 `floor(60_000_000 / bpm)`).
/// Tempos outside SPEC's 1..=1000 never reach here (the state machine refuses
/// them); should one, the interval stays at least 1 µs, so nothing divides by 0.
pub fn interval_us(bpm: u32) -> i64 {
    (60_000_000 / i64::from(bpm.max(1))).max(1)
}

/// `value` clamped into `i64` (due times beyond ±292 000 years are not reached,
/// but a forged or corrupt input must not overflow).
fn clamp_i64(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// A tempo change that takes effect at a beat: beats `>= at_beat` run at `bpm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempoChange {
    pub bpm: u32,
    pub at_beat: u64,
}

/// The grid: beat `anchor_beat` is due at `anchor_unix_us` (µs since the Unix epoch),
/// then `bpm`, switching to `pending.bpm` from `pending.at_beat` on.
///
/// Every computation is total: 128-bit intermediates, clamped or saturated
/// results, so no beat index or time, however extreme, can overflow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub anchor_beat: u64,
    pub anchor_unix_us: i64,
    pub bpm: u32,
    pub pending: Option<TempoChange>,
}

impl Schedule {
    /// The tempo beat `beat` is emitted with (and the interval after it runs at).
    pub fn bpm_of(&self, beat: u64) -> u32 {
        match self.pending {
            Some(change) if beat >= change.at_beat => change.bpm,
            _ => self.bpm,
        }
    }

    /// The first beat that runs at the pending tempo, never before the anchor.
    fn split_beat(&self) -> Option<u64> {
        self.pending.map(|change| change.at_beat.max(self.anchor_beat))
    }

    /// When `beat` is due, in µs since the Unix epoch. Beats before the anchor are
    /// extrapolated backwards at the anchor's tempo (used only for lateness checks).
    pub fn due_unix_us(&self, beat: u64) -> i64 {
        let anchor = i128::from(self.anchor_unix_us);
        let beats = |from: u64, to: u64| i128::from(to) - i128::from(from);
        if beat < self.anchor_beat {
            return clamp_i64(anchor - beats(beat, self.anchor_beat) * i128::from(interval_us(self.bpm)));
        }
        match self.split_beat() {
            Some(split) if beat > split => {
                let change_bpm = self.pending.map_or(self.bpm, |c| c.bpm);
                clamp_i64(
                    anchor
                        + beats(self.anchor_beat, split) * i128::from(interval_us(self.bpm))
                        + beats(split, beat) * i128::from(interval_us(change_bpm)),
                )
            }
            _ => clamp_i64(anchor + beats(self.anchor_beat, beat) * i128::from(interval_us(self.bpm))),
        }
    }

    /// The lowest beat at or after the anchor that is due at or after `unix_us`
    /// (`u64::MAX` when no beat index is that far out).
    pub fn first_beat_due_at_or_after(&self, unix_us: i64) -> u64 {
        if unix_us <= self.anchor_unix_us {
            return self.anchor_beat;
        }
        let beats_after = |from_beat: u64, from_us: i64, bpm: u32| {
            let span = i128::from(unix_us) - i128::from(from_us);
            let beats = (span + i128::from(interval_us(bpm)) - 1) / i128::from(interval_us(bpm));
            u64::try_from(i128::from(from_beat) + beats).unwrap_or(u64::MAX)
        };
        if let Some(split) = self.split_beat() {
            let split_due = self.due_unix_us(split);
            if unix_us > split_due {
                let change_bpm = self.pending.map_or(self.bpm, |c| c.bpm);
                return beats_after(split, split_due, change_bpm);
            }
        }
        beats_after(self.anchor_beat, self.anchor_unix_us, self.bpm)
    }

    /// The beat a leader should emit next at `now_unix_us`, given that every beat
    /// below `min_beat` is already in the stream: the lowest beat `>= min_beat` that
    /// is not more than half an interval late. Beats further in the past are skipped
    /// (the processor counts them missing), so indices keep tracking time.
    pub fn next_beat(&self, now_unix_us: i64, min_beat: u64) -> u64 {
        let tolerance_us = interval_us(self.bpm_of(min_beat)) / 2;
        self.first_beat_due_at_or_after(now_unix_us.saturating_sub(tolerance_us))
            .max(min_beat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(bpm: u32) -> Schedule {
        Schedule {
            anchor_beat: 100,
            anchor_unix_us: 1_000_000_000,
            bpm,
            pending: None,
        }
    }

    #[test]
    fn interval_is_floor_of_sixty_million_over_bpm() {
        assert_eq!(interval_us(120), 500_000);
        assert_eq!(interval_us(7), 8_571_428);
        assert_eq!(interval_us(1000), 60_000);
    }

    #[test]
    fn due_times_are_absolute_from_the_anchor() {
        let s = grid(120);
        assert_eq!(s.due_unix_us(100), 1_000_000_000);
        assert_eq!(s.due_unix_us(101), 1_000_500_000);
        // A million beats later the error is still zero: nothing accumulates.
        assert_eq!(s.due_unix_us(1_000_100), 1_000_000_000 + 1_000_000 * 500_000);
        assert_eq!(s.due_unix_us(98), 999_000_000);
    }

    #[test]
    fn pending_change_switches_interval_at_its_beat() {
        let mut s = grid(120);
        s.pending = Some(TempoChange { bpm: 600, at_beat: 104 });
        assert_eq!(s.bpm_of(103), 120);
        assert_eq!(s.bpm_of(104), 600);
        // Beats 100..104 run at 500 ms, then 100 ms.
        assert_eq!(s.due_unix_us(104), 1_000_000_000 + 4 * 500_000);
        assert_eq!(s.due_unix_us(106), 1_000_000_000 + 4 * 500_000 + 2 * 100_000);
    }

    #[test]
    fn first_due_inverts_due_time() {
        let mut s = grid(120);
        s.pending = Some(TempoChange { bpm: 132, at_beat: 110 });
        for beat in 100..140 {
            let due = s.due_unix_us(beat);
            assert_eq!(s.first_beat_due_at_or_after(due), beat, "beat {beat}");
            assert_eq!(
                s.first_beat_due_at_or_after(due + 1),
                beat + 1,
                "just after beat {beat}"
            );
        }
        assert_eq!(s.first_beat_due_at_or_after(0), 100);
    }

    #[test]
    fn next_beat_skips_beats_more_than_half_an_interval_late() {
        let s = grid(120);
        // 100 ms after beat 102 was due: still emit 102.
        assert_eq!(s.next_beat(s.due_unix_us(102) + 100_000, 0), 102);
        // 300 ms late: 102 is skipped, 103 is next.
        assert_eq!(s.next_beat(s.due_unix_us(102) + 300_000, 0), 103);
        // Never below what the stream already holds.
        assert_eq!(s.next_beat(s.due_unix_us(102), 110), 110);
    }

    #[test]
    fn extreme_beats_and_times_never_overflow() {
        let extremes_beat = [0, 1, (1 << 53) - 1, 1 << 53, u64::MAX - 1, u64::MAX];
        let extremes_us = [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];
        for anchor_beat in extremes_beat {
            for anchor_unix_us in extremes_us {
                for bpm in [0, 1, 1000, u32::MAX] {
                    for pending in [
                        None,
                        Some(TempoChange {
                            bpm: 1,
                            at_beat: u64::MAX,
                        }),
                        Some(TempoChange { bpm: 1000, at_beat: 0 }),
                    ] {
                        let s = Schedule {
                            anchor_beat,
                            anchor_unix_us,
                            bpm,
                            pending,
                        };
                        for beat in extremes_beat {
                            let _ = s.due_unix_us(beat);
                            let _ = s.bpm_of(beat);
                            for now in extremes_us {
                                let _ = s.next_beat(now, beat);
                                let _ = s.first_beat_due_at_or_after(now);
                            }
                        }
                    }
                }
            }
        }
        // Far beyond the grid: clamped, not wrapped.
        let s = grid(1);
        assert_eq!(s.due_unix_us(u64::MAX), i64::MAX);
        assert_eq!(
            s.first_beat_due_at_or_after(i64::MAX),
            100 + (i64::MAX - 1_000_000_000) as u64 / 60_000_000 + 1
        );
        assert!(s.next_beat(i64::MIN, u64::MAX) == u64::MAX);
    }
}
