//! The beat loop: only a leader holding its lease emits, on the replicated
//! absolute-time grid, continuing from the stream's last beat, fenced by the
//! expected last subject sequence.
//!
//! The loop is the only place in BACKBEAT that reads the wall clock to make
//! time (DESIGN: "only the pulse leader reads the wall clock"). It runs on a
//! thread of its own so that raft, HTTP and fsyncs never delay a beat.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbeat_schemas::hlc::HlcClock;
use backbeat_schemas::message::{BeatFrame, BeatFrameType};
use backbeat_schemas::timestamp::format_utc_ms;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use openraft::ServerState;
use tokio::sync::watch;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::publisher::{BeatPublisher, LastBeat, PublishFailure, PublishTimes};
use crate::raft::contacts::Contacts;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::Raft;
use crate::schedule::{interval_us, Schedule};
use crate::state::{PulseState, Request};

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

/// Microseconds since the Unix epoch, from the wall clock.
pub fn now_unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Everything the loop needs.
pub struct Emitter {
    pub settings: Settings,
    pub raft: Raft,
    pub state_machine: StateMachineStore,
    pub contacts: Arc<Contacts>,
    pub publisher: BeatPublisher,
    pub metrics: Metrics,
    pub status: Arc<crate::status::SharedStatus>,
    pub shutdown: watch::Receiver<bool>,
}

/// Where the stream stands, as far as this node knows.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// The stream's last beat; None when the subject holds no beat.
    last: Option<LastBeat>,
}

