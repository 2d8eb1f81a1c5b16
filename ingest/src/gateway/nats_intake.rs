//! NATS intake: claims published or requested on `backbeat.{cluster}.intake`.
//!
//! One task reads the queue subscription and submits each message in turn
//! (validation is microseconds); the same task drives the wait for each
//! JetStream ack and then publishes the reply, so many acks are in flight at
//! once while the number is bounded by the publisher's slots. A plain publish (no reply
//! subject) is processed the same way and simply not answered; so is a request
//! whose reply subject is not an inbox ([`super::reply`]: the gateway answers
//! inboxes only, and counts the others).

use std::sync::Arc;

use async_nats::{Client, Subscriber};
use futures::stream::FuturesUnordered;
use futures::StreamExt as _;
use tokio::sync::watch;

use super::metrics::GatewayMetrics;
use super::publisher::{Input, Publisher, Source};
use super::reply::InboxPrefixes;

/// The cluster token of an intake subject `backbeat.{cluster}.intake`, exactly
/// as sent (validity is the admission's business). `None` for other subjects.
pub fn intake_cluster(subject: &str) -> Option<&str> {
    subject.strip_prefix("backbeat.")?.strip_suffix(".intake")
}

/// Serves `subscription` until `stop` turns true: then drains it (the server
/// stops routing intake here; messages already delivered are still served),
/// and returns once every reply has been sent.
pub async fn serve_nats_intake(
    client: Client,
    mut subscription: Subscriber,
    publisher: Arc<Publisher>,
    inboxes: InboxPrefixes,
    metrics: GatewayMetrics,
    mut stop: watch::Receiver<bool>,
) {
    // The answers to come, driven by this task: no task per claim, and no
    // hop to another thread between a claim's ack and its reply.
    let mut replies = FuturesUnordered::new();
    let mut draining = false;
    loop {
        let message = tokio::select! {
            biased;
            Some(()) = replies.next(), if !replies.is_empty() => continue,
            changed = stop.changed(), if !draining => {
                if changed.is_err() || *stop.borrow() {
                    draining = true;
                    if let Err(e) = subscription.drain().await {
                        tracing::warn!(error = %e, "draining the intake subscription failed");
                        break;
                    }
                }
                continue;
            }
            message = subscription.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let Some(cluster) = intake_cluster(&message.subject) else {
            tracing::warn!(subject = %message.subject, "message on a subject that is not an intake subject");
            continue;
        };
        // The claim is taken either way (as a plain publish would be); only
        // its answer is withheld.
        let reply_to = message.reply.filter(|reply| match inboxes.check(reply) {
            Ok(()) => true,
            Err(refused) => {
                metrics.replies_refused.with_label_values(&[refused.as_str()]).inc();
                tracing::debug!(
                    reply = %reply.escape_debug(),
                    reason = refused.as_str(),
                    "no answer to a reply subject that is not an inbox"
                );
                false
            }
        });
        let input = Input {
            cluster: cluster.to_string(),
            payload: message.payload,
            source: Source::Nats,
            origin: message.subject.to_string(),
        };
        // While this input waits for an ack slot, the replies in flight must
        // still be driven: their acks are what frees the slots.
        let submit = publisher.submit(input);
        tokio::pin!(submit);
        let pending = loop {
            tokio::select! {
                biased;
                pending = &mut submit => break pending,
                Some(()) = replies.next(), if !replies.is_empty() => {}
            }
        };
        let client = client.clone();
        replies.push(async move {
            let outcome = pending.await;
            if let Some(reply_to) = reply_to {
                if let Err(e) = client.publish(reply_to, outcome.to_json().into()).await {
                    tracing::debug!(error = %e, "reply not sent");
                }
            }
        });
    }
    while replies.next().await.is_some() {}
    tracing::info!("NATS intake stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_tokens() {
        assert_eq!(intake_cluster("backbeat.alpha.intake"), Some("alpha"));
        assert_eq!(intake_cluster("backbeat.a$b.intake"), Some("a$b"));
        assert_eq!(intake_cluster("backbeat.alpha.claim"), None);
        assert_eq!(intake_cluster("other.alpha.intake"), None);
    }
}
