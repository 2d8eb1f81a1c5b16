//! Reading the past: `export` (a slice of the stream as a SPEC §7 log file) and
//! `replay` (re-deriving past windows' reports from the stream).
//!
//! Both fold one cluster's events with the same pure fold the live run uses,
//! so a replayed report is byte-identical to the published one. Both fold from
//! the start of the stream or from a checkpoint the live run kept
//! (`crate::checkpoint::replay_start`), which gives the same state.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use backbeat_schemas::names::{subject, SubjectKind, BARS_STREAM, EVENTS_STREAM};
use backbeat_schemas::{format_line, BarReport};
use futures::StreamExt as _;

use crate::driver::filter_subjects;
use backbeat_fold::{Fold, FoldConfig};

/// One stored message.
pub struct StoredEvent<'a> {
    pub seq: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// Calls `each` with every message of `stream_name` on `subjects` in stream
/// order, from sequence `from_seq` (1: the start) to the end of the stream as
/// it is when called (or until `each` breaks).
async fn for_each_message(
    js: &jetstream::Context,
    stream_name: &str,
    subjects: Vec<String>,
    from_seq: u64,
    mut each: impl FnMut(StoredEvent<'_>) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<()> {
    let stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("opening {stream_name}"))?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: subjects,
            deliver_policy: if from_seq <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq,
                }
            },
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating a reader of {stream_name}"))?;
    if consumer
        .info()
        .await
        .context("reading the reader's position")?
        .num_pending
        == 0
    {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading {stream_name}"))?;
    while let Some(message) = messages.next().await {
        let message = message.with_context(|| format!("reading {stream_name}"))?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message without metadata: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let flow = each(StoredEvent {
            seq,
            subject: message.subject.as_str(),
            payload: &message.payload,
        })?;
        if flow.is_break() || pending == 0 {
            break;
        }
    }
    Ok(())
}

/// Windows `from ..= to` (to: open-ended when None).
#[derive(Debug, Clone, Copy)]
pub struct WindowRange {
    pub from: u64,
    pub to: Option<u64>,
}

impl WindowRange {
    pub fn contains(&self, window: u64) -> bool {
        window >= self.from && self.to.is_none_or(|to| window <= to)
    }

    fn past(&self, window: u64) -> bool {
        self.to.is_some_and(|to| window >= to)
    }
}

/// Writes the cluster's events as a log file. With a window range, the slice is
/// the events folded while those windows were being reported: from just after
/// the event that closed window `from − 1` (or the stream start) through the
/// event that closed window `to` (or the stream end). It folds from the
/// stream's start, or from `start` (as in [`replay`]), whose state has not
/// yet reported window `from − 1`.
pub async fn export(
    js: &jetstream::Context,
    config: FoldConfig,
    cluster_id: &str,
    range: WindowRange,
    start: Option<(u64, Fold)>,
    mut out: impl Write,
) -> anyhow::Result<u64> {
    let (from_seq, mut fold) = match start {
        Some((seq, fold)) => (seq + 1, fold),
        None => (1, Fold::new(config)),
    };
    let mut reports = Vec::new();
    let mut inside = range.from == 0;
    let mut written = 0u64;
    let subjects = filter_subjects(&[cluster_id.to_string()]);
    for_each_message(js, EVENTS_STREAM, subjects, from_seq, |event| {
        fold.apply(event.seq, event.subject, event.payload, &mut reports);
        if inside {
            out.write_all(format_line(event.seq, event.subject, event.payload).as_bytes())?;
            out.write_all(b"\n")?;
            written += 1;
        }
        let mut flow = ControlFlow::Continue(());
        for report in reports.drain(..) {
            if report.window_index + 1 == range.from {
                inside = true;
            }
            if range.past(report.window_index) {
                flow = ControlFlow::Break(());
            }
        }
        Ok(flow)
    })
    .await?;
    out.flush()?;
    Ok(written)
}

