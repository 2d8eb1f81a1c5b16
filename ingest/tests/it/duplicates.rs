//! A claim sent again (over NATS, over HTTP, twice in one batch, by another
//! gateway) is stored once; the repeat is answered `duplicate: true` with the
//! stored claim's sequence.

use backbeat_ingest::gateway::{BatchReply, GatewayConfig, Reply, NDJSON_CONTENT_TYPE};

use crate::support::{claim, claims_stored, metric, metrics_text, start_server, Running};

async fn nats_send(client: &async_nats::Client, cluster: &str, payload: &str) -> Reply {
    let answer = client
        .request(format!("backbeat.{cluster}.intake"), payload.to_string().into())
        .await
        .expect("NATS answer");
    serde_json::from_slice(&answer.payload).expect("a reply")
}

/// The stored payloads as text, in stream order.
fn payloads_of(stored: &[crate::support::Stored]) -> Vec<String> {
    stored
        .iter()
        .map(|s| String::from_utf8(s.payload.to_vec()).unwrap())
        .collect()
}

/// POSTs one claim; a new or duplicate claim is 202.
async fn http_send(http: &reqwest::Client, url: &str, payload: &str) -> Reply {
    let response = http
        .post(url)
        .body(payload.to_string())
        .send()
        .await
        .expect("HTTP answer");
    assert_eq!(response.status(), 202);
    response.json().await.expect("a reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_again_anywhere_is_stored_once() {
    let server = start_server();
    let first_gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    // A second gateway in another queue group: both take every intake message,
    // as two independent gateways would take a claim an agent sent to each.
    let second_gateway = Running::start(
        &server.url(),
        GatewayConfig {
            queue_group: "other-gateway".into(),
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = crate::support::client(&server).await;
    let http = reqwest::Client::new();
    let payload = claim("agent-7", Some("build:9"), 12, 0x1234);

    let first = http_send(&http, &first_gateway.claims_url("beta"), &payload).await;
    assert!(first.ok, "{first:?}");
    assert_eq!(first.duplicate, Some(false));
    let seq = first.seq.expect("seq");

    // Over NATS the request reaches both gateways; whichever answers first, it is a duplicate.
    let again = nats_send(&client, "beta", &payload).await;
    assert_eq!((again.ok, again.seq, again.duplicate), (true, Some(seq), Some(true)));

    for gateway in [&first_gateway, &second_gateway] {
        let reply = http_send(&http, &gateway.claims_url("beta"), &payload).await;
        assert_eq!((reply.seq, reply.duplicate), (Some(seq), Some(true)));
    }

    // Twice in one batch, beside a new claim.
    let other = claim("agent-8", None, 12, 0x1235);
    let response = http
        .post(first_gateway.claims_url("beta"))
        .header("content-type", NDJSON_CONTENT_TYPE)
        .body(format!("{payload}\n{other}\n{other}\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch: BatchReply = response.json().await.unwrap();
    assert_eq!(batch.accepted, 3);
    assert_eq!(batch.results[0].reply.duplicate, Some(true));
    let other_seqs: Vec<_> = batch.results[1..].iter().map(|r| r.reply.seq).collect();
    assert_eq!(other_seqs[0], other_seqs[1], "both lines name the one stored claim");
    let duplicates = batch.results.iter().filter(|r| r.reply.duplicate == Some(true)).count();
    assert_eq!(duplicates, 2);

    // The same claim for another cluster is another claim.
    let gamma = http_send(&http, &first_gateway.claims_url("gamma"), &payload).await;
    assert_eq!(gamma.duplicate, Some(false));

    let stored = claims_stored(&client, "beta").await;
    let payloads = payloads_of(&stored);
    assert_eq!(
        payloads,
        vec![payload.clone(), other.clone()],
        "each claim once, bytes unchanged"
    );
    assert_eq!(stored[0].seq, seq);
    assert_eq!(
        stored[0].header("Nats-Msg-Id").as_deref(),
        Some(backbeat_schemas::names::claim_msg_id("beta", "agent-7", Some("build:9"), 12, "1234:0000:0001").as_str())
    );

    // Duplicates counted: 2 for the NATS request (both gateways), 2 HTTP, 2 in the batch.
    let gateways = [&first_gateway, &second_gateway];
    backbeat_tests::wait_until_async("six duplicates counted", std::time::Duration::from_secs(10), || async {
        let mut total = 0.0;
        for gateway in gateways {
            let text = metrics_text(&gateway.http_base).await;
            total += metric(&text, "backbeat_ingest_claims_duplicate_total")?;
        }
        (total == 6.0).then_some(())
    })
    .await
    .unwrap();
    first_gateway.stop().await;
    second_gateway.stop().await;
}

/// SPEC §8 (amended 2026-12): agent `a/b` without a task and agent `a` with
/// task `b/`, at the same beat and HLC, are two claims. Before the ids carried
/// the lengths of the two free-text fields they shared an id, and the second
/// was dropped by the duplicate window while its sender was told "ok".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_whose_ids_collided_before_spec_8_was_amended_are_both_stored() {
    let server = start_server();
    let gateway = Running::start(&server.url(), GatewayConfig::default()).await;
    let client = crate::support::client(&server).await;
    let joined = claim("a/b", None, 7, 0x1);
    let split = claim("a", Some("b/"), 7, 0x1);

    let first = nats_send(&client, "beta", &joined).await;
    let second = nats_send(&client, "beta", &split).await;
    for reply in [&first, &second] {
        assert!(reply.ok, "{reply:?}");
        assert_eq!(reply.duplicate, Some(false), "{reply:?}");
    }
    assert_ne!(first.seq, second.seq);

    let stored = claims_stored(&client, "beta").await;
    let payloads = payloads_of(&stored);
    assert_eq!(
        payloads,
        vec![joined, split],
        "both claims stored, in order, bytes unchanged"
    );
    let ids: Vec<_> = stored.iter().map(|s| s.header("Nats-Msg-Id")).collect();
    assert_eq!(
        ids,
        vec![
            Some(backbeat_schemas::names::claim_msg_id(
                "beta",
                "a/b",
                None,
                7,
                "1:0000:0001"
            )),
            Some(backbeat_schemas::names::claim_msg_id(
                "beta",
                "a",
                Some("b/"),
                7,
                "1:0000:0001"
            )),
        ]
    );
    gateway.stop().await;
}
