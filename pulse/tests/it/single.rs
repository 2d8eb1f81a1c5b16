//! A group of one: it elects itself, emits valid frames on the grid, keeps its
//! raft state on disk across a kill -9, and stops cleanly on SIGTERM.

use std::time::Duration;

use backbeat_schemas::timestamp::parse_utc_ms;
use backbeat_tests::{NatsServer, Signal};

use crate::harness::{assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_group_emits_valid_beats_and_survives_kill_9() {
    let nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(1, 600, 4);
    let mut group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    assert_eq!(group.wait_for_leader().await.unwrap(), 1);
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    log.wait_for_more(12).await.unwrap();

    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    for pair in beats.windows(2) {
        let (this, next) = (&pair[0].frame, &pair[1].frame);
        assert_eq!(this.tempo_bpm, 600);
        // deadline_at is when the next beat is due: the next beat's own HLC time
        // (its actual publish time) is at or just after it, never a beat early.
        let deadline_ms = parse_utc_ms(&this.deadline_at).expect("deadline_at parses");
        let next_ms = next.hlc.physical_ms as i64;
        if next.beat_index == this.beat_index + 1 {
            assert!(
                next_ms >= deadline_ms - 1 && next_ms < deadline_ms + 1000,
                "beat {} published at {next_ms} ms, its predecessor said it is due at {deadline_ms}",
                next.beat_index
            );
        }
        assert!(next.hlc > this.hlc, "HLC increases from beat to beat");
        assert_eq!(next.hlc.node, 1, "the HLC carries the leader's node id");
    }

    // Observable as a healthy leader.
    assert_eq!(group.ready(1).await, Some(200));
    let status = group.status(1).await.unwrap();
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["leader_id"], 1);
    assert_eq!(status["tempo_bpm"], 600);
    assert_eq!(status["degraded"], false);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["last_beat_emitted"].as_u64().is_some());
    assert_eq!(group.metric(1, "backbeat_is_leader").await, Some(1.0));
    assert_eq!(group.metric(1, "backbeat_current_tempo_bpm").await, Some(600.0));
    assert!(group.metric(1, "backbeat_beats_total").await.unwrap() >= 12.0);
    assert!(group.metric(1, "backbeat_pulse_jitter_seconds_count").await.unwrap() >= 12.0);

    // kill -9, restart on the same data directory: the raft state and the grid
    // come back from disk, and the node continues after the stream's last beat.
    let epoch_before = status["epoch"].clone();
    group.kill(1);
    let last_before = log.read().await.unwrap().last().unwrap().frame.beat_index;
    group.launch(1).unwrap();
    group.wait_for_leader().await.unwrap();
    log.wait_for_more(5).await.unwrap();
    let status = group.status(1).await.unwrap();
    assert_eq!(status["epoch"], epoch_before, "the grid survives a restart");
    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    assert!(beats.last().unwrap().frame.beat_index > last_before);

    // SIGTERM: a clean exit, and no beat after it.
    let process = group.node(1).process.as_mut().unwrap();
    process.signal(Signal::Term).unwrap();
    let exit = process.wait_exit(PATIENCE).unwrap();
    assert!(
        exit.success(),
        "pulse exits 0 on SIGTERM, got {exit:?}\n{}",
        group.logs()
    );
    let stored = log.read().await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        log.read().await.unwrap().len(),
        stored,
        "no beat after the node stopped"
    );
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let output = std::process::Command::new(backbeat_tests::bin_path("backbeat-pulse"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, env) in [
        ("--nats", "BACKBEAT_NATS"),
        ("--listen", "BACKBEAT_LISTEN"),
        ("--log-format", "BACKBEAT_LOG_FORMAT"),
        ("--node-id", "BACKBEAT_NODE_ID"),
        ("--peers", "BACKBEAT_PEERS"),
        ("--data-dir", "BACKBEAT_DATA_DIR"),
        ("--cluster", "BACKBEAT_CLUSTER"),
        ("--bpm", "BACKBEAT_BPM"),
        ("--bar-length", "BACKBEAT_BAR_LENGTH"),
        ("--admin-token", "BACKBEAT_ADMIN_TOKEN"),
        ("--admin-token-file", "BACKBEAT_ADMIN_TOKEN_FILE"),
        ("--raft-listen", "BACKBEAT_RAFT_LISTEN"),
        ("--raft-secret-file", "BACKBEAT_RAFT_SECRET_FILE"),
        ("--raft-secret-file", "BACKBEAT_RAFT_SECRET"),
        ("--heartbeat-ms", "BACKBEAT_HEARTBEAT_MS"),
        ("--election-timeout-ms", "BACKBEAT_ELECTION_TIMEOUT_MS"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(help.contains(env), "--help lacks {env}:\n{help}");
    }
}
