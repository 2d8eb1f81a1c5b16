//! The tempo rule: which changes are allowed, and the beat a change lands on.
//! Pure; the HTTP handler and the leader's emitter feed it what they know.

use serde::{Deserialize, Serialize};

use crate::config::BPM_MAX;

/// Where a change lands (`"at"` in `POST /api/v1/tempo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum At {
    /// The first downbeat (`beat % bar_length == 0`) not yet emitted.
    #[default]
    NextDownbeat,
    /// The next beat not yet emitted.
    NextBeat,
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TempoError {
    #[error("bpm must be in 1..={BPM_MAX}, got {0}")]
    OutOfRange(u32),
    #[error("a change from {current} bpm to {requested} bpm is more than ±10% per request (allowed {min}..={max})")]
    StepTooLarge {
        current: u32,
        requested: u32,
        min: u32,
        max: u32,
    },
}

/// SPEC's range of tempos, whatever the tempo in force: a request outside it
/// is refused before anything else is looked at (a pending change, the leader).
pub fn check_range(requested: u32) -> Result<(), TempoError> {
    if !(1..=BPM_MAX).contains(&requested) {
        return Err(TempoError::OutOfRange(requested));
    }
    Ok(())
}

/// The 10% rule: `requested` must be within ±10% of `current` (inclusive) and in 1..=1000.
pub fn check_change(current: u32, requested: u32) -> Result<(), TempoError> {
    check_range(requested)?;
    // Integer bounds: min = ceil(0.9·c), max = floor(1.1·c), so e.g. 120 allows 108..=132.
    // In u64: `current` comes from the replicated state and must not overflow here.
    let min = u32::try_from((u64::from(current) * 9).div_ceil(10)).unwrap_or(u32::MAX);
    let max = u32::try_from(u64::from(current) * 11 / 10).unwrap_or(u32::MAX);
    if requested < min || requested > max {
        return Err(TempoError::StepTooLarge {
            current,
            requested,
            min,
            max,
        });
    }
    Ok(())
}

/// The beat a change applies at. `next_unemitted` is the lowest beat the leader
/// has not emitted yet; when it is due sooner than the change can be committed
/// (`too_close`), the beat after it is the earliest the change can still land on.
/// Saturates at `u64::MAX` (which the state machine's range check then refuses).
pub fn target_beat(at: At, next_unemitted: u64, too_close: bool, bar_length: u64) -> u64 {
    let bar_length = bar_length.max(1);
    let earliest = next_unemitted.saturating_add(u64::from(too_close));
    match at {
        At::NextBeat => earliest,
        At::NextDownbeat => earliest.div_ceil(bar_length).saturating_mul(bar_length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_either_way_is_the_limit() {
        assert!(check_change(120, 132).is_ok());
        assert!(check_change(120, 108).is_ok());
        assert!(check_change(120, 120).is_ok());
        assert!(matches!(check_change(120, 133), Err(TempoError::StepTooLarge { .. })));
        assert!(matches!(check_change(120, 107), Err(TempoError::StepTooLarge { .. })));
        assert!(check_change(5, 6).unwrap_err().to_string().contains("±10%"));
        assert_eq!(check_change(1000, 1001), Err(TempoError::OutOfRange(1001)));
        assert_eq!(check_change(1, 0), Err(TempoError::OutOfRange(0)));
        // 10% of 1 bpm rounds to nothing: 1 bpm can only stay 1 bpm.
        assert!(check_change(1, 1).is_ok());
    }

    #[test]
    fn target_is_the_next_downbeat_not_emitted() {
        assert_eq!(target_beat(At::NextDownbeat, 5, false, 4), 8);
        assert_eq!(target_beat(At::NextDownbeat, 8, false, 4), 8);
        assert_eq!(target_beat(At::NextDownbeat, 8, true, 4), 12);
        assert_eq!(target_beat(At::NextBeat, 8, false, 4), 8);
        assert_eq!(target_beat(At::NextBeat, 8, true, 4), 9);
        assert_eq!(target_beat(At::NextDownbeat, 0, false, 1), 0);
    }

    #[test]
    fn extremes_never_overflow() {
        assert_eq!(target_beat(At::NextBeat, u64::MAX, true, 4), u64::MAX);
        assert_eq!(target_beat(At::NextDownbeat, u64::MAX, true, 3), u64::MAX);
        assert_eq!(target_beat(At::NextDownbeat, u64::MAX - 1, false, u64::MAX), u64::MAX);
        assert_eq!(
            target_beat(At::NextDownbeat, 5, false, 0),
            5,
            "a bar length of 0 reads as 1"
        );
        assert!(matches!(
            check_change(u32::MAX, 1000),
            Err(TempoError::StepTooLarge { .. })
        ));
        assert_eq!(check_change(u32::MAX, u32::MAX), Err(TempoError::OutOfRange(u32::MAX)));
    }
}