impl Position {
    fn min_next(&self) -> u64 {
        self.last.map_or(0, |l| l.beat_index + 1)
    }
    fn expected_sequence(&self) -> u64 {
        self.last.map_or(0, |l| l.sequence)
    }
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
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let Some(term) = self.leading_term() else {
                self.metrics.is_leader.set(0);
                self.status.update(|s| {
                    s.emitting = false;
                    s.next_beat = None;
                    s.next_beat_due_unix_us = None;
                });
                if last_follow_read.is_none_or(|at| at.elapsed() >= FOLLOW_READ_INTERVAL) {
                    last_follow_read = Some(Instant::now());
                    self.follow_stream().await;
                }
                tokio::select! {
                    _ = metrics_rx.changed() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = self.shutdown.changed() => {}
                }
                continue;
            };
            match self.lead(term, &mut clock).await {
                Ok(Stop::Shutdown) => break,
                Ok(Stop::NotLeading) => tracing::info!(term, "stopped emitting: no longer leader with quorum"),
                Err(problem) => {
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

    /// On a node that does not lead: notes the stream's last beat and its tempo for
    /// `/api/v1/status` and `/metrics`.
    async fn follow_stream(&self) {
        if !self.publisher.is_connected() {
            return;
        }
        let state = self.state_machine.current();
        let cluster_id = state.cluster_id.as_deref().unwrap_or(&self.settings.cluster_id);
        if let Ok(Some(last)) = self.publisher.last_beat(cluster_id, FOLLOW_READ_LIMIT).await {
            self.status.update(|s| s.last_beat_seen = Some(last.beat_index));
            if let Some(schedule) = state.schedule() {
                // The tempo gauge follows the stream on every node, not only the leader's.
                self.metrics
                    .current_tempo_bpm
                    .set(i64::from(schedule.bpm_of(last.beat_index)));
            }
        }
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

    /// Reads the stream's last beat and merges its HLC; `Err` when NATS does not answer.
    async fn resync(&self, cluster_id: &str, bpm: u32, clock: &mut HlcClock) -> Result<Position, String> {
        let last = self
            .publisher
            .last_beat(cluster_id, self.nats_limit(bpm))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(last) = last {
            clock.receive(last.hlc, (now_unix_us() / 1000) as u64);
            self.status.update(|s| s.last_beat_seen = Some(last.beat_index));
        }
        Ok(Position { last })
    }

    /// Makes sure the grid exists and puts `min_next` within reach: a missing
    /// epoch, a gap larger than `--max-skip-beats`, or a stream ahead of the
    /// grid (clock trouble) re-anchors the grid at `min_next`.
    async fn ensure_grid(&self, min_next: u64) -> Result<Schedule, String> {
        let state = self.configured_state().await?;
        let now = now_unix_us();
        let fits = state.schedule().is_some_and(|schedule| {
            let next = schedule.next_beat(now, min_next);
            let ahead_us = schedule.due_unix_us(min_next) - now;
            next - min_next <= self.settings.max_skip_beats && ahead_us <= 2 * interval_us(schedule.bpm_of(min_next))
        });
        if !fits {
            let unix_us = now + EPOCH_LEAD.as_micros() as i64;
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
    async fn lead(&mut self, term: u64, clock: &mut HlcClock) -> Result<Stop, String> {
        let state = self.configured_state().await?;
        let cluster_id = state
            .cluster_id
            .clone()
            .unwrap_or_else(|| self.settings.cluster_id.clone());
        let mut position = self.resync(&cluster_id, state.tempo_bpm, clock).await?;
        let schedule = self.ensure_grid(position.min_next()).await?;
        let mut next = schedule.next_beat(now_unix_us(), position.min_next());
        let mut need_resync = false;
        // The due time the last published frame gave for the beat after it (its
        // `deadline_at`), kept so a late-committed tempo change cannot break it.
        let mut promised: Option<(u64, i64)> = None;
        tracing::info!(term, next, last = ?position.last, "leading: emitting beats");
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
                next += 1;
                continue;
            }
            if need_resync {
                match self.resync(&cluster_id, bpm, clock).await {
                    Ok(fresh) => {
                        need_resync = false;
                        position = fresh;
                        let resumed = schedule.next_beat(now_unix_us(), position.min_next());
                        if resumed != next {
                            tracing::info!(planned = next, resumed, "resynchronised with the stream");
                            if resumed - position.min_next() > self.settings.max_skip_beats {
                                // A long outage: re-anchor rather than jump.
                                self.ensure_grid(position.min_next()).await?;
                                next = self
                                    .state_machine
                                    .current()
                                    .schedule()
                                    .map_or(resumed, |s| s.next_beat(now_unix_us(), position.min_next()));
                            } else {
                                next = resumed;
                            }
                            continue;
                        }
                    }
                    Err(problem) => {
                        self.unpublished(next, &problem);
                        next += 1;
                        continue;
                    }
                }
            }
            let frame = self.frame(&cluster_id, state.bar_length, &schedule, next, clock);
            let published_at = now_unix_us();
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
                    promised = Some((next + 1, schedule.due_unix_us(next + 1)));
                    self.metrics.jitter_seconds.observe(jitter_us as f64 / 1e6);
                    self.metrics.beats_total.inc();
                    self.metrics.current_tempo_bpm.set(i64::from(bpm));
                    position.last = Some(LastBeat {
                        beat_index: next,
                        sequence,
                        hlc: frame.hlc,
                    });
                    self.status.update(|s| {
                        s.last_beat_emitted = Some(next);
                        s.last_beat_seen = Some(next);
                        s.problem = None;
                    });
                    next += 1;
                }
                Err(PublishFailure::Fenced(reason)) => {
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
                    next += 1;
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
        let next_due_ms = schedule.due_unix_us(beat + 1).div_euclid(1000);
        BeatFrame {
            kind: BeatFrameType,
            cluster_id: cluster_id.to_string(),
            beat_index: beat,
            downbeat: is_downbeat(beat, bar_length),
            phase: phase_of(beat, bar_length),
            hlc: clock.send((now_unix_us() / 1000) as u64),
            deadline_at: format_utc_ms(next_due_ms),
            tempo_bpm: schedule.bpm_of(beat),
            window_id: window_id(cluster_id, bar_length, window_of(beat, bar_length)),
        }
    }

    /// Sleeps until the wall clock reads `due_unix_us`: the timer for most of the
    /// way, a spin for the last stretch. Returns true when shutdown was signalled.
    async fn sleep_until(&mut self, due_unix_us: i64) -> bool {
        let remaining_us = due_unix_us - now_unix_us();
        let spin_us = SPIN_BEFORE_DUE.as_micros() as i64;
        if remaining_us > spin_us {
            let wake = tokio::time::Instant::now() + Duration::from_micros((remaining_us - spin_us) as u64);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.shutdown.changed() => return true,
            }
        }
        while now_unix_us() < due_unix_us {
            std::hint::spin_loop();
        }
        *self.shutdown.borrow()
    }
}
