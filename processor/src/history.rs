//! Reading the past: `export` (a slice of the stream as a SPEC §7 log file) and
//! `replay` (re-deriving past windows' reports from the stream).
//!
//! Both fold one cluster's events from the start of the stream with the same
//! pure fold the live run uses, so a replayed report is byte-identical to the
//! published one.

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use backbeat_schemas::names::EVENTS_STREAM;
use backbeat_schemas::{format_line, BarReport};
use futures::StreamExt as _;

use crate::driver::filter_subjects;
use crate::fold::{Fold, FoldConfig};

/// One stored message.
pub struct StoredEvent<'a> {
    pub seq: u64,
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// Calls `each` with every message on `subjects` in stream order, from the start
/// to the end of the stream as it is when called (or until `each` breaks).
pub async fn for_each_event(
    js: &jetstream::Context,
    subjects: Vec<String>,
    mut each: impl FnMut(StoredEvent<'_>) -> anyhow::Result<ControlFlow<()>>,
) -> anyhow::Result<()> {
    let stream = js.get_stream(EVENTS_STREAM).await.context("opening BACKBEAT_EVENTS")?;
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: subjects,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("creating a reader of BACKBEAT_EVENTS")?;
    if consumer
        .info()
        .await
        .context("reading the reader's position")?
        .num_pending
        == 0
    {
        return Ok(());
    }
    let mut messages = consumer.messages().await.context("reading BACKBEAT_EVENTS")?;
    while let Some(message) = messages.next().await {
        let message = message.context("reading BACKBEAT_EVENTS")?;
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
/// event that closed window `to` (or the stream end).
pub async fn export(
    js: &jetstream::Context,
    config: FoldConfig,
    cluster_id: &str,
    range: WindowRange,
    mut out: impl Write,
) -> anyhow::Result<u64> {
    let mut fold = Fold::new(config);
    let mut reports = Vec::new();
    let mut inside = range.from == 0;
    let mut written = 0u64;
    for_each_event(js, filter_subjects(&[cluster_id.to_string()]), |event| {
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
/// `each` for each one as it is derived.
pub async fn replay(
    js: &jetstream::Context,
    config: FoldConfig,
    cluster_id: &str,
    range: WindowRange,
    mut each: impl FnMut(BarReport) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut fold = Fold::new(config);
    let mut reports = Vec::new();
    let mut derived = Vec::new();
    for_each_event(js, filter_subjects(&[cluster_id.to_string()]), |event| {
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
