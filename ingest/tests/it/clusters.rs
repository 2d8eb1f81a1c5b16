//! The allow-list of clusters (`--clusters`): claims for listed clusters are
//! taken; others are refused with `cluster_not_allowed` over NATS and HTTP
//! (403), kept as dead letters under the shared reject subject, and never
//! reach `BACKBEAT_EVENTS`.

use backbeat_ingest::gateway::{
    BatchReply, GatewayConfig, Reply, INVALID_CLUSTER_REJECT_SUBJECT, NDJSON_CONTENT_TYPE, REASON_CLUSTER_NOT_ALLOWED,
};
use reqwest::StatusCode;

use crate::support::{claim, claims_stored, dead_letters, events_count, metric, metrics_text, start_server, Running};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_clusters_are_taken_over_nats_and_http() {
    let server = start_server();
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            clusters: Some(vec!["alpha".into(), "beta".into()]),
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = crate::support::client(&server).await;
    let http = reqwest::Client::new();

    // Listed: taken, over both doors.
    let answer = client
        .request("backbeat.alpha.intake", claim("a1", None, 1, 0x100).into())
        .await
        .unwrap();
    assert!(serde_json::from_slice::<Reply>(&answer.payload).unwrap().ok);
    let response = http
        .post(gateway.claims_url("beta"))
        .body(claim("b1", None, 1, 0x100))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Not listed: refused with the reason, over NATS...
    let gamma = claim("g1", None, 1, 0x100);
    let answer = client
        .request("backbeat.gamma.intake", gamma.clone().into())
        .await
        .unwrap();
    let error = serde_json::from_slice::<Reply>(&answer.payload).unwrap().error.unwrap();
    assert_eq!(error.reason, REASON_CLUSTER_NOT_ALLOWED);
    assert!(error.message.contains("\"gamma\""), "{}", error.message);
    // ... over HTTP, one claim: 403...
    let response = http
        .post(gateway.claims_url("gamma"))
        .body(gamma.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let reply: Reply = response.json().await.unwrap();
    assert_eq!(reply.error.unwrap().reason, REASON_CLUSTER_NOT_ALLOWED);
    // ... and a batch: 403, each line answered with the reason.
    let batch_body = format!("{gamma}\n{}\n", claim("g2", None, 1, 0x100));
    let response = http
        .post(gateway.claims_url("gamma"))
        .header("content-type", NDJSON_CONTENT_TYPE)
        .body(batch_body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let batch: BatchReply = response.json().await.unwrap();
    assert_eq!((batch.accepted, batch.rejected), (0, 2));
    assert!(batch
        .results
        .iter()
        .all(|r| r.reply.error.as_ref().unwrap().reason == REASON_CLUSTER_NOT_ALLOWED));
    // A malformed id is still `invalid_cluster`, as without a list.
    let answer = client
        .request("backbeat.a$b.intake", gamma.clone().into())
        .await
        .unwrap();
    let error = serde_json::from_slice::<Reply>(&answer.payload).unwrap().error.unwrap();
    assert_eq!(error.reason, "invalid_cluster");

    // Kept as dead letters (one for the batch), none under gamma's own subject.
    let letters = dead_letters(&client).await;
    let reasons: Vec<(String, Option<String>, Option<String>)> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.subject, INVALID_CLUSTER_REJECT_SUBJECT);
            (
                l.header("Backbeat-Source").unwrap(),
                l.header("Backbeat-Reason"),
                l.header("Backbeat-Lines"),
            )
        })
        .collect();
    let not_allowed = Some(REASON_CLUSTER_NOT_ALLOWED.to_string());
    assert_eq!(
        reasons,
        vec![
            ("nats".into(), not_allowed.clone(), None),
            ("http".into(), not_allowed.clone(), None),
            (
                "http".into(),
                not_allowed,
                Some("1=cluster_not_allowed 2=cluster_not_allowed".into())
            ),
            ("nats".into(), Some("invalid_cluster".into()), None),
        ]
    );
    assert_eq!(letters[0].payload.as_ref(), gamma.as_bytes());
    assert_eq!(claims_stored(&client, "alpha").await.len(), 1);
    assert_eq!(claims_stored(&client, "beta").await.len(), 1);
    assert_eq!(
        events_count(&client).await,
        2,
        "nothing of gamma reached BACKBEAT_EVENTS"
    );
    let text = metrics_text(&gateway.http_base).await;
    assert_eq!(
        metric(
            &text,
            r#"backbeat_ingest_claims_rejected_total{reason="cluster_not_allowed"}"#
        ),
        Some(4.0)
    );
    let status = crate::support::status_json(&gateway.http_base).await;
    assert_eq!(status["clusters"], serde_json::json!(["alpha", "beta"]));
    gateway.stop().await;
}

#[test]
fn a_list_with_a_malformed_id_is_refused_at_start() {
    for clusters in [vec!["alpha".to_string(), "no spaces".into()], vec![], vec!["".into()]] {
        let config = GatewayConfig {
            clusters: Some(clusters.clone()),
            ..GatewayConfig::default()
        };
        assert!(config.validate().is_err(), "{clusters:?}");
    }
}
