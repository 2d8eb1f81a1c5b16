//! One `run` per `--name` at a time: the single-writer lease in
//! `BACKBEAT_LEASES`. A second process of the same name waits without touching
//! the consumer or the checkpoint, and takes over when the holder stops
//! (SIGTERM releases the lease) or dies (its lease expires after the TTL); a
//! holder whose lease is taken from it, or that resumes after a pause longer
//! than the TTL, stops and exits non-zero.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use backbeat_schemas::names::EVENTS_STREAM;
use backbeat_schemas::LogEntry;
use backbeat_tests::{wait_until_async, NatsServer, Signal};

use crate::live_support::{
    beat_payload, ensure_streams, entry, http_get, publish_entries, wait_for_reports, Processor, LIVE_TIMEOUT,
};

const NAME: &str = "leased";
const LEASE_BUCKET: &str = "BACKBEAT_LEASES";

fn beats(range: std::ops::RangeInclusive<u64>) -> Vec<LogEntry> {
    range
        .map(|b| entry(0, "backbeat.l.beat", beat_payload("l", b, 4)))
        .collect()
}

fn args(ttl_ms: &str) -> Vec<&str> {
    vec!["--bar-length", "4", "--name", NAME, "--lease-ttl-ms", ttl_ms]
}

fn status(port: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(port, "/api/v1/status")?.1).ok()
}

/// Waits until `processor`'s status says it waits for the lease held by `holder` (an instance id).
async fn wait_waiting_for(processor: &Processor, holder: &str) {
    let port = processor.port;
    let result = wait_until_async(
        "the second processor to wait for the lease",
        LIVE_TIMEOUT,
        || async move {
            let s = status(port)?;
            (s["lease"]["state"] == "waiting" && s["lease"]["held_by"]["instance"] == holder).then_some(())
        },
    )
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", processor.log_tail());
    }
}

/// Waits until `processor` holds the lease.
async fn wait_holding(processor: &Processor, timeout: Duration) {
    let port = processor.port;
    let result = wait_until_async("the processor to hold the lease", timeout, || async move {
        (status(port)?["lease"]["state"] == "held").then_some(())
    })
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", processor.log_tail());
    }
}

/// Waits until `processor` counts `count` reports published (the count follows the ack).
async fn wait_published(processor: &Processor, count: f64) {
    let port = processor.port;
    let result = wait_until_async(&format!("{count} reports counted"), LIVE_TIMEOUT, || async move {
        let text = http_get(port, "/metrics")?.1;
        (crate::live_support::metric_value(&text, "backbeat_processor_reports_published_total") == Some(count))
            .then_some(())
    })
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", processor.log_tail());
    }
}

fn instance_of(processor: &Processor) -> String {
    status(processor.port).expect("status")["lease"]["holder"]["instance"]
        .as_str()
        .expect("an instance id")
        .to_string()
}

/// `BACKBEAT_BARS` holds exactly the reports of folding `BACKBEAT_EVENTS` from the start.
async fn assert_published_is_the_fold_of_the_stream(js: &jetstream::Context) {
    crate::live::assert_published_is_the_fold_of_the_stream(js, "--bar-length 4").await;
}

/// A nats-server whose stream holds two windows, and a processor with the
/// lease TTL `ttl_ms` that holds the lease, is ready and has folded them.
struct Holding {
    server: NatsServer,
    js: jetstream::Context,
    work: tempfile::TempDir,
    ttl_ms: &'static str,
    first: Processor,
}

impl Holding {
    async fn start(ttl_ms: &'static str) -> Holding {
        let server = NatsServer::start().expect("nats-server");
        let js = jetstream::new(server.client().await.unwrap());
        ensure_streams(&js).await;
        let last_seq = publish_entries(&js, &beats(0..=8)).await.unwrap();
        let work = tempfile::tempdir().unwrap();
        let mut first = Processor::start(&server.url(), work.path(), &args(ttl_ms));
        wait_for_reports(&js, 2, &first).await;
        first.wait_ready().await;
        first.wait_folded(last_seq).await;
        Holding {
            server,
            js,
            work,
            ttl_ms,
            first,
        }
    }

    /// Another `run` of the same name, once it says it waits for the first.
    async fn start_waiting(&self) -> Processor {
        let waiting = Processor::start(&self.server.url(), self.work.path(), &args(self.ttl_ms));
        wait_waiting_for(&waiting, &instance_of(&self.first)).await;
        waiting
    }
}

