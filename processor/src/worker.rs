//! The fold on a thread of its own, so that reading JetStream (async, on the
//! runtime) and folding (synchronous, CPU-bound) overlap instead of taking
//! turns.
//!
//! The driver sends [`Request`]s through a bounded channel; the worker answers
//! each with one [`Output`], in order, through another bounded channel. A
//! checkpoint is a request like any other, so the state it captures is the
//! state after exactly the events sent before it, and the driver, which
//! handles outputs in order, has published every report of those events
//! before it stores the checkpoint: a checkpoint never runs ahead of the
//! reports. The worker never touches the network and never reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use async_nats::Subject;
use backbeat_schemas::names::parse_subject;
use backbeat_schemas::BarReport;
use bytes::Bytes;
use tokio::sync::mpsc;

use backbeat_fold::{ClusterStatus, Fold, FoldConfig, Outcome};

/// One message of the stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub subject: Subject,
    pub payload: Bytes,
}

/// What the driver asks of the worker.
#[derive(Debug)]
pub enum Request {
    /// Fold these events (in stream order). `pending` is the consumer's count
    /// of messages after the last one; `arrived` is when the batch was read.
    Events {
        events: Vec<Event>,
        pending: u64,
        arrived: Instant,
    },
    /// Serialize the state as it is after every event sent so far.
    Checkpoint,
}

/// A checkpoint's content: the state after the event with sequence `seq`.
#[derive(Debug)]
pub struct CheckpointState {
    pub seq: u64,
    pub config: FoldConfig,
    pub state: Vec<u8>,
    /// Each cluster's lowest window not yet reported (0 before its first beat).
    pub next_to_close: BTreeMap<String, u64>,
}

/// The worker's answer to one request.
#[derive(Debug, Default)]
pub struct Output {
    /// The sequence of the last event folded so far.
    pub last_seq: u64,
    /// Reports closed by the request's events, in the order the fold emitted them.
    pub reports: Vec<BarReport>,
    /// Events folded, by [`Outcome`] (indexed by `Outcome as usize`).
    pub outcomes: [u64; Outcome::ALL.len()],
    /// The `pending` of the request (None for a checkpoint).
    pub pending: Option<u64>,
    pub arrived: Option<Instant>,
    /// The clusters' positions, when reports were closed or the stream's end was reached.
    pub views: Option<Vec<ClusterStatus>>,
    pub checkpoint: Option<CheckpointState>,
    /// Clusters refused by the fold's cluster limit for the first time (to
    /// log once each; at most [`REFUSED_CLUSTERS_MAX`] over the worker's life).
    pub refused_clusters: Vec<String>,
    /// Clusters the fold holds.
    pub clusters: usize,
}

/// Refused clusters remembered (and so logged) at most: their ids come from
/// clients, so the set is bounded; later ones are only counted.
pub const REFUSED_CLUSTERS_MAX: usize = 1024;

/// Requests and outputs in flight at most (each request holds up to one pull batch).
pub const CHANNEL_CAPACITY: usize = 8;

