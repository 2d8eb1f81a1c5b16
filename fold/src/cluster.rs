//! One cluster's fold (SPEC §5): beats move the clock and close windows,
//! claims land in windows, and each closed window becomes a BarReport.

use std::collections::{BTreeMap, VecDeque};

use backbeat_schemas::message::{task_kind, BarReportType};
use backbeat_schemas::report::ISSUE_SAMPLE_LEN_MAX;
use backbeat_schemas::window::{from_beat, to_beat, window_id, window_of, WindowIdCache};
use backbeat_schemas::{validate_beat_tick, validate_claim, BarReport, ClaimState};
use serde::{Deserialize, Serialize};

use super::accumulator::{IssueCode, WindowAccumulator};
use super::roster::{ClaimEffect, Roster, TaskClaim, TaskClaimKind};
use super::{ClusterStatus, FoldConfig, Outcome};

/// A beat that was applied: what drift and tempo need of it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RecordedBeat {
    index: u64,
    hlc_ms: u64,
    tempo_bpm: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClusterFold {
    cluster_id: String,
    /// None until the first beat is applied.
    current_beat: Option<u64>,
    /// The lowest window not yet reported (meaningful once a beat was seen).
    next_to_close: u64,
    /// Counts made before the first beat; they go into the first report.
    before_first_beat: WindowAccumulator,
    /// Accumulators of windows at or above `next_to_close`.
    windows: BTreeMap<u64, WindowAccumulator>,
    /// Applied beats with index >= from_beat(next_to_close), ascending.
    recent_beats: VecDeque<RecordedBeat>,
    /// Tempo of the highest applied beat below `recent_beats`, if any.
    tempo_before_recent: Option<u32>,
    /// Tempo of the last applied beat (for `tempo_changes`).
    last_tempo: Option<u32>,
    /// The agents (the open windows each is counted in) and their tasks.
    roster: Roster,
    /// The window id of the last beat's window. Not part of the state.
    #[serde(skip)]
    window_ids: WindowIdCache,
}

