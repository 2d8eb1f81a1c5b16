//! The fence itself (SPEC §8), against a real JetStream: a beat that does not
//! continue the stream's last beat, or repeats an index, is refused. And the
//! tail as a leader reads it: the fence is the subject's last message, the
//! resume point the group's last authenticated beat, past any foreign message.

use std::time::Duration;

use backbeat_pulse::auth::{GroupSecret, BEAT_MAC_HEADER};
use backbeat_pulse::publisher::{BeatPublisher, PublishFailure, PublishTimes, SearchFrom, Tail};
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::{BeatFrame, BeatFrameType};
use backbeat_schemas::timestamp::format_utc_ms;
use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
use backbeat_service::streams::{ensure_stream, events_config, StreamOptions};
use backbeat_tests::NatsServer;

const LIMIT: Duration = Duration::from_secs(2);
const TIMES: PublishTimes = PublishTimes {
    due_us: 0,
    published_us: 0,
};

fn frame(beat: u64, node: u16) -> BeatFrame {
    BeatFrame {
        kind: BeatFrameType,
        cluster_id: "fence".into(),
        beat_index: beat,
        downbeat: is_downbeat(beat, 4),
        phase: phase_of(beat, 4),
        hlc: Hlc::new(1_700_000_000_000 + beat, 0, node),
        deadline_at: format_utc_ms(1_700_000_000_500 + beat as i64),
        tempo_bpm: 120,
        window_id: window_id("fence", 4, window_of(beat, 4)),
    }
}

#[tokio::test]
async fn a_stale_or_repeated_beat_is_refused_by_the_stream() {
    let nats = NatsServer::start().expect("nats-server");
    let (publisher, _, _) = publisher_on(&nats).await;

    assert_eq!(publisher.peek_tail("fence", LIMIT).await.unwrap(), Tail::default());
    let first = publisher.publish(&frame(0, 1), 0, TIMES, LIMIT).await.unwrap();
    let second = publisher.publish(&frame(1, 1), first, TIMES, LIMIT).await.unwrap();

    // A deposed leader still expecting `first` as the last beat: refused.
    let stale = publisher.publish(&frame(2, 2), first, TIMES, LIMIT).await;
    assert!(matches!(stale, Err(PublishFailure::Fenced(_))), "{stale:?}");
    // A leader with no beat seen at all: refused.
    let blind = publisher.publish(&frame(2, 2), 0, TIMES, LIMIT).await;
    assert!(matches!(blind, Err(PublishFailure::Fenced(_))), "{blind:?}");
    // The same index again, even with the right expected sequence: refused.
    let repeat = publisher.publish(&frame(1, 2), second, TIMES, LIMIT).await;
    assert!(
        matches!(repeat, Err(PublishFailure::Duplicate { beat_index: 1, .. })),
        "{repeat:?}"
    );

    let tail = publisher.peek_tail("fence", LIMIT).await.unwrap();
    assert_eq!(tail.fence_sequence, second);
    let last = tail.last_beat.unwrap();
    assert_eq!((last.beat_index, last.sequence), (1, second));
    assert_eq!(last.hlc.node, 1);
    // Continuing correctly still works.
    let third = publisher.publish(&frame(2, 2), second, TIMES, LIMIT).await.unwrap();
    assert!(third > second);
}

/// `document` (a frame or its JSON) with `field` set to `value`.
fn with(document: impl serde::Serialize, field: &str, value: serde_json::Value) -> serde_json::Value {
    let mut json = serde_json::to_value(document).unwrap();
    json[field] = value;
    json
}

fn secret() -> GroupSecret {
    GroupSecret::from_text("the fence test's group secret").unwrap()
}

/// A publisher on `nats`'s `BACKBEAT_EVENTS` (created), its JetStream context
/// (to publish foreign messages with), and its foreign-message counter.
async fn publisher_on(nats: &NatsServer) -> (BeatPublisher, async_nats::jetstream::Context, prometheus::IntCounter) {
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = ensure_stream(&js, events_config(StreamOptions::default()))
        .await
        .unwrap();
    let foreign = prometheus::IntCounter::new("foreign", "foreign").unwrap();
    let publisher = BeatPublisher::new(client, js.clone(), stream, secret(), foreign.clone());
    (publisher, js, foreign)
}

#[tokio::test]
async fn foreign_messages_move_the_fence_but_never_the_resume_point() {
    let nats = NatsServer::start().expect("nats-server");
    let (publisher, js, foreign) = publisher_on(&nats).await;
    let first = publisher.publish(&frame(0, 1), 0, TIMES, LIMIT).await.unwrap();
    let ours = publisher.publish(&frame(1, 1), first, TIMES, LIMIT).await.unwrap();

    // Garbage, forged beats at the extremes, and a well-formed beat signed with
    // another secret, straight onto the subject.
    let mut forged = vec![
        b"not json".to_vec(),
        serde_json::to_vec(&with(frame(3, 9), "beat_index", serde_json::json!((1u64 << 53) - 1))).unwrap(),
        serde_json::to_vec(&frame(7, 9)).unwrap(),
    ];
    let max_index = with(frame(2, 9), "beat_index", serde_json::json!(u64::MAX));
    forged.push(serde_json::to_vec(&with(max_index, "hlc", serde_json::json!("ffffffffffff:ffff:ffff"))).unwrap());
    let mut last_foreign = 0;
    for (i, payload) in forged.into_iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        if i == 2 {
            let wrong = GroupSecret::from_text("somebody else's secret").unwrap();
            headers.insert(BEAT_MAC_HEADER, wrong.beat_mac("backbeat.fence.beat", &payload));
        }
        if i == 3 {
            headers.insert(BEAT_MAC_HEADER, "00".repeat(32));
        }
        let ack = js
            .publish_with_headers("backbeat.fence.beat", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        last_foreign = ack.sequence;
        // A claim in between: the search reads the beat subject only.
        js.publish("backbeat.fence.claim", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // A follower's read: the fence moves, the last beat is not the foreign one.
    let peek = publisher.peek_tail("fence", LIMIT).await.unwrap();
    assert_eq!(peek.fence_sequence, last_foreign);
    assert_eq!(peek.last_beat, None);
    assert_eq!(foreign.get(), 1, "the last message is counted at once");

    // A leader's read, from a sequence it knows and from a start time.
    let from_time = SearchFrom::UnixUs(backbeat_pulse::clock::wall_unix_us() - 60_000_000);
    for from in [SearchFrom::Sequence(1), from_time] {
        let tail = publisher.read_tail("fence", None, from, LIMIT).await.unwrap();
        assert_eq!(
            tail.fence_sequence, last_foreign,
            "the fence is the last message, whatever it is"
        );
        let last = tail
            .last_beat
            .expect("the group's last beat is found past the foreign ones");
        assert_eq!((last.beat_index, last.sequence, last.hlc.node), (1, ours, 1));
    }
    assert_eq!(
        foreign.get(),
        4,
        "each foreign message is counted once, however often it is read"
    );

    // The next beat continues after the group's own, fenced on the foreign tail.
    let next = publisher
        .publish(&frame(2, 1), last_foreign, TIMES, LIMIT)
        .await
        .unwrap();
    let tail = publisher.peek_tail("fence", LIMIT).await.unwrap();
    assert_eq!(tail.fence_sequence, next);
    assert_eq!(tail.last_beat.map(|b| b.beat_index), Some(2));
}
