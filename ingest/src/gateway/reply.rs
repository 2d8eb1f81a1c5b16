//! Where the gateway may answer a NATS request: only to an inbox.
//!
//! A request's reply subject is whatever its sender wrote. Answering any
//! subject would let one request make the gateway publish its answer into a
//! stream: a reply subject `backbeat.x.beat` put a foreign message into
//! `BACKBEAT_EVENTS` (stopping the pulse), `backbeat.x.bar` one into
//! `BACKBEAT_BARS` (stalling the processor), and `$JS.API.…` would call the
//! JetStream API with the gateway's permissions. So the gateway answers only
//! reply subjects under an inbox prefix: `_INBOX` (what every NATS client uses
//! by default) and the custom prefixes the operator lists (async-nats
//! `ConnectOptions::custom_inbox_prefix`, nats.go `CustomInboxPrefix`), which
//! themselves can never be a `backbeat` or `$` subject.
//!
//! A request whose reply subject is refused is still taken as a claim, exactly
//! as a plain publish (no reply subject) is: the claim's validity does not
//! depend on where its answer would go, and an honest sender with a wrong
//! prefix retries the same bytes, which the message id deduplicates. It only
//! gets no answer, and the refusal is counted
//! (`backbeat_ingest_replies_refused_total{reason}`).

/// The inbox prefix of every NATS client unless configured otherwise.
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// A reply subject is at most this long; a client's inbox is far shorter
/// (`_INBOX.` + 22 characters of id + a request token).
pub const REPLY_SUBJECT_BYTES_MAX: usize = 256;

/// An inbox prefix (without its final `.`) is at most this long.
pub const INBOX_PREFIX_BYTES_MAX: usize = 128;

/// Why a reply subject gets no answer; the label of `backbeat_ingest_replies_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedReply {
    /// Not under any of the inbox prefixes.
    NotAnInbox,
    /// Under an inbox prefix, but not a literal subject (wildcard, empty
    /// token, white space or control character) or longer than [`REPLY_SUBJECT_BYTES_MAX`].
    InvalidSubject,
}

impl RefusedReply {
    /// Every reason, to show each counter from the start.
    pub const ALL: [RefusedReply; 2] = [RefusedReply::NotAnInbox, RefusedReply::InvalidSubject];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusedReply::NotAnInbox => "not_an_inbox",
            RefusedReply::InvalidSubject => "invalid_subject",
        }
    }
}

/// A configured inbox prefix that could let an answer land where it must not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxPrefixError {
    #[error("no inbox prefix given (--inbox-prefixes needs at least one, e.g. {DEFAULT_INBOX_PREFIX})")]
    Empty,
    #[error("inbox prefix {0:?} is not a literal NATS subject of at most {INBOX_PREFIX_BYTES_MAX} bytes (no wildcard, empty token or white space; no final '.')")]
    NotLiteral(String),
    #[error("inbox prefix {0:?} would let answers reach BACKBEAT's own subjects (first token 'backbeat') or the server's ('$...')")]
    Reserved(String),
}

/// The reply subjects the gateway answers: `{prefix}.{anything literal}` for
/// one of its prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPrefixes {
    /// Each prefix with its final `.`, so `_INBOX` does not admit `_INBOXES.x`.
    with_dot: Vec<String>,
}

impl InboxPrefixes {
    /// Checks each prefix: a literal subject whose first token is neither
    /// `backbeat` (in any case) nor starts with `$` (`$JS`, `$KV`, `$SYS`, ...).
    pub fn new<S: AsRef<str>>(prefixes: &[S]) -> Result<InboxPrefixes, InboxPrefixError> {
        if prefixes.is_empty() {
            return Err(InboxPrefixError::Empty);
        }
        let mut with_dot = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let prefix = prefix.as_ref();
            if prefix.len() > INBOX_PREFIX_BYTES_MAX || !is_literal_subject(prefix) {
                return Err(InboxPrefixError::NotLiteral(prefix.to_string()));
            }
            let first = prefix.split('.').next().unwrap_or_default();
            if first.eq_ignore_ascii_case("backbeat") || first.starts_with('$') {
                return Err(InboxPrefixError::Reserved(prefix.to_string()));
            }
            with_dot.push(format!("{prefix}."));
        }
        Ok(InboxPrefixes { with_dot })
    }

    /// The prefixes as configured (without their final `.`).
    pub fn prefixes(&self) -> Vec<&str> {
        self.with_dot.iter().map(|p| &p[..p.len() - 1]).collect()
    }

    /// Whether the gateway may publish an answer to `reply_subject`.
    pub fn check(&self, reply_subject: &str) -> Result<(), RefusedReply> {
        if !self.with_dot.iter().any(|p| reply_subject.starts_with(p.as_str())) {
            return Err(RefusedReply::NotAnInbox);
        }
        if reply_subject.len() > REPLY_SUBJECT_BYTES_MAX || !is_literal_subject(reply_subject) {
            return Err(RefusedReply::InvalidSubject);
        }
        Ok(())
    }
}

