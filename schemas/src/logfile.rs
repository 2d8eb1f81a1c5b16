//! Log files (SPEC §7): the portable form of a slice of the stream.
//!
//! One JSON object a line: `{"seq":N,"subject":"…","payload":"…"}`, or
//! `"payload_b64"` for a payload that is not UTF-8.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// One message of the stream, as a log file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// Why a line is not a log-file line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LogLineError {
    /// 1-based line number in the file.
    pub line: u64,
    pub message: String,
}

#[derive(Deserialize)]
struct RawLine {
    seq: u64,
    subject: String,
    payload: Option<String>,
    payload_b64: Option<String>,
}

#[derive(Serialize)]
struct TextLine<'a> {
    seq: u64,
    subject: &'a str,
    payload: &'a str,
}

#[derive(Serialize)]
struct B64Line<'a> {
    seq: u64,
    subject: &'a str,
    payload_b64: String,
}

impl LogEntry {
    /// Reads one line (without its newline). `Ok(None)` for a blank line.
    pub fn parse_line(text: &str, line: u64) -> Result<Option<LogEntry>, LogLineError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let error = |message: String| LogLineError { line, message };
        let raw: RawLine = serde_json::from_str(text)
            .map_err(|e| error(format!("not a log line {{\"seq\":N,\"subject\":S,\"payload\":P}}: {e}")))?;
        let payload = match (raw.payload, raw.payload_b64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| error(format!("payload_b64 is not standard base64: {e}")))?,
            (Some(_), Some(_)) => return Err(error("has both payload and payload_b64".into())),
            (None, None) => return Err(error("has neither payload nor payload_b64".into())),
        };
        Ok(Some(LogEntry {
            seq: raw.seq,
            subject: raw.subject,
            payload,
        }))
    }

    /// The entry as one line, without a newline.
    pub fn to_line(&self) -> String {
        format_line(self.seq, &self.subject, &self.payload)
    }
}

/// A log line for a message, without a newline.
pub fn format_line(seq: u64, subject: &str, payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(payload) => serde_json::to_string(&TextLine { seq, subject, payload }),
        Err(_) => serde_json::to_string(&B64Line {
            seq,
            subject,
            payload_b64: base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    }
    .expect("log lines always serialize")
}

/// Reads a whole log file, naming the first bad line.
pub fn parse_log(text: &str) -> Result<Vec<LogEntry>, LogLineError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(entry) = LogEntry::parse_line(line, index as u64 + 1)? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_text_and_base64_payloads() {
        let e = LogEntry::parse_line(r#"{"seq":3,"subject":"backbeat.a.beat","payload":"{\"x\":1}"}"#, 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.seq, e.subject.as_str(), e.payload.as_slice()),
            (3, "backbeat.a.beat", &b"{\"x\":1}"[..])
        );
        let e = LogEntry::parse_line(r#"{"seq":4,"subject":"s","payload_b64":"/w=="}"#, 1)
            .unwrap()
            .unwrap();
        assert_eq!(e.payload, vec![0xff]);
        assert_eq!(e.to_line(), r#"{"seq":4,"subject":"s","payload_b64":"/w=="}"#);
        assert_eq!(LogEntry::parse_line("   ", 1), Ok(None));
    }

    #[test]
    fn names_the_bad_line() {
        let err = parse_log("\n{\"seq\":1,\"subject\":\"s\",\"payload\":\"\"}\nnot json\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(LogEntry::parse_line(r#"{"seq":-1,"subject":"s","payload":""}"#, 1).is_err());
        assert!(LogEntry::parse_line(r#"{"seq":1,"payload":""}"#, 1).is_err());
        assert!(LogEntry::parse_line(r#"{"seq":1,"subject":"s"}"#, 1).is_err());
        assert!(LogEntry::parse_line(r#"{"seq":1,"subject":"s","payload":"","payload_b64":""}"#, 1).is_err());
        assert!(LogEntry::parse_line(r#"[1]"#, 1).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse(seq: u64, subject in "[a-z.*]{1,20}", payload: Vec<u8>) {
            let line = format_line(seq, &subject, &payload);
            prop_assert!(!line.contains('\n'));
            let entry = LogEntry::parse_line(&line, 1).unwrap().unwrap();
            prop_assert_eq!(entry, LogEntry { seq, subject, payload });
        }
    }
}
