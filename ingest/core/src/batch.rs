//! An HTTP request body, read within its limits, and an NDJSON batch split
//! into its lines: what `POST /api/v1/clusters/{cluster}/claims` does with
//! the bytes before any claim is looked at.

use bytes::{Bytes, BytesMut};

/// The content type of an NDJSON batch of claims.
pub const NDJSON_CONTENT_TYPE: &str = "application/x-ndjson";

/// How far past the body limit a body is still read (and dropped) so that
/// its sender gets the 413.
pub const DISCARD_BYTES_MAX: usize = 1024 * 1024;

/// The most of a request body the claims route ever reads: the HTTP
/// listener's own body limit must not be below it, or a sender over the limit
/// would not get the claims route's own 413.
pub fn body_bytes_read_max(batch_bytes_max: usize) -> usize {
    batch_bytes_max.saturating_add(DISCARD_BYTES_MAX)
}

/// Whether a `Content-Type` value names an NDJSON batch: its media type (up
/// to any `;` parameter, spaces trimmed) is [`NDJSON_CONTENT_TYPE`], in any case.
pub fn is_ndjson(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(NDJSON_CONTENT_TYPE))
}

/// Whether a declared `Content-Length` is beyond what is ever read of a body
/// limited to `limit` bytes ([`body_bytes_read_max`]): such a body is refused
/// before it is read. A length that is not a number decides nothing.
pub fn declared_too_large(content_length: Option<&str>, limit: usize) -> bool {
    content_length
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > body_bytes_read_max(limit) as u64)
}

/// Reads a body chunk by chunk: at most `limit` bytes are kept; the excess
/// is counted and dropped up to `discard_max` bytes in all, and beyond that
/// the reader stops (the rest is not read).
#[derive(Debug)]
pub struct BodyReader {
    limit: usize,
    discard_max: usize,
    total: usize,
    collected: BytesMut,
}

impl BodyReader {
    pub fn new(limit: usize, discard_max: usize) -> Self {
        BodyReader {
            limit,
            discard_max,
            total: 0,
            collected: BytesMut::new(),
        }
    }

    /// Takes the next chunk; false when the body is now longer than
    /// `discard_max` (stop reading: it is too large).
    pub fn chunk(&mut self, chunk: &[u8]) -> bool {
        self.total = self.total.saturating_add(chunk.len());
        if self.total > self.discard_max {
            return false;
        }
        if self.total <= self.limit {
            self.collected.extend_from_slice(chunk);
        }
        true
    }

    /// The bytes kept so far (never more than `limit`).
    pub fn kept(&self) -> usize {
        self.collected.len()
    }

    /// The body, or `None` when it was longer than `limit`.
    pub fn finish(self) -> Option<Bytes> {
        (self.total <= self.limit).then(|| self.collected.freeze())
    }
}

/// A body with more non-blank lines than allowed (the splitter stopped at the first one too many).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyLines {
    /// The limit that was passed.
    pub lines_max: usize,
}

/// Splits an NDJSON body into its non-blank lines: (1-based line number, bytes
/// without the line end). A trailing `\r` is part of the line end. Stops at
/// the first non-blank line beyond `lines_max`: a body of a million short lines
/// costs no more than one of `lines_max + 1`.
pub fn ndjson_lines(body: &Bytes, lines_max: usize) -> Result<Vec<(u64, Bytes)>, TooManyLines> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut number = 0u64;
    while start < body.len() {
        number += 1;
        let end = body[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| start + i);
        let mut line_end = end;
        if line_end > start && body[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        if !body[start..line_end].iter().all(u8::is_ascii_whitespace) {
            if lines.len() == lines_max {
                return Err(TooManyLines { lines_max });
            }
            lines.push((number, body.slice(start..line_end)));
        }
        start = end + 1;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(body: &'static [u8], lines_max: usize) -> Result<Vec<(u64, Vec<u8>)>, TooManyLines> {
        ndjson_lines(&Bytes::from_static(body), lines_max)
            .map(|lines| lines.into_iter().map(|(n, l)| (n, l.to_vec())).collect())
    }

    #[test]
    fn splits_ndjson() {
        assert_eq!(
            split(b"a\n\n  \r\nb\r\nc", 10),
            Ok(vec![(1, b"a".to_vec()), (4, b"b".to_vec()), (5, b"c".to_vec())])
        );
        assert_eq!(split(b"\n\n", 10), Ok(vec![]));
        assert_eq!(split(b"x\n", 10).map(|l| l.len()), Ok(1));
    }

    #[test]
    fn the_splitter_stops_at_the_line_limit_plus_one() {
        assert_eq!(split(b"a\nb\n\n\n", 2).map(|l| l.len()), Ok(2));
        assert_eq!(split(b"a\nb\nc", 2), Err(TooManyLines { lines_max: 2 }));
        // A body of a million lines over a limit of 3: the splitter gives up
        // after the fourth line and never holds more than three.
        let body = Bytes::from("x\n".repeat(1_000_000));
        assert_eq!(ndjson_lines(&body, 3), Err(TooManyLines { lines_max: 3 }));
        // Blank lines count for the numbering only.
        let body = Bytes::from(format!("{}y", "\n".repeat(100_000)));
        assert_eq!(ndjson_lines(&body, 1), Ok(vec![(100_001, Bytes::from_static(b"y"))]));
    }

    #[test]
    fn the_content_type_names_a_batch_by_its_media_type() {
        for batch in [
            "application/x-ndjson",
            " Application/X-NDJSON ; charset=utf-8",
            "application/x-ndjson;",
        ] {
            assert!(is_ndjson(batch), "{batch:?}");
        }
        for single in [
            "",
            "application/json",
            "application/x-ndjson2",
            "text/plain; application/x-ndjson",
        ] {
            assert!(!is_ndjson(single), "{single:?}");
        }
    }

    #[test]
    fn a_body_is_kept_up_to_its_limit_and_read_up_to_the_discard_limit() {
        let mut reader = BodyReader::new(4, 6);
        assert!(reader.chunk(b"ab") && reader.chunk(b"cd"));
        assert_eq!(reader.finish(), Some(Bytes::from_static(b"abcd")));
        let mut reader = BodyReader::new(4, 6);
        assert!(reader.chunk(b"abc") && reader.chunk(b"de"));
        assert_eq!(reader.kept(), 3, "a chunk past the limit is dropped");
        assert_eq!(reader.finish(), None);
        let mut reader = BodyReader::new(4, 6);
        assert!(reader.chunk(b"abcdef"));
        assert!(!reader.chunk(b"g"), "past the discard limit: stop reading");
        assert!(declared_too_large(Some("1048581"), 4));
        assert!(!declared_too_large(Some("1048580"), 4));
        assert!(!declared_too_large(Some("x"), 4));
        assert!(!declared_too_large(None, 4));
    }
}
