//! The client library against a real server: the beat follower predicts the
//! beat between frames and free-runs when frames stop; claims stamped from it
//! are accepted; BarReports are read from `BACKBEAT_BARS`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use backbeat_ingest::client::{
    Agent, BarReports, BarsFrom, BeatFollower, ClaimDraft, ClaimSender, Clock, FollowerConfig, RetryPolicy,
    SystemClock, Transport,
};
use backbeat_ingest::gateway::GatewayConfig;
use backbeat_schemas::message::ClaimState;
use backbeat_schemas::report::BarReport;
use backbeat_service::streams::{ensure_all_streams, StreamOptions};
use backbeat_tests::wait_until_async;
use futures::StreamExt as _;

use crate::support::{claims_stored, start_server, BeatEmitter, Running};

async fn follow_kappa(client: &async_nats::Client, clock: &Arc<dyn Clock>, bar_length: u64) -> BeatFollower {
    let config = FollowerConfig {
        cluster: "kappa".into(),
        bar_length,
    };
    BeatFollower::start(client.clone(), config, clock.clone())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_beats_sends_claims_and_reads_bar_reports() {
    let server = start_server();
    let gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    let client = crate::support::client(&server).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    // 600 bpm: a beat every 100 ms.
    let emitter = BeatEmitter::start(client.clone(), "kappa", 600, 8);
    let follower = follow_kappa(&client, &clock, 8).await;
    let first = follower.wait_first_beat(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.tempo_bpm, 600);
    // The follower's beat moves on with the frames.
    wait_until_async("beats advance", Duration::from_secs(10), || async {
        let now = follower.now()?;
        (now.beat_index >= first.beat_index + 5 && !now.free_running).then_some(())
    })
    .await
    .unwrap();
    let now = follower.now().unwrap();
    assert_eq!(now.window_index, now.beat_index / 8);
    assert_eq!(
        now.window_id,
        backbeat_schemas::window::window_id("kappa", 8, now.window_index)
    );

    // A claim stamped from the follower is accepted; its HLC follows the beat's.
    let sender = ClaimSender::new(Transport::nats(client.clone()), "kappa", RetryPolicy::default(), 1);
    let mut agent = Agent::new("agent-k", 11);
    let bytes = agent.stamp(
        &ClaimDraft::new(ClaimState::Planning).task("build:1").beats_left(4),
        &now,
        clock.wall_ms(),
    );
    let accepted = sender.send(bytes.clone()).await.expect("accepted");
    assert!(!accepted.duplicate);
    assert_eq!(accepted.attempts, 1);
    assert!(agent.hlc() > now.frame_hlc.unwrap());
    // Sent again (a retry after a lost answer): the same claim, stored once.
    let again = sender.send(bytes).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (accepted.seq, true));
    // Over HTTP too.
    let http_sender = ClaimSender::new(Transport::http(&gateway.http_base), "kappa", RetryPolicy::default(), 2);
    let later = follower.now().unwrap();
    let http_claim = agent.stamp(
        &ClaimDraft::new(ClaimState::Executing).task("build:1"),
        &later,
        clock.wall_ms(),
    );
    assert!(http_sender.send(http_claim).await.is_ok());
    // A refused claim is not retried and says why.
    let refused = http_sender.send("{}".into()).await.unwrap_err();
    assert!(
        matches!(refused, backbeat_ingest::client::ClientError::Rejected { ref reason, .. } if reason == "wrong_type")
    );
    let batch = http_sender
        .send_batch(&[
            agent.stamp(
                &ClaimDraft::new(ClaimState::Reviewing).task("build:1"),
                &later,
                clock.wall_ms(),
            ),
            "[]".into(),
        ])
        .await;
    assert!(batch[0].is_ok() && batch[1].is_err(), "{batch:?}");
    assert_eq!(claims_stored(&client, "kappa").await.len(), 3);

    // Frames stop: the timer free-runs at the last tempo.
    emitter.stop();
    let last = follower.now().unwrap().beat_index;
    let free = wait_until_async("free-running", Duration::from_secs(10), || async {
        let now = follower.now()?;
        (now.free_running && now.beat_index >= last + 3).then_some(now)
    })
    .await
    .unwrap();
    assert_eq!(free.tempo_bpm, 600);
    // A follower started now, with no live frame to come, places the latest
    // stored beat by its deadline and agrees with the one that saw it live.
    // It was told the wrong bar length: the frames' window ids correct it.
    let late_follower = follow_kappa(&client, &clock, 120).await;
    let from_store = late_follower.wait_first_beat(Duration::from_secs(1)).await.unwrap();
    let live = follower.now().unwrap();
    assert!(
        from_store.beat_index.abs_diff(live.beat_index) <= 1,
        "stored {} vs live {}",
        from_store.beat_index,
        live.beat_index
    );
    assert_eq!(
        from_store.window_id,
        backbeat_schemas::window::window_id("kappa", 8, from_store.beat_index / 8)
    );

    // BarReports: one stored before subscribing, one after.
    let js = jetstream::new(client.clone());
    ensure_all_streams(&js, StreamOptions { replicas: 1 }).await.unwrap();
    let report = |window: u64| BarReport {
        kind: Default::default(),
        window_id: backbeat_schemas::window::window_id("kappa", 8, window),
        from_beat: window * 8,
        to_beat: window * 8 + 7,
        agents_reporting: 1,
        on_time_reviews: 0,
        help_promises_fulfilled: 0,
        secret_rotations_ok: true,
        tempo_drift_ms: 0,
        issues: vec![],
        cluster_id: "kappa".into(),
        window_index: window,
        bar_length: 8,
        beats_observed: 8,
        claims_accepted: 1,
        claims_late: 0,
        claims_rejected: 0,
        tempo_bpm: 600,
        seq_first: 1,
        seq_last: 9,
    };
    js.publish("backbeat.kappa.bar", report(0).to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut reports = Box::pin(
        BarReports::subscribe(client.clone(), "kappa", BarsFrom::Start)
            .await
            .unwrap(),
    );
    let (_, got) = reports.next().await.unwrap().unwrap();
    assert_eq!(got, report(0));
    js.publish("backbeat.kappa.bar", report(1).to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (_, got) = tokio::time::timeout(Duration::from_secs(10), reports.next())
        .await
        .expect("the new report arrives")
        .unwrap()
        .unwrap();
    assert_eq!(got, report(1));
    gateway.stop().await;
}
