//! The command line of `backbeat-pulse`: every flag also reads `BACKBEAT_<FLAG>`,
//! and the whole configuration is validated once at start-up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use backbeat_schemas::names::is_valid_cluster_id;
use backbeat_service::secret;
use backbeat_service::{HttpArgs, LogFormat, NatsArgs};

use crate::auth::{GroupSecret, SecretError};

/// The longest election timeout accepted (every timer derived from it stays far from overflow).
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 600_000;
/// The environment variable that may hold the raft secret itself (never a flag:
/// a command line is visible to every user of the machine).
pub const RAFT_SECRET_ENV: &str = "BACKBEAT_RAFT_SECRET";
/// The file a group of one keeps its generated secret in, under `--data-dir`.
pub const GENERATED_SECRET_FILE: &str = "raft-secret";

/// The highest tempo a pulse emits (SPEC §2: `tempo_bpm` is 1..=1000).
pub const BPM_MAX: u32 = 1000;
/// The longest bar a pulse accepts, in beats (SPEC sets none; this keeps window
/// arithmetic and the processor's per-window state far from any limit).
pub const BAR_LENGTH_MAX: u64 = 1_000_000;

/// `backbeat-pulse`: one node of the raft group that emits the beats of one cluster.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "backbeat-pulse", version, about, long_about = None)]
pub struct Config {
    /// This node's raft id (a member of --peers), 0..=65535: it is the node field of the beats' HLC.
    #[arg(long, env = "BACKBEAT_NODE_ID")]
    pub node_id: u64,
    /// Every member of the group as ID=HOST:PORT (each node's --raft-listen address), this node included.
    /// The group is initialised from it once, by the lowest id on its first start;
    /// after that the membership lives in the raft log.
    #[arg(long, env = "BACKBEAT_PEERS")]
    pub peers: String,
    /// Raft RPC address, apart from the public --listen (default: this node's address in --peers).
    /// Every request on it must be signed with the group secret. A group of one whose
    /// --peers address is its --listen serves no raft at all (it has no one to talk to).
    #[arg(long, env = "BACKBEAT_RAFT_LISTEN")]
    pub raft_listen: Option<String>,
    /// File holding the group's shared secret (at least 16 bytes; surrounding whitespace
    /// ignored): it signs raft requests and the beats the group publishes. Instead of a
    /// file, the secret itself may be in the environment variable BACKBEAT_RAFT_SECRET.
    /// Required for a group of more than one node; a group of one without it generates
    /// one into --data-dir/raft-secret and keeps it.
    #[arg(long, env = "BACKBEAT_RAFT_SECRET_FILE")]
    pub raft_secret_file: Option<PathBuf>,
    /// Directory for the durable raft log, vote and state machine.
    #[arg(long, env = "BACKBEAT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Cluster id the beats belong to (SPEC §1: [A-Za-z0-9_-]{1,64}).
    #[arg(long, env = "BACKBEAT_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Initial tempo in beats per minute (1..=1000); later changes go through POST /api/v1/tempo.
    #[arg(long, env = "BACKBEAT_BPM", default_value_t = 120)]
    pub bpm: u32,
    /// Beats per bar (window), 1..=1000000. Fixed for the life of a cluster.
    #[arg(long, env = "BACKBEAT_BAR_LENGTH", default_value_t = 120)]
    pub bar_length: u64,
    /// Bearer token guarding tempo changes; without it (or --admin-token-file) tempo
    /// changes are refused (403). Prefer the file or the environment variable: a
    /// command line is visible to every user of the machine.
    #[arg(long, env = "BACKBEAT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (surrounding whitespace ignored); instead of --admin-token.
    #[arg(long, env = "BACKBEAT_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Public HTTP address: /health, /ready, /metrics, /api/v1/* (raft is on --raft-listen).
    #[arg(long, env = "BACKBEAT_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: String,
    /// Log format.
    #[arg(long, env = "BACKBEAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "BACKBEAT_HEARTBEAT_MS", default_value_t = 250)]
    pub heartbeat_ms: u64,
    /// Raft election timeout in milliseconds: the longest a follower waits after
    /// its leader's last heartbeat before it stands for election (it stands
    /// after 3/4 to all of this). Must be more than 4 × --heartbeat-ms.
    #[arg(long, env = "BACKBEAT_ELECTION_TIMEOUT_MS", default_value_t = 1500)]
    pub election_timeout_ms: u64,
    /// When the schedule would skip more beats than this (a long outage), the
    /// leader re-anchors the schedule after the last stored beat instead, so
    /// the processor never sees a jump larger than this. 0 = 5 bars.
    #[arg(long, env = "BACKBEAT_MAX_SKIP_BEATS", default_value_t = 0)]
    pub max_skip_beats: u64,
    /// Replicas for BACKBEAT_EVENTS when this node has to create it.
    #[arg(long, env = "BACKBEAT_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The limits of both HTTP listeners (--listen and --raft-listen).
    #[command(flatten)]
    pub http: HttpArgs,
}

