//! Tempo control: a bearer token, at most ±10% per request, and the change
//! landing on the next downbeat (or the next beat) through raft, whichever node
//! the request reaches.

use backbeat_tests::{wait_until_async, NatsServer};
use serde_json::json;

use crate::harness::{assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, PATIENCE, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tempo_changes_need_the_token_stay_within_ten_percent_and_land_on_the_next_downbeat() {
    let nats = NatsServer::start().expect("nats-server");
    // 400 BPM, 16 beats a bar: a bar lasts 2.4 s, longer than a failover.
    let options = GroupOptions::new(3, 400, 16);
    let mut group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    let leader = group.wait_for_leader().await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    log.wait_for_more(3).await.unwrap();

    // The token guards the endpoint, on followers as on the leader.
    let (status, body) = group.post_tempo(follower, None, json!({"bpm": 410})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = group.post_tempo(leader, Some("wrong"), json!({"bpm": 410})).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = group.post_tempo(leader, Some(TOKEN), json!({"bpm": "fast"})).await;
    assert_eq!(status, 400, "{body}");

    // More than ±10% is refused with a clear 4xx naming the rule and the bounds.
    for bpm in [441, 359, 2000] {
        let (status, body) = group.post_tempo(follower, Some(TOKEN), json!({"bpm": bpm})).await;
        assert_eq!(status, 422, "{bpm} bpm: {body}");
        assert_eq!(body["error"], "tempo_rejected");
    }
    let (_, body) = group.post_tempo(leader, Some(TOKEN), json!({"bpm": 441})).await;
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("±10%") && message.contains("360..=440"), "{message}");

    // +10% at the next downbeat, sent to a follower (forwarded to the leader)
    // just after a downbeat, so that the next one is most of a bar away.
    let bar_start = log
        .wait_for("the beat after a downbeat", PATIENCE, |b| {
            b.frame.beat_index % options.bar_length == 1
        })
        .await
        .unwrap();
    let (status, body) = group
        .post_tempo(follower, Some(TOKEN), json!({"bpm": 440, "at": "next_downbeat"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let at_beat = body["at_beat"].as_u64().unwrap();
    assert_eq!(at_beat % options.bar_length, 0, "lands on a downbeat: {body}");
    assert_eq!(at_beat, bar_start.frame.beat_index - 1 + options.bar_length, "{body}");
    // One change at a time: another request while this one is pending is refused.
    let (status, body) = group.post_tempo(leader, Some(TOKEN), json!({"bpm": 420})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "change_pending");

    // The leader dies before the downbeat: the change is in the replicated state,
    // so the next leader applies it at the same beat.
    group.kill(leader);
    let landed = log
        .wait_for("the beat the change lands on", PATIENCE, |b| {
            b.frame.beat_index >= at_beat
        })
        .await
        .unwrap();
    assert_eq!(landed.frame.beat_index, at_beat);
    assert_ne!(u64::from(landed.frame.hlc.node), leader, "emitted by the next leader");
    assert!(landed.frame.downbeat);
    assert_eq!(landed.frame.tempo_bpm, 440);
    let beats = log.read().await.unwrap().to_vec();
    for beat in &beats {
        let expected = if beat.frame.beat_index < at_beat { 400 } else { 440 };
        assert_eq!(beat.frame.tempo_bpm, expected, "beat {}", beat.frame.beat_index);
    }

    let leader = u64::from(landed.frame.hlc.node);
    let follower = (1..=3).find(|id| *id != leader && group.is_up(*id)).unwrap();

    // From the new tempo, -10% at the next beat: the bound is relative to 440 now.
    let (status, body) = group.post_tempo(leader, Some(TOKEN), json!({"bpm": 395})).await;
    assert_eq!(status, 422, "395 is more than 10% below 440: {body}");
    let last_stored = log.read().await.unwrap().last().unwrap().frame.beat_index;
    let (status, body) = group
        .post_tempo(leader, Some(TOKEN), json!({"bpm": 396, "at": "next_beat"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let next_at = body["at_beat"].as_u64().unwrap();
    // The next beat not yet emitted when the leader took the request (or the one
    // after it, when that beat was too close to commit the change in time).
    assert!(
        next_at > last_stored && next_at <= last_stored + 3,
        "next_beat lands at {next_at}; the last stored beat before the request was {last_stored}"
    );
    log.wait_for("the next beat", PATIENCE, |b| b.frame.beat_index > next_at)
        .await
        .unwrap();
    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    for beat in beats.iter().filter(|b| b.frame.beat_index >= at_beat) {
        let expected = if beat.frame.beat_index < next_at { 440 } else { 396 };
        assert_eq!(beat.frame.tempo_bpm, expected, "beat {}", beat.frame.beat_index);
    }
    let status = group.status(follower).await.unwrap();
    assert_eq!(
        status["tempo_bpm"], 396,
        "the follower's status shows the tempo in force: {status}"
    );
    assert_eq!(group.metric(leader, "backbeat_current_tempo_bpm").await, Some(396.0));
    wait_until_async("the follower's tempo gauge to follow the stream", PATIENCE, || async {
        (group.metric(follower, "backbeat_current_tempo_bpm").await? == 396.0).then_some(())
    })
    .await
    .unwrap();
}
