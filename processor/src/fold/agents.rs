//! Which open windows each agent is counted in, for `agents_reporting` (SPEC §5:
//! the size of the window's agent set).
//!
//! One table per cluster instead of one set per window: an agent's id is
//! allocated once while it keeps claiming, not once per window, and closing a
//! window frees nothing per agent. An agent is forgotten once it has no open
//! window and has not claimed for [`AGENT_KEEP_WINDOWS`] windows, so the table
//! grows with the fleet, never with the log.

use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

/// Windows an agent without a claim is kept for (only a cost trade-off:
/// forgetting sooner or later never changes a report).
pub const AGENT_KEEP_WINDOWS: u64 = 2;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AgentWindows {
    /// Open windows the agent is counted in (usually one or two).
    open: Vec<u64>,
    /// The highest window it was counted in.
    last: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentTable {
    agents: HashMap<Box<str>, AgentWindows>,
}

impl AgentTable {
    /// Counts `agent` in open window `window`; true when it was not counted there yet.
    pub fn count_in(&mut self, agent: &str, window: u64) -> bool {
        let entry = self.agents.entry_ref(agent).or_default();
        if entry.open.contains(&window) {
            return false;
        }
        entry.open.push(window);
        entry.last = entry.last.max(window);
        true
    }

    /// Window `closed` is reported: no agent is counted in it any more.
    pub fn close(&mut self, closed: u64) {
        self.agents.retain(|_, entry| {
            entry.open.retain(|&w| w > closed);
            !entry.open.is_empty() || entry.last + AGENT_KEEP_WINDOWS > closed
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.agents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_counts_once_per_window_and_is_forgotten_after_its_windows_close() {
        let mut table = AgentTable::default();
        assert!(table.count_in("a", 0));
        assert!(!table.count_in("a", 0));
        assert!(table.count_in("a", 1));
        assert!(table.count_in("b", 1));
        table.close(0);
        assert!(!table.count_in("a", 1), "still counted in open window 1");
        table.close(1);
        assert!(table.count_in("a", 2), "window 2 is new");
        for w in 2..=2 + AGENT_KEEP_WINDOWS {
            table.close(w);
        }
        assert_eq!(table.len(), 0);
    }
}
