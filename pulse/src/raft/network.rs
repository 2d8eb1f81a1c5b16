//! Raft RPC client: JSON over HTTP to the peers' `/raft/*` routes (see [`super::rpc`]).

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
use super::{NodeId, RaftError, RpcError, TypeConfig};

/// Connect timeout for raft RPCs; a peer that does not accept within it is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes one connection object per peer; they share one HTTP client (one connection pool).
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    contacts: Arc<Contacts>,
}

impl HttpNetwork {
    pub fn new(contacts: Arc<Contacts>) -> HttpNetwork {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("building an HTTP client with static options");
        HttpNetwork { client, contacts }
    }
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
        let url = format!("http://{}/raft/{route}", self.addr);
        let response = self
            .network
            .client
            .post(url)
            .timeout(option.hard_ttl())
            .json(request)
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
