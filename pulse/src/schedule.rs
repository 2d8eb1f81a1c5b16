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
pub fn interval_us(bpm: u32) -> i64 {
    assert!(bpm >= 1, "tempo must be at least 1 bpm");
    60_000_000 / i64::from(bpm)
}

/// A tempo change that takes effect at a beat: beats `>= at_beat` run at `bpm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempoChange {
    pub bpm: u32,
    pub at_beat: u64,
}

/// The grid: beat `anchor_beat` is due at `anchor_unix_us` (µs since the Unix epoch),
/// then `bpm`, switching to `pending.bpm` from `pending.at_beat` on.
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
        if beat < self.anchor_beat {
            let back = (self.anchor_beat - beat) as i64;
            return self.anchor_unix_us - back * interval_us(self.bpm);
        }
        match self.split_beat() {
            Some(split) if beat > split => {
                let old = (split - self.anchor_beat) as i64;
                let new = (beat - split) as i64;
                let change_bpm = self.pending.map_or(self.bpm, |c| c.bpm);
                self.anchor_unix_us + old * interval_us(self.bpm) + new * interval_us(change_bpm)
            }
            _ => self.anchor_unix_us + (beat - self.anchor_beat) as i64 * interval_us(self.bpm),
        }
    }

    /// The lowest beat at or after the anchor that is due at or after `unix_us`.
    pub fn first_beat_due_at_or_after(&self, unix_us: i64) -> u64 {
        if unix_us <= self.anchor_unix_us {
            return self.anchor_beat;
        }
        let ceil_div = |a: i64, b: i64| ((a + b - 1) / b) as u64;
        if let Some(split) = self.split_beat() {
            let split_due = self.due_unix_us(split);
            if unix_us > split_due {
                let change_bpm = self.pending.map_or(self.bpm, |c| c.bpm);
                return split + ceil_div(unix_us - split_due, interval_us(change_bpm));
            }
        }
        self.anchor_beat + ceil_div(unix_us - self.anchor_unix_us, interval_us(self.bpm))
    }

    /// The beat a leader should emit next at `now_unix_us`, given that every beat
    /// below `min_beat` is already in the stream: the lowest beat `>= min_beat` that
    /// is not more than half an interval late. Beats further in the past are skipped
    /// (the processor counts them missing), so indices keep tracking time.
    pub fn next_beat(&self, now_unix_us: i64, min_beat: u64) -> u64 {
        let tolerance_us = interval_us(self.bpm_of(min_beat)) / 2;
        self.first_beat_due_at_or_after(now_unix_us - tolerance_us)
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
}
