//! A pulse node cut off from its peers (issue 22, item 2). Three pulse nodes,
//! each in a network namespace of its own ([`PeerNetwork`]): raft between
//! them on a peer link, NATS and their HTTP on a backbone that stays up. The
//! leader's peer link is cut (its veth taken off the bridge: a real, silent
//! cut at the link layer, as a pulled cable) while it keeps its NATS
//! connection, the case where a deposed leader could still publish. Then:
//! - beats are strictly increasing, no index twice, and from the cut on the
//!   stream holds the old leader's beats, then the new leader's, never one of
//!   the old leader's after the new leader's first (each beat's HLC names the
//!   node that published it);
//! - the cut-off node's last beat was published within one election timeout
//!   of the cut (its lease lapses; it stops trying);
//! - beats resume under another node;
//! - a beat published as the cut-off leader would (continuing its own last
//!   beat) is refused by the stream's fence;
//! - healing the cut changes nothing: the old leader rejoins as a follower,
//!   the new leader keeps its term, and every beat after the heal is the new
//!   leader's, one index after the other.
//!
//! CI: the leader is cut twice (the second time the node elected in the
//! first round); long mode: ten times, each cut held longer.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream;
use async_nats::HeaderMap;
use backbeat_schemas::hlc::Hlc;
use backbeat_schemas::names::EVENTS_STREAM;
use backbeat_tests::{
    bin_path, http_get_at, wait_until_async, ChildGuard, FaultRecord, NatsServer, NatsServerOptions, PeerNetwork,
};

use super::long_mode;
use crate::stack::{beat_frame, BAR, CLUSTER};

const NODES: usize = 3;
/// The pulse's `--election-timeout-ms`, the bound the cut-off node must stop within.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(300);
/// 600 BPM: a beat every 100 ms.
const BEAT_INTERVAL_MS: u64 = 100;
/// Every node has a namespace of its own, so every node uses the same ports.
const RAFT_PORT: u16 = 7300;
const HTTP_PORT: u16 = 8300;
/// Elections, catching up and rejoining on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// One pulse node in its namespace.
struct PulseNode {
    /// Its `--node-id` (1-based): what its beats' HLCs carry.
    id: u64,
    child: ChildGuard,
    http: SocketAddr,
}

