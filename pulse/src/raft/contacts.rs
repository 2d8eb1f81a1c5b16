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

#[derive(Debug, Clone, Default)]
struct PeerContact {
    /// Last successful raft exchange with the peer, either direction.
    last_raft_contact: Option<Instant>,
    /// Term and send time of the latest append-entries the peer acknowledged.
    last_ack: Option<(u64, Instant)>,
    /// Last time the peer answered a probe (`GET /raft/info`).
    last_health_answer: Option<Instant>,
    /// Last time the peer said it was ready to emit (connected to NATS).
    last_ready_answer: Option<Instant>,
    /// The peer's admin HTTP address (`--listen`), as it last told.
    admin_addr: Option<String>,
}

/// Shared by the raft network (outgoing RPCs), the RPC handlers (incoming),
/// the health prober and the emitter.
pub struct Contacts {
    me: NodeId,
    lease: Duration,
    health_window: Duration,
    peers: Mutex<BTreeMap<NodeId, PeerContact>>,
}

/// A peer as `/api/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerHealth {
    pub node_id: NodeId,
    /// Its raft address (from `--peers`).
    pub addr: String,
    /// Its admin HTTP address, once it answered a probe.
    pub admin_addr: Option<String>,
    /// Milliseconds since the last successful raft exchange with it; None if never.
    pub last_raft_contact_ms: Option<u64>,
    /// Milliseconds since it last answered a probe; None if never.
    pub last_health_answer_ms: Option<u64>,
    /// It answered a probe, or exchanged raft messages, within the election timeout.
    pub healthy: bool,
}

impl Contacts {
    /// `lease` is how long a follower that acknowledged a heartbeat refuses to vote
    /// for another candidate (openraft's leader lease); `health_window` is how
    /// recent a peer's last answer must be for it to count as healthy.
    pub fn new(me: NodeId, lease: Duration, health_window: Duration) -> Contacts {
        Contacts {
            me,
            lease,
            health_window,
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    fn with_peer(&self, peer: NodeId, f: impl FnOnce(&mut PeerContact)) {
        let mut peers = self.peers.lock().expect("contacts lock");
        f(peers.entry(peer).or_default());
    }

    /// A peer acknowledged an append-entries of `term` that this node sent at `sent_at`.
    pub fn record_ack(&self, peer: NodeId, term: u64, sent_at: Instant) {
        self.with_peer(peer, |contact| {
            contact.last_raft_contact = Some(Instant::now());
            if contact.last_ack.is_none_or(|(t, at)| (t, at) < (term, sent_at)) {
                contact.last_ack = Some((term, sent_at));
            }
        });
    }

    /// A peer answered a raft RPC, or sent one to this node.
    pub fn record_contact(&self, peer: NodeId) {
        self.with_peer(peer, |contact| contact.last_raft_contact = Some(Instant::now()));
    }

    /// A peer answered a probe: its admin address and whether it could emit.
    pub fn record_info(&self, peer: NodeId, admin_addr: String, ready: bool) {
        self.with_peer(peer, |contact| {
            let now = Instant::now();
            contact.last_health_answer = Some(now);
            if ready {
                contact.last_ready_answer = Some(now);
            }
            contact.admin_addr = Some(admin_addr);
        });
    }

    /// The admin address `peer` last told (tempo requests are forwarded there).
    pub fn admin_addr(&self, peer: NodeId) -> Option<String> {
        let peers = self.peers.lock().expect("contacts lock");
        peers.get(&peer).and_then(|c| c.admin_addr.clone())
    }

    /// Whether some peer said it was ready to emit within `window`.
    pub fn a_peer_ready_within(&self, window: Duration) -> bool {
        let peers = self.peers.lock().expect("contacts lock");
        peers
            .iter()
            .filter(|(id, _)| **id != self.me)
            .any(|(_, c)| c.last_ready_answer.is_some_and(|at| at.elapsed() < window))
    }

    /// Time since the last raft exchange with `peer`, if any.
    pub fn since_raft_contact(&self, peer: NodeId) -> Option<Duration> {
        let peers = self.peers.lock().expect("contacts lock");
        let last = peers.get(&peer).and_then(|c| c.last_raft_contact)?;
        Some(Instant::now().saturating_duration_since(last))
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
        let since = |at: Option<Instant>| at.map(|t| now.saturating_duration_since(t));
        addrs
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, addr)| {
                let contact = peers.get(id).cloned().unwrap_or_default();
                let raft = since(contact.last_raft_contact);
                let answer = since(contact.last_health_answer);
                PeerHealth {
                    node_id: *id,
                    addr: addr.clone(),
                    admin_addr: contact.admin_addr.clone(),
                    last_raft_contact_ms: raft.map(|d| d.as_millis() as u64),
                    last_health_answer_ms: answer.map(|d| d.as_millis() as u64),
                    healthy: [raft, answer].into_iter().flatten().any(|d| d < self.health_window),
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
        let contacts = Contacts::new(1, Duration::from_millis(100), Duration::from_secs(1));
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
