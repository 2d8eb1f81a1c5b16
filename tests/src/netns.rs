//! A real network for partition tests: each node in a network namespace of
//! its own (`ip netns`), with two links.
//!
//! - The **backbone** (`10.251.S.0/24`): a veth from each namespace to a
//!   bridge in the test's own namespace, which holds `10.251.S.1`. Whatever
//!   every node must keep reaching (nats-server listening on
//!   [`PeerNetwork::host_address`], the test reading each node's HTTP) goes
//!   here, and is never cut.
//! - The **peer link** (`10.252.S.0/24`): a veth from each namespace to a
//!   second bridge with no address of the host's: the nodes' traffic among
//!   themselves (the pulse's raft) and nothing else.
//!
//! [`PeerNetwork::cut`] takes a node's peer veth off its bridge (`ip link set
//! … nomaster`): frames to and from it are dropped silently, as with a pulled
//! cable, so established connections stall and new ones time out, while the
//! node keeps its NATS connection. [`PeerNetwork::heal`] puts it back.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2; without them
//! [`PeerNetwork::create`] fails saying so (a test never skips itself).
//! Everything is removed on drop: the namespaces (their veths go with them)
//! and both bridges.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Names and subnets are per process and per network, so concurrent test
/// processes (and networks within one) do not meet.
static NETWORKS_CREATED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Nodes in namespaces of their own, on a backbone that stays up and a peer link that can be cut.
#[derive(Debug)]
pub struct PeerNetwork {
    /// The prefix of every interface and namespace name (at most 8 characters).
    prefix: String,
    /// The third octet of both subnets.
    subnet: u8,
    nodes: usize,
    /// What exists so far, removed in reverse on drop.
    namespaces: Vec<String>,
    bridges: Vec<String>,
}

impl PeerNetwork {
    /// Creates `nodes` namespaces (at most 200) and both links.
    pub fn create(nodes: usize) -> anyhow::Result<PeerNetwork> {
        anyhow::ensure!((1..=200).contains(&nodes), "1 to 200 nodes");
        let number = NETWORKS_CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() << 4 | (number & 0xf)) & 0xf_ffff;
        let mut network = PeerNetwork {
            prefix: format!("bb{tag:05x}"),
            subnet: 0,
            nodes,
            namespaces: Vec::new(),
            bridges: Vec::new(),
        };
        network.subnet = free_subnet(tag)?;
        network.build().map_err(|e| {
            anyhow::anyhow!(
                "{e}\nPartition tests build network namespaces and veth links with iproute2 (`ip netns`, \
                 `ip link`): they need root, or CAP_NET_ADMIN and CAP_SYS_ADMIN."
            )
        })?;
        Ok(network)
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let (backbone, peers) = (self.bridge("bb"), self.bridge("pl"));
        for bridge in [&backbone, &peers] {
            ip(&["link", "add", bridge, "type", "bridge"])?;
            self.bridges.push(bridge.clone());
            ip(&["link", "set", bridge, "up"])?;
        }
        ip(&["addr", "add", &format!("{}/24", self.host_address()), "dev", &backbone])?;
        for node in 0..self.nodes {
            let namespace = self.namespace(node);
            ip(&["netns", "add", &namespace])?;
            self.namespaces.push(namespace.clone());
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            for (link, bridge, address) in [
                ("b", &backbone, self.backbone_address(node)),
                ("p", &peers, self.peer_address(node)),
            ] {
                let (outside, inside) = (self.veth(link, node, 'h'), self.veth(link, node, 'n'));
                ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
                ip(&["link", "set", &inside, "netns", &namespace])?;
                ip(&["link", "set", &outside, "master", bridge, "up"])?;
                ip(&[
                    "-n",
                    &namespace,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    &inside,
                ])?;
                ip(&["-n", &namespace, "link", "set", &inside, "up"])?;
            }
        }
        Ok(())
    }

    /// The test's own address on the backbone (where a server every node reaches listens).
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.subnet, 1)
    }

    /// Node `node`'s address on the backbone (0-based; its HTTP, say).
    pub fn backbone_address(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 251, self.subnet, 10 + node as u8)
    }

    /// Node `node`'s address on the peer link (what its peers dial).
    pub fn peer_address(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 252, self.subnet, 10 + node as u8)
    }

    /// A command that runs `program` in node `node`'s namespace.
    pub fn command(&self, node: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(node)]).arg(program);
        command
    }

    /// Cuts node `node` off from its peers: its peer link leaves the bridge.
    pub fn cut(&self, node: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth("p", node, 'h'), "nomaster"])
    }

    /// Undoes [`PeerNetwork::cut`].
    pub fn heal(&self, node: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.veth("p", node, 'h'), "master", &self.bridge("pl")])
    }

    fn bridge(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// A veth's end: `side` 'h' in the test's namespace, 'n' in the node's.
    fn veth(&self, link: &str, node: usize, side: char) -> String {
        format!("{}{link}{node}{side}", self.prefix)
    }
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        // A namespace lives on while a process runs in it; its veths go with it.
        for namespace in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &namespace]);
        }
        // Any veth a failed build left in this namespace (deleting one end deletes both).
        for node in 0..self.nodes {
            for link in ["b", "p"] {
                let _ = ip_quiet(&["link", "del", &self.veth(link, node, 'h')]);
            }
        }
        for bridge in self.bridges.drain(..).rev() {
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}

/// An `ip` command whose failure is expected (what it removes may not exist).
fn ip_quiet(args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// One `ip` command; its stderr in the error.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("running `ip` (iproute2): {e}"))?;
    anyhow::ensure!(
        output.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// A third octet whose `10.251.S.0/24` and `10.252.S.0/24` no route uses yet, starting from `tag`.
fn free_subnet(tag: u32) -> anyhow::Result<u8> {
    let output = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| anyhow::anyhow!("running `ip` (iproute2): {e}"))?;
    let routes = String::from_utf8_lossy(&output.stdout);
    (0..250u32)
        .map(|i| ((tag + i) % 250 + 1) as u8)
        .find(|s| !routes.contains(&format!("10.251.{s}.")) && !routes.contains(&format!("10.252.{s}.")))
        .ok_or_else(|| anyhow::anyhow!("no free 10.251.S.0/24 subnet"))
}
