//! Following a cluster's beats: one subscription to `backbeat.{cluster}.beat`
//! feeding a [`BeatTimer`], shared by every agent of a process.
//!
//! On start the follower also reads the cluster's latest stored beat from
//! `BACKBEAT_EVENTS`, so an agent that starts between frames knows the beat at
//! once; that frame is placed by its `deadline_at` (when the next beat is due),
//! live frames by the time they arrive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::BeatFrame;
use backbeat_schemas::names::{subject, SubjectKind, EVENTS_STREAM};
use backbeat_schemas::timestamp::parse_utc_ms;
use backbeat_schemas::window::{phase_of, window_id, window_of};
use backbeat_schemas::Phase;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::beat_timer::{beat_interval, BeatTimer};
use super::clock::Clock;
use super::ClientError;

/// What the follower needs to know.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    pub cluster: String,
    /// The cluster's bar length `L` (SPEC §4), for window ids of predicted
    /// beats. When the frames' window ids say otherwise, the follower finds
    /// the bar length they were made with and uses it.
    pub bar_length: u64,
}

/// The beat sounding now, as the follower sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BeatNow {
    pub beat_index: u64,
    pub window_index: u64,
    /// SPEC §4 window id of `window_index`.
    pub window_id: String,
    pub tempo_bpm: u32,
    pub phase: Phase,
    /// The HLC of the latest beat frame received (agents merge it before sending).
    pub frame_hlc: Option<Hlc>,
    /// No frame for more than two beat intervals: the timer is predicting alone.
    pub free_running: bool,
}

