//! The fence itself (SPEC §8), against a real JetStream: a beat that does not
//! continue the stream's last beat, or repeats an index, is refused.

use std::time::Duration;

use backbeat_pulse::publisher::{BeatPublisher, PublishFailure, PublishTimes};
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
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = ensure_stream(&js, events_config(StreamOptions::default()))
        .await
        .unwrap();
    let publisher = BeatPublisher::new(client, js, stream);

    assert_eq!(publisher.last_beat("fence", LIMIT).await.unwrap(), None);
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
    assert!(matches!(repeat, Err(PublishFailure::Fenced(_))), "{repeat:?}");

    let last = publisher.last_beat("fence", LIMIT).await.unwrap().unwrap();
    assert_eq!((last.beat_index, last.sequence), (1, second));
    assert_eq!(last.hlc.node, 1);
    // Continuing correctly still works.
    let third = publisher.publish(&frame(2, 2), second, TIMES, LIMIT).await.unwrap();
    assert!(third > second);
}
