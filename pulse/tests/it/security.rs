//! What a client of a shared NATS, or of the network, must not be able to do
//! to the pulse (issue 16): stop or move the clock with foreign messages on the
//! beat subject, talk raft without the group secret, reach raft through the
//! public listener, or set a tempo outside SPEC.

use backbeat_pulse::auth::{GroupSecret, BEAT_MAC_HEADER, RAFT_AUTH_HEADER, RAFT_AUTH_SKEW};
use backbeat_pulse::clock::wall_unix_us;
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::message::BEAT_INDEX_MAX;
use backbeat_schemas::names::{subject, SubjectKind};
use backbeat_tests::{wait_until_async, NatsServer};
use serde_json::{json, Value};

use crate::harness::{assert_strictly_increasing, BeatLog, GroupOptions, PulseGroup, PATIENCE, SECRET, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_on_the_beat_subject_neither_halt_nor_move_the_pulse() {
    let nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(3, 600, 4);
    let group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    let leader = group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    let before = log.wait_for_more(5).await.unwrap();
    let last_before = before.frame.beat_index;

    // Straight onto the stream, as any client allowed to publish there could.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    let beat_subject = subject(&options.cluster, SubjectKind::Beat);
    let template = serde_json::to_value(&before.frame).unwrap();
    let forged_beat = |index: Value, hlc: &str| {
        let mut frame = template.clone();
        frame["beat_index"] = index;
        frame["hlc"] = json!(hlc);
        serde_json::to_vec(&frame).unwrap()
    };
    let too_high = last_before + 40;
    let mut valid_looking = before.frame.clone();
    valid_looking.beat_index = too_high;
    valid_looking.downbeat = too_high % options.bar_length == 0;
    valid_looking.phase = backbeat_schemas::window::phase_of(too_high, options.bar_length);
    valid_looking.window_id =
        backbeat_schemas::window::window_id(&options.cluster, options.bar_length, too_high / options.bar_length);
    let wrong_secret = GroupSecret::from_text("not the group's secret at all").unwrap();
    let forgeries: Vec<(Vec<u8>, Option<String>)> = vec![
        (b"garbage, not even JSON".to_vec(), None),
        (forged_beat(json!(BEAT_INDEX_MAX), "0:0000:0009"), None),
        (forged_beat(json!(u64::MAX), "ffffffffffff:ffff:ffff"), None),
        (forged_beat(json!(last_before + 1), "ffffffffffff:ffff:ffff"), None),
        (serde_json::to_vec(&valid_looking).unwrap(), None),
        // A valid-looking beat with a MAC, but by another secret.
        {
            let payload = serde_json::to_vec(&valid_looking).unwrap();
            let mac = wrong_secret.beat_mac(&beat_subject, &payload);
            (payload, Some(mac))
        },
    ];
    let forged_count = forgeries.len();
    for (payload, mac) in forgeries {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(mac) = mac {
            headers.insert(BEAT_MAC_HEADER, mac);
        }
        js.publish_with_headers(beat_subject.clone(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // The pulse keeps coming, in order, unmoved by the forgeries.
    let after = log.wait_for_more(10).await.unwrap();
    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    assert_eq!(
        log.foreign, forged_count,
        "the log holds every forgery, and the harness skips them"
    );
    assert!(
        after.frame.beat_index < too_high,
        "the next index was moved by a forged beat: beat {} after forged {too_high}\n{}",
        after.frame.beat_index,
        group.logs()
    );
    let now_ms = (wall_unix_us() / 1000) as u64;
    for beat in beats.iter().filter(|b| b.frame.beat_index > last_before) {
        assert!(
            beat.frame.hlc.physical_ms <= now_ms + 1000,
            "beat {} carries HLC {}: the clock was moved by a forged beat",
            beat.frame.beat_index,
            beat.frame.hlc
        );
        assert!(beat.frame.hlc < Hlc::new(now_ms + 1000, 0, 0));
    }

    // Counted: on the leader (it read past them to resume) and in its status.
    wait_until_async("the leader to count every forgery", PATIENCE, || async {
        let counted = group.metric(leader, "backbeat_pulse_foreign_beats_total").await?;
        (counted >= forged_count as f64).then_some(())
    })
    .await
    .unwrap();
    let status = group.status(leader).await.unwrap();
    assert!(
        status["foreign_beats"].as_u64().unwrap() >= forged_count as u64,
        "{status}"
    );
    // Followers show the group's last beat, never a forged one.
    for id in (1..=3).filter(|id| *id != leader) {
        let status = group.status(id).await.unwrap();
        let seen = status["last_beat"].as_u64().unwrap_or(0);
        assert!(
            seen < too_high,
            "node {id} took a forged beat for the last one: {status}"
        );
        assert_eq!(group.ready(id).await, Some(200), "node {id}: {status}");
    }
    assert_eq!(group.ready(leader).await, Some(200));

    // "The leader is elsewhere" names the leader's admin address (not its raft one):
    // a request already forwarded once gets 421 instead of a second hop.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let http = reqwest::Client::new();
    let answer = wait_until_async("the follower to name the leader's admin address", PATIENCE, || async {
        let response = http
            .post(group.url(follower, "/api/v1/tempo"))
            .bearer_auth(TOKEN)
            .header(backbeat_pulse::http::FORWARDED_HEADER, "9")
            .json(&json!({"bpm": 610}))
            .send()
            .await
            .ok()?;
        (response.status().as_u16() == 421).then_some(())?;
        response.json::<Value>().await.ok()
    })
    .await
    .unwrap();
    assert_eq!(answer["leader_id"], leader);
    assert_eq!(
        answer["leader_url"],
        format!("http://{}/api/v1/tempo", group.nodes[&leader].addr),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_is_private_and_signed_and_tempo_is_range_checked() {
    let nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(1, 600, 4);
    let group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    group.wait_for_leader().await.unwrap();
    let term = group.status(1).await.unwrap()["term"].as_u64().unwrap();
    let http = reqwest::Client::new();
    let vote = json!({"vote": {"leader_id": {"term": term + 100, "node_id": 9}, "committed": false},
                      "last_log_id": null});
    let body = serde_json::to_vec(&vote).unwrap();
    let node = &group.nodes[&1];
    let post = |addr: &str, auth: Option<String>| {
        let mut request = http
            .post(format!("http://{addr}/raft/vote"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(auth) = auth {
            request = request.header(RAFT_AUTH_HEADER, auth);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Raft is not on the public listener at all.
    assert_eq!(post(&node.addr, None).await, 404);
    let secret = GroupSecret::from_text(SECRET).unwrap();
    let now_ms = wall_unix_us() / 1000;
    assert_eq!(
        post(&node.addr, Some(secret.raft_auth("POST", "/raft/vote", now_ms, &body))).await,
        404
    );
    // On the raft listener: no authenticator, a wrong secret, a stale stamp,
    // another path's MAC: all 401, none reaches raft.
    let wrong = GroupSecret::from_text("a secret that is not the group's").unwrap();
    let stale = now_ms - RAFT_AUTH_SKEW.as_millis() as i64 - 1000;
    let refused = [
        None,
        Some("garbage".to_string()),
        Some(wrong.raft_auth("POST", "/raft/vote", now_ms, &body)),
        Some(secret.raft_auth("POST", "/raft/vote", stale, &body)),
        Some(secret.raft_auth("POST", "/raft/append", now_ms, &body)),
        Some(secret.raft_auth("POST", "/raft/vote", now_ms, b"another body")),
    ];
    let refused_count = refused.len();
    for auth in refused {
        assert_eq!(post(&node.raft_addr, auth.clone()).await, 401, "{auth:?}");
    }
    assert_eq!(
        group.metric(1, "backbeat_pulse_raft_auth_failures_total").await,
        Some(refused_count as f64)
    );
    let status = group.status(1).await.unwrap();
    assert_eq!(status["term"], term, "a refused vote request moved the term: {status}");
    assert_eq!(status["role"], "leader");
    // The same request signed with the group secret is served (raft answers it).
    let info = http
        .get(format!("http://{}/raft/info", node.raft_addr))
        .header(RAFT_AUTH_HEADER, secret.raft_auth("GET", "/raft/info", now_ms, b""))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status().as_u16(), 200);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["admin_addr"], node.addr.as_str());

    // The admin token came from a file (the harness gives it so): it works.
    let (status, body) = group
        .post_tempo(1, Some(TOKEN), json!({"bpm": 610, "at": "next_beat"}))
        .await;
    assert_eq!(status, 202, "{body}");
    wait_until_async("the change to apply", PATIENCE, || async {
        (group.status(1).await?["tempo_bpm"] == 610).then_some(())
    })
    .await
    .unwrap();
    let accepted = group.status(1).await.unwrap()["pending_change"].clone();
    assert_eq!(accepted["bpm"], 610, "the accepted change is the pending one");
    // Out of SPEC's range: refused at the edge, never applied.
    for bpm in [json!(0), json!(1001), json!(5000), json!(u64::MAX)] {
        let (status, body) = group.post_tempo(1, Some(TOKEN), json!({"bpm": bpm})).await;
        assert_eq!(status, 422, "{bpm}: {body}");
    }
    let status = group.status(1).await.unwrap();
    assert_eq!(status["tempo_bpm"], 610, "{status}");
    assert_eq!(status["pending_change"], accepted, "{status}");
    assert_eq!(
        group.metric(1, "backbeat_pulse_invalid_raft_entries_total").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_over_unsigned_beats_continues_after_them_and_signs_its_own() {
    use backbeat_schemas::message::{BeatFrame, BeatFrameType};
    use backbeat_schemas::timestamp::format_utc_ms;
    use backbeat_schemas::window::{is_downbeat, phase_of, window_id, window_of};
    use backbeat_service::streams::{ensure_stream, events_config, StreamOptions};

    let nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(1, 600, 4);
    // An older pulse's beats (no MAC), as a stream kept across an upgrade holds them.
    let js = async_nats::jetstream::new(nats.client().await.unwrap());
    ensure_stream(&js, events_config(StreamOptions::default()))
        .await
        .unwrap();
    let now_ms = wall_unix_us() / 1000;
    for beat in 500..504u64 {
        let frame = BeatFrame {
            kind: BeatFrameType,
            cluster_id: options.cluster.clone(),
            beat_index: beat,
            downbeat: is_downbeat(beat, options.bar_length),
            phase: phase_of(beat, options.bar_length),
            hlc: Hlc::new(now_ms as u64, 0, 7),
            deadline_at: format_utc_ms(now_ms + 100),
            tempo_bpm: 600,
            window_id: window_id(
                &options.cluster,
                options.bar_length,
                window_of(beat, options.bar_length),
            ),
        };
        let subject = subject(&options.cluster, SubjectKind::Beat);
        js.publish(subject, serde_json::to_vec(&frame).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    let first = log
        .wait_for("the group's first beat", PATIENCE, |_| true)
        .await
        .unwrap();
    assert_eq!(
        first.frame.beat_index,
        504,
        "continues after the older beats\n{}",
        group.logs()
    );
    log.wait_for_more(3).await.unwrap();
    assert_strictly_increasing(log.read().await.unwrap(), &options.cluster);
    assert_eq!(log.foreign, 4, "the older beats are not the group's own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_entry_already_in_the_log_is_skipped_at_replay_not_applied() {
    use backbeat_pulse::raft::TypeConfig;
    use backbeat_pulse::state::Request;
    use openraft::{Entry, EntryPayload, LogId};

    let nats = NatsServer::start().expect("nats-server");
    let options = GroupOptions::new(1, 600, 4);
    let mut group = PulseGroup::start(&nats.url(), options.clone()).expect("pulse group");
    group.wait_for_leader().await.unwrap();
    let mut log = BeatLog::open(&nats.url(), &options.cluster, options.bar_length)
        .await
        .unwrap();
    log.wait_for_more(3).await.unwrap();
    group.kill(1);

    // An entry no pulse would write (a buggy or hostile one might have): a
    // tempo of 0 at the last beat index there is, appended to the log on disk.
    let entries = group.node(1).data_dir.join("raft-log").join("entries");
    let last_path = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .unwrap();
    let last: Entry<TypeConfig> = serde_json::from_slice(&std::fs::read(&last_path).unwrap()).unwrap();
    let index = last.log_id.index + 1;
    let bad = Entry::<TypeConfig> {
        log_id: LogId::new(last.log_id.leader_id, index),
        payload: EntryPayload::Normal(Request::ChangeTempo {
            bpm: 0,
            at_beat: u64::MAX,
        }),
    };
    std::fs::write(
        entries.join(format!("{index:020}.json")),
        serde_json::to_vec(&bad).unwrap(),
    )
    .unwrap();

    // The node replays it at restart: skipped and counted, and the pulse goes on.
    group.launch(1).unwrap();
    group.wait_for_leader().await.unwrap();
    wait_until_async("the bad entry to be replayed and skipped", PATIENCE, || async {
        (group.metric(1, "backbeat_pulse_invalid_raft_entries_total").await? == 1.0).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", group.logs()))
    .unwrap();
    log.wait_for_more(3).await.unwrap();
    let beats = log.read().await.unwrap().to_vec();
    assert_strictly_increasing(&beats, &options.cluster);
    assert!(beats.iter().all(|b| b.frame.tempo_bpm == 600));
    let status = group.status(1).await.unwrap();
    assert_eq!(status["tempo_bpm"], 600, "{status}");
    assert_eq!(status["pending_change"], Value::Null, "{status}");
}
