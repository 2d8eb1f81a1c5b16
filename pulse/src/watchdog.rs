//! The watchdog: a leader whose emitter died, or has not published for longer
//! than an election timeout, gives up leadership so that another node takes over.
//!
//! openraft 0.9.25 has no leadership transfer, so giving up is done the way a
//! crash would do it, without the crash: the node **isolates itself from raft**
//! ([`RaftIsolation`]: its outgoing RPCs fail and incoming ones are refused) for
//! two election timeouts. Its lease lapses at once (no acks), so it stops
//! emitting; the followers hear no heartbeat and elect one of themselves; when
//! the isolation ends the old leader meets the higher term and becomes a
//! follower. A dead emitter thread is worse: the node cannot ever emit again,
//! so it stops (non-zero exit; leader or not) for its supervisor to restart it.
//!
//! It steps down only when a peer reported itself ready (connected to NATS)
//! within an election timeout: when NATS is down for everyone, handing the
//! leadership around would only churn elections, and the leader keeps the
//! schedule instead (it counts the beats it cannot publish).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the emitter tells the watchdog; written by the emitter thread, read by the watchdog task.
#[derive(Debug)]
pub struct EmitterProgress {
    start: Instant,
    /// When the emitter's current run of failures began (ms since `start`, plus
    /// one; 0: it is not failing). A run ends with a stored beat or with the
    /// node no longer leading. A beat not yet due is not a failure, whatever the tempo.
    failing_since_ms: AtomicU64,
    /// The emitter thread has ended.
    finished: AtomicBool,
}

impl Default for EmitterProgress {
    fn default() -> Self {
        EmitterProgress::new()
    }
}

