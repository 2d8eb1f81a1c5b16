//! Three pulse nodes: kill -9 of the leader, then SIGSTOP of the next leader
//! until a third one has taken over. Beats never repeat an index, and a paused
//! leader that wakes up adds nothing to the stream.

use std::time::{SystemTime, UNIX_EPOCH};

use backbeat_tests::{wait_until_async, NatsServer, Signal};

use crate::harness::{
    assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, ELECTION_TIMEOUT_MS, PATIENCE, TOKEN,
};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fail_over_without_repeating_an_index() {
    let nats = NatsServer::start().expect("nats-server");
    // 300 BPM: one beat every 200 ms.
    let options = GroupOptions::new(3, 300, 8);
    let interval_ms = 200;
    let mut group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    let first_leader = group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    log.wait_for_more(5).await.unwrap();

    // Followers say who leads, and every peer is healthy.
    for id in 1..=3 {
        let status = wait_until_async("every node to see all peers healthy", PATIENCE, || async {
            let status = group.status(id).await?;
            let peers = status["peers"].as_array()?;
            let all_healthy = peers.len() == 2 && peers.iter().all(|p| p["healthy"] == true);
            (all_healthy && status["leader_id"] == first_leader).then_some(status)
        })
        .await
        .unwrap();
        assert_eq!(status["degraded"], false, "node {id}: {status}");
        assert_eq!(group.ready(id).await, Some(200));
        let is_leader = group.metric(id, "backbeat_is_leader").await;
        assert_eq!(is_leader, Some(if id == first_leader { 1.0 } else { 0.0 }));
    }

    // kill -9 the leader: another node emits within one election timeout plus
    // two beat intervals of the kill.
    let killed_at_ms = now_ms();
    group.kill(first_leader);
    let first_leader_hlc = first_leader as u16;
    let takeover = log
        .wait_for("a beat from another node", PATIENCE, |b| {
            b.frame.hlc.node != first_leader_hlc
        })
        .await
        .unwrap();
    let second_leader = u64::from(takeover.frame.hlc.node);
    let takeover_ms = takeover.frame.hlc.physical_ms - killed_at_ms;
    let budget_ms = ELECTION_TIMEOUT_MS + 2 * interval_ms;
    eprintln!("node {second_leader} took over {takeover_ms} ms after the kill (budget {budget_ms} ms)");
    assert!(
        takeover_ms <= budget_ms,
        "node {second_leader} emitted {takeover_ms} ms after the leader was killed; budget {budget_ms} ms\n{}",
        group.logs()
    );
    log.wait_for_more(3).await.unwrap();
    assert_strictly_increasing(log.read().await.unwrap(), &options.cluster);

    // The killed node comes back from its data directory and follows.
    group.launch(first_leader).unwrap();
    wait_until_async("the restarted node to follow the new leader", PATIENCE, || async {
        let status = group.status(first_leader).await?;
        (status["leader_id"] == second_leader && status["degraded"] == false).then_some(())
    })
    .await
    .unwrap();

    // SIGSTOP the second leader; once a third takes over and emits, let it run again.
    group
        .node(second_leader)
        .process
        .as_ref()
        .unwrap()
        .signal(Signal::Stop)
        .unwrap();
    let second_hlc = second_leader as u16;
    let third = log
        .wait_for("a beat after the pause from another node", PATIENCE, |b| {
            b.sequence > takeover.sequence && b.frame.hlc.node != second_hlc
        })
        .await
        .unwrap();
    let third_leader = u64::from(third.frame.hlc.node);
    group
        .node(second_leader)
        .process
        .as_ref()
        .unwrap()
        .signal(Signal::Cont)
        .unwrap();
    // Raft's role (the status) changes first; the emitter clears its gauge when
    // it next learns of it: both are waited for, neither read once and compared.
    wait_until_async("the resumed node to step down and stop leading", PATIENCE, || async {
        let status = group.status(second_leader).await?;
        let gauge = group.metric(second_leader, "backbeat_is_leader").await;
        (status["role"] == "follower" && status["leader_id"] == third_leader && gauge == Some(0.0)).then_some(())
    })
    .await
    .unwrap();
    log.wait_for_more(5).await.unwrap();

    // The whole run: no index twice, none going back; after the third leader's
    // first beat the paused node stored nothing (its late beats were refused or
    // never attempted).
    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    let late = beats
        .iter()
        .filter(|b| b.sequence > third.sequence && b.frame.hlc.node == second_hlc)
        .count();
    assert_eq!(late, 0, "the resumed leader appended beats after it was deposed");
    assert!(
        group
            .metric(third_leader, "backbeat_pulse_leader_changes_total")
            .await
            .unwrap()
            >= 1.0
    );
    // Both other nodes die: the last one has no quorum, stops emitting and says so.
    for id in (1..=3).filter(|id| *id != third_leader) {
        group.kill(id);
    }
    wait_until_async("the node without quorum to report degraded", PATIENCE, || async {
        let status = group.status(third_leader).await?;
        (status["degraded"] == true && status["emitting"] == false).then_some(status)
    })
    .await
    .unwrap();
    assert_eq!(group.ready(third_leader).await, Some(503));
    assert_eq!(group.metric(third_leader, "backbeat_is_leader").await, Some(0.0));
    let (code, body) = group
        .post_tempo(third_leader, Some(TOKEN), serde_json::json!({"bpm": 310}))
        .await;
    assert_eq!(code, 503, "no tempo change without quorum: {body}");
    let stored = log.read().await.unwrap().len();
    // Absence can only be shown by waiting: five beat intervals.
    tokio::time::sleep(std::time::Duration::from_millis(5 * interval_ms)).await;
    assert_eq!(log.read().await.unwrap().len(), stored, "a node without quorum emitted");
}
