//! The raft group: openraft's type configuration, the durable stores, the HTTP
//! transport (its own listener, every request authenticated), and start-up
//! (including the one-time initialisation).

pub mod contacts;
pub mod durable;
pub mod log_store;
pub mod network;
pub mod rpc;
pub mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use crate::state::{Request, Response};

/// Raft node ids are the `--node-id` numbers.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The pulse group's raft types: requests and responses of [`crate::state`].
    pub TypeConfig:
        D = Request,
        R = Response,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, BasicNode, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, BasicNode>;

/// openraft's timers derived from `--election-timeout-ms`.
///
/// openraft 0.9 lets a follower that has a leader stand for election only after
/// the leader lease (`election_timeout_max`) *plus* a random election timeout
/// in `election_timeout_min..election_timeout_max` since it last heard from the
/// leader. So that `--election-timeout-ms` E is what an operator expects, the
/// whole wait after a leader's last heartbeat, openraft gets `min = E/4` and
/// `max = E/2`: a follower stands between `3E/4` and `E` after losing its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub openraft_min: Duration,
    pub openraft_max: Duration,
}

impl RaftTiming {
    pub fn new(heartbeat: Duration, election_timeout: Duration) -> RaftTiming {
        let election_timeout_ms = election_timeout.as_millis() as u64;
        let timing = RaftTiming {
            openraft_min: Duration::from_millis(election_timeout_ms / 4),
            openraft_max: Duration::from_millis(election_timeout_ms / 2),
        };
        assert!(
            heartbeat < timing.openraft_min,
            "the configuration check guarantees heartbeat < election timeout / 4"
        );
        timing
    }

    /// How long a follower that acknowledged a heartbeat refuses to vote for
    /// anyone else (openraft's leader lease), counted from when it was sent.
    pub fn leader_lease(&self) -> Duration {
        self.openraft_max
    }
}

/// What starting the group returns.
pub struct Started {
    pub raft: Raft,
    pub state_machine: state_machine::StateMachineStore,
    pub contacts: Arc<contacts::Contacts>,
}

/// What starting a node needs.
pub struct StartOptions<'a> {
    pub node_id: NodeId,
    /// Node id → raft address.
    pub peers: &'a BTreeMap<NodeId, String>,
    pub data_dir: &'a std::path::Path,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Signs this node's raft requests.
    pub secret: crate::auth::GroupSecret,
    /// The watchdog's off switch for the transport.
    pub isolation: Arc<crate::watchdog::RaftIsolation>,
    /// Counts committed entries skipped as out of range.
    pub invalid_entries: prometheus::IntCounter,
}

/// Why the raft node could not start: its stores could not be opened (an
/// operating error: the disk, the permissions of `--data-dir`), or openraft
/// refused its configuration or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("raft configuration")]
    Config(#[source] openraft::ConfigError),
    #[error("opening the raft log")]
    LogStore(#[source] std::io::Error),
    #[error("opening the state machine")]
    StateMachine(#[source] std::io::Error),
    #[error("starting raft")]
    Raft(#[source] openraft::error::Fatal<NodeId>),
    #[error("no peers")]
    NoPeers,
    #[error("initialising the raft group")]
    Initialize(#[source] RaftError<openraft::error::InitializeError<NodeId, BasicNode>>),
}

/// Opens the stores under `data_dir`, starts the raft node, and initialises the
/// group when this node has the lowest id and an empty log. A node with state
/// never initialises again, and "already initialised" is not an error.
pub async fn start(options: StartOptions<'_>) -> Result<Started, StartError> {
    let StartOptions {
        node_id,
        peers,
        data_dir,
        heartbeat,
        election_timeout,
        secret,
        isolation,
        invalid_entries,
    } = options;
    let timing = RaftTiming::new(heartbeat, election_timeout);
    let config = openraft::Config {
        cluster_name: "backbeat-pulse".into(),
        heartbeat_interval: heartbeat.as_millis() as u64,
        election_timeout_min: timing.openraft_min.as_millis() as u64,
        election_timeout_max: timing.openraft_max.as_millis() as u64,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(StartError::Config)?);
    let log_store = log_store::FileLogStore::open(&data_dir.join("raft-log")).map_err(StartError::LogStore)?;
    let log_was_empty = log_store.is_empty();
    let state_machine = state_machine::StateMachineStore::open(&data_dir.join("state"), invalid_entries)
        .map_err(StartError::StateMachine)?;
    let contacts = Arc::new(contacts::Contacts::new(
        node_id,
        timing.leader_lease(),
        election_timeout,
    ));
    let network = network::HttpNetwork::new(contacts.clone(), secret, isolation);
    let raft = openraft::Raft::new(node_id, config, network, log_store, state_machine.clone())
        .await
        .map_err(StartError::Raft)?;

    let lowest = *peers.keys().next().ok_or(StartError::NoPeers)?;
    if node_id == lowest && log_was_empty {
        let members: BTreeMap<NodeId, BasicNode> = peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id, "raft group initialised"),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(e))) => {
                tracing::info!(node_id, %e, "raft group already initialised")
            }
            Err(e) => return Err(StartError::Initialize(e)),
        }
    }
    Ok(Started {
        raft,
        state_machine,
        contacts,
    })
}
