//! The clocks an agent reads, behind a trait so the beat timer and the HLC can
//! be driven by a simulated clock in tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time (for the beat timer) and wall time (for the HLC).
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time since an arbitrary origin fixed for the clock's life.
    fn monotonic(&self) -> Duration;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
}

/// The machine's clocks.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to: both readings advance together.
#[derive(Debug, Default)]
pub struct ManualClock {
    monotonic_ns: AtomicU64,
    wall_origin_ms: u64,
}

impl ManualClock {
    /// Starts at monotonic 0 and wall time `wall_origin_ms`.
    pub fn new(wall_origin_ms: u64) -> Self {
        ManualClock {
            monotonic_ns: AtomicU64::new(0),
            wall_origin_ms,
        }
    }

    pub fn advance(&self, by: Duration) {
        self.monotonic_ns.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, monotonic: Duration) {
        self.monotonic_ns.store(monotonic.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.monotonic_ns.load(Ordering::SeqCst))
    }

    fn wall_ms(&self) -> u64 {
        self.wall_origin_ms + self.monotonic().as_millis() as u64
    }
}
