//! The query benchmarks' generated history: CLUSTERS clusters of agents, L =
//! 120 (the service's default), 120 BPM (a window a minute), every agent
//! claiming once a window, beats interleaved with claims, and each window's
//! BarReport per cluster (its events' sequences, as the processor reports
//! them). Deterministic: the same arguments give the same bytes.
//!
//! [`build_archive`] lays the history out as the service does: the rows go
//! through the tail's tables (`TailTables`), every `seal_windows` windows a
//! seal takes what is reported (`to_seal`) and each file is written by the
//! archive writer's own [`write_file`].

// Each benchmark includes this file and uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use backbeat_query::archive::writer::write_file;
use backbeat_query::archive::{Archive, ArchiveView};
use backbeat_query::tables::{Applied, Table, TailTables};
use backbeat_schemas::window::{is_downbeat, phase_of, window_id};
use backbeat_tests::TestRng;

/// Beats a window: `serve`'s default `--bar-length`.
pub const BAR: u64 = 120;
/// Rows a row group: `serve`'s default `--archive-row-group-rows`.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// The first beat's time: 2026-01-01T20:00:00Z (a history of more than four
/// hours crosses midnight, so the archive has two dates).
pub const START_MS: u64 = 1_767_297_600_000;
/// 120 BPM.
pub const BEAT_MS: u64 = 500;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub clusters: u64,
    /// Agents in each cluster; each claims once a window.
    pub agents_per_cluster: u64,
    /// Claims at least (whole windows: a little more).
    pub claims: u64,
}

impl Shape {
    /// From `--clusters` (default 4), `--agents-per-cluster` (5000) and `--claims` (10M).
    pub fn from_flags() -> Shape {
        Shape {
            clusters: crate::serve::flag("--clusters", 4),
            agents_per_cluster: crate::serve::flag("--agents-per-cluster", 5000),
            claims: crate::serve::flag("--claims", 10_000_000),
        }
    }

    pub fn windows(&self) -> u64 {
        self.claims.div_ceil(self.clusters * self.agents_per_cluster).max(1)
    }

    pub fn cluster(&self, index: u64) -> String {
        format!("bench-{index}")
    }
}