impl Default for InboxPrefixes {
    fn default() -> Self {
        InboxPrefixes::new(&[DEFAULT_INBOX_PREFIX]).expect("the default prefix is valid")
    }
}

/// Non-empty `.`-separated tokens of printable ASCII without `*` or `>`: a
/// subject a message can be published to and that matches only itself.
fn is_literal_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|token| !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inboxes_are_answered() {
        let default = InboxPrefixes::default();
        assert_eq!(default.check("_INBOX.abc123"), Ok(()));
        assert_eq!(default.check("_INBOX.abc.7"), Ok(()));
        for foreign in [
            "backbeat.x.beat",
            "backbeat.x.bar",
            "backbeat.x.claim",
            "backbeat.x.reject",
            "$JS.API.STREAM.DELETE.BACKBEAT_EVENTS",
            "somewhere.else",
            "_INBOX",
            "_INBOXES.x",
            "_inbox.x",
            "",
        ] {
            assert_eq!(default.check(foreign), Err(RefusedReply::NotAnInbox), "{foreign:?}");
        }
        for malformed in [
            "_INBOX.",
            "_INBOX..x",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX.a b",
            "_INBOX.a\tb",
            "_INBOX.a\r\nPUB backbeat.x.beat 1",
        ] {
            assert_eq!(
                default.check(malformed),
                Err(RefusedReply::InvalidSubject),
                "{malformed:?}"
            );
        }
        let long = format!("_INBOX.{}", "x".repeat(REPLY_SUBJECT_BYTES_MAX));
        assert_eq!(default.check(&long), Err(RefusedReply::InvalidSubject));
    }

    #[test]
    fn custom_prefixes_add_to_the_choice() {
        let prefixes = InboxPrefixes::new(&["_INBOX", "_INBOX_alice", "team.replies"]).unwrap();
        assert_eq!(prefixes.prefixes(), vec!["_INBOX", "_INBOX_alice", "team.replies"]);
        assert_eq!(prefixes.check("_INBOX_alice.x.1"), Ok(()));
        assert_eq!(prefixes.check("team.replies.x"), Ok(()));
        assert_eq!(prefixes.check("_INBOX.x"), Ok(()));
        assert_eq!(prefixes.check("team.other.x"), Err(RefusedReply::NotAnInbox));
        let only_custom = InboxPrefixes::new(&["_INBOX_alice"]).unwrap();
        assert_eq!(only_custom.check("_INBOX.x"), Err(RefusedReply::NotAnInbox));
    }

    #[test]
    fn prefixes_that_reach_streams_or_the_server_are_refused() {
        assert_eq!(InboxPrefixes::new::<&str>(&[]), Err(InboxPrefixError::Empty));
        for reserved in ["backbeat", "backbeat.x", "BackBeat.x", "$JS", "$SYS.x", "$KV"] {
            assert!(
                matches!(InboxPrefixes::new(&[reserved]), Err(InboxPrefixError::Reserved(_))),
                "{reserved}"
            );
        }
        for bad in ["", "_INBOX.", "a..b", "a.*", ">", "a b", &"x".repeat(129)] {
            assert!(
                matches!(InboxPrefixes::new(&[bad]), Err(InboxPrefixError::NotLiteral(_))),
                "{bad:?}"
            );
        }
    }
}
