//! The gateway's answers as they travel, shared by the gateway and the agent
//! client library (which must not link the gateway's server side): the answer
//! to one claim, the same on NATS and HTTP,
//! `{"ok":true,"seq":N,"duplicate":false}` or
//! `{"ok":false,"error":{"reason":"invalid_field:progress","message":"…"}}`,
//! and the per-line answer to an HTTP NDJSON batch.

use serde::{Deserialize, Serialize};

/// The reason of an answer that says "not stored, try again later": JetStream
/// did not acknowledge in time, or the gateway has too many acks in flight, or
/// it is shutting down. The claim may or may not be stored; a retry with the
/// same bytes is safe because the message id deduplicates it.
pub const REASON_UNAVAILABLE: &str = "unavailable";

/// What became of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// JetStream acknowledged it: stream sequence `seq`; `duplicate` when the
    /// stream already held a claim with the same message id (that one's `seq`).
    Accepted { seq: u64, duplicate: bool },
    /// Refused, with a SPEC reason (or `invalid_cluster`); kept as a dead letter.
    Rejected { reason: String, message: String },
    /// Not acknowledged by JetStream; retry later.
    Unavailable { message: String },
}

impl Outcome {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Outcome::Unavailable {
            message: message.into(),
        }
    }

    /// The wire form of the answer.
    pub fn to_reply(&self) -> Reply {
        match self {
            Outcome::Accepted { seq, duplicate } => Reply {
                ok: true,
                seq: Some(*seq),
                duplicate: Some(*duplicate),
                error: None,
            },
            Outcome::Rejected { reason, message } => Reply::error(reason, message),
            Outcome::Unavailable { message } => Reply::error(REASON_UNAVAILABLE, message),
        }
    }

    /// Compact JSON of [`Outcome::to_reply`].
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_reply()).expect("a reply always serializes")
    }
}

/// An answer as it travels: NATS reply payload, HTTP body, or one line's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
}

impl Reply {
    pub fn error(reason: &str, message: &str) -> Self {
        Reply {
            ok: false,
            seq: None,
            duplicate: None,
            error: Some(ReplyError {
                reason: reason.to_string(),
                message: message.to_string(),
            }),
        }
    }
}

/// The content type of an HTTP batch of claims (one per line).
pub use backbeat_ingest_core::batch::NDJSON_CONTENT_TYPE;

/// The body of a batch's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply {
    /// One result per non-blank line, in line order.
    pub results: Vec<LineResult>,
    /// Lines stored (duplicates included: they are stored, once).
    pub accepted: u64,
    /// Lines refused (kept as dead letters).
    pub rejected: u64,
    /// Lines not acknowledged by JetStream in time: send them again.
    pub unavailable: u64,
}

/// The answer for one line of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineResult {
    /// The 1-based line number in the body (blank lines count).
    pub line: u64,
    #[serde(flatten)]
    pub reply: Reply,
}

/// Why a claim was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyError {
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(
            String::from_utf8(
                Outcome::Accepted {
                    seq: 7,
                    duplicate: false
                }
                .to_json()
            )
            .unwrap(),
            r#"{"ok":true,"seq":7,"duplicate":false}"#
        );
        assert_eq!(
            String::from_utf8(
                Outcome::Rejected {
                    reason: "invalid_field:progress".into(),
                    message: "m".into()
                }
                .to_json()
            )
            .unwrap(),
            r#"{"ok":false,"error":{"reason":"invalid_field:progress","message":"m"}}"#
        );
        assert_eq!(
            String::from_utf8(Outcome::unavailable("x").to_json()).unwrap(),
            r#"{"ok":false,"error":{"reason":"unavailable","message":"x"}}"#
        );
    }
}
