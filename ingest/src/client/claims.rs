//! Sending claims to the gateway, over NATS request/reply or HTTP, with retries.
//!
//! A claim is retried when its answer is `unavailable` or no answer came (a
//! timeout, no gateway listening, a connection error): the same bytes every
//! time, so JetStream stores it once whatever happened to the earlier attempts
//! (an attempt whose answer was lost may have been stored: the retry is then
//! answered `duplicate: true` with that sequence). A refusal is never retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backbeat_schemas::names::{subject, SubjectKind};
use bytes::Bytes;

use super::retry::RetryPolicy;
use super::ClientError;
use crate::answer::{BatchReply, Reply, NDJSON_CONTENT_TYPE, REASON_UNAVAILABLE};
use crate::rng::SplitMix64;

/// How claims reach the gateway.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Request/reply on `backbeat.{cluster}.intake`; `timeout` per attempt.
    Nats {
        client: async_nats::Client,
        timeout: Duration,
    },
    /// `POST {base_url}/api/v1/clusters/{cluster}/claims`.
    Http { client: reqwest::Client, base_url: String },
}

impl Transport {
    pub fn nats(client: async_nats::Client) -> Self {
        Transport::Nats {
            client,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn http(base_url: impl Into<String>) -> Self {
        Transport::Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client with default TLS settings"),
            base_url: base_url.into().trim_end_matches('/').to_string(),
        }
    }
}

/// A claim JetStream acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Its stream sequence in `BACKBEAT_EVENTS`.
    pub seq: u64,
    /// The stream already held it (an earlier attempt, or another sender).
    pub duplicate: bool,
    /// Attempts it took (1 = the first).
    pub attempts: u32,
}

/// Sends one cluster's claims.
pub struct ClaimSender {
    transport: Transport,
    cluster: String,
    intake_subject: String,
    claims_url: String,
    policy: RetryPolicy,
    jitter: Mutex<SplitMix64>,
    retries: AtomicU64,
}

/// The result of one attempt.
enum Attempt<T> {
    Done(T),
    Refused { reason: String, message: String },
    Retry(String),
}

