//! Subject, stream and message-id names (SPEC §1, §8).

use sha2::{Digest, Sha256};

use crate::window::lower_hex;

/// The stream of beats and accepted claims: one total order per cluster.
pub const EVENTS_STREAM: &str = "BACKBEAT_EVENTS";
/// The stream of BarReports.
pub const BARS_STREAM: &str = "BACKBEAT_BARS";
/// The dead-letter stream: everything an agent sent that was refused.
pub const REJECTS_STREAM: &str = "BACKBEAT_REJECTS";

/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: [&str; 2] = ["backbeat.*.beat", "backbeat.*.claim"];
/// Subjects of [`BARS_STREAM`].
pub const BARS_SUBJECTS: [&str; 1] = ["backbeat.*.bar"];
/// Subjects of [`REJECTS_STREAM`].
pub const REJECTS_SUBJECTS: [&str; 1] = ["backbeat.*.reject"];
/// Intake subjects of every cluster (the gateway serves them all).
pub const INTAKE_WILDCARD: &str = "backbeat.*.intake";
/// The shortest duplicate window `BACKBEAT_EVENTS` may have.
pub const EVENTS_DUPLICATE_WINDOW_MIN: std::time::Duration = std::time::Duration::from_secs(120);

/// The kinds of subject a cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKind {
    Beat,
    Claim,
    Intake,
    Reject,
    Bar,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Beat => "beat",
            SubjectKind::Claim => "claim",
            SubjectKind::Intake => "intake",
            SubjectKind::Reject => "reject",
            SubjectKind::Bar => "bar",
        }
    }
}

