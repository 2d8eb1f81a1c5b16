//! Secrets a service is given (a bearer token, a group's shared key): read
//! from a flag's value or from a file, and compared in constant time.
//!
//! A file is the way to give one (a command line is visible to every user of
//! the machine); its surrounding whitespace (the final newline) is not part of
//! the secret. An empty secret is refused rather than taken to mean "none",
//! and a large file is refused before it is read: it is not a secret, it is a
//! mistake. Callers name the flag in their own messages; these errors name the
//! file only.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A token file above this many bytes is refused.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read (its cause is the `source`).
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is {bytes} bytes; a token is at most {bytes_max}", path.display())]
    TooLong { path: PathBuf, bytes: u64, bytes_max: u64 },
    /// The file holds nothing but whitespace.
    #[error("{} is empty", path.display())]
    EmptyFile { path: PathBuf },
    /// The value given (a flag or a variable) is empty.
    #[error("the value is empty")]
    EmptyValue,
}

/// The secret in `path` without surrounding whitespace: refused when the file
/// is larger than `bytes_max` (checked before it is read) or holds nothing else.
pub fn read_file(path: &Path, bytes_max: u64) -> Result<String, SecretError> {
    let read = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(read)?.len();
    if bytes > bytes_max {
        return Err(SecretError::TooLong {
            path: path.to_path_buf(),
            bytes,
            bytes_max,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// The token in `file` (at most [`TOKEN_FILE_BYTES_MAX`]) when one is named,
/// else `value` as it is; `None` when neither is given. An empty one is refused.
pub fn token_from(value: Option<String>, file: Option<&Path>) -> Result<Option<String>, SecretError> {
    match (file, value) {
        (Some(path), _) => read_file(path, TOKEN_FILE_BYTES_MAX).map(Some),
        (None, Some(value)) if value.is_empty() => Err(SecretError::EmptyValue),
        (None, value) => Ok(value),
    }
}

/// Whether `given` is `expected`, in constant time: both are hashed to 32
/// bytes first, so neither the content nor the length of the expected secret
/// shows in the time taken, and the digests are compared without an early exit.
pub fn matches(given: &[u8], expected: &[u8]) -> bool {
    let (given, expected) = (Sha256::digest(given), Sha256::digest(expected));
    given.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(matches(b"secret", b"secret"));
        assert!(!matches(b"secret", b"secreT"));
        assert!(!matches(b"secret", b"secret2"));
        assert!(!matches(b"secre", b"secret"));
        assert!(!matches(b"", b"secret"));
        assert!(matches(b"", b""));
    }

    #[test]
    fn a_token_comes_from_its_file_without_whitespace_or_from_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  the-token\n").unwrap();
        assert_eq!(token_from(None, Some(&file)).unwrap().as_deref(), Some("the-token"));
        assert_eq!(
            token_from(Some("value".into()), None).unwrap().as_deref(),
            Some("value")
        );
        assert_eq!(token_from(None, None).unwrap(), None);
        assert!(matches!(
            token_from(Some(String::new()), None),
            Err(SecretError::EmptyValue)
        ));
    }

    #[test]
    fn an_empty_missing_or_large_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, " \n").unwrap();
        let error = read_file(&file, 10).unwrap_err();
        assert!(matches!(error, SecretError::EmptyFile { .. }));
        assert_eq!(error.to_string(), format!("{} is empty", file.display()));

        std::fs::write(&file, "x".repeat(11)).unwrap();
        let error = read_file(&file, 10).unwrap_err();
        assert!(matches!(error, SecretError::TooLong { bytes: 11, .. }));
        assert_eq!(
            error.to_string(),
            format!("{} is 11 bytes; a token is at most 10", file.display())
        );

        let missing = dir.path().join("missing");
        let error = read_file(&missing, 10).unwrap_err();
        let SecretError::Read { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(error.to_string(), missing.display().to_string());
    }
}
