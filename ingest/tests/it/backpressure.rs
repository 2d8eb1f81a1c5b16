//! JetStream slow (the server SIGSTOPped: connections stay open, no acks come):
//! the gateway answers `unavailable` (HTTP 503 with Retry-After, an error reply
//! on NATS) within its limits instead of queueing, holds no more than its ack
//! slots, and takes claims again once JetStream answers. Without the events
//! stream, a NATS request gets an error reply.

use std::time::Duration;

use backbeat_ingest::gateway::{GatewayConfig, Reply};
use backbeat_tests::{wait_until_async, Signal};
use reqwest::StatusCode;

use crate::support::{claim, claims_stored, metric, metrics_text, start_server, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_jetstream_gets_unavailable_answers_not_a_queue() {
    let server = start_server();
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            acks_in_flight_max: 4,
            backpressure_wait: Duration::from_millis(50),
            publish_timeout: Duration::from_millis(700),
            retry_after_secs: 2,
            ..GatewayConfig::default()
        },
    )
    .await;
    // The test's own connection, opened before the stop (its requests are
    // answered by the gateway, which does not need the server to answer).
    let client = crate::support::client(&server).await;
    let http = reqwest::Client::new();
    let url = gateway.claims_url("sigma");

    server.signal(Signal::Stop).unwrap();
    // Twelve claims at once over HTTP: four take the ack slots and time out,
    // the others find no slot; every one is answered 503 with Retry-After.
    let posts = (0..12u64).map(|i| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let response = http
                .post(&url)
                .body(claim("p", None, i, 0x10 + i))
                .send()
                .await
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let status = response.status();
            let reply: Reply = response.json().await.unwrap();
            (status, retry_after, reply)
        }
    });
    for (status, retry_after, reply) in futures::future::join_all(posts).await {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_eq!(retry_after.as_deref(), Some("2"));
        assert_eq!(reply.error.unwrap().reason, "unavailable");
    }
    let text = metrics_text(&gateway.http_base).await;
    assert!(metric(&text, "backbeat_ingest_acks_in_flight").unwrap() <= 4.0);
    assert_eq!(metric(&text, "backbeat_ingest_claims_unavailable_total"), Some(12.0));
    server.signal(Signal::Cont).unwrap();

    // JetStream answers again: the same claims are taken (the gateway's
    // "saturated" state clears with the first free slot).
    wait_until_async("the gateway takes claims again", Duration::from_secs(20), || {
        let http = http.clone();
        let url = url.clone();
        async move {
            let response = http.post(&url).body(claim("p", None, 0, 0x10)).send().await.ok()?;
            (response.status() == StatusCode::ACCEPTED).then_some(())
        }
    })
    .await
    .unwrap();
    for i in 1..12u64 {
        let answer = client
            .request("backbeat.sigma.intake", claim("p", None, i, 0x10 + i).into())
            .await
            .unwrap();
        let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
        assert!(reply.ok, "{reply:?}");
    }
    // The timed-out publishes may have been stored when the server woke up;
    // each claim is there once all the same.
    assert_eq!(claims_stored(&client, "sigma").await.len(), 12);
    wait_until_async("ack slots all free", Duration::from_secs(10), || async {
        let text = metrics_text(&gateway.http_base).await;
        (metric(&text, "backbeat_ingest_acks_in_flight")? == 0.0).then_some(())
    })
    .await
    .unwrap();

    // JetStream without the events stream (core NATS up): a NATS request gets
    // an error reply, not silence, and a stream created again is used again.
    let js = async_nats::jetstream::new(client.clone());
    js.delete_stream("BACKBEAT_EVENTS").await.unwrap();
    let answer = client
        .request("backbeat.sigma.intake", claim("p", None, 99, 0x99).into())
        .await
        .unwrap();
    let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(reply.error.expect("an error reply").reason, "unavailable");
    backbeat_service::streams::ensure_stream(
        &js,
        backbeat_service::streams::events_config(backbeat_service::streams::StreamOptions { replicas: 1 }),
    )
    .await
    .unwrap();
    let answer = client
        .request("backbeat.sigma.intake", claim("p", None, 99, 0x99).into())
        .await
        .unwrap();
    let reply: Reply = serde_json::from_slice(&answer.payload).unwrap();
    assert!(reply.ok, "{reply:?}");
    gateway.stop().await;
}

/// Far more NATS claims at once than ack slots: the intake keeps driving the
/// acks in flight while a claim waits for a slot, so all are taken in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nats_claims_share_few_ack_slots() {
    let server = start_server();
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            acks_in_flight_max: 2,
            backpressure_wait: Duration::from_secs(2),
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = crate::support::client(&server).await;
    let requests = (0..300u64).map(|i| {
        let client = client.clone();
        async move {
            let answer = client
                .request("backbeat.tau.intake", claim(&format!("a{i}"), None, i, 0x20).into())
                .await
                .unwrap();
            serde_json::from_slice::<Reply>(&answer.payload).unwrap()
        }
    });
    let replies = futures::future::join_all(requests).await;
    assert!(replies.iter().all(|r| r.ok), "{:?}", replies.iter().find(|r| !r.ok));
    assert_eq!(claims_stored(&client, "tau").await.len(), 300);
    gateway.stop().await;
}
