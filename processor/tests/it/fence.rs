//! Checkpoints are fenced (issue 16, item 7): against a real nats-server, a
//! deposed writer's late writes (a process paused past its lease, resumed
//! with writes in flight) are refused or land where its successor never
//! reads, and the successor resumes to the same bytes as a fold never
//! interrupted.

use std::collections::BTreeMap;

use async_nats::jetstream;
use backbeat_processor::checkpoint::{CheckpointError, CheckpointStore, Manifest, CHECKPOINT_BUCKET};
use backbeat_processor::{Fold, FoldConfig};
use backbeat_schemas::{BarReport, LogEntry};
use backbeat_tests::NatsServer;

use crate::support::{config_from_args, read_log, workspace_root};

/// A store of processor `name` written by process `instance`.
async fn store(js: &jetstream::Context, name: &str, instance: &str) -> CheckpointStore {
    CheckpointStore::open(js, name, instance, &[], 1, 1 << 20, 10)
        .await
        .expect("opening the checkpoint store")
}

/// Writes `fold`'s state as the checkpoint of `store`.
async fn save(store: &mut CheckpointStore, fold: &Fold) -> Result<Manifest, CheckpointError> {
    store
        .save_state(
            fold.last_seq(),
            *fold.config(),
            &fold.to_checkpoint(),
            BTreeMap::new(),
            BTreeMap::new(),
            false,
        )
        .await
}

fn apply(fold: &mut Fold, entries: &[LogEntry], out: &mut Vec<BarReport>) {
    for e in entries {
        fold.apply(e.seq, &e.subject, &e.payload, out);
    }
}

fn assert_fenced(result: Result<Manifest, CheckpointError>) {
    let error = result.expect_err("a deposed writer's manifest write must be refused");
    assert!(matches!(error, CheckpointError::Fenced(_)), "{error:#}");
}

/// A golden scenario: its fold config and events.
fn scenario() -> (FoldConfig, Vec<LogEntry>) {
    let dir = workspace_root().join("tests/golden/task_ttl");
    let args = std::fs::read_to_string(dir.join("args")).unwrap();
    (config_from_args(&args), read_log(&dir.join("events.jsonl")))
}

#[tokio::test]
async fn a_deposed_writers_late_writes_never_reach_its_successors_checkpoint() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    let (config, entries) = scenario();
    let (head, tail) = entries.split_at(entries.len() / 2);
    let mut uninterrupted = Fold::new(config);
    let mut expected = Vec::new();
    apply(&mut uninterrupted, &entries, &mut expected);

    // The writer checkpoints half-way, then folds on (its next write comes late).
    let mut reports = Vec::new();
    let mut deposed_fold = Fold::new(config);
    apply(&mut deposed_fold, head, &mut reports);
    let mut deposed = store(&js, "fenced", "aaaa").await;
    assert!(deposed.load().await.unwrap().is_none());
    let first = save(&mut deposed, &deposed_fold).await.unwrap();
    apply(&mut deposed_fold, &tail[..1], &mut Vec::new());

    // Its successor loads (and so claims) the checkpoint.
    let mut successor = store(&js, "fenced", "bbbb").await;
    let (manifest, mut fold) = successor.load().await.unwrap().expect("a checkpoint");
    assert_eq!((manifest.seq, manifest.generation), (first.seq, first.generation));

    // The deposed writer's late write: its chunks land under its own keys,
    // its manifest is refused; the successor's checkpoint is as it was.
    assert_fenced(save(&mut deposed, &deposed_fold).await);
    let kv = js.get_key_value(CHECKPOINT_BUCKET).await.unwrap();
    let chunk_keys: Vec<String> = {
        use futures::TryStreamExt as _;
        kv.keys().await.unwrap().try_collect().await.unwrap()
    };
    assert!(
        chunk_keys.iter().any(|k| k.starts_with("fenced.aaaa.g2.")),
        "the late chunks were written: {chunk_keys:?}"
    );
    let mut reader = store(&js, "fenced", "cccc").await;
    let (read, read_fold) = reader.load().await.unwrap().expect("a checkpoint");
    assert_eq!((read.seq, read.writer.as_str()), (first.seq, "aaaa"));
    assert_eq!(read_fold.to_checkpoint(), fold.to_checkpoint());

    // The reader claimed it last: the successor is deposed in turn, and the
    // reader resumes, folds on and checkpoints.
    assert_fenced(save(&mut successor, &fold).await);
    apply(&mut fold, tail, &mut reports);
    let mut resumed_fold = read_fold;
    let mut resumed_reports = Vec::new();
    apply(&mut resumed_fold, tail, &mut resumed_reports);
    let latest = save(&mut reader, &resumed_fold).await.unwrap();
    assert_eq!(latest.writer, "cccc");
    // Late writes of both deposed writers change nothing of it.
    assert_fenced(save(&mut deposed, &deposed_fold).await);
    assert_fenced(save(&mut successor, &fold).await);

    // Whoever comes next resumes the reader's checkpoint: the state and the
    // reports of a fold never interrupted, byte for byte.
    let mut next = store(&js, "fenced", "dddd").await;
    let (manifest, last) = next.load().await.unwrap().expect("a checkpoint");
    assert_eq!((manifest.seq, manifest.generation), (latest.seq, latest.generation));
    assert_eq!(last.to_checkpoint(), uninterrupted.to_checkpoint());
    let before: Vec<BarReport> = {
        let mut out = Vec::new();
        apply(&mut Fold::new(config), head, &mut out);
        out
    };
    let json = |reports: &[BarReport]| reports.iter().map(BarReport::to_json).collect::<Vec<_>>();
    assert_eq!(json(&[before, resumed_reports].concat()), json(&expected));
}

#[tokio::test]
async fn a_writer_that_never_checkpointed_is_fenced_by_its_successors_claim() {
    let server = NatsServer::start().expect("nats-server");
    let js = jetstream::new(server.client().await.unwrap());
    let (config, entries) = scenario();
    let mut fold = Fold::new(config);
    apply(&mut fold, &entries, &mut Vec::new());

    let mut deposed = store(&js, "fresh", "aaaa").await;
    assert!(deposed.load().await.unwrap().is_none());
    let mut successor = store(&js, "fresh", "bbbb").await;
    assert!(successor.load().await.unwrap().is_none(), "a claim is no checkpoint");
    assert_fenced(save(&mut deposed, &fold).await);
    let saved = save(&mut successor, &fold).await.unwrap();
    let (manifest, resumed) = store(&js, "fresh", "cccc")
        .await
        .load()
        .await
        .unwrap()
        .expect("the successor's checkpoint");
    assert_eq!((manifest.writer.as_str(), manifest.seq), ("bbbb", saved.seq));
    assert_eq!(resumed.to_checkpoint(), fold.to_checkpoint());
}
