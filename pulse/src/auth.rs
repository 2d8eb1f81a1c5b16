//! The pulse group's shared secret and the two things it authenticates:
//! every raft request between nodes, and every beat the group publishes.
//!
//! - **Raft**: a request carries `Backbeat-Raft-Auth: {unix_ms}.{hex mac}`, the
//!   HMAC-SHA256 of `raft/v1\n{METHOD}\n{path}\n{unix_ms}\n{body}`. The receiver
//!   refuses a stamp further than [`RAFT_AUTH_SKEW`] from its own wall clock, so
//!   a captured request can only be replayed within that window (raft itself
//!   ignores a stale append or vote).
//! - **Beats**: a beat carries `Backbeat-Beat-Mac` = hex HMAC-SHA256 of
//!   `{subject}\n{payload}`. The payload stays exactly SPEC §2 (the fold reads
//!   payloads only); the MAC lets a pulse node tell its group's beats from a
//!   foreign message on the same subject, which it must never resume from.
//!
//! Every comparison is constant-time (`hmac`'s `verify_slice`). The secret is
//! never logged (`Debug` prints its length only).

use std::path::Path;
use std::time::Duration;

use backbeat_service::secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the beat's authenticator.
pub const BEAT_MAC_HEADER: &str = "Backbeat-Beat-Mac";
/// Header carrying a raft request's authenticator.
pub const RAFT_AUTH_HEADER: &str = "backbeat-raft-auth";
/// The largest difference between a raft request's stamp and the receiver's wall clock.
pub const RAFT_AUTH_SKEW: Duration = Duration::from_secs(30);
/// A shorter secret is refused: it could be guessed.
pub const SECRET_BYTES_MIN: usize = 16;
/// A longer secret file is refused (it is not a secret, it is a mistake).
pub const SECRET_BYTES_MAX: usize = 4096;
/// Bytes of a generated secret (written as hex).
const GENERATED_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is {0} bytes; at least {SECRET_BYTES_MIN} are needed")]
    TooShort(usize),
    #[error("the secret is {0} bytes; at most {SECRET_BYTES_MAX} are allowed")]
    TooLong(usize),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a raft request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftAuthError {
    #[error("no {RAFT_AUTH_HEADER} header")]
    Missing,
    #[error("the {RAFT_AUTH_HEADER} header is not {{unix_ms}}.{{hex mac}}")]
    Malformed,
    #[error("the request's stamp is more than {RAFT_AUTH_SKEW:?} from this node's clock")]
    Skewed,
    #[error("the authenticator does not match")]
    Mismatch,
}

/// The group's shared secret.
#[derive(Clone)]
pub struct GroupSecret {
    key: Vec<u8>,
}

impl std::fmt::Debug for GroupSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupSecret({} bytes)", self.key.len())
    }
}

impl GroupSecret {
    /// A secret from its text; surrounding whitespace (a file's final newline) is not part of it.
    pub fn from_text(text: &str) -> Result<GroupSecret, SecretError> {
        let key = text.trim().as_bytes().to_vec();
        if key.len() < SECRET_BYTES_MIN {
            return Err(SecretError::TooShort(key.len()));
        }
        if key.len() > SECRET_BYTES_MAX {
            return Err(SecretError::TooLong(key.len()));
        }
        Ok(GroupSecret { key })
    }

    /// Reads a secret file (through [`secret::read_file`], as every service's secrets).
    pub fn read_file(path: &Path) -> Result<GroupSecret, SecretError> {
        // Two bytes over the limit for a final line break.
        match secret::read_file(path, SECRET_BYTES_MAX as u64 + 2) {
            Ok(text) => GroupSecret::from_text(&text),
            Err(secret::SecretError::Read { path, source }) => Err(SecretError::Io {
                path: path.display().to_string(),
                source,
            }),
            Err(secret::SecretError::TooLong { bytes, .. }) => Err(SecretError::TooLong(bytes as usize)),
            Err(secret::SecretError::EmptyFile { .. } | secret::SecretError::EmptyValue) => {
                Err(SecretError::TooShort(0))
            }
        }
    }

