//! The gateway's decision about one input, before any I/O: append it to the
//! cluster's claim subject under its SPEC §8 message id, or keep it as a dead
//! letter with a reason.
//!
//! This is pure so the whole corpus of bad inputs can be checked without a
//! server, and so NATS and HTTP intake cannot disagree: both call [`admit`].

use backbeat_schemas::names::{claim_msg_id, is_valid_cluster_id, subject, SubjectKind};
use backbeat_schemas::validate_claim;

/// Where dead letters of inputs whose cluster id is not valid go. Their own
/// cluster's reject subject cannot be built (the token may hold any character
/// a subject allows, or none), and `_invalid` is a valid cluster token, so the
/// subject is inside `BACKBEAT_REJECTS` (`backbeat.*.reject`).
pub const INVALID_CLUSTER_REJECT_SUBJECT: &str = "backbeat._invalid.reject";

/// The reason given for an input whose cluster id (subject token or URL path
/// segment) does not match `[A-Za-z0-9_-]{1,64}`. SPEC §5 has no such reason
/// because the fold never sees such a subject; the gateway still has to answer.
pub const REASON_INVALID_CLUSTER: &str = "invalid_cluster";

/// What to do with one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Append the payload, unchanged, to `claim_subject` with `Nats-Msg-Id: msg_id`.
    Accept { claim_subject: String, msg_id: String },
    /// Keep the payload in `reject_subject` and tell the sender why.
    Reject {
        reject_subject: String,
        reason: String,
        message: String,
    },
}

/// Decides about `payload` sent for cluster `cluster` (the subject token or
/// path segment exactly as received). Checks the cluster id first, then the
/// claim with [`validate_claim`] (SPEC §5 order).
pub fn admit(cluster: &str, payload: &[u8]) -> Admission {
    if !is_valid_cluster_id(cluster) {
        let shown: String = cluster.chars().take(80).collect();
        return Admission::Reject {
            reject_subject: INVALID_CLUSTER_REJECT_SUBJECT.to_string(),
            reason: REASON_INVALID_CLUSTER.to_string(),
            message: format!("cluster id must match [A-Za-z0-9_-]{{1,64}}; got {shown:?}"),
        };
    }
    match validate_claim(payload) {
        Ok(claim) => {
            // The hlc string "as the claim wrote it": the HLC grammar of SPEC §3
            // has exactly one spelling per value, so the parsed HLC displays as
            // the string the claim holds (after JSON unescaping).
            let hlc = claim.hlc.to_string();
            Admission::Accept {
                claim_subject: subject(cluster, SubjectKind::Claim),
                msg_id: claim_msg_id(
                    cluster,
                    &claim.agent_id,
                    claim.task_id.as_deref(),
                    claim.beat_index,
                    &hlc,
                ),
            }
        }
        Err(rejection) => Admission::Reject {
            reject_subject: subject(cluster, SubjectKind::Reject),
            reason: rejection.reason.as_str().into_owned(),
            message: rejection.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"type":"backbeat.statusclaim.v1","agent_id":"a1","task_id":"build:1","beat_index":3,"state":"executing","beats_left":2,"progress":0.5,"hlc":"f481c:0000:00a1"}"#;

    fn reason(cluster: &str, payload: &[u8]) -> String {
        match admit(cluster, payload) {
            Admission::Reject { reason, .. } => reason,
            Admission::Accept { .. } => "accepted".into(),
        }
    }

    #[test]
    fn accepts_with_the_spec_message_id() {
        assert_eq!(
            admit("alpha", GOOD.as_bytes()),
            Admission::Accept {
                claim_subject: "backbeat.alpha.claim".into(),
                msg_id: claim_msg_id("alpha", "a1", Some("build:1"), 3, "f481c:0000:00a1"),
            }
        );
    }

    #[test]
    fn an_escaped_hlc_gets_the_id_of_its_value() {
        // `\u0066` is `f`: the claim's hlc value is the same string, so the same claim id.
        let escaped = GOOD.replace("f481c", "\\u0066481c");
        assert_eq!(admit("alpha", escaped.as_bytes()), admit("alpha", GOOD.as_bytes()));
    }

    #[test]
    fn refuses_bad_cluster_ids_before_looking_at_the_payload() {
        for cluster in ["", "a$b", "é", &"x".repeat(65), "a b"] {
            match admit(cluster, b"not json") {
                Admission::Reject {
                    reject_subject, reason, ..
                } => {
                    assert_eq!(reason, "invalid_cluster");
                    assert_eq!(reject_subject, INVALID_CLUSTER_REJECT_SUBJECT);
                }
                other => panic!("{cluster:?}: {other:?}"),
            }
        }
        assert!(backbeat_schemas::names::is_valid_cluster_id("_invalid"));
    }

    #[test]
    fn refusals_carry_the_spec_reason_and_the_cluster_reject_subject() {
        let big = format!(r#"{{"notes":"{}"}}"#, "x".repeat(9000));
        let cases: [(&str, &[u8]); 6] = [
            ("invalid_json", b"{"),
            ("invalid_json", b"[1]"),
            ("wrong_type", br#"{"type":"backbeat.beatframe.v1"}"#),
            ("too_large", big.as_bytes()),
            (
                "invalid_field:progress",
                &GOOD.replace("0.5", "1.5").into_bytes().leak()[..],
            ),
            (
                "invalid_field:hlc",
                &GOOD.replace("f481c", "F481C").into_bytes().leak()[..],
            ),
        ];
        for (want, payload) in cases {
            assert_eq!(reason("alpha", payload), want, "{}", String::from_utf8_lossy(payload));
            match admit("alpha", payload) {
                Admission::Reject { reject_subject, .. } => assert_eq!(reject_subject, "backbeat.alpha.reject"),
                other => panic!("{other:?}"),
            }
        }
    }
}