/// Re-derives the reports of `range` for one cluster, in window order, calling
/// `each` for each one as it is derived. It folds from the stream's start, or
/// from `start`: a fold of that cluster resumed from a checkpoint after the
/// event with the given sequence, whose state has not yet reported `range.from`.
pub async fn replay(
    js: &jetstream::Context,
    config: FoldConfig,
    cluster_id: &str,
    range: WindowRange,
    start: Option<(u64, Fold)>,
    mut each: impl FnMut(BarReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (from_seq, mut fold) = match start {
        Some((seq, fold)) => (seq + 1, fold),
        None => (1, Fold::new(config)),
    };
    let mut reports = Vec::new();
    let mut derived = Vec::new();
    let subjects = filter_subjects(&[cluster_id.to_string()]);
    for_each_message(js, EVENTS_STREAM, subjects, from_seq, |event| {
        fold.apply(event.seq, event.subject, event.payload, &mut reports);
        let mut flow = ControlFlow::Continue(());
        for report in reports.drain(..) {
            if range.past(report.window_index) {
                flow = ControlFlow::Break(());
            }
            if range.contains(report.window_index) {
                derived.push(report);
            }
        }
        Ok(flow)
    })
    .await?;
    for report in derived {
        each(report)?;
    }
    Ok(())
}

/// What is stored on one cluster's bar subject for a range of windows.
#[derive(Debug, Default)]
pub struct Published {
    /// Per window, every stored report claiming it, as its exact bytes, in
    /// stream order (more than one only when someone else published one).
    pub by_window: BTreeMap<u64, Vec<String>>,
    /// Messages on the subject that are not BarReports at all (skipped).
    pub foreign: u64,
}

/// The reports of `range` already published for one cluster in
/// `BACKBEAT_BARS` (nothing when the stream does not exist yet). Anyone may
/// publish on the subject, so a message is not taken for the processor's
/// report on its word: see [`compare`].
pub async fn published_reports(
    js: &jetstream::Context,
    cluster_id: &str,
    range: WindowRange,
) -> anyhow::Result<Published> {
    let mut published = Published::default();
    if js.get_stream(BARS_STREAM).await.is_err() {
        return Ok(published);
    }
    for_each_message(
        js,
        BARS_STREAM,
        vec![subject(cluster_id, SubjectKind::Bar)],
        1,
        |message| {
            let report = std::str::from_utf8(message.payload)
                .ok()
                .and_then(|text| Some((text, serde_json::from_str::<BarReport>(text).ok()?)));
            match report {
                Some((text, report)) if report.cluster_id == cluster_id => {
                    if range.contains(report.window_index) {
                        published
                            .by_window
                            .entry(report.window_index)
                            .or_default()
                            .push(text.to_string());
                    }
                }
                _ => {
                    tracing::warn!(
                        seq = message.seq,
                        "a message on the bar subject is not a report of this cluster; skipped"
                    );
                    published.foreign += 1;
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )
    .await?;
    Ok(published)
}

/// How replayed reports compare with the published ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Replayed windows with a published report of the same bytes.
    pub identical: u64,
    /// Replayed windows not (yet) published.
    pub unpublished: u64,
    /// Windows whose published reports all differ from the replayed one, or
    /// that were published but not re-derived at all.
    pub differing: Vec<u64>,
    /// The bar length the published reports were made with, when it is not the replay's.
    pub published_bar_length: Option<u64>,
}

/// Compares `derived` (folded with bar length `bar_length`) with `published`
/// (from [`published_reports`]), byte for byte. A window is identical when
/// one of its stored reports is the replayed bytes (others are someone
/// else's). A published window not re-derived differs when it lies below the
/// highest window re-derived, or, with none re-derived, when it was made
/// with another bar length (other fold flags: nothing closes); above, it is
/// not closed in the stream (a forgery, or not yet read).
pub fn compare(derived: &[BarReport], published: &BTreeMap<u64, Vec<String>>, bar_length: u64) -> Comparison {
    let mut comparison = Comparison::default();
    let mut derived_windows = std::collections::BTreeSet::new();
    for report in derived {
        derived_windows.insert(report.window_index);
        match published.get(&report.window_index) {
            None => comparison.unpublished += 1,
            Some(texts) if texts.contains(&report.to_json()) => comparison.identical += 1,
            Some(_) => comparison.differing.push(report.window_index),
        }
    }
    comparison.published_bar_length = published
        .values()
        .flatten()
        .filter_map(|text| serde_json::from_str::<BarReport>(text).ok())
        .map(|report| report.bar_length)
        .find(|l| *l != bar_length);
    let highest = derived_windows.last().copied();
    let other_bar_length = comparison.published_bar_length.is_some();
    comparison.differing.extend(
        published
            .keys()
            .filter(|w| !derived_windows.contains(w))
            .filter(|&&w| highest.map_or(other_bar_length, |highest| w < highest)),
    );
    comparison.differing.sort_unstable();
    comparison
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(window: u64, bar_length: u64, agents: u64) -> BarReport {
        let mut report: BarReport = serde_json::from_str(
            r#"{"type":"backbeat.barreport.v1","window_id":"x","from_beat":0,"to_beat":0,"agents_reporting":0,
                "on_time_reviews":0,"help_promises_fulfilled":0,"secret_rotations_ok":true,"tempo_drift_ms":0,"issues":[]}"#,
        )
        .unwrap();
        report.window_index = window;
        report.bar_length = bar_length;
        report.agents_reporting = agents;
        report
    }

    #[test]
    fn replayed_reports_are_compared_byte_for_byte() {
        let published: BTreeMap<u64, Vec<String>> = [
            (1, vec![report(1, 4, 3).to_json()]),
            (2, vec![report(2, 4, 3).to_json()]),
            (3, vec![report(3, 4, 3).to_json()]),
            // Someone else's report of window 5, then ours; and a far-future one.
            (5, vec![report(5, 4, 7).to_json(), report(5, 4, 1).to_json()]),
            (1000, vec![report(1000, 4, 1).to_json()]),
        ]
        .into();
        let derived = [report(1, 4, 3), report(2, 4, 9), report(4, 4, 1), report(5, 4, 1)];
        let comparison = compare(&derived, &published, 4);
        assert_eq!(
            comparison,
            Comparison {
                identical: 2,
                unpublished: 1,
                differing: vec![2, 3],
                published_bar_length: None
            }
        );
        // Folded with another bar length, nothing is re-derived: every published window differs.
        let comparison = compare(&[], &published, 5);
        assert_eq!(comparison.differing, vec![1, 2, 3, 5, 1000]);
        assert_eq!(comparison.published_bar_length, Some(4));
    }
}