#[tokio::test]
async fn a_second_run_of_one_name_waits_untouching_and_takes_over_when_the_first_stops() {
    // A TTL far longer than the test waits: the takeover can only come from the release.
    let mut h = Holding::start("600000").await;
    let js = h.js.clone();
    assert_eq!(h.first.metric("backbeat_processor_lease_held"), Some(1.0));
    let first_instance = instance_of(&h.first);
    let events = js.get_stream(EVENTS_STREAM).await.unwrap();
    let consumer_before = events.consumer_info(NAME).await.unwrap();

    let mut second = h.start_waiting().await;
    let (code, body) = second.get("/ready").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waiting for lease"), "{body}");
    assert!(body.contains(&first_instance), "{body}");
    assert_eq!(second.metric("backbeat_processor_lease_held"), Some(0.0));
    assert!(
        second.log().contains("waiting for lease held by"),
        "{}",
        second.log_tail()
    );

    // A third one, asked to stop while it waits, stops without having taken anything.
    let mut third = h.start_waiting().await;
    third.signal(Signal::Term);
    let exit = third.wait_exit(LIVE_TIMEOUT);
    assert!(exit.success(), "{exit:?}\n{}", third.log_tail());
    assert!(
        third.log().contains("stopped while waiting for the lease"),
        "{}",
        third.log_tail()
    );

    // The first folds on, alone: a new window's report is its, the second publishes nothing.
    publish_entries(&js, &beats(9..=12)).await.unwrap();
    wait_for_reports(&js, 3, &h.first).await;
    assert_eq!(h.first.get("/ready").unwrap().0, 200);
    wait_published(&h.first, 3.0).await;
    assert_eq!(second.metric("backbeat_processor_reports_published_total"), Some(0.0));
    assert_eq!(second.metric("backbeat_processor_checkpoints_total"), Some(0.0));
    let second_status = status(second.port).unwrap();
    assert_eq!(second_status["started"], false, "{second_status}");
    assert_eq!(second_status["last_seq"], 0, "{second_status}");
    // The durable consumer is the first's, never deleted nor re-created.
    let consumer_now = events.consumer_info(NAME).await.unwrap();
    assert_eq!(consumer_now.created, consumer_before.created);
    assert!(second.is_running(), "{}", second.log_tail());

    h.first.signal(Signal::Term);
    let exit = h.first.wait_exit(LIVE_TIMEOUT);
    assert!(exit.success(), "{exit:?}\n{}", h.first.log_tail());
    assert!(h.first.log().contains("lease released"), "{}", h.first.log_tail());
    let kv = js.get_key_value("BACKBEAT_CHECKPOINTS").await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &kv.get(format!("{NAME}.manifest"))
            .await
            .unwrap()
            .expect("a final checkpoint"),
    )
    .unwrap();
    let final_seq = manifest["seq"].as_u64().unwrap();

    // The successor starts at once (the TTL is ten minutes) from the first's final checkpoint.
    wait_holding(&second, LIVE_TIMEOUT).await;
    second.wait_ready().await;
    assert_eq!(status(second.port).unwrap()["checkpoint_seq"], final_seq);
    assert_eq!(second.metric("backbeat_processor_lease_held"), Some(1.0));
    publish_entries(&js, &beats(13..=16)).await.unwrap();
    wait_for_reports(&js, 4, &second).await;
    wait_published(&second, 1.0).await;
    assert_eq!(second.metric("backbeat_processor_reports_skipped_total"), Some(0.0));
    assert_published_is_the_fold_of_the_stream(&js).await;
}

#[tokio::test]
async fn after_kill_9_of_the_holder_the_waiting_one_takes_over_within_the_ttl() {
    let mut h = Holding::start("1000").await;
    let ttl = Duration::from_millis(1000);
    let mut second = h.start_waiting().await;

    h.first.kill();
    let killed = Instant::now();
    // The key expires TTL after the last refresh (at most TTL before the kill);
    // the bound adds the server's expiry pass and one poll, generous for a loaded debug build.
    wait_holding(&second, ttl + Duration::from_secs(9)).await;
    eprintln!("lease taken {:?} after the kill (TTL {ttl:?})", killed.elapsed());
    second.wait_ready().await;
    publish_entries(&h.js, &beats(9..=12)).await.unwrap();
    wait_for_reports(&h.js, 3, &second).await;
    assert_published_is_the_fold_of_the_stream(&h.js).await;
}

#[tokio::test]
async fn a_holder_whose_lease_is_taken_stops_and_exits_non_zero() {
    let mut h = Holding::start("1000").await;
    let js = h.js.clone();
    let holder = &mut h.first;

    // Someone else takes the key (as if it had expired and another process created it).
    let leases = js.get_key_value(LEASE_BUCKET).await.unwrap();
    leases.delete(NAME).await.unwrap();
    let thief = br#"{"instance":"thief","host":"elsewhere","pid":1,"started_at":"2026-01-01T00:00:00.000Z"}"#;
    leases.create(NAME, thief.as_slice().into()).await.unwrap();

    let exit = holder.wait_exit(LIVE_TIMEOUT);
    assert!(!exit.success(), "a holder that lost its lease exited with {exit:?}");
    let log = holder.log();
    // Refreshed between the delete and the create, it finds the key deleted; after, the thief's.
    assert!(
        log.contains("lease BACKBEAT_LEASES/leased was taken"),
        "exited with {exit:?}, not for the lease:\n{}",
        holder.log_tail()
    );
    // The new holder's key is left alone.
    assert_eq!(leases.get(NAME).await.unwrap().as_deref(), Some(thief.as_slice()));
}

#[tokio::test]
async fn a_holder_paused_past_its_ttl_stops_when_it_resumes() {
    let mut h = Holding::start("1000").await;
    let js = h.js.clone();
    let mut second = h.start_waiting().await;
    let first = &mut h.first;

    // Paused (a stalled host): its lease expires and the second takes over and folds on.
    first.signal(Signal::Stop);
    wait_holding(&second, LIVE_TIMEOUT).await;
    second.wait_ready().await;
    publish_entries(&js, &beats(9..=12)).await.unwrap();
    wait_for_reports(&js, 3, &second).await;

    // Resumed, the first finds its lease gone before doing anything else, and exits.
    first.signal(Signal::Cont);
    let exit = first.wait_exit(LIVE_TIMEOUT);
    assert!(
        !exit.success(),
        "a holder resumed without its lease exited with {exit:?}"
    );
    assert!(
        first.log().contains("lease BACKBEAT_LEASES/leased"),
        "exited with {exit:?}, not for the lease:\n{}",
        first.log_tail()
    );
    assert!(second.is_running(), "{}", second.log_tail());
    publish_entries(&js, &beats(13..=16)).await.unwrap();
    wait_for_reports(&js, 4, &second).await;
    assert_published_is_the_fold_of_the_stream(&js).await;
}