impl ClusterFold {
    pub(super) fn new(cluster_id: String) -> Self {
        ClusterFold {
            cluster_id,
            current_beat: None,
            next_to_close: 0,
            before_first_beat: WindowAccumulator::default(),
            windows: BTreeMap::new(),
            recent_beats: VecDeque::new(),
            tempo_before_recent: None,
            last_tempo: None,
            roster: Roster::default(),
            window_ids: WindowIdCache::default(),
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.cluster_id
    }

    /// Moves `next_to_close` without closing windows: a damaged state, for tests.
    #[cfg(test)]
    pub(super) fn spoil_next_to_close(&mut self, next_to_close: u64) {
        self.next_to_close = next_to_close;
    }

    /// Sets the current beat alone: a damaged state, for tests.
    #[cfg(test)]
    pub(super) fn spoil_current_beat(&mut self, current_beat: Option<u64>) {
        self.current_beat = current_beat;
    }

    /// Forgets the recent beats: a damaged state, for tests.
    #[cfg(test)]
    pub(super) fn spoil_recent_beats_clear(&mut self) {
        self.recent_beats.clear();
    }

    /// Puts the recent beats in descending order: a damaged state, for tests.
    #[cfg(test)]
    pub(super) fn spoil_recent_beats_order(&mut self) {
        self.recent_beats.make_contiguous().reverse();
    }

    /// Why a state read from a checkpoint is not one the fold can have
    /// reached with events up to sequence `last_seq`, if it is not: its open
    /// windows are at or above `next_to_close`, and hold no event after
    /// `last_seq`, and none the current beat closed (none before the first
    /// beat), and the next to close starts at or below the current beat; its
    /// recent beats ascend
    /// up to the current beat, each with a tempo a beat may have (1 to 1000
    /// bpm). The fold's own checkpoints always hold these; a damaged one
    /// that does not would close windows the fold never had (or 2^40 of
    /// them at one beat), or break the arithmetic of drift and tempo (all
    /// found by the `checkpoint` fuzz target).
    pub(super) fn inconsistency(&self, config: &FoldConfig, last_seq: u64) -> Option<&'static str> {
        // After each beat, every window it closes is closed (`apply_beat`'s
        // loop): a state far behind its current beat would close them all,
        // a report each, at the next beat.
        let closed_to = (self.next_to_close.saturating_add(1))
            .saturating_mul(config.bar_length)
            .saturating_add(config.lateness);
        if self.current_beat.is_some_and(|current| closed_to <= current) {
            return Some("windows the current beat closed are still open");
        }
        // The next window to close starts at or below the current beat (the
        // first beat's window, or one a later beat closed up to): a later
        // beat never opens a window below it.
        let next_from = self.next_to_close.checked_mul(config.bar_length);
        if self
            .current_beat
            .is_some_and(|current| next_from.is_none_or(|from| from > current))
        {
            return Some("the next window to close is above the current beat");
        }
        // Before the first beat everything is counted in `before_first_beat`.
        if self.current_beat.is_none() && !self.windows.is_empty() {
            return Some("a window is open before the first beat");
        }
        // ... and no window is closed yet: the first beat sets the next to close.
        if self.current_beat.is_none() && self.next_to_close != 0 {
            return Some("a window was closed before the first beat");
        }
        let first_open = self.windows.keys().next();
        if first_open.is_some_and(|&first| first < self.next_to_close) {
            return Some("an open window is below the next window to close");
        }
        let beats = &self.recent_beats;
        if beats.iter().zip(beats.iter().skip(1)).any(|(a, b)| a.index >= b.index) {
            return Some("the recent beats do not ascend");
        }
        // The last beat applied is the highest: a later one goes after all.
        if beats
            .back()
            .is_some_and(|last| self.current_beat.is_none_or(|current| last.index > current))
        {
            return Some("a recent beat is above the current beat");
        }
        let tempos = beats.iter().map(|beat| beat.tempo_bpm);
        let mut tempos = tempos.chain(self.tempo_before_recent).chain(self.last_tempo);
        if tempos.any(|tempo_bpm| !(1..=1000).contains(&tempo_bpm)) {
            return Some("a beat's tempo is not from 1 to 1000 bpm");
        }
        let accumulators = std::iter::once(&self.before_first_beat).chain(self.windows.values());
        for acc in accumulators {
            if acc.seq_last > last_seq || acc.seq_first > acc.seq_last {
                return Some("a window holds an event after the last sequence applied");
            }
        }
        None
    }

    /// The lowest window not yet reported (0 before the first beat).
    pub(super) fn next_to_close(&self) -> u64 {
        self.next_to_close
    }

    pub(super) fn status(&self) -> ClusterStatus {
        ClusterStatus {
            cluster_id: self.cluster_id.clone(),
            current_beat: self.current_beat,
            next_to_close: self.current_beat.map(|_| self.next_to_close),
            open_windows: self.windows.keys().copied().collect(),
            tasks: self.roster.task_count() as u64,
            agents: self.roster.agent_count() as u64,
        }
    }

    /// Where rejected, stale and late events are counted: window `next_to_close`
    /// as it stands, or the first report before any beat.
    fn counting_window(&mut self) -> &mut WindowAccumulator {
        if self.current_beat.is_none() {
            &mut self.before_first_beat
        } else {
            self.windows.entry(self.next_to_close).or_default()
        }
    }

