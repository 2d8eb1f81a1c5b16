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

/// Every argument clap knows (so a new flag cannot be missed) is in `--help`
/// with its `BACKBEAT_` variable, in its own entry.
#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    use clap::CommandFactory as _;

    let output = std::process::Command::new(backbeat_tests::bin_path("backbeat-pulse"))
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    // Each option's entry: its `--long` name and the lines up to the next option.
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("  ") && trimmed.starts_with('-') {
            let long = trimmed
                .split([' ', ','])
                .find_map(|word| word.strip_prefix("--"))
                .unwrap_or_default();
            entries.push((long.to_string(), line.to_string()));
        } else if let Some((_, text)) = entries.last_mut() {
            text.push_str(line);
        }
    }
    let command = backbeat_pulse::config::Config::command();
    let arguments: Vec<_> = command.get_arguments().collect();
    assert!(arguments.len() > 15, "clap lists the pulse's arguments");
    for argument in arguments {
        let long = argument
            .get_long()
            .unwrap_or_else(|| panic!("argument {} has a --long name", argument.get_id()));
        let env = argument
            .get_env()
            .unwrap_or_else(|| panic!("--{long} reads a BACKBEAT_ variable"))
            .to_string_lossy();
        assert!(env.starts_with("BACKBEAT_"), "--{long} reads {env}");
        let Some((_, text)) = entries.iter().find(|(name, _)| name == long) else {
            panic!("--help lacks --{long}:\n{help}");
        };
        // `[env: NAME=]` when unset, `[env: NAME]` when its value is hidden.
        assert!(
            text.contains(&format!("[env: {env}=")) || text.contains(&format!("[env: {env}]")),
            "--help gives --{long} without [env: {env}]:\n{help}"
        );
    }
    // The raft secret itself is read from the environment only, never from a flag.
    let secret_env = backbeat_pulse::config::RAFT_SECRET_ENV;
    assert!(
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|word| word == secret_env),
        "--help lacks {secret_env}:\n{help}"
    );
}
