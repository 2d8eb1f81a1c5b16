//! The beat loop: only a leader holding its lease emits, on the replicated
//! absolute-time grid, continuing from the stream's last beat, fenced by the
//! expected last subject sequence.
//!
//! The loop is the only place in BACKBEAT that makes time (DESIGN: "only the
//! pulse leader reads the wall clock"); it reads it through [`PulseClock`], the
//! monotonic clock anchored to the wall clock once, so a step of the wall clock
//! cannot stall or rush it. It runs on a thread of its own so that raft, HTTP
//! and fsyncs never delay a beat.
//!
//! It resumes only from beats its group published (authenticated: see
//! [`crate::publisher`]): a foreign message on the beat subject moves the fence,
//! never the next index or the HLC.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbeat_schemas::hlc::{Hlc, HlcClock, HLC_PHYSICAL_MAX};
use backbeat_schemas::message::{BeatFrame, BeatFrameType, BEAT_INDEX_MAX};
use backbeat_schemas::timestamp::format_utc_ms;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use openraft::ServerState;
use tokio::sync::watch;

use crate::clock::PulseClock;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::publisher::{BeatPublisher, LastBeat, PublishFailure, PublishTimes, SearchFrom, Tail};
use crate::raft::contacts::Contacts;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::Raft;
use crate::schedule::{interval_us, Schedule};
use crate::state::{PulseState, Request};
use crate::watchdog::EmitterProgress;

/// The last stretch before a beat is spent spinning instead of in the timer,
/// whose resolution is a millisecond and whose wake-up a busy machine delays by
/// a few more. Costs at most 5% of one core at 1000 BPM, 0.6% at 120 BPM.
const SPIN_BEFORE_DUE: Duration = Duration::from_millis(3);
/// How long a follower waits between leadership checks when nothing changes.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How often a node that does not lead reads the stream's last beat (for its status).
const FOLLOW_READ_INTERVAL: Duration = Duration::from_millis(500);
/// The longest that read may take; it is only for display.
const FOLLOW_READ_LIMIT: Duration = Duration::from_millis(200);
/// A fresh epoch's first beat is due this long after it is written, so it is
/// committed before it is due.
const EPOCH_LEAD: Duration = Duration::from_millis(50);
/// The longest a publish or a read of the last beat may take.
const NATS_OP_LIMIT_MAX: Duration = Duration::from_secs(1);
/// The longest a search for the last authenticated beat may take (it runs only
/// when foreign messages follow the group's last beat).
const SEARCH_LIMIT: Duration = Duration::from_secs(2);
/// A stored beat's HLC is merged only up to this far ahead of this node's clock:
/// even an authenticated beat must not drag the clock far into the future.
pub const HLC_AHEAD_MAX_MS: u64 = 1000;

/// Everything the loop needs.
pub struct Emitter {
    pub settings: Settings,
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    pub contacts: Arc<Contacts>,
    pub publisher: BeatPublisher,
    pub metrics: Metrics,
    pub status: Arc<crate::status::SharedStatus>,
    pub clock: Arc<PulseClock>,
    /// What the watchdog reads to tell a working emitter from a stalled one.
    pub progress: Arc<EmitterProgress>,
    pub shutdown: watch::Receiver<bool>,
}

/// Where the stream stands, as far as this node knows.
#[derive(Debug, Clone, Copy)]
struct Position {
    tail: Tail,
    /// A lowest next index from elsewhere than the group's own beats (see
    /// [`Emitter::lead`]: a group's very first start over an older stream).
    floor: u64,
}

impl Position {
    /// The lowest index not yet taken by one of the group's beats; `Err` when
    /// the index space (SPEC: at most 2^53−1) is used up.
    fn min_next(&self) -> Result<u64, String> {
        match self.tail.last_beat {
            None => Ok(self.floor),
            Some(last) if last.beat_index < BEAT_INDEX_MAX => Ok((last.beat_index + 1).max(self.floor)),
            Some(last) => Err(format!("beat {} is the last index SPEC allows", last.beat_index)),
        }
    }
    fn expected_sequence(&self) -> u64 {
        self.tail.fence_sequence
    }
}

