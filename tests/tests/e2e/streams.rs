//! SPEC §1 streams on a real server, and the two JetStream guarantees the
//! whole design leans on (SPEC §8): message-id deduplication, and refusal of a
//! publish whose expected last subject sequence is stale.

use async_nats::jetstream::{self, context::PublishErrorKind, stream::StorageType};
use async_nats::HeaderMap;
use backbeat_schemas::names::{BARS_STREAM, EVENTS_STREAM, REJECTS_STREAM};
use backbeat_service::streams::{ensure_all_streams, StreamOptions};
use backbeat_tests::{NatsCluster, NatsServer};

#[tokio::test]
async fn the_three_streams_are_created_as_the_spec_says_and_creation_is_idempotent() -> anyhow::Result<()> {
    let server = NatsServer::start()?;
    let js = jetstream::new(server.client().await?);
    ensure_all_streams(&js, StreamOptions::default()).await?;
    // A second run (every service calls it at start) changes nothing.
    ensure_all_streams(&js, StreamOptions::default()).await?;

    let mut events = js.get_stream(EVENTS_STREAM).await?;
    let info = events.info().await?.config.clone();
    assert_eq!(
        info.subjects,
        vec!["backbeat.*.beat".to_string(), "backbeat.*.claim".to_string()]
    );
    assert_eq!(info.storage, StorageType::File);
    assert!(
        info.duplicate_window >= std::time::Duration::from_secs(120),
        "{:?}",
        info.duplicate_window
    );

    let mut bars = js.get_stream(BARS_STREAM).await?;
    assert_eq!(bars.info().await?.config.subjects, vec!["backbeat.*.bar".to_string()]);
    let mut rejects = js.get_stream(REJECTS_STREAM).await?;
    let rejects_config = rejects.info().await?.config.clone();
    assert_eq!(rejects_config.subjects, vec!["backbeat.*.reject".to_string()]);
    // Dead letters are bounded: a client sending garbage forever cannot fill the disk.
    assert_eq!(rejects_config.max_bytes, backbeat_service::streams::REJECTS_BYTES_MAX);
    assert_eq!(rejects_config.discard, jetstream::stream::DiscardPolicy::Old);

    // Intake is request/reply through the gateway, never stored as is.
    let ack = js.publish("backbeat.c1.intake", "{}".into()).await;
    assert!(
        ack.is_err() || ack.unwrap().await.is_err(),
        "intake subject must not be captured by a stream"
    );
    Ok(())
}

#[tokio::test]
async fn a_second_publish_with_the_same_message_id_is_stored_once() -> anyhow::Result<()> {
    let server = NatsServer::start()?;
    let js = jetstream::new(server.client().await?);
    ensure_all_streams(&js, StreamOptions::default()).await?;

    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "c1:beat:7");
    let first = js
        .publish_with_headers("backbeat.c1.beat", headers.clone(), "a".into())
        .await?
        .await?;
    let second = js
        .publish_with_headers("backbeat.c1.beat", headers, "b".into())
        .await?
        .await?;
    assert!(!first.duplicate);
    assert!(second.duplicate, "the retry must be reported as a duplicate");
    assert_eq!(
        first.sequence, second.sequence,
        "the duplicate points at the stored message"
    );

    let mut events = js.get_stream(EVENTS_STREAM).await?;
    assert_eq!(events.info().await?.state.messages, 1);
    let stored = events.get_raw_message(first.sequence).await?;
    assert_eq!(&stored.payload[..], b"a", "the first payload is the one kept");
    Ok(())
}

#[tokio::test]
async fn a_publish_with_a_stale_expected_last_subject_sequence_is_refused() -> anyhow::Result<()> {
    let server = NatsServer::start()?;
    let js = jetstream::new(server.client().await?);
    ensure_all_streams(&js, StreamOptions::default()).await?;

    let first = js.publish("backbeat.c1.beat", "0".into()).await?.await?;
    // Another subject in the same stream does not move this subject's sequence.
    js.publish("backbeat.c1.claim", "x".into()).await?.await?;

    let fenced = |expected: u64, body: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let js = js.clone();
        async move {
            js.publish_with_headers("backbeat.c1.beat", headers, body.into())
                .await?
                .await
        }
    };
    let next = fenced(first.sequence, "1").await?;
    assert_eq!(next.sequence, 3);

    // A deposed leader still believes the last beat is `first`: refused.
    let err = fenced(first.sequence, "1-again")
        .await
        .expect_err("stale fence must be refused");
    assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence, "{err}");

    let mut events = js.get_stream(EVENTS_STREAM).await?;
    assert_eq!(events.info().await?.state.messages, 3);
    Ok(())
}

#[tokio::test]
async fn a_killed_server_restarts_with_its_store() -> anyhow::Result<()> {
    let mut server = NatsServer::start()?;
    {
        let js = jetstream::new(server.client().await?);
        ensure_all_streams(&js, StreamOptions::default()).await?;
        js.publish("backbeat.c1.beat", "0".into()).await?.await?;
    }
    server.kill();
    server.restart()?;
    let js = jetstream::new(server.client().await?);
    let mut events = js.get_stream(EVENTS_STREAM).await?;
    assert_eq!(events.info().await?.state.messages, 1);
    Ok(())
}

#[tokio::test]
async fn a_three_node_cluster_elects_and_replicates() -> anyhow::Result<()> {
    let cluster = NatsCluster::start(3)?;
    let client = async_nats::connect(cluster.nodes[0].url()).await?;
    let js = jetstream::new(client);
    ensure_all_streams(&js, StreamOptions { replicas: 3 }).await?;
    let ack = js.publish("backbeat.c1.beat", "0".into()).await?.await?;
    assert_eq!(ack.sequence, 1);
    let mut events = js.get_stream(EVENTS_STREAM).await?;
    let info = events.info().await?;
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.cluster.as_ref().map(|c| c.replicas.len()), Some(2));
    Ok(())
}
