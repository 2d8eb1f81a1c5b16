//! The pulse's time: the monotonic clock, anchored to the wall clock once.
//!
//! The schedule is absolute time (µs since the Unix epoch), but reading the
//! wall clock for it would let a step of the wall clock (an operator, a bad NTP
//! source) move every due time: a step back would stall the leader for as long
//! as the step, a step forward would make it skip beats or spin. So a node reads
//! the wall clock once, at start, and from then on adds the monotonic clock's
//! elapsed time (`Instant`, which NTP slews but never steps). The due times,
//! `deadline_at` and the HLC's physical part all come from this one timescale,
//! so they stay consistent with each other.
//!
//! A node's timescale only ever moves forward to meet the wall clock, and only
//! between leading stints ([`PulseClock::catch_up_with_wall`]): a wall clock
//! corrected forward (the node had been slow) is adopted before the node next
//! leads, a wall clock stepped back is ignored.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Differences to the wall clock below this are left alone (µs).
const CATCH_UP_MIN_US: i64 = 20_000;

/// Microseconds since the Unix epoch by the wall clock (before 1970: 0).
pub fn wall_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Wall-clock time as the monotonic clock keeps it; shared by the emitter and the HTTP handlers.
#[derive(Debug)]
pub struct PulseClock {
    start: Instant,
    /// The wall clock at `start`, plus every forward catch-up since.
    start_unix_us: AtomicI64,
}

impl Default for PulseClock {
    fn default() -> Self {
        PulseClock::new()
    }
}

impl PulseClock {
    /// Anchored to the wall clock now.
    pub fn new() -> PulseClock {
        PulseClock {
            start: Instant::now(),
            start_unix_us: AtomicI64::new(wall_unix_us()),
        }
    }

    /// Now, in µs since the Unix epoch, on this node's timescale.
    pub fn now_unix_us(&self) -> i64 {
        self.at(Instant::now())
    }

    fn at(&self, instant: Instant) -> i64 {
        let elapsed_us = i64::try_from(instant.saturating_duration_since(self.start).as_micros()).unwrap_or(i64::MAX);
        self.start_unix_us.load(Ordering::Relaxed).saturating_add(elapsed_us)
    }

    /// Moves the timescale forward to the wall clock when the wall clock is ahead
    /// by more than a little; never back. Returns the step taken (µs, 0 if none).
    pub fn catch_up_with_wall(&self) -> i64 {
        self.catch_up_to(wall_unix_us(), Instant::now())
    }

    fn catch_up_to(&self, wall_us: i64, instant: Instant) -> i64 {
        let ahead_us = wall_us.saturating_sub(self.at(instant));
        if ahead_us < CATCH_UP_MIN_US {
            return 0;
        }
        self.start_unix_us.fetch_add(ahead_us, Ordering::Relaxed);
        ahead_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_timescale_follows_the_monotonic_clock_and_only_catches_up_forward() {
        let clock = PulseClock::new();
        let t0 = clock.start;
        let base = clock.at(t0);
        assert_eq!(clock.at(t0 + Duration::from_millis(1500)), base + 1_500_000);
        // The wall clock stepped back an hour: ignored.
        assert_eq!(clock.catch_up_to(base - 3_600_000_000, t0), 0);
        assert_eq!(clock.at(t0), base);
        // A few milliseconds of difference: left alone.
        assert_eq!(clock.catch_up_to(base + 5_000, t0), 0);
        // The wall clock is two seconds ahead: adopted, once.
        assert_eq!(clock.catch_up_to(base + 2_000_000, t0), 2_000_000);
        assert_eq!(clock.at(t0), base + 2_000_000);
        assert_eq!(clock.catch_up_to(base + 2_000_000, t0), 0);
        // A time before `start` (never asked for) reads as `start`.
        assert_eq!(clock.at(t0 - Duration::from_millis(1)), base + 2_000_000);
    }
}