/// `remote` with its physical time at most [`HLC_AHEAD_MAX_MS`] past `now_ms`.
fn bounded_remote(remote: Hlc, now_ms: u64) -> Hlc {
    let bound_ms = now_ms.saturating_add(HLC_AHEAD_MAX_MS);
    if remote.physical_ms <= bound_ms {
        return remote;
    }
    tracing::warn!(hlc = %remote, now_ms, "a stored beat's HLC is far ahead of this clock; merged only up to the bound");
    Hlc::new(bound_ms.min(HLC_PHYSICAL_MAX), 0, remote.node)
}

/// The beat after `beat`, within SPEC's index space.
fn after(beat: u64) -> Result<u64, String> {
    (beat < BEAT_INDEX_MAX)
        .then(|| beat + 1)
        .ok_or_else(|| format!("beat {beat} is the last index SPEC allows"))
}

/// Why a leading stint ended.
enum Stop {
    Shutdown,
    NotLeading,
}

impl Emitter {
    /// Runs until shutdown is signalled.
    pub async fn run(mut self) {
        let mut clock =
            HlcClock::new(u16::try_from(self.settings.node_id).expect("--node-id is checked to fit 16 bits"));
        let mut metrics_rx = self.raft.metrics();
        let mut last_follow_read: Option<Instant> = None;
        let mut known: Option<LastBeat> = None;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let Some(term) = self.leading_term() else {
                // Not responsible for any beat: nothing for the watchdog to hold against it.
                self.progress.not_leading();
                let step_us = self.clock.catch_up_with_wall();
                if step_us > 0 {
                    tracing::info!(step_us, "this node's timescale caught up with the wall clock");
                }
                self.metrics.is_leader.set(0);
                self.status.update(|s| {
                    s.emitting = false;
                    s.next_beat = None;
                    s.next_beat_due_unix_us = None;
                });
                if last_follow_read.is_none_or(|at| at.elapsed() >= FOLLOW_READ_INTERVAL) {
                    last_follow_read = Some(Instant::now());
                    if let Some(seen) = self.follow_stream().await {
                        known = Some(seen);
                    }
                }
                tokio::select! {
                    _ = metrics_rx.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.shutdown.changed() => {}
                }
                continue;
            };
            match self.lead(term, &mut clock, &mut known).await {
                Ok(Stop::Shutdown) => break,
                Ok(Stop::NotLeading) => tracing::info!(term, "stopped emitting: no longer leader with quorum"),
                Err(problem) => {
                    self.progress.failed();
                    self.metrics.is_leader.set(0);
                    tracing::warn!(term, %problem, "cannot emit yet");
                    self.status.update(|s| {
                        s.emitting = false;
                        s.problem = Some(problem);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.heartbeat) => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
            }
        }
        self.metrics.is_leader.set(0);
        self.status.update(|s| {
            s.emitting = false;
            s.next_beat = None;
        });
        tracing::info!("emitter stopped");
    }

    /// On a node that does not lead: notes the stream's last beat (the group's
    /// own only: a foreign last message is counted and leaves it alone) and its
    /// tempo for `/api/v1/status` and `/metrics`. Returns that beat.
    async fn follow_stream(&self) -> Option<LastBeat> {
        if !self.publisher.is_connected() {
            return None;
        }
        let state = self.state_machine.current();
        let cluster_id = state.cluster_id.as_deref().unwrap_or(&self.settings.cluster_id);
        let tail = self.publisher.peek_tail(cluster_id, FOLLOW_READ_LIMIT).await.ok()?;
        let last = tail.last_beat?;
        {
            self.status.update(|s| s.last_beat_seen = Some(last.beat_index));
            if let Some(schedule) = state.schedule() {
                // The tempo gauge follows the stream on every node, not only the leader's.
                self.metrics
                    .current_tempo_bpm
                    .set(i64::from(schedule.bpm_of(last.beat_index)));
            }
        }
        Some(last)
    }

    /// The term this node leads with a valid lease, if it does.
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            return None;
        }
        let voters: BTreeSet<u64> = metrics.membership_config.membership().voter_ids().collect();
        self.contacts
            .lease_holds(metrics.current_term, &voters, Instant::now())
            .then_some(metrics.current_term)
    }

    /// Writes through raft (this node is leader); an error is a reason not to emit.
    async fn write(&self, request: Request) -> Result<(), String> {
        request
            .check()
            .map_err(|reason| format!("not writing an out-of-range request: {reason}"))?;
        // A leader cut off from its followers would wait for the commit forever
        // (and not see a shutdown); give up after an election timeout and retry.
        let limit = self.settings.election_timeout;
        match tokio::time::timeout(limit, self.raft.client_write(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("raft write failed: {e}")),
            Err(_) => Err(format!("raft write not committed within {limit:?} (no quorum?)")),
        }
    }

    /// The replicated state, configured from this node's flags if nobody did yet.
    async fn configured_state(&self) -> Result<PulseState, String> {
        let state = self.state_machine.current();
        if state.is_configured() {
            return Ok(state);
        }
        self.write(Request::Configure {
            cluster_id: self.settings.cluster_id.clone(),
            bar_length: self.settings.bar_length,
            bpm: self.settings.bpm,
        })
        .await?;
        let state = self.state_machine.current();
        if state.cluster_id.as_deref() != Some(&self.settings.cluster_id)
            || state.bar_length != self.settings.bar_length
        {
            tracing::warn!(
                replicated_cluster = ?state.cluster_id,
                replicated_bar_length = state.bar_length,
                "the group was configured with another --cluster/--bar-length; the group's values win"
            );
        }
        Ok(state)
    }

    fn nats_limit(&self, bpm: u32) -> Duration {
        Duration::from_micros(interval_us(bpm) as u64).min(NATS_OP_LIMIT_MAX)
    }

    /// Reads the subject's tail: the fence, and the group's last beat (found past
    /// foreign messages when there are some, from `known` or from a few election
    /// timeouts back), whose HLC it merges; `Err` when NATS does not answer.
    async fn resync(
        &self,
        cluster_id: &str,
        bpm: u32,
        clock: &mut HlcClock,
        known: Option<LastBeat>,
    ) -> Result<Position, String> {
        // Far enough back to reach the previous leader's last beats: it stopped
        // at most an election timeout or two before this node took over.
        let interval = Duration::from_micros(interval_us(bpm).unsigned_abs());
        let lookback = self.settings.election_timeout * 4 + interval * 4;
        let lookback_us = i64::try_from(lookback.as_micros()).unwrap_or(i64::MAX);
        let from = SearchFrom::UnixUs(self.clock.now_unix_us().saturating_sub(lookback_us));
        let limit = self.nats_limit(bpm).max(SEARCH_LIMIT);
        let tail = self
            .publisher
            .read_tail(cluster_id, known, from, limit)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(last) = tail.last_beat {
            self.merge_hlc(clock, last);
            self.status.update(|s| s.last_beat_seen = Some(last.beat_index));
        }
        Ok(Position { tail, floor: 0 })
    }

    /// Merges a stored beat's HLC, bounded: a physical time further ahead of this
    /// node's clock than [`HLC_AHEAD_MAX_MS`] is taken as that bound, so that no
    /// stored beat (the group's own, from a node whose clock ran far ahead) can
    /// drag this clock into the future; within the bound, the usual HLC rule.
    fn merge_hlc(&self, clock: &mut HlcClock, last: LastBeat) {
        let now_ms = self.clock.now_unix_us().max(0).unsigned_abs() / 1000;
        clock.receive(bounded_remote(last.hlc, now_ms), now_ms);
    }

    /// Makes sure the grid exists and puts `min_next` within reach: a missing
    /// epoch, a gap larger than `--max-skip-beats`, or a stream ahead of the
    /// grid (clock trouble) re-anchors the grid at `min_next`.
    async fn ensure_grid(&self, min_next: u64) -> Result<Schedule, String> {
        let state = self.configured_state().await?;
        let now = self.clock.now_unix_us();
        let fits = state.schedule().is_some_and(|schedule| {
            let next = schedule.next_beat(now, min_next);
            let ahead_us = schedule.due_unix_us(min_next).saturating_sub(now);
            next.saturating_sub(min_next) <= self.settings.max_skip_beats
                && ahead_us <= 2 * interval_us(schedule.bpm_of(min_next))
        });
        if !fits {
            let unix_us = now.saturating_add(EPOCH_LEAD.as_micros() as i64);
            tracing::info!(beat = min_next, unix_us, "anchoring the beat schedule");
            self.write(Request::SetEpoch {
                beat: min_next,
                unix_us,
            })
            .await?;
        }
        self.state_machine
            .current()
            .schedule()
            .ok_or_else(|| "the schedule has no epoch after anchoring it".to_string())
    }

    /// One stint as leader of `term`.
    async fn lead(&mut self, term: u64, clock: &mut HlcClock, known: &mut Option<LastBeat>) -> Result<Stop, String> {
        let state = self.configured_state().await?;
        let cluster_id = state
            .cluster_id
            .clone()
            .unwrap_or_else(|| self.settings.cluster_id.clone());
        let mut position = self.resync(&cluster_id, state.tempo_bpm, clock, *known).await?;
        if state.epoch.is_none() && position.tail.last_beat.is_none() && position.tail.fence_sequence > 0 {
            // The group's very first stint, over a stream whose beats it cannot
            // authenticate (an older pulse's, or a group with another secret):
            // continue after the last one if it is a well-formed beat of this
            // cluster and bar, rather than start again at 0 below it. Once the
            // grid exists, only the group's own beats and the grid count.
            let limit = self.nats_limit(state.tempo_bpm);
            if let Some(index) = self
                .publisher
                .last_well_formed_beat(&cluster_id, state.bar_length, limit)
                .await
            {
                tracing::warn!(
                    index,
                    "first start over beats this group did not sign: continuing after the last well-formed one"
                );
                position.floor = after(index)?;
            }
        }
        let schedule = self.ensure_grid(position.min_next()?).await?;
        let mut next = schedule.next_beat(self.clock.now_unix_us(), position.min_next()?);
        let mut need_resync = false;
        // The due time the last published frame gave for the beat after it (its
        // `deadline_at`), kept so a late-committed tempo change cannot break it.
        let mut promised: Option<(u64, i64)> = None;
        tracing::info!(term, next, tail = ?position.tail, "leading: emitting beats");
        self.metrics.is_leader.set(1);
        self.status.update(|s| {
            s.emitting = true;
            s.problem = None;
        });

        loop {
            if let Some((beat, promised_due)) = promised.take() {
                self.keep_promise(beat, promised_due, next).await?;
            }
            let due = self.current_schedule()?.due_unix_us(next);
            self.status.update(|s| {
                s.next_beat = Some(next);
                s.next_beat_due_unix_us = Some(due);
            });
            if self.sleep_until(due).await {
                return Ok(Stop::Shutdown);
            }
            if self.leading_term() != Some(term) {
                return Ok(Stop::NotLeading);
            }
            // A tempo change aimed at this beat may be committing: hold the beat until
            // the write is decided (bounded by the write's own limit), then fix its tempo.
            self.wait_for_tempo_gate(next).await;
            // Read again after the sleep: a tempo change committed meanwhile applies at
            // `next` at the earliest (the tempo handler aims past the planned beat), so
            // it leaves `due` alone but may change this beat's tempo and the next due
            // time. Should one have been committed too late, re-anchor at `due`.
            self.keep_promise(next, due, next).await?;
            let state = self.state_machine.current();
            let schedule = self.current_schedule()?;
            let bpm = schedule.bpm_of(next);
            if !self.publisher.is_connected() {
                // A publish now would sit in the client's buffer; the schedule goes on.
                self.unpublished(next, "NATS disconnected");
                need_resync = true;
                next = after(next)?;
                continue;
            }
            if need_resync {
                match self
                    .resync(&cluster_id, bpm, clock, position.tail.last_beat.or(*known))
                    .await
                {
                    Ok(fresh) => {
                        need_resync = false;
                        position = fresh;
                        *known = position.tail.last_beat.or(*known);
                        let min_next = position.min_next()?;
                        let resumed = schedule.next_beat(self.clock.now_unix_us(), min_next);
                        if resumed != next {
                            tracing::info!(planned = next, resumed, "resynchronised with the stream");
                            if resumed.saturating_sub(min_next) > self.settings.max_skip_beats {
                                // A long outage: re-anchor rather than jump.
                                self.ensure_grid(min_next).await?;
                                next = self
                                    .state_machine
                                    .current()
                                    .schedule()
                                    .map_or(resumed, |s| s.next_beat(self.clock.now_unix_us(), min_next));
                            } else {
                                next = resumed;
                            }
                            continue;
                        }
                    }
                    Err(problem) => {
                        self.unpublished(next, &problem);
                        next = after(next)?;
                        continue;
                    }
                }
            }
            let frame = self.frame(&cluster_id, state.bar_length, &schedule, next, clock);
            let published_at = self.clock.now_unix_us();
            let jitter_us = (published_at - due).max(0);
            match self
                .publisher
                .publish(
                    &frame,
                    position.expected_sequence(),
                    PublishTimes {
                        due_us: due,
                        published_us: published_at,
                    },
                    self.nats_limit(bpm),
                )
                .await
            {
                Ok(sequence) => {
                    self.progress.published();
                    promised = Some((after(next)?, schedule.due_unix_us(after(next)?)));
                    self.metrics.jitter_seconds.observe(jitter_us as f64 / 1e6);
                    self.metrics.beats_total.inc();
                    self.metrics.current_tempo_bpm.set(i64::from(bpm));
                    let published = LastBeat {
                        beat_index: next,
                        sequence,
                        hlc: frame.hlc,
                    };
                    position.tail = Tail {
                        fence_sequence: sequence,
                        last_beat: Some(published),
                    };
                    *known = Some(published);
                    self.status.update(|s| {
                        s.last_beat_emitted = Some(next);
                        s.last_beat_seen = Some(next);
                        s.problem = None;
                    });
                    next = after(next)?;
                }
                Err(PublishFailure::Duplicate { beat_index, sequence }) => {
                    // The index is taken (by another leader, this node's own earlier
                    // attempt, or a foreign message carrying its id): skip it.
                    self.metrics.publish_failures_total.inc();
                    tracing::warn!(beat = beat_index, sequence, "beat index already stored; skipping it");
                    need_resync = true;
                    next = after(next)?;
                }
                Err(PublishFailure::Fenced(reason)) => {
                    self.progress.failed();
                    // Someone else appended: re-read at once and continue after it,
                    // if raft still says this node leads.
                    self.metrics.publish_failures_total.inc();
                    tracing::warn!(beat = next, %reason, "beat refused by the stream fence; re-reading the stream");
                    need_resync = true;
                }
                Err(PublishFailure::Unavailable(reason)) => {
                    self.unpublished(next, &reason);
                    self.metrics.publish_failures_total.inc();
                    need_resync = true;
                    next = after(next)?;
                }
            }
        }
    }

    /// A tempo change is aimed past the next beat with a commit margin; if its
    /// commit still arrived after the beat it was aimed at was emitted, the grid
    /// would move under the `deadline_at` already published. Then re-anchor the
    /// grid at that promise: the change applies from `beat` on instead.
    /// Waits while a tempo change aimed at `beat` or earlier is being committed,
    /// then marks `beat` as fixed so that no later change can aim at it. Gives
    /// up after one election timeout (the tempo handler's own write limit).
    async fn wait_for_tempo_gate(&self, beat: u64) {
        let started = std::time::Instant::now();
        loop {
            let held = self.status.update_with(|s| match s.tempo_gate {
                Some(gate) if gate <= beat && started.elapsed() < self.settings.election_timeout => true,
                _ => {
                    s.locked_beat = Some(beat);
                    false
                }
            });
            if !held {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    async fn keep_promise(&self, beat: u64, promised_due_us: i64, next: u64) -> Result<(), String> {
        if beat != next || self.current_schedule()?.due_unix_us(beat) == promised_due_us {
            return Ok(());
        }
        tracing::warn!(
            beat,
            "a tempo change was committed after its beat; it applies from this beat"
        );
        self.write(Request::SetEpoch {
            beat,
            unix_us: promised_due_us,
        })
        .await
    }

    fn current_schedule(&self) -> Result<Schedule, String> {
        self.state_machine
            .current()
            .schedule()
            .ok_or_else(|| "the schedule lost its epoch".to_string())
    }

    fn unpublished(&self, beat: u64, reason: &str) {
        self.progress.failed();
        self.metrics.beats_unpublished_total.inc();
        tracing::warn!(beat, reason, "beat not published");
        self.status
            .update(|s| s.problem = Some(format!("beat {beat} not published: {reason}")));
    }

    /// The frame of `beat` (SPEC §2, §4); `deadline_at` is when the next beat is due.
    fn frame(
        &self,
        cluster_id: &str,
        bar_length: u64,
        schedule: &Schedule,
        beat: u64,
        clock: &mut HlcClock,
    ) -> BeatFrame {
        let next_due_ms = schedule.due_unix_us(beat.saturating_add(1)).div_euclid(1000);
        BeatFrame {
            kind: BeatFrameType,
            cluster_id: cluster_id.to_string(),
            beat_index: beat,
            downbeat: is_downbeat(beat, bar_length),
            phase: phase_of(beat, bar_length),
            hlc: clock.send(self.clock.now_unix_us().max(0).unsigned_abs() / 1000),
            deadline_at: format_utc_ms(next_due_ms),
            tempo_bpm: schedule.bpm_of(beat),
            window_id: window_id(cluster_id, bar_length, window_of(beat, bar_length)),
        }
    }

    /// Sleeps until this node's clock reads `due_unix_us`: the timer for most of
    /// the way, a spin for the last stretch. Returns true when shutdown was signalled.
    async fn sleep_until(&mut self, due_unix_us: i64) -> bool {
        let remaining_us = due_unix_us.saturating_sub(self.clock.now_unix_us());
        let spin_us = SPIN_BEFORE_DUE.as_micros() as i64;
        if remaining_us > spin_us {
            let wake = tokio::time::Instant::now() + Duration::from_micros((remaining_us - spin_us).unsigned_abs());
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.shutdown.changed() => return true,
            }
        }
        while self.clock.now_unix_us() < due_unix_us {
            std::hint::spin_loop();
        }
        *self.shutdown.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_hlc_is_merged_only_up_to_the_bound() {
        let now_ms = 1_700_000_000_000;
        let near = Hlc::new(now_ms + HLC_AHEAD_MAX_MS, 7, 2);
        assert_eq!(bounded_remote(near, now_ms), near);
        let far = Hlc::new(0xffff_ffff_ffff, 0xffff, 0xffff);
        let mut clock = HlcClock::new(1);
        let merged = clock.receive(bounded_remote(far, now_ms), now_ms);
        assert_eq!(merged.physical_ms, now_ms + HLC_AHEAD_MAX_MS);
        assert!(merged.logical <= 1, "{merged}");
        // And at the very end of the HLC's range, still no overflow.
        let _ = bounded_remote(far, u64::MAX);
        assert_eq!(after(BEAT_INDEX_MAX - 1), Ok(BEAT_INDEX_MAX));
        assert!(after(BEAT_INDEX_MAX).is_err());
        assert!(after(u64::MAX).is_err());
    }
}
