//! The agent simulator: a seeded fleet ([`fleet::Fleet`]) whose claims follow
//! the cluster's beats and go to the gateway at a steady total rate, through
//! the agent client library (NATS intake or HTTP batches).
//!
//! One scheduler task stamps claims (the fleet is plain data: 10,000 agents
//! are 10,000 small structs, not 10,000 tasks) and hands them to at most
//! `in_flight_max` concurrent sends, so a slow gateway slows the simulator
//! instead of piling up requests.

pub mod fleet;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{BeatFollower, ClaimSender, ClientError, Clock};
pub use fleet::Fleet;

/// The simulator's knobs, validated by [`SimConfig::validate`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub agents: usize,
    pub seed: u64,
    /// Claims per second, for the whole fleet.
    pub rate: f64,
    /// Stop after this many claims.
    pub claims_max: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Sends (NATS requests or HTTP batches) in flight at most.
    pub in_flight_max: usize,
    /// Claims per HTTP batch at most (NATS sends one request per claim).
    pub batch_lines_max: usize,
}

impl SimConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.agents >= 1, "--agents must be at least 1");
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate must be a positive number of claims per second"
        );
        anyhow::ensure!(self.in_flight_max >= 1, "--in-flight-max must be at least 1");
        anyhow::ensure!(self.batch_lines_max >= 1, "--batch-lines-max must be at least 1");
        Ok(())
    }
}

/// What happened to the claims sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    pub sent: u64,
    /// Stored by JetStream (as new).
    pub accepted: u64,
    /// Answered as already stored (a retry whose first answer was lost).
    pub duplicate: u64,
    /// Refused by the gateway, by reason: a simulator bug, the claims should be valid.
    pub rejected: BTreeMap<String, u64>,
    /// Not acknowledged in any attempt.
    pub gave_up: u64,
    /// Attempts that got no acknowledgement and were tried again (an outage
    /// or an overloaded gateway shows here first).
    pub retries: u64,
    /// Claims stamped while the beat timer was free-running (no recent frame).
    pub free_running: u64,
    pub elapsed_ms: u64,
}

impl SimStats {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn record(&mut self, result: &Result<crate::client::Accepted, ClientError>) {
        match result {
            Ok(a) if a.duplicate => self.duplicate += 1,
            Ok(_) => self.accepted += 1,
            Err(ClientError::Rejected { reason, .. }) => *self.rejected.entry(reason.clone()).or_insert(0) += 1,
            Err(_) => self.gave_up += 1,
        }
    }
}

/// Runs the fleet until `claims_max`, `duration` or `stop`, then waits for the
/// answers of the claims sent. The follower must already have seen a beat.
pub async fn run(
    config: &SimConfig,
    follower: &BeatFollower,
    sender: Arc<ClaimSender>,
    clock: Arc<dyn Clock>,
    http_batches: bool,
    stop: impl Future<Output = ()>,
) -> SimStats {
    let mut fleet = Fleet::new(config.agents, config.seed);
    let stats = Arc::new(Mutex::new(SimStats::default()));
    let slots = Arc::new(Semaphore::new(config.in_flight_max));
    let started = Instant::now();
    // Ticks of 10 ms, or one claim per tick (at most a second) at low rates.
    let tick_len = Duration::from_secs_f64((1.0 / config.rate).clamp(0.01, 1.0));
    let mut tick = tokio::time::interval(tick_len);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut issued = 0u64;
    let mut last_log = Instant::now();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed();
        if config.duration.is_some_and(|d| elapsed >= d) || config.claims_max.is_some_and(|m| issued >= m) {
            break;
        }
        let target = (config.rate * elapsed.as_secs_f64()) as u64;
        // A simulator that fell behind (slow gateway) catches up in steps of
        // a tenth of a second's claims, not in one burst.
        let mut due = target
            .saturating_sub(issued)
            .min(((config.rate / 10.0).ceil() as u64).max(1));
        if let Some(max) = config.claims_max {
            due = due.min(max - issued);
        }
        if due == 0 {
            continue;
        }
        let Some(beat) = follower.now() else { continue };
        let wall_ms = clock.wall_ms();
        let claims: Vec<Bytes> = (0..due).map(|_| fleet.next_claim(&beat, wall_ms)).collect();
        issued += due;
        {
            let mut s = stats.lock().expect("stats lock");
            s.sent += due;
            if beat.free_running {
                s.free_running += due;
            }
        }
        let chunk = if http_batches { config.batch_lines_max } else { 1 };
        for part in claims.chunks(chunk) {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let sender = sender.clone();
            let stats = stats.clone();
            let part = part.to_vec();
            tokio::spawn(async move {
                let results = if part.len() == 1 {
                    vec![sender.send(part[0].clone()).await]
                } else {
                    sender.send_batch(&part).await
                };
                let mut s = stats.lock().expect("stats lock");
                for result in &results {
                    if let Err(e @ ClientError::Rejected { .. }) = result {
                        tracing::error!(error = %e, "a simulated claim was refused");
                    }
                    s.record(result);
                }
                drop(slot);
            });
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            let s = stats.lock().expect("stats lock").clone();
            tracing::info!(
                beat = beat.beat_index,
                sent = s.sent,
                accepted = s.accepted,
                duplicate = s.duplicate,
                rejected = s.rejected_total(),
                gave_up = s.gave_up,
                retries = sender.retries(),
                "agent-sim progress"
            );
        }
    }
    // Every send holds a slot until its answer: taking them all waits for the answers.
    let _all = slots
        .acquire_many(u32::try_from(config.in_flight_max).unwrap_or(u32::MAX))
        .await;
    let mut s = stats.lock().expect("stats lock").clone();
    s.elapsed_ms = started.elapsed().as_millis() as u64;
    s.retries = sender.retries();
    s
}
