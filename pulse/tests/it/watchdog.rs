//! The watchdog, on a real fault: the leader's own way to NATS is cut (each
//! node reaches NATS through a relay the test can cut) while raft between the
//! nodes is fine. Raft alone would keep that node leader for ever, emitting
//! nothing; the watchdog makes it give up leadership, and another node emits.

use backbeat_tests::{wait_until_async, NatsServer};

use crate::harness::{assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, TcpProxy, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_nats_gives_up_leadership_and_another_node_emits() {
    let nats = NatsServer::start().expect("nats-server");
    let mut proxies = std::collections::BTreeMap::new();
    for id in 1..=3u64 {
        proxies.insert(id, TcpProxy::start(nats.port()).await.unwrap());
    }
    let options = GroupOptions::new(3, 600, 4);
    let group = PulseGroup::start_with_nats(|id| proxies[&id].url(), options.clone()).expect("pulse group");
    let leader = group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    let before = log.wait_for_more(3).await.unwrap();
    assert_eq!(u64::from(before.frame.hlc.node), leader);

    proxies[&leader].cut();
    let taken_over = log
        .wait_for("a beat from another node", PATIENCE, |b| {
            u64::from(b.frame.hlc.node) != leader && b.frame.beat_index > before.frame.beat_index
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", group.logs()))
        .unwrap();
    assert!(taken_over.frame.beat_index > before.frame.beat_index);
    let stepdowns = group.metric(leader, "backbeat_pulse_watchdog_stepdowns_total").await;
    assert!(
        stepdowns.is_some_and(|n| n >= 1.0),
        "node {leader} gave up leadership by its watchdog: {stepdowns:?}\n{}",
        group.logs()
    );
    log.wait_for_more(5).await.unwrap();
    assert_strictly_increasing(log.read().await.unwrap(), &options.cluster);
    // The cut-off node is not the one emitting, and says why it is not ready.
    wait_until_async("the cut-off node to stop calling itself leader", PATIENCE, || async {
        (group.status(leader).await?["role"] != "leader").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(group.ready(leader).await, Some(503));
}
