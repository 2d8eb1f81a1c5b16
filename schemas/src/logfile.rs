//! Log files (SPEC §7): the portable form of a slice of the stream.
//!
//! One JSON object a line: `{"seq":N,"subject":"…","payload":"…"}`, or
//! `"payload_b64"` for a payload that is not UTF-8.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::json::special_byte_offset;

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

    /// As [`LogEntry::parse_line`], but into `subject` and `payload`, which a
    /// reader reuses from line to line (both are overwritten); returns the
    /// sequence, or `Ok(None)` for a blank line. A line in the form
    /// [`format_line`] writes for a text payload is read straight off its
    /// bytes; every other line (and every bad one) goes to
    /// [`LogEntry::parse_line`], so what is accepted and what it reads as
    /// cannot differ.
    pub fn parse_line_into(
        text: &str,
        line: u64,
        subject: &mut String,
        payload: &mut Vec<u8>,
    ) -> Result<Option<u64>, LogLineError> {
        if let Some(seq) = read_written_line(text, subject, payload) {
            return Ok(Some(seq));
        }
        Ok(LogEntry::parse_line(text, line)?.map(|entry| {
            *subject = entry.subject;
            *payload = entry.payload;
            entry.seq
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

/// `{"seq":N,"subject":"S","payload":"P"}` exactly, with no escape in `S`
/// and only the two-character escapes in `P`: the sequence, with the subject
/// and the payload's bytes in the buffers. `None` for anything else, which the
/// full reader then decides (this never rejects a line).
fn read_written_line(text: &str, subject: &mut String, payload: &mut Vec<u8>) -> Option<u64> {
    let bytes = text.as_bytes();
    let rest = bytes.strip_prefix(br#"{"seq":"#)?;
    // A JSON integer: `0`, or a non-zero digit then digits, within u64.
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let seq = rest[..digits]
        .iter()
        .try_fold(0u64, |seq, &b| seq.checked_mul(10)?.checked_add(u64::from(b - b'0')))?;
    let rest = rest[digits..].strip_prefix(br#","subject":""#)?;
    let len = special_byte_offset(rest);
    if rest.get(len) != Some(&b'"') {
        return None;
    }
    // Only ASCII bytes end the run, so it ends on a character boundary.
    let start = bytes.len() - rest.len();
    let subject_text = text.get(start..start + len)?;
    let mut rest = rest[len..].strip_prefix(br#"","payload":""#)?;
    payload.clear();
    loop {
        let run = special_byte_offset(rest);
        payload.extend_from_slice(&rest[..run]);
        match rest.get(run) {
            Some(b'"') => {
                rest = &rest[run + 1..];
                break;
            }
            Some(b'\\') => {
                let unescaped = match rest.get(run + 1) {
                    Some(b'"') => b'"',
                    Some(b'\\') => b'\\',
                    Some(b'/') => b'/',
                    Some(b'b') => 0x08,
                    Some(b'f') => 0x0c,
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(b't') => b'\t',
                    // `\u` escapes, and invalid ones, go to the full reader.
                    _ => return None,
                };
                payload.push(unescaped);
                rest = &rest[run + 2..];
            }
            // A control character, or the end of the line.
            _ => return None,
        }
    }
    if rest != b"}" {
        return None;
    }
    subject.clear();
    subject.push_str(subject_text);
    Some(seq)
}

/// A line as read up to and with its `\n` (the last line of a file may have
/// none), without its line end: the `\n`, and a `\r` before it. What
/// `BufRead::lines` gives, and what `backbeat-processor fold --log` reads.
pub fn strip_line_end(line: &[u8]) -> &[u8] {
    match line.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => line,
    }
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
    fn a_line_end_is_a_newline_or_a_carriage_return_and_newline() {
        assert_eq!(strip_line_end(b"a\r\n"), b"a");
        assert_eq!(strip_line_end(b"a\n"), b"a");
        assert_eq!(strip_line_end(b"a\r\r\n"), b"a\r");
        // The last line of a file may have no newline: a `\r` alone is kept.
        assert_eq!(strip_line_end(b"a\r"), b"a\r");
        assert_eq!(strip_line_end(b"\n"), b"");
        assert_eq!(strip_line_end(b""), b"");
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

    /// What `parse_line_into` reads, as `parse_line` does, in fresh buffers
    /// and in buffers left full by another line.
    fn both_readings(
        text: &str,
    ) -> (
        Result<Option<LogEntry>, LogLineError>,
        Result<Option<LogEntry>, LogLineError>,
    ) {
        let plain = LogEntry::parse_line(text, 7);
        let mut subject = "left over".to_string();
        let mut payload = b"left over too".to_vec();
        let into = LogEntry::parse_line_into(text, 7, &mut subject, &mut payload)
            .map(|seq| seq.map(|seq| LogEntry { seq, subject, payload }));
        (plain, into)
    }

    #[test]
    fn the_written_form_is_read_directly_and_the_rest_as_before() {
        assert!(read_written_line(
            r#"{"seq":12,"subject":"backbeat.a.claim","payload":"{\"a\":\"\\\/\b\f\n\r\t\"}"}"#,
            &mut String::new(),
            &mut Vec::new()
        )
        .is_some());
        for text in [
            r#"{"seq":12,"subject":"backbeat.a.claim","payload":"{\"a\":\"\\\/\b\f\n\r\t\"}"}"#,
            r#"{"seq":0,"subject":"s","payload":""}"#,
            r#"{"seq":18446744073709551615,"subject":"ü","payload":"é\u00e9"}"#,
            r#"{"seq":18446744073709551616,"subject":"s","payload":""}"#,
            r#"{"seq":01,"subject":"s","payload":""}"#,
            r#"{"seq":1,"subject":"s","payload":"\x"}"#,
            r#"{"seq":1,"subject":"s\"","payload":"a"}"#,
            r#"{"seq":1,"subject":"s","payload":"a"} "#,
            r#"{"seq":1,"subject":"s","payload":"a"}x"#,
            r#"{"seq":1,"subject":"s","payload":"a","extra":1}"#,
            r#"{"seq":1,"subject":"s","payload":"a"#,
            "{\"seq\":1,\"subject\":\"s\",\"payload\":\"\u{1}\"}",
            r#"{"seq":1,"subject":"s","payload_b64":"/w=="}"#,
            r#"{"subject":"s","seq":1,"payload":"a"}"#,
            "",
            "  ",
        ] {
            let (plain, into) = both_readings(text);
            assert_eq!(into, plain, "{text}");
        }
    }

    proptest! {
        /// Any line a log file can hold (and any edit of one) reads the same
        /// both ways.
        #[test]
        fn parse_line_into_reads_as_parse_line(seq: u64, subject in "[a-z.é\"\\\\]{0,12}", payload: Vec<u8>, text_payload in "(\\PC|[\"\\\\\u{0}-\u{1f}/])*", edit in proptest::option::of((0usize..200, any::<char>()))) {
            for line in [format_line(seq, &subject, &payload), format_line(seq, &subject, text_payload.as_bytes())] {
                let line = match edit {
                    Some((at, c)) => {
                        let mut chars: Vec<char> = line.chars().collect();
                        let at = at % (chars.len() + 1);
                        chars.insert(at, c);
                        chars.into_iter().collect()
                    }
                    None => line,
                };
                let (plain, into) = both_readings(&line);
                prop_assert_eq!(into, plain, "{}", line);
            }
        }

        #[test]
        fn format_then_parse(seq: u64, subject in "[a-z.*]{1,20}", payload: Vec<u8>) {
            let line = format_line(seq, &subject, &payload);
            prop_assert!(!line.contains('\n'));
            let entry = LogEntry::parse_line(&line, 1).unwrap().unwrap();
            prop_assert_eq!(entry, LogEntry { seq, subject, payload });
        }
    }
}
