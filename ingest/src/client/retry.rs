//! When to try a claim again: capped exponential backoff with jitter.
//!
//! Retrying a claim is safe because the claim's bytes (and so its SPEC §8
//! message id) do not change between attempts: JetStream stores it once.
//! Pure: the jitter is an argument, so schedules are testable.

use std::time::Duration;

/// The retry schedule of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included); at least 1.
    pub attempts_max: u32,
    /// The delay before the second attempt (before jitter).
    pub delay_initial: Duration,
    /// Delays grow by doubling up to this.
    pub delay_max: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub elapsed_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 12,
            delay_initial: Duration::from_millis(50),
            delay_max: Duration::from_secs(2),
            elapsed_max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1 = the first), with
    /// `jitter` in `[0, 1)`: uniformly between half and all of the capped
    /// exponential delay, so a fleet that failed together does not retry together.
    /// `None` when no attempt is left or `elapsed` (since the first attempt,
    /// plus the delay) would pass `elapsed_max`.
    pub fn delay_after(&self, attempt: u32, elapsed: Duration, jitter: f64) -> Option<Duration> {
        if attempt >= self.attempts_max {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(30);
        let full = self.delay_initial.saturating_mul(1u32 << exponent).min(self.delay_max);
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = full / 2 + full.mul_f64(0.5 * jitter);
        (elapsed + delay <= self.elapsed_max).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_between_half_and_all() {
        let p = RetryPolicy {
            attempts_max: 10,
            delay_initial: Duration::from_millis(100),
            delay_max: Duration::from_millis(1000),
            elapsed_max: Duration::from_secs(3600),
        };
        let zero = Duration::ZERO;
        assert_eq!(p.delay_after(1, zero, 0.0), Some(Duration::from_millis(50)));
        assert_eq!(
            p.delay_after(1, zero, 0.999_999),
            Some(Duration::from_nanos(99_999_950))
        );
        assert_eq!(p.delay_after(2, zero, 0.0), Some(Duration::from_millis(100)));
        assert_eq!(p.delay_after(3, zero, 0.0), Some(Duration::from_millis(200)));
        assert_eq!(p.delay_after(5, zero, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(p.delay_after(9, zero, 0.0), Some(Duration::from_millis(500)));
        assert_eq!(p.delay_after(10, zero, 0.0), None, "no eleventh attempt");
    }

    #[test]
    fn stops_at_the_elapsed_limit() {
        let p = RetryPolicy {
            elapsed_max: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert!(p.delay_after(1, Duration::from_millis(900), 0.0).is_some());
        assert_eq!(p.delay_after(1, Duration::from_millis(990), 0.0), None);
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let p = RetryPolicy {
            attempts_max: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(p.delay_after(1, Duration::ZERO, 0.5), None);
    }
}