/// A flag that breaks its rule: each message names the flag and the rule
/// (the cause, where there is one, is the `source`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--peers")]
    Peers(#[source] PeersError),
    #[error("node id {id} is above 65535 (SPEC §3: the HLC node field is 4 hex digits)")]
    NodeIdAbove16Bits { id: u64 },
    #[error("--node-id {node_id} is not among --peers {peers}")]
    NodeNotInPeers { node_id: u64, peers: String },
    #[error("--cluster {cluster:?} must match [A-Za-z0-9_-]{{1,64}}")]
    Cluster { cluster: String },
    #[error("--bpm {bpm} must be in 1..={BPM_MAX}")]
    Bpm { bpm: u32 },
    #[error("--bar-length must be in 1..={BAR_LENGTH_MAX}")]
    BarLength,
    #[error("--election-timeout-ms must be at most {ELECTION_TIMEOUT_MS_MAX} (10 minutes)")]
    ElectionTimeoutTooLong,
    #[error(
        "--election-timeout-ms ({election_timeout_ms}) must be more than 4 × --heartbeat-ms ({heartbeat_ms}), \
         and both positive"
    )]
    ElectionTimeoutVsHeartbeat {
        election_timeout_ms: u64,
        heartbeat_ms: u64,
    },
    #[error("--admin-token must not be empty (leave it unset to refuse tempo changes)")]
    AdminTokenEmpty,
    #[error("--admin-token-file")]
    AdminTokenFile(#[source] secret::SecretError),
    #[error(
        "--raft-listen ({raft_listen}) must differ from --listen: raft is served apart from the public HTTP \
         (and --peers names the raft addresses)"
    )]
    RaftListenIsListen { raft_listen: String },
    #[error("--raft-secret-file {}", path.display())]
    RaftSecretFile {
        path: PathBuf,
        #[source]
        source: SecretError,
    },
    #[error("{RAFT_SECRET_ENV}")]
    RaftSecretEnv(#[source] SecretError),
    #[error(
        "a group of {nodes} nodes needs a shared secret: --raft-secret-file F (BACKBEAT_RAFT_SECRET_FILE) \
         or the secret itself in {RAFT_SECRET_ENV}, the same on every node"
    )]
    GroupWithoutSecret { nodes: usize },
}

/// Why `--peers` does not read as `ID=HOST:PORT,…`.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error("{part:?} is not ID=HOST:PORT")]
    NotIdAddress { part: String },
    #[error("{id:?} is not a node id")]
    NodeId {
        id: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("peer {id}: {address:?} is not HOST:PORT")]
    Address { id: u64, address: String },
    #[error("peer {id} is listed twice")]
    Duplicate { id: u64 },
    #[error("no peers given")]
    Empty,
}

/// Where the group secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// Given by file or environment.
    Given(GroupSecret),
    /// A group of one without one: generated into (and then read from) `--data-dir`.
    GenerateInDataDir,
}

/// The validated configuration the node runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: u64,
    /// Node id → raft address (`host:port`), this node included.
    pub peers: BTreeMap<u64, String>,
    /// The address raft RPC is served on; None for a group of one that needs none.
    pub raft_listen: Option<String>,
    pub raft_secret: SecretSource,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub bpm: u32,
    pub bar_length: u64,
    pub admin_token: Option<String>,
    pub listen: String,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub max_skip_beats: u64,
    pub stream_replicas: usize,
    pub nats: NatsArgs,
    pub http: HttpArgs,
}

