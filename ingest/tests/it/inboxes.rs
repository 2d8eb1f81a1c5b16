//! The gateway answers only inboxes (issue 16): a request whose reply subject
//! is a stream's subject (`backbeat.x.beat`, `.bar`, `.claim`) or any other
//! subject outside the inbox prefixes gets no answer, nothing lands there, and
//! the refusal is counted; its claim is still taken. `_INBOX.` and the
//! configured custom prefixes are answered.

use std::time::Duration;

use async_nats::jetstream;
use backbeat_ingest::gateway::{GatewayConfig, Reply};
use backbeat_schemas::names::BARS_STREAM;
use backbeat_service::streams::{bars_config, ensure_stream, StreamOptions};
use backbeat_tests::wait_until_async;
use futures::{FutureExt as _, StreamExt as _};

use crate::support::{claim, claims_stored, dead_letters, events_count, metric, metrics_text, start_server, Running};

const FOREIGN_REPLIES: [&str; 5] = [
    "backbeat.x.beat",
    "backbeat.x.bar",
    "backbeat.x.claim",
    "backbeat.x.reject",
    "somewhere.else.entirely",
];

async fn refused(http_base: &str, reason: &str) -> Option<f64> {
    metric(
        &metrics_text(http_base).await,
        &format!("backbeat_ingest_replies_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_subject_outside_the_inboxes_gets_no_answer_and_lands_nowhere() {
    let server = start_server();
    let gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    let client = crate::support::client(&server).await;
    // BACKBEAT_BARS exists, as it does beside a running processor: an answer
    // sent to `backbeat.x.bar` would be stored there.
    ensure_stream(&jetstream::new(client.clone()), bars_config(StreamOptions::default()))
        .await
        .unwrap();
    assert_eq!(refused(&gateway.http_base, "not_an_inbox").await, Some(0.0));

    // Whatever reaches the foreign subjects, seen in order with the answer below.
    let mut watchers = Vec::new();
    for subject in FOREIGN_REPLIES {
        watchers.push((subject, client.subscribe(subject).await.unwrap()));
    }
    let mut malformed_inbox = client.subscribe("_INBOX.>").await.unwrap();
    client.flush().await.unwrap();

    // A valid claim on each foreign reply subject, and a bad one on the beat subject.
    for (i, reply) in FOREIGN_REPLIES.iter().enumerate() {
        let payload = claim(&format!("agent-{i}"), None, 1, 0x100);
        client
            .publish_with_reply("backbeat.x.intake", reply.to_string(), payload.into())
            .await
            .unwrap();
    }
    client
        .publish_with_reply("backbeat.x.intake", "backbeat.x.beat", "not json".into())
        .await
        .unwrap();
    // Under the inbox prefix but not a literal subject.
    client
        .publish_with_reply(
            "backbeat.x.intake",
            "_INBOX.a.*",
            claim("agent-w", None, 1, 0x100).into(),
        )
        .await
        .unwrap();

    // Each claim is taken as a plain publish would be.
    let stored = wait_until_async("the six claims stored", Duration::from_secs(10), || async {
        let stored = claims_stored(&client, "x").await;
        (stored.len() >= 6).then_some(stored)
    })
    .await
    .unwrap();
    assert!(stored
        .iter()
        .all(|s| s.payload.starts_with(br#"{"type":"backbeat.statusclaim.v1""#)));
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload.as_ref(), b"not json");
    assert_eq!(refused(&gateway.http_base, "not_an_inbox").await, Some(6.0));
    assert_eq!(refused(&gateway.http_base, "invalid_subject").await, Some(1.0));

    // A request from a real inbox is answered, after everything above: the
    // gateway's messages reach this connection in the order it sent them.
    let answer = client
        .request("backbeat.x.intake", claim("agent-last", None, 1, 0x100).into())
        .await
        .expect("an inbox is answered");
    let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
    assert!(reply.ok, "{reply:?}");
    for (subject, watcher) in &mut watchers {
        while let Some(Some(message)) = watcher.next().now_or_never() {
            // What the gateway stores passes on the claim and reject
            // subjects; an answer never does, nor anything on the others.
            let stored_here = matches!(*subject, "backbeat.x.claim" | "backbeat.x.reject");
            assert!(
                stored_here && !message.payload.starts_with(b"{\"ok\""),
                "{subject} got {:?}",
                String::from_utf8_lossy(&message.payload)
            );
        }
    }
    while let Some(Some(message)) = malformed_inbox.next().now_or_never() {
        assert_ne!(message.subject.as_str(), "_INBOX.a.*", "no answer to a wildcard");
    }

    // Nothing but the seven claims in BACKBEAT_EVENTS, nothing in BACKBEAT_BARS.
    assert_eq!(events_count(&client).await, 7);
    assert_eq!(claims_stored(&client, "x").await.len(), 7);
    let js = jetstream::new(client.clone());
    let bars = js
        .get_stream(BARS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(bars, 0, "no answer in BACKBEAT_BARS");
    let status = crate::support::status_json(&gateway.http_base).await;
    assert_eq!(status["replies_refused"], 7);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_inbox_prefix_is_answered_when_configured() {
    let server = start_server();
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            inbox_prefixes: vec!["_INBOX".into(), "_AGENTS_team".into()],
            ..GatewayConfig::default()
        },
    )
    .await;
    let custom = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_AGENTS_team")
        .connect(server.url())
        .await
        .unwrap();
    let answer = custom
        .request("backbeat.x.intake", claim("custom", None, 1, 0x100).into())
        .await
        .expect("the custom prefix is answered");
    assert!(serde_json::from_slice::<Reply>(&answer.payload).unwrap().ok);
    let default = crate::support::client(&server).await;
    let answer = default
        .request("backbeat.x.intake", claim("default", None, 1, 0x100).into())
        .await
        .expect("_INBOX is answered");
    assert!(serde_json::from_slice::<Reply>(&answer.payload).unwrap().ok);

    // Another client's prefix is not on the list: its claim is taken, unanswered.
    let other = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_AGENTS_other")
        .connect(server.url())
        .await
        .unwrap();
    other
        .publish_with_reply(
            "backbeat.x.intake",
            other.new_inbox(),
            claim("other", None, 1, 0x100).into(),
        )
        .await
        .unwrap();
    wait_until_async("the third claim stored", Duration::from_secs(10), || async {
        (claims_stored(&default, "x").await.len() == 3).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(refused(&gateway.http_base, "not_an_inbox").await, Some(1.0));
    gateway.stop().await;
}

#[test]
fn inbox_prefixes_that_reach_streams_are_refused_at_start() {
    for prefix in ["backbeat", "backbeat.x", "$JS.API", "_INBOX.*"] {
        let config = GatewayConfig {
            inbox_prefixes: vec![prefix.into()],
            ..GatewayConfig::default()
        };
        assert!(config.validate().is_err(), "{prefix}");
    }
}