/// Starts the worker with `fold`. When the request channel closes, the worker
/// answers with a last checkpoint and stops.
pub fn spawn(fold: Fold) -> (mpsc::Sender<Request>, mpsc::Receiver<Output>) {
    let (request_tx, request_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (output_tx, output_rx) = mpsc::channel(CHANNEL_CAPACITY);
    std::thread::Builder::new()
        .name("backbeat-fold".into())
        .spawn(move || work(fold, request_rx, output_tx))
        .expect("starting the fold thread");
    (request_tx, output_rx)
}

fn work(mut fold: Fold, mut requests: mpsc::Receiver<Request>, outputs: mpsc::Sender<Output>) {
    let mut refused = BTreeSet::new();
    while let Some(request) = requests.blocking_recv() {
        let output = match request {
            Request::Events {
                events,
                pending,
                arrived,
            } => {
                let mut output = Output {
                    pending: Some(pending),
                    arrived: Some(arrived),
                    ..Output::default()
                };
                for event in &events {
                    // An event at or below the fold's position is skipped by the fold itself.
                    let outcome = fold.apply(event.seq, event.subject.as_str(), &event.payload, &mut output.reports);
                    output.outcomes[outcome as usize] += 1;
                    if outcome == Outcome::ClusterRefused && refused.len() < REFUSED_CLUSTERS_MAX {
                        if let Some((cluster_id, _)) = parse_subject(event.subject.as_str()) {
                            if refused.insert(cluster_id.to_string()) {
                                output.refused_clusters.push(cluster_id.to_string());
                            }
                        }
                    }
                }
                output.clusters = fold.cluster_count();
                output.last_seq = fold.last_seq();
                if !output.reports.is_empty() || pending == 0 {
                    output.views = Some(views(&fold));
                }
                output
            }
            Request::Checkpoint => checkpoint_output(&fold),
        };
        if outputs.blocking_send(output).is_err() {
            // The driver has stopped: nothing to answer to.
            return;
        }
    }
    let _ = outputs.blocking_send(checkpoint_output(&fold));
}

fn checkpoint_output(fold: &Fold) -> Output {
    let views = views(fold);
    Output {
        last_seq: fold.last_seq(),
        checkpoint: Some(CheckpointState {
            seq: fold.last_seq(),
            config: *fold.config(),
            state: fold.to_checkpoint(),
            next_to_close: views
                .iter()
                .map(|view| (view.cluster_id.clone(), view.next_to_close.unwrap_or(0)))
                .collect(),
        }),
        views: Some(views),
        clusters: fold.cluster_count(),
        ..Output::default()
    }
}

/// Every cluster's position.
pub fn views(fold: &Fold) -> Vec<ClusterStatus> {
    fold.cluster_ids().filter_map(|id| fold.cluster_status(id)).collect()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead as _;

    use backbeat_schemas::logfile::format_line;
    use backbeat_schemas::LogEntry;

    use super::*;

    /// Every golden scenario's events with each event but the first followed
    /// by a stranger at the same sequence (the next event's subject and
    /// payload), and the very first repeated last: what a redelivery or a
    /// hand-edited log could hold.
    fn with_repeats(events: &[LogEntry]) -> Vec<LogEntry> {
        let mut repeated = Vec::new();
        for pair in events.windows(2) {
            repeated.push(pair[0].clone());
            repeated.push(LogEntry {
                seq: pair[0].seq,
                ..pair[1].clone()
            });
        }
        repeated.extend(events.last().cloned());
        repeated.extend(events.first().cloned());
        repeated
    }

    /// `run`'s fold (this worker, fed as the driver feeds it) and `fold --log`
    /// give the same reports for a log with repeated sequences: those of the
    /// log without them. The rule is the fold's own, not a shell's.
    #[test]
    fn run_and_fold_log_agree_on_a_repeated_sequence() {
        let config = FoldConfig::with_bar_length(4);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/tasks/events.jsonl");
        let events: Vec<LogEntry> = std::io::BufReader::new(std::fs::File::open(path).unwrap())
            .lines()
            .enumerate()
            .map(|(n, line)| LogEntry::parse_line(&line.unwrap(), n as u64 + 1).unwrap().unwrap())
            .collect();
        let once: Vec<String> = crate::fold_all(
            config,
            events.iter().map(|e| (e.seq, e.subject.as_str(), e.payload.as_slice())),
        )
        .iter()
        .map(BarReport::to_json)
        .collect();
        assert!(once.len() >= 3, "the scenario closes windows");
        let repeated = with_repeats(&events);

        let log: String = repeated
            .iter()
            .map(|e| format_line(e.seq, &e.subject, &e.payload) + "\n")
            .collect();
        let mut folded = Vec::new();
        crate::logfold::fold_log(config, log.as_bytes(), &mut folded).unwrap();
        let folded: Vec<String> = String::from_utf8(folded).unwrap().lines().map(String::from).collect();
        assert_eq!(folded, once, "fold --log");

        let (requests, mut outputs) = spawn(Fold::new(config));
        let sent = repeated
            .iter()
            .map(|e| Event {
                seq: e.seq,
                subject: e.subject.clone().into(),
                payload: e.payload.clone().into(),
            })
            .collect();
        requests
            .blocking_send(Request::Events {
                events: sent,
                pending: 0,
                arrived: Instant::now(),
            })
            .unwrap();
        let output = outputs.blocking_recv().unwrap();
        // One stranger after each event but the last, and the first again.
        let skipped = output.outcomes[Outcome::AlreadyApplied as usize];
        assert_eq!(skipped, (repeated.len() - events.len()) as u64);
        let live: Vec<String> = output.reports.iter().map(BarReport::to_json).collect();
        assert_eq!(live, once, "run");
    }
}