impl Config {
    /// Checks every rule a flag must follow, naming the flag in the error.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.validate_with_env(|name| std::env::var(name).ok())
    }

    /// [`Config::validate`] with the environment read through `env` (tests pass their own).
    pub fn validate_with_env(self, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let peers = parse_peers(&self.peers).map_err(ConfigError::Peers)?;
        if let Some(&id) = peers.keys().find(|id| **id > u64::from(u16::MAX)) {
            return Err(ConfigError::NodeIdAbove16Bits { id });
        }
        if !peers.contains_key(&self.node_id) {
            return Err(ConfigError::NodeNotInPeers {
                node_id: self.node_id,
                peers: self.peers,
            });
        }
        if !is_valid_cluster_id(&self.cluster) {
            return Err(ConfigError::Cluster { cluster: self.cluster });
        }
        if !(1..=BPM_MAX).contains(&self.bpm) {
            return Err(ConfigError::Bpm { bpm: self.bpm });
        }
        if !(1..=BAR_LENGTH_MAX).contains(&self.bar_length) {
            return Err(ConfigError::BarLength);
        }
        if self.election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
            return Err(ConfigError::ElectionTimeoutTooLong);
        }
        if self.heartbeat_ms < 1 || self.election_timeout_ms / 4 <= self.heartbeat_ms {
            return Err(ConfigError::ElectionTimeoutVsHeartbeat {
                election_timeout_ms: self.election_timeout_ms,
                heartbeat_ms: self.heartbeat_ms,
            });
        }
        let admin_token = match secret::token_from(self.admin_token.clone(), self.admin_token_file.as_deref()) {
            Ok(token) => token,
            Err(secret::SecretError::EmptyValue) => return Err(ConfigError::AdminTokenEmpty),
            Err(e) => return Err(ConfigError::AdminTokenFile(e)),
        };
        let own_addr = &peers[&self.node_id];
        let raft_listen = self.raft_listen.clone().unwrap_or_else(|| own_addr.clone());
        let raft_listen = if raft_listen == self.listen {
            if peers.len() > 1 {
                return Err(ConfigError::RaftListenIsListen { raft_listen });
            }
            None
        } else {
            Some(raft_listen)
        };
        let raft_secret = match (&self.raft_secret_file, env(RAFT_SECRET_ENV)) {
            (Some(path), _) => {
                SecretSource::Given(
                    GroupSecret::read_file(path).map_err(|source| ConfigError::RaftSecretFile {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            (None, Some(text)) => {
                SecretSource::Given(GroupSecret::from_text(&text).map_err(ConfigError::RaftSecretEnv)?)
            }
            (None, None) if peers.len() > 1 => return Err(ConfigError::GroupWithoutSecret { nodes: peers.len() }),
            (None, None) => SecretSource::GenerateInDataDir,
        };
        let max_skip_beats = if self.max_skip_beats == 0 {
            self.bar_length.saturating_mul(5)
        } else {
            self.max_skip_beats
        };
        Ok(Settings {
            node_id: self.node_id,
            peers,
            raft_listen,
            raft_secret,
            data_dir: self.data_dir,
            cluster_id: self.cluster,
            bpm: self.bpm,
            bar_length: self.bar_length,
            admin_token,
            listen: self.listen,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            max_skip_beats,
            stream_replicas: self.stream_replicas,
            nats: self.nats,
            http: self.http,
        })
    }
}

/// Parses `1=host:port,2=host:port`. Ids are unique; addresses are not checked beyond being non-empty.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, PeersError> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, address) = part
            .split_once('=')
            .ok_or_else(|| PeersError::NotIdAddress { part: part.to_string() })?;
        let id: u64 = id.trim().parse().map_err(|source| PeersError::NodeId {
            id: id.to_string(),
            source,
        })?;
        let address = address.trim();
        if address.is_empty() || !address.contains(':') {
            return Err(PeersError::Address {
                id,
                address: address.to_string(),
            });
        }
        if peers.insert(id, address.to_string()).is_some() {
            return Err(PeersError::Duplicate { id });
        }
    }
    if peers.is_empty() {
        return Err(PeersError::Empty);
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line of the required flags, each replaced when `extra` sets it.
    fn config(extra: &[&str]) -> Config {
        let required = ["--node-id=1", "--peers=1=127.0.0.1:7001", "--data-dir=/tmp/x"];
        let flag = |arg: &str| arg.split('=').next().unwrap_or_default().to_string();
        let mut args = vec!["backbeat-pulse"];
        args.extend(required.iter().filter(|r| !extra.iter().any(|e| flag(e) == flag(r))));
        args.extend_from_slice(extra);
        <Config as clap::Parser>::parse_from(args)
    }

    /// The error and its causes, `: `-separated, as the binary prints them.
    fn message(error: ConfigError) -> String {
        format!("{:#}", anyhow::Error::new(error))
    }

    #[test]
    fn validation_names_the_flag_and_the_rule() {
        assert!(config(&[]).validate_with_env(no_env).is_ok());
        let error = |extra: &[&str]| config(extra).validate_with_env(no_env).unwrap_err();
        assert!(matches!(error(&["--bpm=0"]), ConfigError::Bpm { bpm: 0 }));
        assert_eq!(message(error(&["--bpm=1001"])), "--bpm 1001 must be in 1..=1000");
        assert!(matches!(error(&["--bar-length=0"]), ConfigError::BarLength));
        assert_eq!(
            message(error(&["--cluster=a.b"])),
            r#"--cluster "a.b" must match [A-Za-z0-9_-]{1,64}"#
        );
        assert!(matches!(error(&["--admin-token="]), ConfigError::AdminTokenEmpty));
        assert!(message(error(&["--admin-token="])).starts_with("--admin-token must not be empty"));
        assert_eq!(
            message(error(&["--heartbeat-ms=100", "--election-timeout-ms=400"])),
            "--election-timeout-ms (400) must be more than 4 × --heartbeat-ms (100), and both positive"
        );
        assert!(config(&["--heartbeat-ms=100", "--election-timeout-ms=404"])
            .validate_with_env(no_env)
            .is_ok());
        assert!(matches!(
            error(&["--node-id=2"]),
            ConfigError::NodeNotInPeers { node_id: 2, .. }
        ));
        assert!(matches!(
            error(&["--election-timeout-ms=600001"]),
            ConfigError::ElectionTimeoutTooLong
        ));
        assert!(matches!(
            error(&[&format!("--election-timeout-ms={}", u64::MAX)]),
            ConfigError::ElectionTimeoutTooLong
        ));
        let big = error(&["--node-id=70000", "--peers=70000=h:1"]);
        assert!(matches!(big, ConfigError::NodeIdAbove16Bits { id: 70000 }));
        assert!(big.to_string().contains("65535"));
        assert_eq!(
            message(error(&["--peers=x=a:1"])),
            r#"--peers: "x" is not a node id: invalid digit found in string"#
        );
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn raft_has_its_own_listener_and_a_group_needs_a_secret() {
        let group = "--peers=1=127.0.0.1:7101,2=127.0.0.1:7102";
        // A group of one: no secret needed (generated), raft on its --peers address.
        let single = config(&["--listen=127.0.0.1:7001"]).validate_with_env(no_env).unwrap();
        assert_eq!(
            single.raft_listen, None,
            "its --peers address is its --listen: no raft listener"
        );
        assert!(matches!(single.raft_secret, SecretSource::GenerateInDataDir));
        // A group of three without a secret: refused, naming both ways to give one.
        let error = config(&[group]).validate_with_env(no_env).unwrap_err();
        assert!(matches!(error, ConfigError::GroupWithoutSecret { nodes: 2 }));
        let error = message(error);
        assert!(
            error.contains("--raft-secret-file") && error.contains(RAFT_SECRET_ENV),
            "{error}"
        );
        // The secret from the environment; raft on this node's --peers address.
        let env = |name: &str| (name == RAFT_SECRET_ENV).then(|| "a shared secret of the group".to_string());
        let settings = config(&[group]).validate_with_env(env).unwrap();
        assert_eq!(settings.raft_listen.as_deref(), Some("127.0.0.1:7101"));
        assert!(matches!(settings.raft_secret, SecretSource::Given(_)));
        let short = |name: &str| (name == RAFT_SECRET_ENV).then(|| "short".to_string());
        let error = config(&[group]).validate_with_env(short).unwrap_err();
        assert!(matches!(error, ConfigError::RaftSecretEnv(SecretError::TooShort(5))));
        assert_eq!(
            message(error),
            "BACKBEAT_RAFT_SECRET: the secret is 5 bytes; at least 16 are needed"
        );
        // Raft on the public listener: refused for a group.
        let error = config(&[group, "--listen=127.0.0.1:7101"])
            .validate_with_env(env)
            .unwrap_err();
        assert!(matches!(error, ConfigError::RaftListenIsListen { .. }), "{error}");
        // From files.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "a shared secret of the group\n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  the-token\n").unwrap();
        let settings = config(&[
            group,
            &format!("--raft-secret-file={}", secret.display()),
            &format!("--admin-token-file={}", token.display()),
        ])
        .validate_with_env(no_env)
        .unwrap();
        assert_eq!(settings.admin_token.as_deref(), Some("the-token"));
        assert!(matches!(settings.raft_secret, SecretSource::Given(_)));
        std::fs::write(&token, "\n").unwrap();
        let error = config(&[&format!("--admin-token-file={}", token.display())])
            .validate_with_env(no_env)
            .unwrap_err();
        assert!(matches!(
            error,
            ConfigError::AdminTokenFile(secret::SecretError::EmptyFile { .. })
        ));
        assert_eq!(
            message(error),
            format!("--admin-token-file: {} is empty", token.display())
        );
        let missing = format!("--raft-secret-file={}", dir.path().join("none").display());
        let error = config(&[group, &missing]).validate_with_env(no_env).unwrap_err();
        assert!(
            matches!(
                &error,
                ConfigError::RaftSecretFile {
                    source: SecretError::Io { .. },
                    ..
                }
            ),
            "{error}"
        );
        assert!(message(error).starts_with("--raft-secret-file "));
    }

    #[test]
    fn peers_parse_and_reject_bad_input() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:1").unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(peers[&2], "127.0.0.1:7002");
        assert!(parse_peers("").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=nohost").is_err());
    }
}