/// Whether `id` matches `[A-Za-z0-9_-]{1,64}`.
pub fn is_valid_cluster_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `backbeat.{cluster}.{kind}`. The cluster id must be valid (a programmer's error otherwise).
pub fn subject(cluster_id: &str, kind: SubjectKind) -> String {
    assert!(is_valid_cluster_id(cluster_id), "invalid cluster id {cluster_id:?}");
    format!("backbeat.{cluster_id}.{}", kind.as_str())
}

/// Splits `backbeat.{cluster}.{kind}`; `None` for any other subject, or one
/// whose cluster token does not match the cluster-id pattern.
pub fn parse_subject(subject: &str) -> Option<(&str, SubjectKind)> {
    let rest = subject.strip_prefix("backbeat.")?;
    let (cluster, kind) = rest.split_once('.')?;
    let kind = match kind {
        "beat" => SubjectKind::Beat,
        "claim" => SubjectKind::Claim,
        "intake" => SubjectKind::Intake,
        "reject" => SubjectKind::Reject,
        "bar" => SubjectKind::Bar,
        _ => return None,
    };
    is_valid_cluster_id(cluster).then_some((cluster, kind))
}

/// `Nats-Msg-Id` of a beat: `{cluster}:{beat_index}`.
pub fn beat_msg_id(cluster_id: &str, beat_index: u64) -> String {
    format!("{cluster_id}:{beat_index}")
}

/// `Nats-Msg-Id` of an accepted claim (SPEC §8): the first 32 lowercase hex
/// characters of SHA-256 of
/// `{cluster}/{a}:{agent_id}/{t}:{task_id or empty}/{beat_index}/{hlc}`, where
/// `a` and `t` are the UTF-8 byte lengths of `agent_id` and `task_id` (0 when
/// absent or empty) in decimal. The lengths make the id injective over the two
/// free-text fields: before them, agent `a/b` without a task and agent `a`
/// with task `b/` hashed alike and the second claim was dropped as a duplicate.
/// The gateway and every client compute the id here and nowhere else.
pub fn claim_msg_id(cluster_id: &str, agent_id: &str, task_id: Option<&str>, beat_index: u64, hlc: &str) -> String {
    let task = task_id.unwrap_or("");
    let mut hasher = Sha256::new();
    for part in [
        cluster_id.as_bytes(),
        b"/",
        agent_id.len().to_string().as_bytes(),
        b":",
        agent_id.as_bytes(),
        b"/",
        task.len().to_string().as_bytes(),
        b":",
        task.as_bytes(),
        b"/",
        beat_index.to_string().as_bytes(),
        b"/",
        hlc.as_bytes(),
    ] {
        hasher.update(part);
    }
    lower_hex(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids() {
        assert!(is_valid_cluster_id("chorus-production"));
        assert!(is_valid_cluster_id("A_b-9"));
        assert!(is_valid_cluster_id(&"x".repeat(64)));
        assert!(!is_valid_cluster_id(&"x".repeat(65)));
        assert!(!is_valid_cluster_id(""));
        assert!(!is_valid_cluster_id("a.b"));
        assert!(!is_valid_cluster_id("a*"));
        assert!(!is_valid_cluster_id("é"));
    }

    #[test]
    fn subjects() {
        assert_eq!(subject("alpha", SubjectKind::Beat), "backbeat.alpha.beat");
        assert_eq!(
            parse_subject("backbeat.alpha.claim"),
            Some(("alpha", SubjectKind::Claim))
        );
        assert_eq!(
            parse_subject("backbeat.alpha.intake"),
            Some(("alpha", SubjectKind::Intake))
        );
        assert_eq!(parse_subject("backbeat.a.b.beat"), None);
        assert_eq!(parse_subject("backbeat..beat"), None);
        assert_eq!(parse_subject("backbeat.a*.beat"), None);
        assert_eq!(parse_subject("other.alpha.beat"), None);
        assert_eq!(parse_subject("backbeat.alpha.beats"), None);
    }

    #[test]
    fn message_ids() {
        assert_eq!(beat_msg_id("alpha", 7), "alpha:7");
        let id = claim_msg_id("alpha", "a1", Some("build:1"), 3, "f481c:0000:00a1");
        assert_eq!(id.len(), 32);
        assert_eq!(id, claim_msg_id("alpha", "a1", Some("build:1"), 3, "f481c:0000:00a1"));
        assert_ne!(id, claim_msg_id("alpha", "a1", None, 3, "f481c:0000:00a1"));
        assert_eq!(
            claim_msg_id("c", "a", None, 1, "1:0000:0000"),
            claim_msg_id("c", "a", Some(""), 1, "1:0000:0000")
        );
    }

    /// Ids pinned against SHA-256 computed outside this code (Python's hashlib
    /// over SPEC §8's string), so the formula cannot drift unnoticed.
    #[test]
    fn claim_ids_are_pinned() {
        let cases = [
            // alpha/2:a1/7:build:1/3/f481c:0000:00a1
            (
                ("alpha", "a1", Some("build:1"), 3, "f481c:0000:00a1"),
                "c85aff1688e32cff5f0d5251ee3e676e",
            ),
            // alpha/3:a/b/0:/7/1:0000:0001 (no task)
            (
                ("alpha", "a/b", None, 7, "1:0000:0001"),
                "00215016c00d48bc2a453c27478f48fe",
            ),
            // alpha/1:a/2:b//7/1:0000:0001
            (
                ("alpha", "a", Some("b/"), 7, "1:0000:0001"),
                "5868ca41e3ca3665e921699ee64f146c",
            ),
            // `/` and `:` inside both ids
            (
                ("prod-eu", "agent:7", Some("kind:x/y:z"), 12, "18c2f3a4b5d:0002:00ff"),
                "ab9966f95338945f365b703e3044e14e",
            ),
            // non-ASCII: lengths are UTF-8 bytes (8 and 9), not characters
            (
                ("c", "agent-é", Some("tâche-ß"), 0, "0:0000:0000"),
                "3330316ea691aaebebcf9567e4f768bb",
            ),
            (
                ("c", "a", None, 9_007_199_254_740_991, "ffffffffffff:ffff:ffff"),
                "41dd93afd8762afd1886e8e7b14a800f",
            ),
        ];
        for ((cluster, agent, task, beat, hlc), want) in cases {
            assert_eq!(
                claim_msg_id(cluster, agent, task, beat, hlc),
                want,
                "{cluster}/{agent}/{task:?}"
            );
        }
    }

    /// The pair that collided before SPEC §8 was amended: agent `a/b` without a
    /// task and agent `a` with task `b/`, same beat and HLC.
    #[test]
    fn the_old_colliding_pair_gets_two_ids() {
        let first = claim_msg_id("alpha", "a/b", None, 7, "1:0000:0001");
        let second = claim_msg_id("alpha", "a", Some("b/"), 7, "1:0000:0001");
        assert_ne!(first, second);
    }
}
