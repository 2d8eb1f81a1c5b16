//! nats-server killed (SIGKILL) and restarted under load: every claim answered
//! `ok:true` is in `BACKBEAT_EVENTS` exactly once, and every claim is answered.
//! The senders use the client library's retries; the server fsyncs every write
//! (an acknowledged message must survive a kill -9 of a single node).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backbeat_ingest::client::{ClaimSender, RetryPolicy, Transport};
use backbeat_ingest::gateway::GatewayConfig;
use backbeat_tests::{wait_until_async, NatsServer, NatsServerOptions};
use tokio::sync::watch;

use crate::support::{claim, claims_stored, Running};

const SENDERS: usize = 4;
const CLAIMS_PER_SENDER: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_acknowledged_across_a_server_kill_are_stored_exactly_once() {
    let mut server = NatsServer::start_with(NatsServerOptions {
        sync_always: true,
        ..NatsServerOptions::default()
    })
    .expect("nats-server starts");
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            publish_timeout: Duration::from_millis(1000),
            backpressure_wait: Duration::from_millis(100),
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = crate::support::client(&server).await;
    let policy = RetryPolicy {
        attempts_max: u32::MAX,
        delay_initial: Duration::from_millis(20),
        delay_max: Duration::from_millis(500),
        elapsed_max: Duration::from_secs(60),
    };
    let (acked_tx, acked) = watch::channel(0usize);
    let acked_tx = Arc::new(acked_tx);
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for s in 0..SENDERS {
        let sender = Arc::new(ClaimSender::new(
            Transport::Nats {
                client: client.clone(),
                timeout: Duration::from_millis(1500),
            },
            "omega",
            policy,
            s as u64,
        ));
        handles.push(sender.clone());
        let acked_tx = acked_tx.clone();
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..CLAIMS_PER_SENDER {
                let payload = claim(
                    &format!("agent-{s}"),
                    Some(&format!("t:{i}")),
                    i as u64,
                    0x1000 + i as u64,
                );
                let result = sender.send(payload.clone().into()).await;
                answers.push((payload, result));
                acked_tx.send_modify(|n| *n += 1);
            }
            answers
        }));
    }

    // Kill the server once the load is well under way, then bring it back once
    // the gateway noticed and a sender had to try a claim again (without that
    // wait a quick restart can be hidden by the client's reconnect buffer).
    let mut acked_rx = acked.clone();
    acked_rx
        .wait_for(|&n| n >= SENDERS * CLAIMS_PER_SENDER / 4)
        .await
        .unwrap();
    server.kill();
    let gateway_client = gateway.client.clone();
    wait_until_async("the gateway sees the server gone", Duration::from_secs(20), || {
        let state = gateway_client.connection_state();
        async move { (state != async_nats::connection::State::Connected).then_some(()) }
    })
    .await
    .unwrap();
    wait_until_async("a sender retries a claim", Duration::from_secs(20), || {
        let retried = handles.iter().any(|s| s.retries() > 0);
        async move { retried.then_some(()) }
    })
    .await
    .unwrap();
    let answered_while_down = *acked.borrow();
    server.restart().expect("nats-server restarts on its port and store");

    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.expect("sender task"));
    }
    assert!(
        answered_while_down < SENDERS * CLAIMS_PER_SENDER,
        "the kill happened under load"
    );

    // Every claim was answered ok (retries made it through), and each is stored once.
    let mut acked_seqs = BTreeMap::new();
    for (payload, result) in &answers {
        let accepted = result
            .as_ref()
            .unwrap_or_else(|e| panic!("claim not acknowledged: {e}: {payload}"));
        acked_seqs.insert(accepted.seq, payload.clone());
    }
    assert!(
        answers.iter().any(|(_, r)| r.as_ref().is_ok_and(|a| a.attempts > 1)),
        "some claims needed a retry: the outage was felt"
    );
    let stored = claims_stored(&client, "omega").await;
    let mut stored_by_payload = BTreeMap::new();
    for message in &stored {
        let payload = String::from_utf8(message.payload.to_vec()).unwrap();
        assert!(
            stored_by_payload.insert(payload.clone(), message.seq).is_none(),
            "claim stored twice: {payload}"
        );
    }
    assert_eq!(
        stored.len(),
        SENDERS * CLAIMS_PER_SENDER,
        "every claim stored, none twice"
    );
    for (seq, payload) in &acked_seqs {
        assert_eq!(
            stored_by_payload.get(payload),
            Some(seq),
            "the acknowledged claim is at the sequence it was acknowledged with"
        );
    }
    gateway.stop().await;
}
