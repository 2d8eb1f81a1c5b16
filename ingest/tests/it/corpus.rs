//! A corpus of bad inputs, each sent over NATS (request/reply) and over HTTP:
//! each gets `ok:false` with its reason, each is kept as a dead letter with that
//! reason and its exact bytes, and `BACKBEAT_EVENTS` stays empty.

use backbeat_ingest::gateway::{GatewayConfig, Reply, INVALID_CLUSTER_REJECT_SUBJECT};
use reqwest::StatusCode;

use crate::support::{claim, dead_letters, events_count, metric, metrics_text, start_server, Running};

/// (what, payload, reason). Every field of SPEC §2 out of range at least once.
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = claim("a1", Some("build:1"), 3, 0xf481c);
    let with = |from: &str, to: &str| {
        assert!(good.contains(from), "{from} in {good}");
        good.replacen(from, to, 1).into_bytes()
    };
    vec![
        ("bad JSON", b"{\"type\":".to_vec(), "invalid_json"),
        ("not an object", b"[1,2]".to_vec(), "invalid_json"),
        ("not UTF-8", b"{\"type\":\"\xff\"}".to_vec(), "invalid_json"),
        (
            "duplicate key",
            with(r#""agent_id":"a1""#, r#""agent_id":"a1","agent_id":"a2""#),
            "invalid_json",
        ),
        ("wrong type", with("statusclaim", "beatframe"), "wrong_type"),
        (
            "type absent",
            with(r#""type":"backbeat.statusclaim.v1","#, ""),
            "wrong_type",
        ),
        (
            "agent_id empty",
            with(r#""agent_id":"a1""#, r#""agent_id":"""#),
            "invalid_field:agent_id",
        ),
        (
            "agent_id too long",
            with(r#""agent_id":"a1""#, &format!(r#""agent_id":"{}""#, "é".repeat(129))),
            "invalid_field:agent_id",
        ),
        (
            "agent_id a number",
            with(r#""agent_id":"a1""#, r#""agent_id":7"#),
            "invalid_field:agent_id",
        ),
        (
            "task_id too long",
            with("build:1", &"t".repeat(129)),
            "invalid_field:task_id",
        ),
        (
            "beat_index negative",
            with(r#""beat_index":3"#, r#""beat_index":-1"#),
            "invalid_field:beat_index",
        ),
        (
            "beat_index 3.0",
            with(r#""beat_index":3"#, r#""beat_index":3.0"#),
            "invalid_field:beat_index",
        ),
        (
            "beat_index beyond 2^53-1",
            with(r#""beat_index":3"#, r#""beat_index":9007199254740992"#),
            "invalid_field:beat_index",
        ),
        ("state unknown", with("executing", "sleeping"), "invalid_field:state"),
        (
            "beats_left negative",
            with(r#""beats_left":3"#, r#""beats_left":-1"#),
            "invalid_field:beats_left",
        ),
        (
            "beats_left beyond u32",
            with(r#""beats_left":3"#, r#""beats_left":4294967296"#),
            "invalid_field:beats_left",
        ),
        (
            "progress above 1",
            with(r#""progress":0.5"#, r#""progress":1.5"#),
            "invalid_field:progress",
        ),
        (
            "progress below 0",
            with(r#""progress":0.5"#, r#""progress":-0.1"#),
            "invalid_field:progress",
        ),
        (
            "progress a string",
            with(r#""progress":0.5"#, r#""progress":"0.5""#),
            "invalid_field:progress",
        ),
        (
            "notes too long",
            with(
                r#""progress":0.5"#,
                &format!(r#""progress":0.5,"notes":"{}""#, "n".repeat(1025)),
            ),
            "invalid_field:notes",
        ),
        ("hlc upper case", with("f481c:", "F481C:"), "invalid_field:hlc"),
        (
            "hlc absent",
            with(r#","hlc":"f481c:0000:0001""#, ""),
            "invalid_field:hlc",
        ),
        (
            "too large",
            with(
                r#""progress":0.5"#,
                &format!(r#""progress":0.5,"x":"{}""#, "x".repeat(8200)),
            ),
            "too_large",
        ),
    ]
}

fn http_status_for(reason: &str) -> StatusCode {
    if reason == "too_large" {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_reason_and_a_dead_letter_and_nothing_reaches_the_events() {
    let server = start_server();
    let gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    let client = crate::support::client(&server).await;
    let http = reqwest::Client::new();
    let corpus = corpus();
    let mut expected_letters = Vec::new();

    for (what, payload, reason) in &corpus {
        // NATS request/reply.
        let answer = client
            .request("backbeat.alpha.intake", payload.clone().into())
            .await
            .unwrap_or_else(|e| panic!("{what}: no NATS answer: {e}"));
        let reply: Reply = serde_json::from_slice(&answer.payload).expect("a reply");
        let error = reply
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: accepted: {reply:?}"));
        assert!(!reply.ok, "{what}");
        assert_eq!(error.reason, *reason, "{what} over NATS: {}", error.message);
        assert!(!error.message.is_empty(), "{what}: the message explains");
        expected_letters.push((payload.clone(), reason.to_string(), "nats"));

        // HTTP.
        let response = http
            .post(gateway.claims_url("alpha"))
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await
            .expect("HTTP answer");
        assert_eq!(response.status(), http_status_for(reason), "{what} over HTTP");
        let reply: Reply = response.json().await.expect("a reply");
        assert_eq!(reply.error.expect("an error").reason, *reason, "{what} over HTTP");
        expected_letters.push((payload.clone(), reason.to_string(), "http"));
    }

    // Bad cluster ids: a subject token and a path segment that do not match the pattern.
    let good = claim("a1", None, 1, 0x1000);
    let answer = client
        .request("backbeat.a$b.intake", good.clone().into())
        .await
        .expect("NATS answer");
    let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(reply.error.unwrap().reason, "invalid_cluster");
    expected_letters.push((good.clone().into_bytes(), "invalid_cluster".into(), "nats"));
    for bad_cluster in ["a%20b", &"x".repeat(65)] {
        let response = http
            .post(gateway.claims_url(bad_cluster))
            .body(good.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "cluster {bad_cluster}");
        let reply: Reply = response.json().await.unwrap();
        assert_eq!(reply.error.unwrap().reason, "invalid_cluster");
        expected_letters.push((good.clone().into_bytes(), "invalid_cluster".into(), "http"));
    }

    // Every refusal is kept, in order, with its reason and its exact bytes.
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), expected_letters.len(), "one dead letter per bad input");
    for (letter, (payload, reason, source)) in letters.iter().zip(&expected_letters) {
        assert_eq!(
            letter.payload.as_ref(),
            payload.as_slice(),
            "the dead letter keeps the bytes"
        );
        assert_eq!(letter.header("Backbeat-Reason").as_deref(), Some(reason.as_str()));
        assert_eq!(letter.header("Backbeat-Source").as_deref(), Some(*source));
        assert!(letter.header("Backbeat-Error").is_some_and(|e| !e.is_empty()));
        let want_subject = if reason == "invalid_cluster" {
            INVALID_CLUSTER_REJECT_SUBJECT
        } else {
            "backbeat.alpha.reject"
        };
        assert_eq!(letter.subject, want_subject);
    }
    assert_eq!(events_count(&client).await, 0, "nothing reached BACKBEAT_EVENTS");

    // The refusals are counted by reason.
    let text = metrics_text(&gateway.http_base).await;
    assert_eq!(
        metric(
            &text,
            r#"backbeat_ingest_claims_rejected_total{reason="invalid_field:progress"}"#
        ),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"backbeat_ingest_claims_rejected_total{reason="invalid_cluster"}"#
        ),
        Some(3.0)
    );
    assert_eq!(metric(&text, "backbeat_ingest_claims_accepted_total"), Some(0.0));
    gateway.stop().await;
    drop(server);
}

/// An input larger than a dead letter may hold is kept as its prefix, with its
/// full length in a header, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_input_is_kept_as_a_marked_prefix() {
    let server = start_server();
    let gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    let client = crate::support::client(&server).await;
    let huge = format!(
        r#"{{"type":"backbeat.statusclaim.v1","notes":"{}"}}"#,
        "h".repeat(100_000)
    );
    let response = reqwest::Client::new()
        .post(gateway.claims_url("alpha"))
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), 1);
    let kept = GatewayConfig::default().dead_letter_bytes_max;
    assert_eq!(letters[0].payload.as_ref(), &huge.as_bytes()[..kept]);
    assert_eq!(letters[0].header("Backbeat-Truncated"), Some(huge.len().to_string()));
    assert_eq!(letters[0].header("Backbeat-Reason").as_deref(), Some("too_large"));
    gateway.stop().await;
}