    pub(super) fn apply_beat(
        &mut self,
        config: &FoldConfig,
        seq: u64,
        payload: &[u8],
        out: &mut Vec<BarReport>,
    ) -> Outcome {
        let bar_length = config.bar_length;
        let beat = match validate_beat_tick(payload, &self.cluster_id, bar_length, &mut self.window_ids) {
            Ok(beat) => beat,
            Err(rejection) => {
                self.counting_window()
                    .issue(IssueCode::RejectedBeats)
                    .add(&rejection.reason.as_str());
                return Outcome::BeatRejected;
            }
        };
        let index = beat.beat_index;
        match self.current_beat {
            Some(current) if index <= current => {
                self.counting_window()
                    .issue(IssueCode::StaleBeats)
                    .add(&index.to_string());
                return Outcome::BeatStale;
            }
            Some(current) if index - current > config.max_jump => {
                self.counting_window().issue(IssueCode::RejectedBeats).add("beat_jump");
                return Outcome::BeatRejected;
            }
            Some(current) => self.count_missing(current + 1, index, bar_length),
            None => {
                self.next_to_close = window_of(index, bar_length);
                let first = std::mem::take(&mut self.before_first_beat);
                self.windows.insert(self.next_to_close, first);
            }
        }

        let window = self.windows.entry(window_of(index, bar_length)).or_default();
        window.beats_observed += 1;
        window.applied(seq);
        if self.last_tempo.is_some_and(|tempo| tempo != beat.tempo_bpm) {
            window.issue(IssueCode::TempoChanges).add(&index.to_string());
        }
        self.last_tempo = Some(beat.tempo_bpm);
        self.recent_beats.push_back(RecordedBeat {
            index,
            hlc_ms: beat.hlc.physical_ms,
            tempo_bpm: beat.tempo_bpm,
        });
        self.current_beat = Some(index);

        while (self.next_to_close + 1)
            .saturating_mul(bar_length)
            .saturating_add(config.lateness)
            <= index
        {
            out.push(self.close(config));
        }
        Outcome::BeatApplied
    }

    /// Counts beats `from..to` (exclusive) missing, each in its window.
    fn count_missing(&mut self, from: u64, to: u64, bar_length: u64) {
        let mut beat = from;
        while beat < to {
            let window = window_of(beat, bar_length);
            let end = to.min(to_beat(window, bar_length).saturating_add(1));
            self.windows
                .entry(window)
                .or_default()
                .issue(IssueCode::MissingBeats)
                .add_many(end - beat, (beat..end).map(|b| b.to_string()));
            beat = end;
        }
    }

    pub(super) fn apply_claim(&mut self, config: &FoldConfig, seq: u64, payload: &[u8]) -> Outcome {
        let claim = match validate_claim(payload) {
            Ok(claim) => claim,
            Err(rejection) => {
                self.reject_claim(&rejection.reason.as_str());
                return Outcome::ClaimRejected;
            }
        };
        let Some(current) = self.current_beat else {
            self.reject_claim("no_beat_yet");
            return Outcome::ClaimRejected;
        };
        if claim.beat_index > current.saturating_add(config.future) {
            self.reject_claim("future_beat");
            return Outcome::ClaimRejected;
        }
        let window_index = window_of(claim.beat_index, config.bar_length);
        if window_index < self.next_to_close {
            let window = self.counting_window();
            window.claims_late += 1;
            window.issue(IssueCode::LateClaims).add(&claim.agent_id);
            return Outcome::ClaimLate;
        }

        // The caps (an extension of SPEC §5) are checked before anything is
        // applied: a claim over a cap is rejected whole, as an invalid one is.
        let Some(agent) = self.roster.agent(&claim.agent_id, config.max_agents_per_cluster) else {
            self.reject_claim("too_many_agents");
            return Outcome::ClaimRejected;
        };
        let mut effect = ClaimEffect::default();
        if let Some(task_id) = claim.task_id.as_deref() {
            let kind = match claim.state {
                ClaimState::Helping => TaskClaimKind::Helping,
                ClaimState::Reviewing => TaskClaimKind::Delivering,
                ClaimState::Done => TaskClaimKind::Done,
                _ => TaskClaimKind::Other,
            };
            let task_claim = TaskClaim {
                task_id,
                beat_index: claim.beat_index,
                beats_left: claim.beats_left,
                kind,
                window: window_index,
            };
            match self
                .roster
                .apply_task_claim(agent, task_claim, config.bar_length, config.max_tasks_per_agent)
            {
                Some(applied) => effect = applied,
                None => {
                    self.reject_claim("too_many_tasks");
                    return Outcome::ClaimRejected;
                }
            }
        }

        let window = self.windows.entry(window_index).or_default();
        window.claims_accepted += 1;
        window.applied(seq);
        if self.roster.count_in(agent, window_index) {
            window.agents_reporting += 1;
        }
        window.on_time_reviews += u64::from(effect.on_time_review);
        window.help_promises_fulfilled += u64::from(effect.help_fulfilled);
        if let Some(task_id) = claim.task_id.as_deref() {
            if claim.state == ClaimState::Failed && task_kind(task_id) == "secret-rotation" {
                window.secret_rotations_ok = false;
                window.issue(IssueCode::SecretRotationFailed).add(task_id);
            }
        }
        Outcome::ClaimApplied
    }

