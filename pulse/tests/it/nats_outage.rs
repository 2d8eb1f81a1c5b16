//! NATS goes away under a running leader: the schedule goes on, the beats it
//! could not publish are counted, `/ready` says why, and after NATS returns the
//! leader resumes at the index the grid has reached (the processor sees a gap).

use backbeat_tests::{wait_until_async, NatsServer};

use crate::harness::{assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_counts_unpublished_beats_while_nats_is_down_and_resumes_at_the_right_index() {
    let mut nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(1, 600, 4);
    let group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    log.wait_for_more(5).await.unwrap();
    drop(log);

    nats.kill();
    let unpublished_before = group.metric(1, "backbeat_pulse_beats_unpublished_total").await.unwrap();
    wait_until_async("the leader to count unpublished beats", PATIENCE, || async {
        let unpublished = group.metric(1, "backbeat_pulse_beats_unpublished_total").await?;
        (unpublished >= unpublished_before + 5.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(group.ready(1).await, Some(503), "not ready without NATS");
    let status = group.status(1).await.unwrap();
    assert_eq!(status["degraded"], true, "{status}");
    assert_eq!(status["role"], "leader", "raft does not need NATS: {status}");
    let schedule_beat_while_down = status["next_beat"].as_u64().unwrap();

    nats.restart().unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    let stored_before = log.read().await.unwrap().to_vec();
    let last_before = stored_before.last().unwrap().frame.beat_index;
    let resumed = log
        .wait_for("a beat after NATS came back", PATIENCE, |b| {
            b.frame.beat_index > last_before
        })
        .await
        .unwrap();
    // `next_beat` is the beat the schedule will emit next, read while the
    // schedule moves: resuming at it (no beat came due between the read and
    // the restart) is right; resuming below it would repeat the grid's past.
    assert!(
        resumed.frame.beat_index >= schedule_beat_while_down,
        "resumed at {} although the schedule's next beat was {schedule_beat_while_down} during the outage",
        resumed.frame.beat_index
    );
    assert!(
        resumed.frame.beat_index > last_before + 1,
        "the outage shows as missing beats"
    );
    log.wait_for_more(3).await.unwrap();
    assert_strictly_increasing(log.read().await.unwrap(), &options.cluster);
    wait_until_async("/ready to recover", PATIENCE, || async {
        (group.ready(1).await? == 200).then_some(())
    })
    .await
    .unwrap();
    assert!(group.metric(1, "backbeat_pulse_publish_failures_total").await.is_some());
}