/// Follows one cluster's beats until dropped.
pub struct BeatFollower {
    shared: Arc<Mutex<Shared>>,
    clock: Arc<dyn Clock>,
    config: FollowerConfig,
    frames: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

/// The largest bar length the follower looks for when frames disagree with its own.
const BAR_LENGTH_SEARCH_MAX: u64 = 100_000;

struct Shared {
    timer: BeatTimer,
    bar_length: u64,
    /// The frames' window ids matched no bar length: do not search again.
    bar_length_unknown: bool,
    frame_hlc: Option<Hlc>,
    /// (window, id): the SHA-256 of the window id is computed once per window.
    window_id_cache: Option<(u64, String)>,
}

impl BeatFollower {
    /// Subscribes to the cluster's beats and reads its latest stored beat.
    pub async fn start(
        client: async_nats::Client,
        config: FollowerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<BeatFollower, ClientError> {
        assert!(config.bar_length >= 1, "bar_length must be at least 1");
        let beat_subject = subject(&config.cluster, SubjectKind::Beat);
        let subscription = client
            .subscribe(beat_subject.clone())
            .await
            .map_err(|e| ClientError::Nats(format!("subscribing to {beat_subject}: {e}")))?;
        let shared = Arc::new(Mutex::new(Shared {
            timer: BeatTimer::new(),
            bar_length: config.bar_length,
            bar_length_unknown: false,
            frame_hlc: None,
            window_id_cache: None,
        }));
        let (frames_tx, frames) = watch::channel(0u64);

        // The latest stored beat, placed by its deadline: the live subscription
        // is already open, so no frame falls between the two.
        let js = jetstream::new(client.clone());
        if let Some(payload) = last_stored_beat(&js, &beat_subject).await {
            if let Ok(frame) = serde_json::from_slice::<BeatFrame>(&payload) {
                observe_stored(&shared, &frame, clock.as_ref(), &frames_tx);
            }
        }

        let task = tokio::spawn(follow(
            subscription,
            config.cluster.clone(),
            shared.clone(),
            clock.clone(),
            frames_tx,
        ));
        Ok(BeatFollower {
            shared,
            clock,
            config,
            frames,
            task,
        })
    }

    /// The beat sounding now; `None` before the first frame.
    pub fn now(&self) -> Option<BeatNow> {
        let now = self.clock.monotonic();
        let mut shared = self.shared.lock().expect("beat follower lock");
        let beat_index = shared.timer.beat_at(now)?;
        let tempo_bpm = shared.timer.tempo_bpm()?;
        let free_running = shared
            .timer
            .since_last_frame(now)
            .is_some_and(|since| since > beat_interval(tempo_bpm) * 2);
        let bar_length = shared.bar_length;
        let window_index = window_of(beat_index, bar_length);
        let window_id = match &shared.window_id_cache {
            Some((w, id)) if *w == window_index => id.clone(),
            _ => {
                let id = window_id(&self.config.cluster, bar_length, window_index);
                shared.window_id_cache = Some((window_index, id.clone()));
                id
            }
        };
        Some(BeatNow {
            beat_index,
            window_index,
            window_id,
            tempo_bpm,
            phase: phase_of(beat_index, bar_length),
            frame_hlc: shared.frame_hlc,
            free_running,
        })
    }

    /// When the beat after the one sounding now is due, by the follower's clock.
    pub fn until_next_beat(&self) -> Option<Duration> {
        let now = self.clock.monotonic();
        let shared = self.shared.lock().expect("beat follower lock");
        shared.timer.next_beat_at(now).map(|at| at.saturating_sub(now))
    }

    /// Frames taken so far (live and stored).
    pub fn frames_seen(&self) -> u64 {
        *self.frames.borrow()
    }

    /// Waits until a beat is known, at most `timeout`.
    pub async fn wait_first_beat(&self, timeout: Duration) -> Result<BeatNow, ClientError> {
        let mut frames = self.frames.clone();
        let seen = matches!(
            tokio::time::timeout(timeout, frames.wait_for(|&n| n > 0)).await,
            Ok(Ok(_))
        );
        match (seen, self.now()) {
            (true, Some(now)) => Ok(now),
            _ => Err(ClientError::NoBeatYet {
                subject: subject(&self.config.cluster, SubjectKind::Beat),
            }),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.config.cluster
    }

    /// The bar length in use: the configured one, or the one the frames showed.
    pub fn bar_length(&self) -> u64 {
        self.shared.lock().expect("beat follower lock").bar_length
    }
}

impl Drop for BeatFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Makes `bar_length` the one `frame`'s window id was made with.
    fn check_bar_length(&mut self, frame: &BeatFrame) {
        let matches = |l: u64| window_id(&frame.cluster_id, l, window_of(frame.beat_index, l)) == frame.window_id;
        if self.bar_length_unknown || matches(self.bar_length) {
            return;
        }
        match (1..=BAR_LENGTH_SEARCH_MAX).find(|&l| matches(l)) {
            Some(found) => {
                tracing::info!(
                    configured = self.bar_length,
                    found,
                    "the beat frames' window ids are of another bar length; using theirs"
                );
                self.bar_length = found;
                self.window_id_cache = None;
            }
            None => {
                tracing::warn!(
                    bar_length = self.bar_length,
                    "the beat frames' window ids match no bar length up to {BAR_LENGTH_SEARCH_MAX}"
                );
                self.bar_length_unknown = true;
            }
        }
    }
}

fn observe_stored(shared: &Mutex<Shared>, frame: &BeatFrame, clock: &dyn Clock, frames: &watch::Sender<u64>) {
    // The frame says when beat index+1 is due (wall time); beat `index` sounded
    // one interval before. Translate to the monotonic clock through "now".
    let Some(deadline_ms) = parse_utc_ms(&frame.deadline_at) else {
        return;
    };
    let now_mono = clock.monotonic();
    let now_wall_ms = clock.wall_ms() as i64;
    let interval = beat_interval(frame.tempo_bpm);
    let due_next = if deadline_ms >= now_wall_ms {
        now_mono + Duration::from_millis((deadline_ms - now_wall_ms) as u64)
    } else {
        now_mono.saturating_sub(Duration::from_millis((now_wall_ms - deadline_ms) as u64))
    };
    let sounded_at = due_next.saturating_sub(interval);
    let mut shared = shared.lock().expect("beat follower lock");
    shared.timer.observe(frame.beat_index, frame.tempo_bpm, sounded_at);
    shared.frame_hlc = Some(frame.hlc);
    shared.check_bar_length(frame);
    drop(shared);
    frames.send_modify(|n| *n += 1);
}

async fn follow(
    mut subscription: async_nats::Subscriber,
    cluster: String,
    shared: Arc<Mutex<Shared>>,
    clock: Arc<dyn Clock>,
    frames: watch::Sender<u64>,
) {
    while let Some(message) = subscription.next().await {
        let at = clock.monotonic();
        let frame = match serde_json::from_slice::<BeatFrame>(&message.payload) {
            Ok(frame) if frame.cluster_id == cluster => frame,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "beat frame not readable; ignored");
                continue;
            }
        };
        {
            let mut shared = shared.lock().expect("beat follower lock");
            shared.timer.observe(frame.beat_index, frame.tempo_bpm, at);
            if shared.frame_hlc.is_none_or(|h| frame.hlc > h) {
                shared.frame_hlc = Some(frame.hlc);
            }
            shared.check_bar_length(&frame);
        }
        frames.send_modify(|n| *n += 1);
    }
}

/// The payload of the last beat stored on `beat_subject`, read through a
/// short-lived consumer filtered to that subject: its JetStream API subjects
/// name the beat subject, so NATS permissions can let an agent read its own
/// cluster's beats and nothing else of BACKBEAT_EVENTS (a `STREAM.MSG.GET`
/// names no subject: allowing it lets a client read every message).
/// The consumer is not deleted (an agent may not delete consumers): the
/// server removes it after [`LAST_BEAT_CONSUMER_INACTIVE`].
/// `None` when nothing is stored or the stream cannot be read.
async fn last_stored_beat(js: &jetstream::Context, beat_subject: &str) -> Option<bytes::Bytes> {
    use jetstream::consumer::{pull, DeliverPolicy};
    let stream = js.get_stream(EVENTS_STREAM).await.ok()?;
    let consumer = stream
        .create_consumer(pull::Config {
            name: Some(super::consumer_name("last-beat")),
            filter_subject: beat_subject.to_string(),
            deliver_policy: DeliverPolicy::Last,
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: LAST_BEAT_CONSUMER_INACTIVE,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .ok()?;
    // `fetch` answers at once with what is there: one beat, or none.
    let mut messages = consumer.fetch().max_messages(1).messages().await.ok()?;
    let message = messages.next().await?.ok()?;
    Some(message.payload.clone())
}

/// How long the server keeps [`last_stored_beat`]'s consumer after its one fetch.
const LAST_BEAT_CONSUMER_INACTIVE: Duration = Duration::from_secs(5);
