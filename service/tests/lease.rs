//! The single-writer lease and key-value buckets on a real nats-server: one
//! holder per name at a time, a waiter that takes over at release, a lease
//! taken from its holder reported lost, and buckets created only when missing.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use backbeat_service::lease::{HeldLease, Holder, LeaseError, LeaseState, Leases, LEASE_BUCKET};
use backbeat_tests::NatsServer;
use tokio::sync::watch;

/// Far longer than any of these tests waits: only a release frees the lease.
const LONG_TTL: Duration = Duration::from_secs(600);
const TIMEOUT: Duration = Duration::from_secs(20);

async fn start() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    (server, js)
}

/// Waits until `states` shows a state for which `wanted` holds.
async fn wait_for(states: &mut watch::Receiver<LeaseState>, what: &str, wanted: impl FnMut(&LeaseState) -> bool) {
    let outcome = match tokio::time::timeout(TIMEOUT, states.wait_for(wanted)).await {
        Ok(Ok(_)) => return,
        Ok(Err(_)) => "the lease went away before",
        Err(_) => "not within the timeout:",
    };
    panic!("{outcome} {what}: {:?}", *states.borrow());
}

/// Takes the lease of `name` for a new holder, which must get it at once.
async fn hold(leases: &Leases, name: &str) -> (Holder, HeldLease, watch::Receiver<LeaseState>) {
    let holder = Holder::this_process();
    let (tx, rx) = watch::channel(LeaseState::Acquiring);
    let held = leases
        .acquire(name, &holder, tx, std::future::pending())
        .await
        .unwrap()
        .expect("held");
    assert!(matches!(*rx.borrow(), LeaseState::Held { .. }), "{:?}", *rx.borrow());
    assert_eq!(held.instance(), holder.instance);
    (holder, held, rx)
}

#[tokio::test]
async fn a_second_holder_waits_and_takes_over_when_the_first_releases() {
    let (_server, js) = start().await;
    let leases = Leases::open(&js, "test leases", LONG_TTL, 1).await.unwrap();
    assert_eq!(leases.ttl(), LONG_TTL);
    let (first, held, mut first_states) = hold(&leases, "one").await;

    let second = Holder::this_process();
    assert_ne!(second.instance, first.instance);
    let (tx, mut second_states) = watch::channel(LeaseState::Acquiring);
    let waiting = {
        let js = js.clone();
        let second = second.clone();
        tokio::spawn(async move {
            let leases = Leases::open(&js, "test leases", LONG_TTL, 1).await.unwrap();
            leases.acquire("one", &second, tx, std::future::pending()).await
        })
    };
    wait_for(&mut second_states, "waiting for the first holder", |s| {
        *s == LeaseState::Waiting {
            held_by: Some(first.clone()),
        }
    })
    .await;

    held.release().await;
    assert_eq!(*first_states.borrow_and_update(), LeaseState::Released);
    let taken = tokio::time::timeout(TIMEOUT, waiting)
        .await
        .expect("taken over after the release")
        .unwrap()
        .unwrap()
        .expect("held");
    assert_eq!(taken.instance(), second.instance);
    assert!(matches!(*second_states.borrow(), LeaseState::Held { .. }));
    // The key holds the new holder's record.
    let key = js.get_key_value(LEASE_BUCKET).await.unwrap().get("one").await.unwrap();
    assert_eq!(serde_json::from_slice::<Holder>(&key.unwrap()).unwrap(), second);
}

#[tokio::test]
async fn a_waiter_asked_to_stop_takes_nothing() {
    let (_server, js) = start().await;
    let leases = Leases::open(&js, "test leases", LONG_TTL, 1).await.unwrap();
    let (first, _held, _) = hold(&leases, "one").await;
    let (tx, states) = watch::channel(LeaseState::Acquiring);
    let stop = tokio::time::sleep(Duration::from_millis(300));
    let outcome = leases.acquire("one", &Holder::this_process(), tx, stop).await.unwrap();
    assert!(outcome.is_none());
    assert_eq!(*states.borrow(), LeaseState::Released);
    let key = js.get_key_value(LEASE_BUCKET).await.unwrap().get("one").await.unwrap();
    assert_eq!(serde_json::from_slice::<Holder>(&key.unwrap()).unwrap(), first);
}

#[tokio::test]
async fn a_lease_taken_from_its_holder_is_lost() {
    let (_server, js) = start().await;
    let ttl = Duration::from_millis(900);
    let leases = Leases::open(&js, "test leases", ttl, 1).await.unwrap();
    let (_, mut held, mut states) = hold(&leases, "one").await;

    let bucket = js.get_key_value(LEASE_BUCKET).await.unwrap();
    bucket.delete("one").await.unwrap();
    bucket.create("one", "thief".into()).await.unwrap();

    let lost = tokio::time::timeout(TIMEOUT, held.lost()).await.expect("lost");
    // Refreshed between the delete and the create it finds the key deleted; after, the thief's.
    assert!(matches!(lost, LeaseError::Taken { .. }), "{lost}");
    assert!(
        lost.to_string().starts_with("lease BACKBEAT_LEASES/one was taken"),
        "{lost}"
    );
    wait_for(&mut states, "lost", |s| matches!(s, LeaseState::Lost { .. })).await;
    assert_eq!(bucket.get("one").await.unwrap().as_deref(), Some(b"thief".as_slice()));
}

#[tokio::test]
async fn a_bucket_is_created_only_when_missing_and_never_reconfigured() {
    let (_server, js) = start().await;
    assert!(backbeat_service::kv::open(&js, "SOME").await.unwrap().is_none());
    let config = |history| kv::Config {
        bucket: "SOME".into(),
        history,
        ..Default::default()
    };
    let created = backbeat_service::kv::open_or_create(&js, config(2)).await.unwrap();
    assert_eq!(created.stream.cached_info().config.max_messages_per_subject, 2);
    let opened = backbeat_service::kv::open_or_create(&js, config(5)).await.unwrap();
    assert_eq!(opened.stream.cached_info().config.max_messages_per_subject, 2);
    assert!(backbeat_service::kv::open(&js, "SOME").await.unwrap().is_some());
    // A name the server could never hold is an error, not "missing".
    assert!(backbeat_service::kv::open(&js, "not a bucket").await.is_err());
}