impl EmitterProgress {
    pub fn new() -> EmitterProgress {
        EmitterProgress {
            start: Instant::now(),
            failing_since_ms: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A beat could not be published (or the stream not read, or raft not written).
    pub fn failed(&self) {
        let now = self.now_ms().saturating_add(1);
        let _ = self
            .failing_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A beat was published and stored.
    pub fn published(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// The node does not lead (with a lease): no beat is its to publish.
    pub fn not_leading(&self) {
        self.published();
    }

    /// The emitter thread ended (or never started).
    pub fn finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.now_ms().saturating_add(1);
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        Snapshot {
            failing_for: (since != 0).then(|| Duration::from_millis(now.saturating_sub(since))),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    failing_for: Option<Duration>,
    finished: bool,
}

/// Why the watchdog acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The emitter works, or this node does not lead.
    Fine,
    /// The emitter has not published for longer than an election timeout; another node is ready.
    StepDown,
    /// The emitter thread is gone: step down (if leading) and stop.
    EmitterDead,
}

/// The rule, pure: `leader_for` is how long raft has called this node leader
/// (None: it does not lead), `peer_ready` whether a peer could take over.
fn verdict(progress: Snapshot, leader_for: Option<Duration>, peer_ready: bool, election_timeout: Duration) -> Verdict {
    // Without its emitter a node can never do its job, leader or not.
    if progress.finished {
        return Verdict::EmitterDead;
    }
    let Some(leader_for) = leader_for else {
        return Verdict::Fine;
    };
    let failing_long = progress.failing_for.is_some_and(|failing| failing > election_timeout);
    // A fresh leader gets a whole election timeout to resync and publish.
    if leader_for > election_timeout && failing_long && peer_ready {
        return Verdict::StepDown;
    }
    Verdict::Fine
}

/// The raft transport's off switch: while set, this node neither sends nor answers raft RPCs.
#[derive(Debug)]
pub struct RaftIsolation {
    start: Instant,
    /// Isolated until this many ms after `start` (0: not isolated).
    until_ms: AtomicU64,
}

impl Default for RaftIsolation {
    fn default() -> Self {
        RaftIsolation {
            start: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl RaftIsolation {
    /// Isolates this node for `span` from now.
    pub fn isolate_for(&self, span: Duration) {
        let until = self.start.elapsed().saturating_add(span);
        self.until_ms
            .store(u64::try_from(until.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether raft traffic is cut now.
    pub fn is_isolated(&self) -> bool {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        now_ms < self.until_ms.load(Ordering::Relaxed)
    }
}

/// What the watchdog task needs.
pub struct Watchdog {
    pub raft: crate::raft::Raft,
    pub progress: std::sync::Arc<EmitterProgress>,
    pub isolation: std::sync::Arc<RaftIsolation>,
    pub contacts: std::sync::Arc<crate::raft::contacts::Contacts>,
    pub metrics: crate::metrics::Metrics,
    pub election_timeout: Duration,
}

impl Watchdog {
    /// Checks every tenth of an election timeout; returns when the emitter is
    /// dead (after stepping down), for the node to stop.
    pub async fn run(self) {
        let mut tick = tokio::time::interval((self.election_timeout / 10).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader_since: Option<(u64, Instant)> = None;
        loop {
            tick.tick().await;
            let metrics = self.raft.metrics().borrow().clone();
            let leading = metrics.state == openraft::ServerState::Leader && !self.isolation.is_isolated();
            leader_since = match (leading, leader_since) {
                (false, _) => None,
                (true, Some((term, since))) if term == metrics.current_term => Some((term, since)),
                (true, _) => Some((metrics.current_term, Instant::now())),
            };
            let leader_for = leader_since.map(|(_, since)| since.elapsed());
            let peer_ready = self.contacts.a_peer_ready_within(self.election_timeout);
            match verdict(self.progress.snapshot(), leader_for, peer_ready, self.election_timeout) {
                Verdict::Fine => {}
                Verdict::StepDown => {
                    tracing::error!(
                        term = metrics.current_term,
                        "the emitter has not published for over an election timeout; giving up leadership"
                    );
                    self.step_down();
                    leader_since = None;
                }
                Verdict::EmitterDead => {
                    tracing::error!("the emitter thread is gone; giving up leadership and stopping");
                    if leader_for.is_some() {
                        self.step_down();
                    }
                    return;
                }
            }
        }
    }

    fn step_down(&self) {
        self.metrics.watchdog_stepdowns_total.inc();
        self.metrics.is_leader.set(0);
        self.isolation.isolate_for(self.election_timeout * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Duration = Duration::from_millis(1000);

    fn progress(failing_ms: Option<u64>, finished: bool) -> Snapshot {
        Snapshot {
            failing_for: failing_ms.map(Duration::from_millis),
            finished,
        }
    }

    #[test]
    fn a_stalled_leader_steps_down_only_when_someone_can_take_over() {
        let long = Some(Duration::from_millis(5000));
        assert_eq!(verdict(progress(None, false), long, true, E), Verdict::Fine);
        assert_eq!(verdict(progress(Some(500), false), long, true, E), Verdict::Fine);
        assert_eq!(verdict(progress(Some(1500), false), long, true, E), Verdict::StepDown);
        assert_eq!(
            verdict(progress(Some(1500), false), long, false, E),
            Verdict::Fine,
            "nobody ready: keep the schedule"
        );
        assert_eq!(
            verdict(progress(Some(1500), false), Some(Duration::from_millis(500)), true, E),
            Verdict::Fine,
            "a fresh leader gets an election timeout"
        );
        assert_eq!(
            verdict(progress(Some(1500), false), None, true, E),
            Verdict::Fine,
            "not leader"
        );
    }

    #[test]
    fn a_dead_emitter_is_dead_whoever_is_ready() {
        let short = Some(Duration::from_millis(1));
        assert_eq!(verdict(progress(None, true), short, false, E), Verdict::EmitterDead);
        assert_eq!(
            verdict(progress(Some(1500), true), None, false, E),
            Verdict::EmitterDead
        );
    }

    #[test]
    fn progress_and_isolation_track_time() {
        let p = EmitterProgress::new();
        assert_eq!(p.snapshot().failing_for, None);
        p.failed();
        std::thread::sleep(Duration::from_millis(5));
        p.failed();
        let failing = p.snapshot().failing_for.unwrap();
        assert!(
            failing >= Duration::from_millis(5),
            "a run of failures counts from its first: {failing:?}"
        );
        p.published();
        assert_eq!(p.snapshot().failing_for, None);
        assert!(!p.snapshot().finished);
        p.finished();
        assert!(p.snapshot().finished);
        let isolation = RaftIsolation::default();
        assert!(!isolation.is_isolated());
        isolation.isolate_for(Duration::from_secs(60));
        assert!(isolation.is_isolated());
        isolation.isolate_for(Duration::ZERO);
        assert!(!isolation.is_isolated());
    }
}