    /// The secret in `path`, or a new random one written there (mode 0600) when
    /// the file does not exist: a group of one keeps its secret across restarts.
    pub fn read_or_generate(path: &Path) -> Result<GroupSecret, SecretError> {
        if path.exists() {
            return GroupSecret::read_file(path);
        }
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes: [u8; GENERATED_SECRET_BYTES] = rand::random();
        let text = hex(&bytes);
        let temporary = path.with_extension("tmp");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&temporary, path).map_err(io)?;
        GroupSecret::from_text(&text)
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }

    /// The beat authenticator (hex) of `payload` published on `subject`.
    pub fn beat_mac(&self, subject: &str, payload: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(subject.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `given` (the header's text) authenticates `payload` on `subject`; constant-time.
    pub fn beat_mac_matches(&self, subject: &str, payload: &[u8], given: &str) -> bool {
        let Some(given) = unhex(given) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(subject.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac.verify_slice(&given).is_ok()
    }

    fn raft_mac(&self, method: &str, path: &str, unix_ms: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(format!("raft/v1\n{method}\n{path}\n{unix_ms}\n").as_bytes());
        mac.update(body);
        mac
    }

    /// The value of [`RAFT_AUTH_HEADER`] for a request stamped `unix_ms`.
    pub fn raft_auth(&self, method: &str, path: &str, unix_ms: i64, body: &[u8]) -> String {
        let mac = self.raft_mac(method, path, unix_ms, body).finalize().into_bytes();
        format!("{unix_ms}.{}", hex(&mac))
    }

    /// Checks a request's [`RAFT_AUTH_HEADER`] against this node's wall clock `now_unix_ms`.
    pub fn verify_raft_auth(
        &self,
        header: Option<&str>,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix_ms: i64,
    ) -> Result<(), RaftAuthError> {
        let header = header.ok_or(RaftAuthError::Missing)?;
        let (stamp, mac) = header.split_once('.').ok_or(RaftAuthError::Malformed)?;
        let unix_ms: i64 = stamp.parse().map_err(|_| RaftAuthError::Malformed)?;
        let mac = unhex(mac).ok_or(RaftAuthError::Malformed)?;
        if now_unix_ms.abs_diff(unix_ms) > RAFT_AUTH_SKEW.as_millis() as u64 {
            return Err(RaftAuthError::Skewed);
        }
        self.raft_mac(method, path, unix_ms, body)
            .verify_slice(&mac)
            .map_err(|_| RaftAuthError::Mismatch)
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

/// Hex of at most 64 bytes (a MAC), either case; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> GroupSecret {
        GroupSecret::from_text("a secret of enough bytes\n").unwrap()
    }

    #[test]
    fn short_or_long_secrets_are_refused() {
        assert!(matches!(
            GroupSecret::from_text("  short \n"),
            Err(SecretError::TooShort(5))
        ));
        assert!(matches!(
            GroupSecret::from_text(&"x".repeat(SECRET_BYTES_MAX + 1)),
            Err(SecretError::TooLong(_))
        ));
        assert!(
            !format!("{:?}", secret()).contains("enough"),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn beat_mac_covers_subject_and_payload() {
        let s = secret();
        let mac = s.beat_mac("backbeat.c.beat", b"{}");
        assert_eq!(mac.len(), 64);
        assert!(s.beat_mac_matches("backbeat.c.beat", b"{}", &mac));
        assert!(s.beat_mac_matches("backbeat.c.beat", b"{}", &mac.to_uppercase()));
        assert!(!s.beat_mac_matches("backbeat.d.beat", b"{}", &mac));
        assert!(!s.beat_mac_matches("backbeat.c.beat", b"{ }", &mac));
        assert!(!s.beat_mac_matches("backbeat.c.beat", b"{}", &mac[..62]));
        assert!(!s.beat_mac_matches("backbeat.c.beat", b"{}", "zz"));
        assert!(!s.beat_mac_matches("backbeat.c.beat", b"{}", ""));
        let other = GroupSecret::from_text("another secret of enough bytes").unwrap();
        assert!(!other.beat_mac_matches("backbeat.c.beat", b"{}", &mac));
    }

    #[test]
    fn raft_auth_checks_every_part_and_the_clock() {
        let s = secret();
        let now = 1_700_000_000_000;
        let header = s.raft_auth("POST", "/raft/vote", now, b"body");
        let verify = |h: Option<&str>, method, path, body: &[u8], at| s.verify_raft_auth(h, method, path, body, at);
        assert_eq!(verify(Some(&header), "POST", "/raft/vote", b"body", now + 1000), Ok(()));
        assert_eq!(
            verify(None, "POST", "/raft/vote", b"body", now),
            Err(RaftAuthError::Missing)
        );
        assert_eq!(
            verify(Some("x"), "POST", "/raft/vote", b"body", now),
            Err(RaftAuthError::Malformed)
        );
        for (method, path, body) in [
            ("GET", "/raft/vote", &b"body"[..]),
            ("POST", "/raft/append", &b"body"[..]),
            ("POST", "/raft/vote", &b"bodY"[..]),
        ] {
            assert_eq!(
                verify(Some(&header), method, path, body, now),
                Err(RaftAuthError::Mismatch)
            );
        }
        let skew = RAFT_AUTH_SKEW.as_millis() as i64;
        assert_eq!(
            verify(Some(&header), "POST", "/raft/vote", b"body", now + skew + 1),
            Err(RaftAuthError::Skewed)
        );
        assert_eq!(
            verify(Some(&header), "POST", "/raft/vote", b"body", now - skew - 1),
            Err(RaftAuthError::Skewed)
        );
        // The stamp is covered: moving it breaks the MAC.
        let (_, mac) = header.split_once('.').unwrap();
        let moved = format!("{}.{mac}", now + 1);
        assert_eq!(
            verify(Some(&moved), "POST", "/raft/vote", b"body", now),
            Err(RaftAuthError::Mismatch)
        );
        let wrong = GroupSecret::from_text("another secret of enough bytes").unwrap();
        let forged = wrong.raft_auth("POST", "/raft/vote", now, b"body");
        assert_eq!(
            verify(Some(&forged), "POST", "/raft/vote", b"body", now),
            Err(RaftAuthError::Mismatch)
        );
    }

    #[test]
    fn a_generated_secret_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-secret");
        let first = GroupSecret::read_or_generate(&path).unwrap();
        let again = GroupSecret::read_or_generate(&path).unwrap();
        assert_eq!(first.key, again.key);
        assert_eq!(first.key.len(), 64, "32 random bytes as hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
