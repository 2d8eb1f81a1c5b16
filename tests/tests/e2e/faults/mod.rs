//! The fault suite (issue 22): faults injected into the whole system on real
//! processes, each fault's figures recorded as a [`backbeat_tests::FaultRecord`]
//! for the table `deploy/faults.sh` prints.
//!
//! - `nats_cluster`: kill -9 of the node leading `BACKBEAT_EVENTS`, then of
//!   the one leading `BACKBEAT_BARS`, of a 3-node cluster with R3 streams,
//!   under claim load through the gateway and a raw JetStream publisher
//!   beside it (the reference for unavailability).
//! - `partition`: the pulse leader cut off from its peers (network
//!   namespaces, its raft link off the bridge) while it keeps NATS, and healed.
//! - `processors`: processors sharded by cluster (`--cluster`, `--name`), a
//!   standby waiting on the lease, kill -9 of one at seeded random points.
//! - `soak`: 10,000 simulated agents through the whole stack, memory and lag
//!   watched; 20 s in CI, `BACKBEAT_SOAK_SECS` long behind the flag.
//!
//! They live in the `e2e` binary (selected with the `faults::` filter) rather
//! than a test target of their own: they start the system with the same
//! helpers (`stack.rs`) and the workspace links one test binary less, which
//! counts on the 2-core CI machine. Each runs its CI mode in every
//! `cargo test --workspace`; `BACKBEAT_FAULTS_LONG=1` (set by
//! `deploy/faults.sh --long`) selects the long mode: more injections, longer
//! load.

mod nats_cluster;
mod partition;
mod processors;
mod soak;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The environment variable selecting the long mode ("1").
pub const LONG_ENV: &str = "BACKBEAT_FAULTS_LONG";

/// Whether the long mode is asked for.
pub fn long_mode() -> bool {
    std::env::var(LONG_ENV).is_ok_and(|v| v == "1")
}

/// The times of the successful attempts of a load, to find the longest
/// stretch without one (the longest unavailability as a client sees it).
#[derive(Debug, Clone, Default)]
pub struct Successes(Arc<Mutex<Vec<Instant>>>);

impl Successes {
    pub fn record(&self, at: Instant) {
        self.0.lock().expect("not poisoned").push(at);
    }

    /// How many so far.
    pub fn count(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }

    /// The longest time within `[from, to]` with no success: between two
    /// successes, or from `from` to the first, or from the last to `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .0
            .lock()
            .expect("not poisoned")
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times.sort_unstable();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for t in times.into_iter().chain(std::iter::once(to)) {
            longest = longest.max(t - previous);
            previous = t;
        }
        longest
    }
}

/// The sequence of the last beat or claim of `clusters` in `BACKBEAT_EVENTS`
/// (0 when none): where a processor folding them is done.
pub async fn last_event_seq(js: &async_nats::jetstream::Context, clusters: &[&str]) -> anyhow::Result<u64> {
    let events = js.get_stream(backbeat_schemas::names::EVENTS_STREAM).await?;
    let mut last = 0;
    for cluster in clusters {
        for kind in ["beat", "claim"] {
            if let Ok(message) = events
                .get_last_raw_message_by_subject(&format!("backbeat.{cluster}.{kind}"))
                .await
            {
                last = last.max(message.sequence);
            }
        }
    }
    Ok(last)
}

/// An open-loop load: `attempt(n)` started every `interval` (n = 0, 1, …),
/// each as its own task so a slow answer does not slow the rate, until
/// [`SteadyLoad::stop`]. At most `in_flight_max` at once; a tick with none
/// free is skipped (and counted).
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    driver: tokio::task::JoinHandle<u64>,
}

impl SteadyLoad {
    pub fn start<F, Fut>(interval: Duration, in_flight_max: usize, attempt: F) -> SteadyLoad
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let driver = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(in_flight_max));
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tasks = tokio::task::JoinSet::new();
            let mut skipped = 0;
            let mut n = 0;
            while !stopped.load(Ordering::Relaxed) {
                ticks.tick().await;
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    skipped += 1;
                    continue;
                };
                let run = attempt(n);
                n += 1;
                tasks.spawn(async move {
                    run.await;
                    drop(slot);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            skipped
        });
        SteadyLoad { stop, driver }
    }

    /// Stops starting attempts and waits for those in flight: the ticks skipped.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.driver.await?)
    }
}