impl PulseNode {
    fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = http_get_at(self.http, "/api/v1/status")?;
        (code == 200).then_some(())?;
        serde_json::from_str(&body).ok()
    }

    /// The value of the (label-free) metric `name`.
    fn metric(&self, name: &str) -> Option<f64> {
        let (code, text) = http_get_at(self.http, "/metrics")?;
        (code == 200).then_some(())?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

fn start_pulses(network: &PeerNetwork, nats_url: &str, dir: &Path) -> anyhow::Result<Vec<PulseNode>> {
    let secret = dir.join("raft-secret");
    std::fs::write(&secret, "the partition test's shared raft secret")?;
    let peers: Vec<String> = (0..NODES)
        .map(|i| format!("{}={}:{RAFT_PORT}", i + 1, network.peer_address(i)))
        .collect();
    let peers = peers.join(",");
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let id = i as u64 + 1;
        let http = SocketAddr::from((network.backbone_address(i), HTTP_PORT));
        let raft = SocketAddr::from((network.peer_address(i), RAFT_PORT));
        let log = std::fs::File::create(dir.join(format!("backbeat-pulse-{id}.log")))?;
        let mut command = network.command(i, bin_path("backbeat-pulse"));
        command
            .args(["--nats", nats_url, "--node-id", &id.to_string(), "--peers", &peers])
            .args(["--listen", &http.to_string(), "--raft-listen", &raft.to_string()])
            .arg("--raft-secret-file")
            .arg(&secret)
            .arg("--data-dir")
            .arg(dir.join(format!("pulse-data-{id}")))
            .args(["--cluster", CLUSTER, "--bpm", "600", "--bar-length", BAR])
            .args(["--heartbeat-ms", "50", "--election-timeout-ms"])
            .arg(ELECTION_TIMEOUT.as_millis().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = ChildGuard::spawn(format!("pulse {id}"), &mut command)?;
        nodes.push(PulseNode { id, child, http });
    }
    Ok(nodes)
}

/// The node every node names as leader, once it leads, emits and sees its peers healthy.
async fn settled_leader(nodes: &[PulseNode]) -> anyhow::Result<u64> {
    wait_until_async("one leader, emitting, every peer healthy", PATIENCE, || async {
        let statuses: Vec<serde_json::Value> = nodes.iter().map(PulseNode::status).collect::<Option<_>>()?;
        let leader = statuses
            .iter()
            .find(|s| s["role"] == "leader" && s["emitting"] == true)?;
        let id = leader["node_id"].as_u64()?;
        let agreed = statuses.iter().all(|s| s["leader_id"].as_u64() == Some(id));
        let healthy = leader["peers"].as_array()?.iter().all(|p| p["healthy"] == true);
        (agreed && healthy).then_some(id)
    })
    .await
}

/// A beat as stored: its stream sequence, index, and the node and time its HLC names.
#[derive(Debug, Clone, Copy)]
struct StoredBeat {
    sequence: u64,
    index: u64,
    node: u64,
    physical_ms: u64,
}

/// The beats stored after sequence `after` (the test's stream holds only beats), in stream order.
async fn stored_beats(js: &jetstream::Context, after: u64) -> anyhow::Result<Vec<StoredBeat>> {
    let mut stream = js.get_stream(EVENTS_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let beat_subject = format!("backbeat.{CLUSTER}.beat");
    let mut beats = Vec::new();
    for sequence in after + 1..=last {
        let message = stream.get_raw_message(sequence).await?;
        if message.subject.as_str() != beat_subject {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&message.payload)?;
        let hlc = Hlc::from_str(value["hlc"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("beat at {sequence}: {e}"))?;
        beats.push(StoredBeat {
            sequence,
            index: value["beat_index"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("beat at {sequence} without beat_index"))?,
            node: u64::from(hlc.node),
            physical_ms: hlc.physical_ms,
        });
    }
    Ok(beats)
}

/// The stream's last sequence (0 while it is empty or missing).
async fn last_sequence(js: &jetstream::Context) -> u64 {
    match js.get_stream(EVENTS_STREAM).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.last_sequence),
        Err(_) => 0,
    }
}

/// Waits until the stream holds `count` beats by `node` with a sequence past `after`.
async fn wait_for_beats_by(js: &jetstream::Context, node: u64, after: u64, count: usize) -> anyhow::Result<()> {
    wait_until_async(&format!("{count} beats by node {node}"), PATIENCE, || async {
        let beats = stored_beats(js, after).await.ok()?;
        let by_node = beats.iter().filter(|b| b.node == node).count();
        (by_node >= count).then_some(())
    })
    .await
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// What one cut showed.
#[derive(Debug)]
struct Round {
    cut_off: u64,
    new_leader: u64,
    /// From the cut to the cut-off node's last stored beat (0 if it was before the cut).
    stop_after: Duration,
    /// Between the cut-off node's last beat and the new leader's first.
    beatless: Duration,
    /// Indices nobody emitted during the failover.
    missing_beats: u64,
    /// Publishes the cut-off node attempted and failed while cut off.
    stale_attempts: f64,
    /// Beats after the heal that are not the new leader's, or not one index after the other.
    changed_after_heal: usize,
    term_kept: bool,
    stale_publish_refused: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_leader_cut_off_from_its_peers_stops_and_one_leader_emits() -> anyhow::Result<()> {
    let (rounds, hold) = if long_mode() {
        (10, Duration::from_secs(10))
    } else {
        (2, Duration::from_secs(2))
    };
    // Dropped last: the processes are gone before their namespaces.
    let network = PeerNetwork::create(NODES)?;
    let server = NatsServer::start_with(NatsServerOptions {
        host: network.host_address(),
        ..NatsServerOptions::default()
    })?;
    let dir = tempfile::tempdir()?;
    let mut nodes = start_pulses(&network, &server.url(), dir.path())?;
    let js = jetstream::new(
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(server.url())
            .await?,
    );
    let logs = || {
        let mut text = String::new();
        for node in 1..=NODES {
            let path = dir.path().join(format!("backbeat-pulse-{node}.log"));
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text.push_str(&format!("--- pulse {node} (last lines)\n"));
            for line in tail.iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    };
    let mut done = Vec::new();
    for _ in 0..rounds {
        let round = cut_the_leader(&network, &nodes, &js, hold)
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
        eprintln!("partition round: {round:?}");
        done.push(round);
    }

    // The whole stream: strictly increasing indices.
    let beats = stored_beats(&js, 0).await?;
    let out_of_order = beats.windows(2).filter(|pair| pair[1].index <= pair[0].index).count() as u64;
    let mut carried_on = Vec::new();
    for node in &mut nodes {
        carried_on.push((node.id, node.child.is_running()));
    }

    let longest = |f: fn(&Round) -> Duration| done.iter().map(f).max().unwrap_or_default();
    let (stop_after, beatless) = (longest(|r| r.stop_after), longest(|r| r.beatless));
    let stale_attempts: f64 = done.iter().map(|r| r.stale_attempts).sum();
    let missing: u64 = done.iter().map(|r| r.missing_beats).sum();
    let changed_after_heal: usize = done.iter().map(|r| r.changed_after_heal).sum();
    let leaders: Vec<(u64, u64)> = done.iter().map(|r| (r.cut_off, r.new_leader)).collect();
    FaultRecord {
        fault: "pulse leader cut off from its peers (netns, veth off the bridge), NATS kept; healed".into(),
        injected: done.len() as u64,
        checked: "one leader's beats at a time, cut-off node stops within an election timeout, \
                  stale beat fenced, heal changes nothing"
            .into(),
        acked_lost: None,
        duplicated: Some(out_of_order),
        differing_reports: None,
        longest_unavailable_ms: Some(beatless.as_secs_f64() * 1000.0),
        reference_unavailable_ms: None,
        notes: format!(
            "(cut-off, new leader) per cut: {leaders:?}; cut-off node's last beat at most {} ms after the cut \
             (bound: election timeout {} ms); {missing} beat indices unemitted during failovers; {stale_attempts} \
             publishes the cut-off node attempted; {changed_after_heal} beats changed by healing; {} beats in all; \
             {} ms cuts; unavailable = longest time between two stored beats across a cut (a beat each {BEAT_INTERVAL_MS} \
             ms); duplicated = beats repeating or going back on an index",
            stop_after.as_millis(),
            ELECTION_TIMEOUT.as_millis(),
            beats.len(),
            hold.as_millis(),
        ),
    }
    .record()?;

    assert!(
        carried_on.iter().all(|(_, up)| *up),
        "pulse nodes that exited: {carried_on:?}\n{}",
        logs()
    );
    assert_eq!(out_of_order, 0, "beats not strictly increasing");
    for round in &done {
        assert!(
            round.stop_after <= ELECTION_TIMEOUT,
            "node {} emitted {:?} after it was cut off (more than an election timeout)",
            round.cut_off,
            round.stop_after
        );
        assert!(
            round.stale_publish_refused,
            "a stale leader's beat was stored: {round:?}"
        );
        assert!(round.term_kept, "healing the cut moved the leadership: {round:?}");
        assert_eq!(
            round.changed_after_heal, 0,
            "healing the cut changed the stream: {round:?}"
        );
    }
    Ok(())
}

/// One round: the settled leader cut off, another node elected, the cut held
/// for `hold`, healed, the group settled again.
async fn cut_the_leader(
    network: &PeerNetwork,
    nodes: &[PulseNode],
    js: &jetstream::Context,
    hold: Duration,
) -> anyhow::Result<Round> {
    let leader = settled_leader(nodes).await?;
    let node = |id: u64| &nodes[id as usize - 1];
    let start_seq = last_sequence(js).await;
    wait_for_beats_by(js, leader, start_seq, 5).await?;
    let failures_before = node(leader)
        .metric("backbeat_pulse_publish_failures_total")
        .unwrap_or(0.0);

    network.cut(leader as usize - 1)?;
    let cut_at_ms = unix_ms();
    let cut_at = Instant::now();
    let new_leader = wait_until_async("another node to lead and emit", PATIENCE, || async {
        let statuses: Vec<serde_json::Value> = nodes.iter().filter_map(PulseNode::status).collect();
        statuses
            .iter()
            .find(|s| s["role"] == "leader" && s["emitting"] == true && s["node_id"].as_u64() != Some(leader))
            .and_then(|s| s["node_id"].as_u64())
    })
    .await?;
    wait_for_beats_by(js, new_leader, start_seq, 3).await?;
    // The cut lasts `hold` in all (the fault's length, not a wait for an event).
    tokio::time::sleep(hold.saturating_sub(cut_at.elapsed())).await;
    let cut_off_status = node(leader).status();
    let stale_attempts = node(leader)
        .metric("backbeat_pulse_publish_failures_total")
        .unwrap_or(0.0)
        - failures_before;
    let term_before_heal = node(new_leader).status().and_then(|s| s["term"].as_u64());

    network.heal(leader as usize - 1)?;
    let heal_at_ms = unix_ms();
    settled_leader(nodes).await?;
    let healed_seq = last_sequence(js).await;
    wait_for_beats_by(js, new_leader, healed_seq, 10).await?;
    let new_status = node(new_leader).status();
    let term_kept = new_status.as_ref().and_then(|s| s["term"].as_u64()) == term_before_heal
        && new_status.is_some_and(|s| s["role"] == "leader");

    let beats = stored_beats(js, start_seq).await?;
    let first_new = beats
        .iter()
        .position(|b| b.node == new_leader)
        .ok_or_else(|| anyhow::anyhow!("no beat by node {new_leader}"))?;
    let (before, after) = beats.split_at(first_new);
    let last_old = *before
        .last()
        .ok_or_else(|| anyhow::anyhow!("no beat by node {leader} in this round"))?;
    anyhow::ensure!(
        before.iter().all(|b| b.node == leader),
        "beats of a third node before node {new_leader}'s first: {before:?}"
    );
    let late_old: Vec<&StoredBeat> = after.iter().filter(|b| b.node == leader).collect();
    anyhow::ensure!(
        late_old.is_empty(),
        "node {leader}'s beats after node {new_leader}'s first (two leaders' beats stored): {late_old:?}"
    );
    let after_heal: Vec<&StoredBeat> = after.iter().filter(|b| b.physical_ms >= heal_at_ms).collect();
    let changed_after_heal = after_heal
        .windows(2)
        .filter(|pair| pair[1].node != new_leader || pair[1].index != pair[0].index + 1)
        .count()
        + after_heal.first().map_or(0, |b| usize::from(b.node != new_leader));

    // The cut-off node, continuing from its own last beat, is fenced out.
    let mut headers = HeaderMap::new();
    headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, last_old.sequence.to_string());
    let stale_hlc = format!("{:x}:0000:{:04x}", unix_ms(), leader);
    let stale = beat_frame(CLUSTER, last_old.index + 1, &stale_hlc);
    let refused = async {
        js.publish_with_headers(format!("backbeat.{CLUSTER}.beat"), headers, stale.into())
            .await?
            .await
    }
    .await;
    let stale_publish_refused = match refused {
        Err(e) => e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence,
        Ok(_) => false,
    };

    anyhow::ensure!(
        cut_off_status.as_ref().is_some_and(|s| s["emitting"] == false),
        "node {leader} still says it emits while cut off: {cut_off_status:?}"
    );
    Ok(Round {
        cut_off: leader,
        new_leader,
        stop_after: Duration::from_millis(last_old.physical_ms.saturating_sub(cut_at_ms)),
        beatless: Duration::from_millis(after[0].physical_ms.saturating_sub(last_old.physical_ms)),
        missing_beats: after[0].index.saturating_sub(last_old.index + 1),
        stale_attempts,
        changed_after_heal,
        term_kept,
        stale_publish_refused,
    })
}
