//! When this node last heard from each peer, and the leader lease built on it.
//!
//! openraft 0.9 keeps a leader in the `Leader` state while it is cut off from
//! its followers until it hears of a higher term, so "raft says leader" is not
//! enough to emit. A heartbeat sent at `t` and acknowledged by a follower means
//! that follower will not vote for anyone else before `t + election timeout`;
//! with acknowledgements from a majority (counting itself) the leader knows no
//! other leader can exist yet. That lease is what the emitter checks before
//! every beat. The expected-sequence fence in the stream remains the safety
//! net; the lease keeps a deposed or isolated leader from even trying.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::NodeId;

#[derive(Debug, Clone, Copy, Default)]
struct PeerContact {
    /// Last successful exchange with the peer, either direction.
    last_contact: Option<Instant>,
    /// Term and send time of the latest append-entries the peer acknowledged.
    last_ack: Option<(u64, Instant)>,
}

/// Shared by the raft network (outgoing RPCs), the RPC handlers (incoming) and the emitter.
pub struct Contacts {
    me: NodeId,
    lease: Duration,
    peers: Mutex<BTreeMap<NodeId, PeerContact>>,
}

/// A peer as `/api/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerHealth {
    pub node_id: NodeId,
    pub addr: String,
    /// Milliseconds since the last successful raft exchange with it; None if never.
    pub last_contact_ms: Option<u64>,
    /// Heard from within the election timeout.
    pub healthy: bool,
}

impl Contacts {
    /// `election_timeout` is the raft minimum election timeout; it is the lease length.
    pub fn new(me: NodeId, election_timeout: Duration) -> Contacts {
        Contacts {
            me,
            lease: election_timeout,
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// A peer acknowledged an append-entries of `term` that this node sent at `sent_at`.
    pub fn record_ack(&self, peer: NodeId, term: u64, sent_at: Instant) {
        let mut peers = self.peers.lock().expect("contacts lock");
        let contact = peers.entry(peer).or_default();
        contact.last_contact = Some(Instant::now());
        if contact.last_ack.is_none_or(|(t, at)| (t, at) < (term, sent_at)) {
            contact.last_ack = Some((term, sent_at));
        }
    }

    /// A peer answered an RPC, or sent one to this node.
    pub fn record_contact(&self, peer: NodeId) {
        let mut peers = self.peers.lock().expect("contacts lock");
        peers.entry(peer).or_default().last_contact = Some(Instant::now());
    }

    /// Whether this node, leading in `term`, holds a lease over `voters` at `now`.
    pub fn lease_holds(&self, term: u64, voters: &BTreeSet<NodeId>, now: Instant) -> bool {
        let peers = self.peers.lock().expect("contacts lock");
        let acked = voters
            .iter()
            .filter(|id| {
                **id == self.me
                    || peers
                        .get(id)
                        .and_then(|c| c.last_ack)
                        .is_some_and(|(ack_term, sent_at)| {
                            ack_term == term && now.saturating_duration_since(sent_at) < self.lease
                        })
            })
            .count();
        acked * 2 > voters.len()
    }

    /// Health of every peer in `addrs` (this node excluded), as of now.
    pub fn health(&self, addrs: &BTreeMap<NodeId, String>) -> Vec<PeerHealth> {
        let peers = self.peers.lock().expect("contacts lock");
        let now = Instant::now();
        addrs
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, addr)| {
                let since = peers
                    .get(id)
                    .and_then(|c| c.last_contact)
                    .map(|t| now.saturating_duration_since(t));
                PeerHealth {
                    node_id: *id,
                    addr: addr.clone(),
                    last_contact_ms: since.map(|d| d.as_millis() as u64),
                    healthy: since.is_some_and(|d| d < self.lease),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_needs_a_fresh_majority_of_the_current_term() {
        let contacts = Contacts::new(1, Duration::from_millis(100));
        let voters: BTreeSet<NodeId> = [1, 2, 3].into();
        let t0 = Instant::now();
        assert!(!contacts.lease_holds(5, &voters, t0), "only itself");
        contacts.record_ack(2, 4, t0);
        assert!(!contacts.lease_holds(5, &voters, t0), "ack of an older term");
        contacts.record_ack(2, 5, t0);
        assert!(contacts.lease_holds(5, &voters, t0 + Duration::from_millis(50)));
        assert!(
            !contacts.lease_holds(5, &voters, t0 + Duration::from_millis(150)),
            "expired"
        );
        let single: BTreeSet<NodeId> = [1].into();
        assert!(contacts.lease_holds(9, &single, t0), "a group of one always has quorum");
    }
}