impl ClaimSender {
    /// `jitter_seed` seeds the retry jitter (use different seeds for different agents).
    pub fn new(transport: Transport, cluster: &str, policy: RetryPolicy, jitter_seed: u64) -> Self {
        let claims_url = match &transport {
            Transport::Http { base_url, .. } => format!("{base_url}/api/v1/clusters/{cluster}/claims"),
            Transport::Nats { .. } => String::new(),
        };
        ClaimSender {
            transport,
            cluster: cluster.to_string(),
            intake_subject: subject(cluster, SubjectKind::Intake),
            claims_url,
            policy,
            jitter: Mutex::new(SplitMix64::new(jitter_seed)),
            retries: AtomicU64::new(0),
        }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Attempts that got no acknowledgement and were followed by another
    /// (over all claims and batches this sender sent so far).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sends `claim` (its bytes as stamped by [`super::Agent::stamp`]) until the
    /// gateway answers: accepted (new or duplicate), refused, or out of attempts.
    pub async fn send(&self, claim: Bytes) -> Result<Accepted, ClientError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last_error = match self.attempt_one(&claim).await {
                Attempt::Done(reply) => match reply_outcome(reply) {
                    Attempt::Done((seq, duplicate)) => {
                        return Ok(Accepted {
                            seq,
                            duplicate,
                            attempts: attempt,
                        })
                    }
                    Attempt::Refused { reason, message } => return Err(ClientError::Rejected { reason, message }),
                    Attempt::Retry(e) => e,
                },
                Attempt::Refused { reason, message } => return Err(ClientError::Rejected { reason, message }),
                Attempt::Retry(e) => e,
            };
            self.pause(attempt, started, last_error).await?;
        }
    }

    /// Sends claims as one NDJSON batch over HTTP (over NATS: one request per
    /// claim, concurrently). Lines answered `unavailable` are sent again, in a
    /// smaller batch, until every line has an answer or attempts run out. The
    /// results are in the order of `claims`.
    pub async fn send_batch(&self, claims: &[Bytes]) -> Vec<Result<Accepted, ClientError>> {
        if let Transport::Nats { .. } = self.transport {
            return futures::future::join_all(claims.iter().map(|c| self.send(c.clone()))).await;
        }
        let mut results: Vec<Option<Result<Accepted, ClientError>>> = claims.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..claims.len()).collect();
        let started = Instant::now();
        let mut attempt = 0u32;
        while !todo.is_empty() {
            attempt += 1;
            let mut body = Vec::with_capacity(todo.iter().map(|&i| claims[i].len() + 1).sum());
            for &i in &todo {
                body.extend_from_slice(&claims[i]);
                body.push(b'\n');
            }
            let last_error = match self.post(Bytes::from(body), true).await {
                Attempt::Done(answer) => match serde_json::from_slice::<BatchReply>(&answer) {
                    Ok(batch) if batch.results.len() == todo.len() => {
                        let mut again = Vec::new();
                        // Line numbers are 1-based and every line is non-blank.
                        for line in batch.results {
                            let i = todo[(line.line - 1) as usize];
                            match reply_outcome(line.reply) {
                                Attempt::Done((seq, duplicate)) => {
                                    results[i] = Some(Ok(Accepted {
                                        seq,
                                        duplicate,
                                        attempts: attempt,
                                    }))
                                }
                                Attempt::Refused { reason, message } => {
                                    results[i] = Some(Err(ClientError::Rejected { reason, message }))
                                }
                                Attempt::Retry(_) => again.push(i),
                            }
                        }
                        todo = again;
                        if todo.is_empty() {
                            break;
                        }
                        format!("{} lines of the batch unavailable", todo.len())
                    }
                    Ok(batch) => format!("a batch of {} lines got {} results", todo.len(), batch.results.len()),
                    Err(_) => {
                        // Not per-line results: the whole batch was answered at once.
                        match serde_json::from_slice::<Reply>(&answer).map(reply_outcome) {
                            Ok(Attempt::Refused { reason, message }) => {
                                for &i in &todo {
                                    results[i] = Some(Err(ClientError::Rejected {
                                        reason: reason.clone(),
                                        message: message.clone(),
                                    }));
                                }
                                break;
                            }
                            _ => format!("unexpected batch answer: {}", String::from_utf8_lossy(&answer)),
                        }
                    }
                },
                Attempt::Refused { reason, message } => {
                    for &i in &todo {
                        results[i] = Some(Err(ClientError::Rejected {
                            reason: reason.clone(),
                            message: message.clone(),
                        }));
                    }
                    break;
                }
                Attempt::Retry(e) => e,
            };
            if let Err(e) = self.pause(attempt, started, last_error).await {
                let text = e.to_string();
                for &i in &todo {
                    results[i] = Some(Err(ClientError::Unavailable {
                        attempts: attempt,
                        last_error: text.clone(),
                    }));
                }
                break;
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every line has a result"))
            .collect()
    }

    /// Sleeps before attempt `attempt + 1`, or says why there is none.
    async fn pause(&self, attempt: u32, started: Instant, last_error: String) -> Result<(), ClientError> {
        let jitter = self.jitter.lock().expect("jitter lock").next_f64();
        match self.policy.delay_after(attempt, started.elapsed(), jitter) {
            Some(delay) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(attempt, ?delay, error = %last_error, "claim not acknowledged; retrying");
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => Err(ClientError::Unavailable {
                attempts: attempt,
                last_error,
            }),
        }
    }

    async fn attempt_one(&self, claim: &Bytes) -> Attempt<Reply> {
        match &self.transport {
            Transport::Nats { client, timeout } => {
                let request = client.request(self.intake_subject.clone(), claim.clone());
                match tokio::time::timeout(*timeout, request).await {
                    Err(_) => Attempt::Retry(format!("no answer within {timeout:?}")),
                    Ok(Err(e)) => Attempt::Retry(format!("NATS request: {e}")),
                    Ok(Ok(message)) => match serde_json::from_slice::<Reply>(&message.payload) {
                        Ok(reply) => Attempt::Done(reply),
                        Err(e) => Attempt::Retry(format!("unreadable answer: {e}")),
                    },
                }
            }
            Transport::Http { .. } => match self.post(claim.clone(), false).await {
                Attempt::Done(answer) => match serde_json::from_slice::<Reply>(&answer) {
                    Ok(reply) => Attempt::Done(reply),
                    Err(e) => Attempt::Retry(format!("unreadable answer: {e}")),
                },
                Attempt::Refused { reason, message } => Attempt::Refused { reason, message },
                Attempt::Retry(e) => Attempt::Retry(e),
            },
        }
    }

    /// One HTTP POST; `Done` holds the body of any answer that carries replies
    /// (202, 400, 413, 503 with a reply body).
    async fn post(&self, body: Bytes, batch: bool) -> Attempt<Bytes> {
        let Transport::Http { client, .. } = &self.transport else {
            unreachable!("post is only called for HTTP");
        };
        let content_type = if batch { NDJSON_CONTENT_TYPE } else { "application/json" };
        let response = client
            .post(&self.claims_url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        match response {
            Err(e) => Attempt::Retry(format!("HTTP: {e}")),
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Err(e) => Attempt::Retry(format!("HTTP {status}: reading the answer: {e}")),
                    Ok(body)
                        if status.is_server_error() && serde_json::from_slice::<serde_json::Value>(&body).is_err() =>
                    {
                        Attempt::Retry(format!("HTTP {status}"))
                    }
                    Ok(body) => Attempt::Done(body),
                }
            }
        }
    }
}

fn reply_outcome(reply: Reply) -> Attempt<(u64, bool)> {
    match (reply.ok, reply.seq, reply.error) {
        (true, Some(seq), _) => Attempt::Done((seq, reply.duplicate.unwrap_or(false))),
        (false, _, Some(error)) if error.reason == REASON_UNAVAILABLE => Attempt::Retry(error.message),
        (false, _, Some(error)) => Attempt::Refused {
            reason: error.reason,
            message: error.message,
        },
        _ => Attempt::Retry("an answer with neither seq nor error".to_string()),
    }
}