/// One event of `BACKBEAT_EVENTS`, its sequence in a fresh stream.
pub struct Event {
    pub seq: u64,
    /// When it is stored, UTC microseconds (its beat's time and a millisecond).
    pub stored_at_us: i64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// One window of every cluster: its events in stream order, then its reports
/// (one a cluster, for `BACKBEAT_BARS` in this order).
pub struct WindowEvents {
    pub window: u64,
    pub events: Vec<Event>,
    pub claims: u64,
    /// `(cluster, payload)`.
    pub reports: Vec<(String, Vec<u8>)>,
    /// When the reports are stored: the next window's first beat, UTC microseconds.
    pub reported_at_us: i64,
}

/// The history, a window at a time.
pub struct History {
    shape: Shape,
    window: u64,
    seq: u64,
    rng: TestRng,
}

impl History {
    pub fn new(shape: Shape) -> Self {
        assert!(shape.clusters >= 1 && shape.agents_per_cluster >= 1);
        History {
            shape,
            window: 0,
            seq: 0,
            rng: TestRng::new(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn beat(cluster: &str, index: u64) -> Vec<u8> {
        let ms = START_MS + index * BEAT_MS;
        let deadline = backbeat_schemas::timestamp::format_utc_ms((ms + BEAT_MS) as i64);
        format!(
            r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{}","hlc":"{ms:x}:0000:0001","deadline_at":"{deadline}","tempo_bpm":120,"window_id":"{}"}}"#,
            is_downbeat(index, BAR),
            phase_of(index, BAR),
            window_id(cluster, BAR, index / BAR)
        )
        .into_bytes()
    }

    fn claim(&mut self, agent: u64, beat: u64, cluster: u64) -> Vec<u8> {
        let r = self.rng.next_u64();
        let window = beat / BAR;
        let task = (window / 3) ^ (agent & 7);
        let (state, progress) = match r % 20 {
            0 => ("failed", 0.5),
            1..=3 => ("reviewing", 0.9),
            4..=5 => ("done", 1.0),
            6 => ("helping", 0.3),
            7 => ("blocked", 0.2),
            _ => ("executing", (r % 90) as f64 / 100.0),
        };
        let ms = START_MS + beat * BEAT_MS + r % BEAT_MS;
        format!(
            r#"{{"type":"backbeat.statusclaim.v1","agent_id":"agent-{cluster}-{agent:05}","task_id":"build:{task}","beat_index":{beat},"state":"{state}","beats_left":{},"progress":{progress},"hlc":"{ms:x}:0000:00a1"}}"#,
            r % 400,
        )
        .into_bytes()
    }

    pub fn report(cluster: &str, window: u64, agents: u64, claims: u64, seq_first: u64, seq_last: u64) -> Vec<u8> {
        let (from, to) = (window * BAR, window * BAR + BAR - 1);
        format!(
            r#"{{"type":"backbeat.barreport.v1","window_id":"{}","from_beat":{from},"to_beat":{to},"agents_reporting":{agents},"on_time_reviews":{},"help_promises_fulfilled":{},"secret_rotations_ok":true,"tempo_drift_ms":{},"issues":[{{"code":"late_claims","count":{},"sample":["agent-0-00001"]}}],"cluster_id":"{cluster}","window_index":{window},"bar_length":{BAR},"beats_observed":{BAR},"claims_accepted":{claims},"claims_late":{},"claims_rejected":0,"tempo_bpm":120,"seq_first":{seq_first},"seq_last":{seq_last}}}"#,
            window_id(cluster, BAR, window),
            agents / 7,
            agents / 50,
            window % 5,
            1 + window % 3,
            1 + window % 3,
        )
        .into_bytes()
    }
}

impl Iterator for History {
    type Item = WindowEvents;

    /// The next window: each beat of each cluster followed by the claims of
    /// the agents whose turn it is (agent `a` claims at beat `a % L` of a window).
    fn next(&mut self) -> Option<WindowEvents> {
        if self.window >= self.shape.windows() {
            return None;
        }
        let window = self.window;
        let shape = self.shape;
        let clusters: Vec<String> = (0..shape.clusters).map(|c| shape.cluster(c)).collect();
        let per_beat = shape.agents_per_cluster.div_ceil(BAR);
        let mut events = Vec::with_capacity((shape.clusters * (shape.agents_per_cluster + BAR)) as usize);
        let mut spans = vec![(0u64, 0u64); clusters.len()];
        let mut claims = 0;
        for beat in window * BAR..(window + 1) * BAR {
            for (c, cluster) in clusters.iter().enumerate() {
                self.seq += 1;
                if beat % BAR == 0 {
                    spans[c].0 = self.seq;
                }
                let stored_at_us = ((START_MS + beat * BEAT_MS + 1) * 1000) as i64;
                events.push(Event {
                    seq: self.seq,
                    stored_at_us,
                    subject: format!("backbeat.{cluster}.beat"),
                    payload: History::beat(cluster, beat),
                });
                let first = (beat % BAR) * per_beat;
                for agent in first..(first + per_beat).min(shape.agents_per_cluster) {
                    self.seq += 1;
                    let payload = self.claim(agent, beat, c as u64);
                    events.push(Event {
                        seq: self.seq,
                        stored_at_us,
                        subject: format!("backbeat.{cluster}.claim"),
                        payload,
                    });
                    claims += 1;
                }
                spans[c].1 = self.seq;
            }
        }
        let reports = clusters
            .iter()
            .zip(&spans)
            .map(|(cluster, (first, last))| {
                let claims = shape.agents_per_cluster;
                let report = History::report(cluster, window, shape.agents_per_cluster, claims, *first, *last);
                (cluster.clone(), report)
            })
            .collect();
        self.window += 1;
        Some(WindowEvents {
            window,
            events,
            claims,
            reports,
            reported_at_us: ((START_MS + (window + 1) * BAR * BEAT_MS + 2) * 1000) as i64,
        })
    }
}

/// What [`build_archive`] wrote.
#[derive(Debug, Default)]
pub struct Built {
    pub claims: u64,
    pub windows: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Generates `shape`'s history into the archive at `dir` as the service
/// writes it: every `seal_windows` windows, a seal of what is reported.
pub async fn build_archive(dir: &Path, shape: Shape, seal_windows: u64) -> anyhow::Result<Built> {
    let archive = Archive::open(dir.to_str().expect("a UTF-8 path"))?;
    let mut tables = TailTables::new(BAR, 4_000_000);
    let mut view = ArchiveView::default();
    let (mut events_read, mut bars_read) = (0u64, 0u64);
    let mut built = Built::default();
    for window in History::new(shape) {
        for event in &window.events {
            let applied = tables.apply_event(event.seq, event.stored_at_us, &event.subject, &event.payload);
            assert_eq!(applied, Applied::Row, "a generated event is a row");
            events_read = event.seq;
        }
        for (cluster, report) in &window.reports {
            bars_read += 1;
            let subject = format!("backbeat.{cluster}.bar");
            let applied = tables.apply_bar(bars_read, window.reported_at_us, &subject, report);
            assert_eq!(applied, Applied::Row, "a generated report is a row");
        }
        built.claims += window.claims;
        built.windows += 1;
        if (window.window + 1) % seal_windows.max(1) == 0 {
            seal(
                &archive,
                &mut tables,
                &mut view,
                [events_read, bars_read, 0],
                false,
                &mut built,
            )
            .await?;
        }
    }
    // The last windows, as a writer's last round would (every report is read).
    seal(
        &archive,
        &mut tables,
        &mut view,
        [events_read, bars_read, 0],
        true,
        &mut built,
    )
    .await?;
    assert_eq!(tables.rows(Table::Claims).0, 0, "every claim archived");
    Ok(built)
}

/// One seal round, as `Archiver::seal` does it: what `to_seal` takes given
/// how far the streams were `read`, each file written, then the view installed.
async fn seal(
    archive: &Archive,
    tables: &mut TailTables,
    view: &mut ArchiveView,
    read: [u64; 3],
    force: bool,
    built: &mut Built,
) -> anyhow::Result<()> {
    for sealing in tables.to_seal(read, force) {
        let (file, _rows) = write_file(archive, &sealing, ROW_GROUP_ROWS).await?;
        built.files += 1;
        built.bytes += file.size;
        view.add(file);
    }
    tables.install(view.clone());
    Ok(())
}
