//! Raft RPC client: JSON over HTTP to the peers' `/raft/*` routes on their raft
//! listeners (see [`super::rpc`]), every request signed with the group secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::contacts::Contacts;
use super::rpc::PeerInfo;
use super::{NodeId, RaftError, RpcError, TypeConfig};
use crate::auth::{GroupSecret, RAFT_AUTH_HEADER};
use crate::clock::wall_unix_us;
use crate::watchdog::RaftIsolation;

/// Connect timeout for raft RPCs; a peer that does not accept within it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes one connection object per peer; they share one HTTP client (one connection pool).
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    contacts: Arc<Contacts>,
    secret: GroupSecret,
    isolation: Arc<RaftIsolation>,
    /// When a peer's 401 was last logged (logged at most every [`REFUSED_LOG_INTERVAL`]).
    refused_logged: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// A peer refusing every request would otherwise log once per heartbeat.
const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl HttpNetwork {
    pub fn new(contacts: Arc<Contacts>, secret: GroupSecret, isolation: Arc<RaftIsolation>) -> HttpNetwork {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("building an HTTP client with static options");
        HttpNetwork {
            client,
            contacts,
            secret,
            isolation,
            refused_logged: Arc::default(),
        }
    }

    /// Says (now and then) that a peer refuses this node's signature.
    fn warn_refused(&self, peer: NodeId) {
        let mut last = self.refused_logged.lock().expect("refused-log lock");
        if last.is_none_or(|at| at.elapsed() >= REFUSED_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::error!(
                peer,
                "the peer refused this node's raft request as unauthenticated (401): \
                 is the group secret the same on every node, and are the clocks within 30 s?"
            );
        }
    }
}

/// Asks the peer at raft address `addr` for its [`PeerInfo`] (`GET /raft/info`, signed).
pub async fn probe_peer(
    client: &reqwest::Client,
    secret: &GroupSecret,
    addr: &str,
) -> Result<PeerInfo, reqwest::Error> {
    let path = "/raft/info";
    let auth = secret.raft_auth("GET", path, wall_unix_us() / 1000, b"");
    client
        .get(format!("http://{addr}{path}"))
        .header(RAFT_AUTH_HEADER, auth)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            network: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// RPCs to one peer.
pub struct PeerConnection {
    network: HttpNetwork,
    target: NodeId,
    addr: String,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(&self, route: &str, request: &Req, option: &RPCOption) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.network.isolation.is_isolated() {
            let cut = std::io::Error::other("this node is out of raft for a moment (watchdog)");
            return Err(RpcError::Unreachable(Unreachable::new(&cut)));
        }
        let path = format!("/raft/{route}");
        let body = serde_json::to_vec(request).map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let auth = self
            .network
            .secret
            .raft_auth("POST", &path, wall_unix_us() / 1000, &body);
        let response = self
            .network
            .client
            .post(format!("http://{}{path}", self.addr))
            .timeout(option.hard_ttl())
            .header(RAFT_AUTH_HEADER, auth)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // Unreachable makes openraft back off instead of retrying at once.
                if e.is_connect() {
                    RpcError::Unreachable(Unreachable::new(&e))
                } else {
                    RpcError::Network(NetworkError::new(&e))
                }
            })?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.network.warn_refused(self.target);
        }
        let result: Result<Resp, RaftError<E>> = response
            .error_for_status()
            .map_err(|e| RpcError::Network(NetworkError::new(&e)))?
            .json()
            .await
            .map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        self.network.contacts.record_contact(self.target);
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let sent_at = Instant::now();
        let term = request.vote.leader_id().term;
        let response: AppendEntriesResponse<NodeId> = self.call("append", &request, &option).await?;
        if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
            self.network.contacts.record_ack(self.target, term, sent_at);
        }
        Ok(response)
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.call("snapshot", &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.call("vote", &request, &option).await
    }
}
