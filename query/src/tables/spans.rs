//! Where each window lies in time: the HLC of its first and last beat in the
//! events stream. `bar_reports.window_start`/`window_end` read it, so charts
//! by time are the same on every replay (an HLC is in the log; the moment a
//! report was published is not).

use std::collections::{HashMap, VecDeque};

/// The first and last beat seen of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first_beat: u64,
    pub first_ms: u64,
    pub last_beat: u64,
    pub last_ms: u64,
}

/// Spans by window id (a beat frame names its window's id, and so does its
/// report: the key needs no bar length), the oldest let go past a limit.
#[derive(Debug)]
pub struct WindowSpans {
    spans: HashMap<String, Span>,
    /// Window ids in the order they were first seen, for letting the oldest go.
    order: VecDeque<String>,
    windows_max: usize,
}

impl WindowSpans {
    pub fn new(windows_max: usize) -> Self {
        WindowSpans {
            spans: HashMap::new(),
            order: VecDeque::new(),
            windows_max: windows_max.max(1),
        }
    }

    /// Records beat `beat_index` with HLC physical time `hlc_ms` of window `window_id`.
    pub fn record(&mut self, window_id: &str, beat_index: u64, hlc_ms: u64) {
        if let Some(span) = self.spans.get_mut(window_id) {
            if beat_index < span.first_beat {
                (span.first_beat, span.first_ms) = (beat_index, hlc_ms);
            }
            if beat_index > span.last_beat {
                (span.last_beat, span.last_ms) = (beat_index, hlc_ms);
            }
            return;
        }
        let span = Span {
            first_beat: beat_index,
            first_ms: hlc_ms,
            last_beat: beat_index,
            last_ms: hlc_ms,
        };
        self.spans.insert(window_id.to_string(), span);
        self.order.push_back(window_id.to_string());
        while self.order.len() > self.windows_max {
            if let Some(oldest) = self.order.pop_front() {
                self.spans.remove(&oldest);
            }
        }
    }

    pub fn get(&self, window_id: &str) -> Option<Span> {
        self.spans.get(window_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_by_beat_index_and_bounded() {
        let mut spans = WindowSpans::new(2);
        spans.record("w", 5, 50);
        spans.record("w", 4, 40);
        spans.record("w", 7, 70);
        assert_eq!(
            spans.get("w"),
            Some(Span {
                first_beat: 4,
                first_ms: 40,
                last_beat: 7,
                last_ms: 70
            })
        );
        spans.record("x", 8, 80);
        spans.record("y", 12, 120);
        assert_eq!(spans.get("w"), None);
        assert!(spans.get("y").is_some());
    }
}
