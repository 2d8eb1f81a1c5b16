//! `backbeat-processor run` as a real child process against a real
//! nats-server: golden scenarios published live give the golden bytes (and
//! the same bytes as `fold` of an `export`, and as `replay`), a closing beat
//! brings its report, bad input is counted without stalling, and the admin
//! endpoints and SIGTERM behave as an operator expects.

use async_nats::jetstream;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::window::window_id;
use backbeat_schemas::LogEntry;
use backbeat_tests::{wait_until_async, NatsServer, Signal};
use futures::StreamExt as _;

use crate::live_support::{
    beat_payload, claim_payload, ensure_streams, entry, metric_value, processor_bin, publish_entries,
    reference_reports, run_tool, stored_events, stored_reports, stream_messages, wait_for_reports, Processor,
    LIVE_TIMEOUT, NO_CHECKPOINT_UNTIL_STOP,
};
use crate::support::{assert_same_lines, config_from_args, read_log, workspace_root};

/// Golden scenarios whose every line is stored as it is: subjects of
/// BACKBEAT_EVENTS only and no two events with one SPEC §8 message id (the
/// others repeat a beat or a claim on purpose, which the stream deduplicates).
const LIVE_SCENARIOS: [&str; 2] = ["late_future_first", "task_ttl"];

#[tokio::test]
async fn golden_scenarios_run_live_give_the_golden_bytes_and_match_export_fold_and_replay() {
    for name in LIVE_SCENARIOS {
        let dir = workspace_root().join("tests/golden").join(name);
        let args_text = std::fs::read_to_string(dir.join("args")).unwrap();
        let fold_args: Vec<&str> = args_text.split_whitespace().collect();
        let entries = read_log(&dir.join("events.jsonl"));
        let golden = std::fs::read_to_string(dir.join("bar_reports.jsonl")).unwrap();

        let server = NatsServer::start().expect("nats-server");
        let js = jetstream::new(server.client().await.unwrap());
        ensure_streams(&js).await;
        let last_seq = publish_entries(&js, &entries).await.unwrap();
        // The stream holds the scenario's log exactly, sequences included.
        assert_eq!(
            stored_events(&js).await,
            entries,
            "{name}: stored log differs from the scenario"
        );

        let work = tempfile::tempdir().unwrap();
        let mut processor = Processor::start(&server.url(), work.path(), &fold_args);
        wait_for_reports(&js, golden.lines().count() as u64, &processor).await;
        processor.wait_ready().await;
        processor.wait_folded(last_seq).await;

        let stored = stored_reports(&js).await;
        let cluster = serde_json::from_str::<serde_json::Value>(golden.lines().next().unwrap()).unwrap()["cluster_id"]
            .as_str()
            .unwrap()
            .to_string();
        for (subject, _) in &stored {
            assert_eq!(subject, &format!("backbeat.{cluster}.bar"), "{name}");
        }
        let published: String = stored.iter().map(|(_, r)| format!("{r}\n")).collect();
        assert_same_lines(&format!("{name}: published vs golden"), &published, &golden);

        // export → fold gives the same bytes.
        let log = work.path().join("exported.jsonl");
        let log_arg = log.to_str().unwrap();
        let url = server.url();
        let mut export_args = vec!["export", "--nats", &url, "--cluster", &cluster, "--out", log_arg];
        export_args.extend(&fold_args);
        run_tool(&export_args);
        assert_eq!(read_log(&log), entries, "{name}: the export is the stored log");
        let mut fold_cmd = vec!["fold", "--log", log_arg];
        fold_cmd.extend(&fold_args);
        assert_same_lines(&format!("{name}: fold of export"), &run_tool(&fold_cmd), &published);

        // replay from the second reported window prints the published bytes of those windows.
        let from: u64 = serde_json::from_str::<serde_json::Value>(&stored[1].1).unwrap()["window_index"]
            .as_u64()
            .unwrap();
        let from_text = from.to_string();
        let mut replay_args = vec![
            "replay",
            "--nats",
            &url,
            "--cluster",
            &cluster,
            "--from-window",
            &from_text,
        ];
        replay_args.extend(&fold_args);
        let expected_replay: String = stored[1..].iter().map(|(_, r)| format!("{r}\n")).collect();
        assert_same_lines(&format!("{name}: replay"), &run_tool(&replay_args), &expected_replay);

        // A replay with another bar length than the live run is told so, and fails.
        let position = fold_args
            .iter()
            .position(|a| *a == "--bar-length")
            .expect("scenario args name L");
        let bar_length = fold_args[position + 1];
        let other = (bar_length.parse::<u64>().unwrap() + 1).to_string();
        let mut wrong_args = vec!["replay", "--nats", &url, "--cluster", &cluster, "--from-window", "0"];
        wrong_args.extend(&fold_args);
        wrong_args[7 + position + 1] = &other;
        let output = std::process::Command::new(processor_bin())
            .args(&wrong_args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: a replay that differs must fail");
        assert!(
            stderr.contains(&format!("pass --bar-length {bar_length}")),
            "{name}: {stderr}"
        );

        // Nothing extra once caught up.
        assert_eq!(
            stream_messages(&js, BARS_STREAM).await,
            golden.lines().count() as u64,
            "{name}"
        );
        assert_eq!(
            processor.metric("backbeat_processor_report_mismatches_total"),
            Some(0.0)
        );
    }
}

#[tokio::test]
async fn a_closing_beat_brings_its_report() {
    let server = NatsServer::start().expect("nats-server");
    let client = server.client().await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_streams(&js).await;
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    processor.wait_ready().await;
    // The report is awaited as a message, not polled for.
    let mut bars = client.subscribe("backbeat.p.bar").await.unwrap();
    client.flush().await.unwrap();

    let mut entries = Vec::new();
    for beat in 0..4 {
        entries.push(entry(0, "backbeat.p.beat", beat_payload("p", beat, 4)));
    }
    entries.push(entry(
        0,
        "backbeat.p.claim",
        claim_payload("a1", Some("t:1"), 2, "reviewing", 1, (2, 0)),
    ));
    let seq = publish_entries(&js, &entries).await.unwrap();
    // Nothing closes before beat 4: window 0 stays open.
    processor.wait_folded(seq).await;
    assert_eq!(stream_messages(&js, BARS_STREAM).await, 0);

    publish_entries(&js, &[entry(0, "backbeat.p.beat", beat_payload("p", 4, 4))])
        .await
        .unwrap();
    let report = next_report(&mut bars, &processor).await;
    assert_eq!(report["window_index"], 0);
    assert_eq!(report["window_id"], window_id("p", 4, 0));
    assert_eq!(report["beats_observed"], 4);
    assert_eq!(report["agents_reporting"], 1);
    assert_eq!(report["on_time_reviews"], 1);
    assert_eq!(report["seq_last"], 5);

    // The next window closes on its own closing beat too.
    let more: Vec<LogEntry> = (5..=8)
        .map(|b| entry(0, "backbeat.p.beat", beat_payload("p", b, 4)))
        .collect();
    publish_entries(&js, &more).await.unwrap();
    assert_eq!(next_report(&mut bars, &processor).await["window_index"], 1);

    assert_published_is_the_fold_of_the_stream(&js, "--bar-length 4").await;
}

#[tokio::test]
async fn bad_input_in_the_stream_is_counted_and_does_not_stall_the_consumer() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let claim = "backbeat.q.claim";
    let mut entries = vec![
        entry(0, claim, b"{not json".to_vec()),
        entry(0, claim, vec![0xff, 0xfe, b'{', b'}']),
        entry(
            0,
            claim,
            format!(r#"{{"type":"backbeat.statusclaim.v1","notes":"{}"}}"#, "x".repeat(9000)).into_bytes(),
        ),
        entry(0, claim, br#"{"type":"backbeat.beatframe.v1"}"#.to_vec()),
        entry(0, "backbeat.q.beat", b"[]".to_vec()),
        // Not a valid cluster token: ignored by the fold.
        entry(0, "backbeat.b@d.claim", claim_payload("z", None, 0, "idle", 0, (0, 0))),
    ];
    for beat in 0..3 {
        entries.push(entry(0, "backbeat.q.beat", beat_payload("q", beat, 4)));
    }
    entries.push(entry(0, claim, claim_payload("a1", None, 1, "executing", 3, (1, 0))));
    entries.push(entry(0, claim, br#"{"type":"backbeat.statusclaim.v1"}"#.to_vec()));
    entries.push(entry(
        0,
        "backbeat.q.beat",
        br#"{"type":"backbeat.beatframe.v1","cluster_id":"other"}"#.to_vec(),
    ));
    for beat in 3..=8 {
        entries.push(entry(0, "backbeat.q.beat", beat_payload("q", beat, 4)));
    }
    let last_seq = publish_entries(&js, &entries).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    wait_for_reports(&js, 2, &processor).await;
    processor.wait_ready().await;
    processor.wait_folded(last_seq).await;

    let reports = stored_reports(&js).await;
    let first: serde_json::Value = serde_json::from_str(&reports[0].1).unwrap();
    assert_eq!(first["claims_rejected"], 5, "{first}");
    assert_eq!(first["claims_accepted"], 1, "{first}");
    let issues = first["issues"].as_array().unwrap();
    let rejected_claims = issues.iter().find(|i| i["code"] == "rejected_claims").unwrap();
    assert_eq!(rejected_claims["count"], 5);
    assert_eq!(
        rejected_claims["sample"],
        serde_json::json!(["invalid_json", "too_large", "wrong_type", "invalid_field:agent_id"])
    );
    let rejected_beats = issues.iter().find(|i| i["code"] == "rejected_beats").unwrap();
    assert_eq!(rejected_beats["count"], 2, "{first}");

    let metrics = processor.get("/metrics").unwrap().1;
    let value = |name: &str| metric_value(&metrics, name);
    assert_eq!(
        value("backbeat_reverb_claims_processed_total{outcome=\"rejected\"}"),
        Some(5.0)
    );
    assert_eq!(
        value("backbeat_reverb_claims_processed_total{outcome=\"applied\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("backbeat_processor_beats_processed_total{outcome=\"beat_rejected\"}"),
        Some(2.0)
    );

    // Events after the bad input keep flowing.
    let more: Vec<LogEntry> = (9..=12)
        .map(|b| entry(0, "backbeat.q.beat", beat_payload("q", b, 4)))
        .collect();
    publish_entries(&js, &more).await.unwrap();
    wait_for_reports(&js, 3, &processor).await;
    assert_published_is_the_fold_of_the_stream(&js, "--bar-length 4").await;
    assert_eq!(processor.get("/ready").unwrap().0, 200);
}

#[tokio::test]
async fn admin_endpoints_answer_and_sigterm_writes_a_final_checkpoint() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let mut entries = Vec::new();
    for beat in 0..=8 {
        entries.push(entry(0, "backbeat.m.beat", beat_payload("m", beat, 4)));
        if beat < 8 {
            let state = if beat % 4 == 3 { "reviewing" } else { "executing" };
            let task = format!("t:{}", beat / 4);
            entries.push(entry(
                0,
                "backbeat.m.claim",
                claim_payload("a1", Some(&task), beat, state, 3, (beat, 0)),
            ));
            entries.push(entry(
                0,
                "backbeat.m.claim",
                claim_payload("a2", None, beat, "idle", 0, (beat, 0)),
            ));
        }
    }
    let last_seq = publish_entries(&js, &entries).await.unwrap();
    // No checkpoint while it runs: the one found after SIGTERM is the final one.
    let quiet = [&["--bar-length", "4"][..], &NO_CHECKPOINT_UNTIL_STOP[..]].concat();
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &quiet);
    wait_for_reports(&js, 2, &processor).await;
    processor.wait_ready().await;
    processor.wait_folded(last_seq).await;

    let (code, body) = processor.get("/health").unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(processor.get("/ready").unwrap().0, 200);

    let metrics = processor.get("/metrics").unwrap().1;
    let value =
        |name: &str| metric_value(&metrics, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"));
    assert_eq!(value("backbeat_reverb_windows_completed_total{cluster=\"m\"}"), 2.0);
    assert_eq!(value("backbeat_reverb_agents_reporting{cluster=\"m\"}"), 2.0);
    assert_eq!(value("backbeat_reverb_on_time_reviews{cluster=\"m\"}"), 1.0);
    assert_eq!(value("backbeat_reverb_window_processing_seconds_count"), 2.0);
    assert_eq!(
        value("backbeat_reverb_claims_processed_total{outcome=\"applied\"}"),
        16.0
    );
    assert_eq!(value("backbeat_processor_reports_published_total"), 2.0);
    assert_eq!(value("backbeat_processor_checkpoints_total"), 0.0);

    let (code, body) = processor.get("/api/v1/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["last_seq"], last_seq);
    assert_eq!(status["caught_up"], true);
    assert_eq!(status["bar_length"], 4);
    assert_eq!(status["clusters"]["m"]["next_to_close"], 2);
    assert_eq!(status["clusters"]["m"]["current_beat"], 8);

    let (code, body) = processor.get("/api/v1/windows").unwrap();
    assert_eq!(code, 200);
    let windows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(windows["clusters"]["m"]["recent_reports"].as_array().unwrap().len(), 2);
    assert_eq!(windows["clusters"]["m"]["open_windows"][0]["window_index"], 2);
    let (code, body) = processor
        .get(&format!("/api/v1/windows/{}", window_id("m", 4, 0)))
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(r#""state":"closed""#), "{body}");
    // The report reads as published: SPEC §2 field order, the exact bytes.
    let closed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let report: backbeat_schemas::BarReport = serde_json::from_value(closed["report"].clone()).unwrap();
    assert!(body.contains(&report.to_json()), "{body}");
    let (code, body) = processor
        .get(&format!("/api/v1/windows/{}", window_id("m", 4, 2)))
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(r#""state":"open""#), "{body}");
    assert_eq!(processor.get("/api/v1/windows/00000000").unwrap().0, 404);

    processor.signal(Signal::Term);
    let exit = processor.wait_exit(LIVE_TIMEOUT);
    assert!(exit.success(), "{exit:?}\n{}", processor.log_tail());
    let kv = js.get_key_value("BACKBEAT_CHECKPOINTS").await.unwrap();
    let manifest = kv
        .get("backbeat-processor.manifest")
        .await
        .unwrap()
        .expect("a checkpoint written on SIGTERM");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["seq"], last_seq, "{manifest}");
    assert_eq!(manifest["generation"], 1, "{manifest}");

    // A restart resumes there: nothing re-derived, and the next window closes.
    let mut restarted = Processor::start(&server.url(), work.path(), &quiet);
    restarted.wait_ready().await;
    let status: serde_json::Value = serde_json::from_str(&restarted.get("/api/v1/status").unwrap().1).unwrap();
    assert_eq!(status["checkpoint_seq"], last_seq);
    assert_eq!(status["clusters"]["m"]["next_to_close"], 2);
    publish_entries(&js, &[entry(0, "backbeat.m.beat", beat_payload("m", 12, 4))])
        .await
        .unwrap();
    wait_for_reports(&js, 3, &restarted).await;
    let port = restarted.port;
    wait_until_async(
        "the restarted processor to count its report",
        LIVE_TIMEOUT,
        || async move {
            let text = crate::live_support::http_get(port, "/metrics")?.1;
            (metric_value(&text, "backbeat_processor_reports_published_total") == Some(1.0)).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(restarted.metric("backbeat_processor_reports_skipped_total"), Some(0.0));
    assert_published_is_the_fold_of_the_stream(&js, "--bar-length 4").await;
    assert_eq!(stream_messages(&js, EVENTS_STREAM).await, last_seq + 1);
}

/// The next report on a core subscription to a bar subject, parsed.
async fn next_report(bars: &mut async_nats::Subscriber, processor: &Processor) -> serde_json::Value {
    let message = tokio::time::timeout(LIVE_TIMEOUT, bars.next())
        .await
        .unwrap_or_else(|_| panic!("no report after the closing beat\n{}", processor.log_tail()))
        .expect("subscription open");
    serde_json::from_slice(&message.payload).expect("a report is JSON")
}

/// `BACKBEAT_BARS` holds exactly the reports of folding `BACKBEAT_EVENTS` from the start.
pub(crate) async fn assert_published_is_the_fold_of_the_stream(js: &jetstream::Context, fold_args: &str) {
    let expected = reference_reports(config_from_args(fold_args), &stored_events(js).await);
    let published: Vec<String> = stored_reports(js).await.into_iter().map(|(_, r)| r).collect();
    assert_eq!(published, expected);
}

#[tokio::test]
async fn a_checkpoint_of_other_clusters_is_refused() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let last_seq = publish_entries(&js, &[entry(0, "backbeat.a.beat", beat_payload("a", 0, 4))])
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let shard = ["--bar-length", "4", "--name", "shard"];
    let mut first = Processor::start(&server.url(), work.path(), &[&shard[..], &["--cluster", "a"]].concat());
    first.wait_ready().await;
    first.wait_folded(last_seq).await;
    first.signal(Signal::Term);
    assert!(first.wait_exit(LIVE_TIMEOUT).success(), "{}", first.log_tail());

    // Same name, other cluster: folding on from a's position would skip b's earlier events.
    let mut second = Processor::start(&server.url(), work.path(), &[&shard[..], &["--cluster", "b"]].concat());
    let exit = second.wait_exit(LIVE_TIMEOUT);
    assert!(
        !exit.success(),
        "a processor of cluster b resumed a checkpoint of cluster a"
    );
    assert!(
        second.log().contains("own --name"),
        "exited with {exit:?}, not for the cluster filter:\n{}",
        second.log_tail()
    );
}

#[tokio::test]
async fn the_processor_folds_on_after_nats_server_restarts() {
    let mut server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let beats = |range: std::ops::RangeInclusive<u64>| -> Vec<LogEntry> {
        range
            .map(|b| entry(0, "backbeat.n.beat", beat_payload("n", b, 4)))
            .collect()
    };
    publish_entries(&js, &beats(0..=4)).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut processor = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    wait_for_reports(&js, 1, &processor).await;

    server.restart().expect("nats-server restarts with its store");
    let js = jetstream::new(server.client().await.unwrap());
    publish_entries(&js, &beats(5..=8)).await.unwrap();
    wait_for_reports(&js, 2, &processor).await;
    assert!(processor.is_running(), "{}", processor.log_tail());
    assert_published_is_the_fold_of_the_stream(&js, "--bar-length 4").await;
}

/// Rewrites the checkpoint manifest of `name` as if an older processor had written it.
async fn age_checkpoint(js: &jetstream::Context, name: &str) {
    let kv = js
        .get_key_value(backbeat_processor::checkpoint::CHECKPOINT_BUCKET)
        .await
        .unwrap();
    let key = format!("{name}.manifest");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&kv.get(&key).await.unwrap().expect("a manifest")).unwrap();
    manifest["format"] = 3.into();
    kv.put(&key, serde_json::to_vec(&manifest).unwrap().into())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_checkpoint_of_another_format_is_folded_again_when_the_stream_is_whole() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    ensure_streams(&js).await;
    let beats = |range: std::ops::Range<u64>| -> Vec<LogEntry> {
        range
            .map(|b| entry(0, "backbeat.u.beat", beat_payload("u", b, 4)))
            .collect()
    };
    publish_entries(&js, &beats(0..9)).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut old = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    wait_for_reports(&js, 2, &old).await;
    old.signal(Signal::Term);
    assert!(old.wait_exit(LIVE_TIMEOUT).success(), "{}", old.log_tail());

    // An upgrade: the checkpoint is of a format this processor cannot read.
    age_checkpoint(&js, "backbeat-processor").await;
    let last_seq = publish_entries(&js, &beats(9..13)).await.unwrap();
    let mut new = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    wait_for_reports(&js, 3, &new).await;
    new.wait_folded(last_seq).await;
    assert!(new.log().contains("checkpoint of another format"), "{}", new.log_tail());
    assert_eq!(new.metric("backbeat_processor_reports_skipped_total"), Some(2.0));
    assert_published_is_the_fold_of_the_stream(&js, "--bar-length 4").await;
    new.signal(Signal::Term);
    assert!(new.wait_exit(LIVE_TIMEOUT).success(), "{}", new.log_tail());

    // With events gone from the stream, folding again would not give that
    // state: the processor stops and says what an operator can do.
    age_checkpoint(&js, "backbeat-processor").await;
    let events = js.get_stream(EVENTS_STREAM).await.unwrap();
    events.purge().sequence(3).await.unwrap();
    let mut refused = Processor::start(&server.url(), work.path(), &["--bar-length", "4"]);
    let exit = refused.wait_exit(LIVE_TIMEOUT);
    assert!(
        !exit.success(),
        "folded a stream missing events:\n{}",
        refused.log_tail()
    );
    assert!(
        refused
            .log()
            .contains("nats kv del BACKBEAT_CHECKPOINTS backbeat-processor.manifest"),
        "{}",
        refused.log_tail()
    );
}