    fn reject_claim(&mut self, reason: &str) {
        let window = self.counting_window();
        window.claims_rejected += 1;
        window.issue(IssueCode::RejectedClaims).add(reason);
    }

    /// Reports window `next_to_close` and moves past it.
    fn close(&mut self, config: &FoldConfig) -> BarReport {
        let bar_length = config.bar_length;
        let w = self.next_to_close;
        let (first, last) = (from_beat(w, bar_length), to_beat(w, bar_length));
        let mut acc = self.windows.remove(&w).unwrap_or_default();

        let (overdue, sample) = self.roster.close(w, config.task_ttl, bar_length, ISSUE_SAMPLE_LEN_MAX);
        if overdue > 0 {
            // Each task once (keys are unique), so the sample is the first ids.
            acc.issue(IssueCode::OverdueTasks).add_many(overdue, sample.into_iter());
        }

        let report = BarReport {
            kind: BarReportType,
            window_id: window_id(&self.cluster_id, bar_length, w),
            from_beat: first,
            to_beat: last,
            agents_reporting: acc.agents_reporting,
            on_time_reviews: acc.on_time_reviews,
            help_promises_fulfilled: acc.help_promises_fulfilled,
            secret_rotations_ok: acc.secret_rotations_ok,
            tempo_drift_ms: self.drift_ms(first, last),
            issues: acc.issue_list(),
            cluster_id: self.cluster_id.clone(),
            window_index: w,
            bar_length,
            beats_observed: acc.beats_observed,
            claims_accepted: acc.claims_accepted,
            claims_late: acc.claims_late,
            claims_rejected: acc.claims_rejected,
            tempo_bpm: self.tempo_at_or_below(last),
            seq_first: acc.seq_first,
            seq_last: acc.seq_last,
        };

        self.next_to_close = w + 1;
        let next_first = last.saturating_add(1);
        while self.recent_beats.front().is_some_and(|b| b.index < next_first) {
            let dropped = self.recent_beats.pop_front().expect("front exists");
            self.tempo_before_recent = Some(dropped.tempo_bpm);
        }
        report
    }

    /// SPEC §5 "Tempo drift" over beats `first ..= last + 1`.
    fn drift_ms(&self, first: u64, last: u64) -> i64 {
        let beats: Vec<&RecordedBeat> = self
            .recent_beats
            .iter()
            .filter(|b| b.index >= first && b.index <= last.saturating_add(1))
            .collect();
        let (Some(f), Some(g)) = (beats.first(), beats.last()) else {
            return 0;
        };
        if beats.len() < 2 {
            return 0;
        }
        let actual_us = (i128::from(g.hlc_ms) - i128::from(f.hlc_ms)) * 1000;
        let expected_us: i128 = beats
            .windows(2)
            .map(|pair| i128::from(pair[1].index - pair[0].index) * i128::from(60_000_000 / pair[0].tempo_bpm))
            .sum();
        // Integer division truncates toward zero, as SPEC asks (-1999 µs is -1).
        ((actual_us - expected_us) / 1000) as i64
    }

    /// The tempo of the last applied beat with index <= `beat`; 0 if none.
    fn tempo_at_or_below(&self, beat: u64) -> u32 {
        self.recent_beats
            .iter()
            .rev()
            .find(|b| b.index <= beat)
            .map(|b| b.tempo_bpm)
            .or(self.tempo_before_recent)
            .unwrap_or(0)
    }
}
