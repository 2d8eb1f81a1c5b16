//! What a dead letter holds: the refused input (or, for an HTTP batch, all
//! of its refused lines in one message), bounded in size.
//!
//! Every dead letter in `BACKBEAT_REJECTS` carries the headers `Backbeat-Reason`,
//! `Backbeat-Error`, `Backbeat-Source`, `Backbeat-Subject` (see
//! the gateway's publisher, `backbeat_ingest::gateway::publisher`) and, when only a prefix of its input is kept,
//! `Backbeat-Truncated` = the full length. Its payload is the input's bytes.
//!
//! A batch's dead letter keeps that format and adds one header. Its payload is
//! the batch's refused lines as sent (without their line ends), joined by
//! `\n`: NDJSON, and for a batch with one refused line exactly that line's
//! bytes, as before. [`HEADER_LINES`] lists each line the payload holds as
//! `{line number}={reason}`, space-separated, in order; [`HEADER_LINES_REFUSED`]
//! counts all the refused lines of the batch. `Backbeat-Reason` and
//! `Backbeat-Error` are the first refused line's. When the lines do not all fit
//! in the size limit (payload and line list together), the payload holds the
//! first ones, whole (a first line larger than the limit alone: its prefix),
//! and `Backbeat-Truncated` is the length the whole payload would have had.
//! One message per batch, not one per line: a batch of 10,000 bad lines costs
//! one publish and one ack slot, not 10,000.

use bytes::{BufMut as _, Bytes, BytesMut};

/// Batch dead-letter header: `{line}={reason}` of each line the payload holds,
/// space-separated, in payload order (e.g. `3=invalid_field:progress 5=invalid_json`).
pub const HEADER_LINES: &str = "Backbeat-Lines";
/// Batch dead-letter header: how many lines of the batch were refused (those
/// kept in the payload and those left out for the size limit).
pub const HEADER_LINES_REFUSED: &str = "Backbeat-Lines-Refused";

/// One refused line of an HTTP batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// 1-based line number in the request body (blank lines count).
    pub line: u64,
    /// The line's bytes, without its line end.
    pub payload: Bytes,
    pub reason: String,
    pub message: String,
}

/// The payload of a dead letter and what describes it beyond the common headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterBody {
    pub payload: Bytes,
    /// The full length when `payload` holds only a prefix of it (`Backbeat-Truncated`).
    pub truncated_from_bytes: Option<usize>,
    /// Only for a batch.
    pub lines: Option<BatchLines>,
}

/// The batch headers of a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLines {
    /// The value of [`HEADER_LINES`].
    pub listed: String,
    /// The value of [`HEADER_LINES_REFUSED`].
    pub refused: usize,
}

impl DeadLetterBody {
    /// One input: its bytes, or their first `bytes_max`.
    pub fn single(mut payload: Bytes, bytes_max: usize) -> DeadLetterBody {
        let len = payload.len();
        let truncated_from_bytes = (len > bytes_max).then_some(len);
        payload.truncate(bytes_max);
        DeadLetterBody {
            payload,
            truncated_from_bytes,
            lines: None,
        }
    }

    /// The refused lines of one batch (at least one), within `bytes_max` for
    /// the payload and the line list together.
    pub fn batch(refused: &[RefusedLine], bytes_max: usize) -> DeadLetterBody {
        assert!(!refused.is_empty(), "a batch dead letter holds at least one line");
        let full_len = refused.iter().map(|l| l.payload.len()).sum::<usize>() + (refused.len() - 1);
        let mut payload = BytesMut::new();
        let mut listed = String::new();
        for (i, line) in refused.iter().enumerate() {
            let entry = format!("{}={}", line.line, line.reason);
            let separators = if i == 0 { 0 } else { 2 };
            let cost = separators + entry.len() + line.payload.len();
            if payload.len() + listed.len() + cost > bytes_max {
                if i == 0 {
                    let room = bytes_max.saturating_sub(entry.len());
                    payload.extend_from_slice(&line.payload[..room.min(line.payload.len())]);
                    listed = entry;
                }
                break;
            }
            if i > 0 {
                payload.put_u8(b'\n');
                listed.push(' ');
            }
            payload.extend_from_slice(&line.payload);
            listed.push_str(&entry);
        }
        let truncated_from_bytes = (payload.len() < full_len).then_some(full_len);
        DeadLetterBody {
            payload: payload.freeze(),
            truncated_from_bytes,
            lines: Some(BatchLines {
                listed,
                refused: refused.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(line: u64, payload: &str, reason: &str) -> RefusedLine {
        RefusedLine {
            line,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn a_single_input_is_kept_whole_or_as_a_marked_prefix() {
        let body = DeadLetterBody::single(Bytes::from_static(b"abcdef"), 6);
        assert_eq!(
            (body.payload.as_ref(), body.truncated_from_bytes),
            (&b"abcdef"[..], None)
        );
        let body = DeadLetterBody::single(Bytes::from_static(b"abcdef"), 4);
        assert_eq!(
            (body.payload.as_ref(), body.truncated_from_bytes),
            (&b"abcd"[..], Some(6))
        );
        assert_eq!(body.lines, None);
    }

    #[test]
    fn a_batch_keeps_its_refused_lines_in_one_document() {
        let lines = [line(3, "{}", "wrong_type"), line(5, "nope", "invalid_json")];
        let body = DeadLetterBody::batch(&lines, 8192);
        assert_eq!(body.payload.as_ref(), b"{}\nnope");
        assert_eq!(body.truncated_from_bytes, None);
        assert_eq!(
            body.lines,
            Some(BatchLines {
                listed: "3=wrong_type 5=invalid_json".into(),
                refused: 2
            })
        );
        // One refused line: the payload is that line, as a single input's would be.
        let body = DeadLetterBody::batch(&lines[..1], 8192);
        assert_eq!(body.payload.as_ref(), b"{}");
    }

    #[test]
    fn a_batch_beyond_the_limit_keeps_its_first_lines_whole() {
        // Each line costs 10 bytes of payload + "N=invalid_json" (14) + 2 separators.
        let lines: Vec<RefusedLine> = (1..=100).map(|n| line(n, "0123456789", "invalid_json")).collect();
        let body = DeadLetterBody::batch(&lines, 100);
        let listed = &body.lines.as_ref().unwrap().listed;
        assert!(body.payload.len() + listed.len() <= 100);
        assert_eq!(body.payload.as_ref(), b"0123456789\n0123456789\n0123456789");
        assert_eq!(listed, "1=invalid_json 2=invalid_json 3=invalid_json");
        assert_eq!(body.truncated_from_bytes, Some(100 * 10 + 99));
        assert_eq!(body.lines.unwrap().refused, 100);

        // A first line larger than the limit alone: its prefix.
        let huge = line(7, &"x".repeat(10_000), "too_large");
        let body = DeadLetterBody::batch(&[huge, line(8, "y", "invalid_json")], 8192);
        assert_eq!(body.payload.len() + "7=too_large".len(), 8192);
        assert_eq!(body.truncated_from_bytes, Some(10_002));
        assert_eq!(body.lines.unwrap().listed, "7=too_large");
    }
}
