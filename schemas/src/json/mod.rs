//! A strict JSON reader for the rules of SPEC §2.
//!
//! `serde_json` accepts documents SPEC §2 calls `invalid_json` (duplicate keys),
//! and erases the difference between `3` and `3.0`, which SPEC §2 keeps (`3.0`
//! is not an integer). This reader keeps each number's source text, so every
//! rule of §2 can be checked exactly, and borrows unescaped strings from the
//! input so a claim costs few allocations.
//!
//! [`scan_object`] is what the validators use: it reads a whole document with
//! every rule in one pass, keeping only where the top-level members it is asked
//! for stand. The tree-building reader (`tree`, [`parse`] and `Value`) reads
//! the same grammar through the same reader of objects, arrays, strings and
//! numbers; it exists for tests and benchmarks and is compiled only for them
//! (`cfg(test)` or the `tree` feature).

use std::borrow::Cow;
use std::collections::HashSet;

#[cfg(any(test, feature = "tree"))]
pub mod tree;
#[cfg(any(test, feature = "tree"))]
pub use tree::{parse, Value};

/// Nesting deeper than this many levels is `invalid_json` (SPEC §2).
pub const NESTING_DEPTH_MAX: usize = 128;

/// A JSON number as written in the document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number<'a> {
    /// The source text, e.g. `-0`, `3.0`, `1e2`.
    pub raw: &'a str,
    /// True when written without a fraction or exponent (SPEC §2's integers).
    pub is_integer: bool,
}

impl Number<'_> {
    /// The value as an unsigned integer: `None` when it is not an integer, is
    /// negative (other than `-0`), or does not fit in a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        if !self.is_integer {
            return None;
        }
        match self.raw.strip_prefix('-') {
            Some(digits) => digits.bytes().all(|b| b == b'0').then_some(0),
            None => self.raw.parse::<u64>().ok(),
        }
    }

    /// The value as a float (always finite: the parser refuses the rest).
    pub fn as_f64(&self) -> f64 {
        // The grammar was checked while parsing, so this cannot fail.
        self.raw.parse::<f64>().unwrap_or(f64::NAN)
    }
}

/// Why a document is not JSON, with the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub message: &'static str,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

/// A value as [`scan_object`] keeps it: scalars whole, arrays and objects
/// only as their kind (what is inside them was checked, not kept).
#[derive(Debug, Clone, PartialEq)]
pub enum Shallow<'a> {
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array,
    Object,
}

impl Shallow<'_> {
    /// The JSON type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Shallow::Null => "null",
            Shallow::Bool(_) => "boolean",
            Shallow::Number(_) => "number",
            Shallow::String(_) => "string",
            Shallow::Array => "array",
            Shallow::Object => "object",
        }
    }
}

/// What [`scan_object`] found in a valid document.
#[derive(Debug, Clone, PartialEq)]
pub enum Scanned<'a, const N: usize> {
    /// The document is an object: where the asked-for members stand.
    Object(Members<'a, N>),
    /// The document is valid JSON but not an object: its type's name.
    NotObject(&'static str),
}

/// The top-level members [`scan_object`] was asked for, by their place in
/// its `names`: where each value stands in the (valid) document, read into a
/// [`Shallow`] on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Members<'a, const N: usize> {
    text: &'a str,
    spans: [Option<Span>; N],
}

impl<'a, const N: usize> Members<'a, N> {
    /// The value of each name, in the order of the names; `None` where the
    /// object has no such member. A string borrows from the document unless
    /// it has escapes.
    pub fn values(&self) -> [Option<Shallow<'a>>; N] {
        std::array::from_fn(|index| self.get(index))
    }

    /// The value of the `index`-th name, `None` where the object has no such member.
    pub fn get(&self, index: usize) -> Option<Shallow<'a>> {
        self.spans[index].map(|span| self.shallow(span))
    }

    fn shallow(&self, span: Span) -> Shallow<'a> {
        let raw = &self.text[span.start..span.end];
        match span.kind {
            Kind::Null => Shallow::Null,
            Kind::Bool(b) => Shallow::Bool(b),
            Kind::Number { is_integer } => Shallow::Number(Number { raw, is_integer }),
            Kind::String { escaped: false } => Shallow::String(Cow::Borrowed(&raw[1..raw.len() - 1])),
            Kind::String { escaped: true } => {
                let mut parser = Parser {
                    text: self.text,
                    bytes: self.text.as_bytes(),
                    pos: span.start,
                };
                Shallow::String(parser.string().expect("the string was read while scanning"))
            }
            Kind::Array => Shallow::Array,
            Kind::Object => Shallow::Object,
        }
    }
}

/// Where a value stands in a document, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    kind: Kind,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool(bool),
    Number { is_integer: bool },
    String { escaped: bool },
    Array,
    Object,
}

impl Kind {
    fn type_name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "boolean",
            Kind::Number { .. } => "number",
            Kind::String { .. } => "string",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }
}

/// Checks one complete JSON document exactly as [`parse`] does (the same
/// documents are refused, with the same error) without building a tree: it
/// keeps only where the top-level members named in `names` stand.
///
/// This is admission's fast path: a claim is read in one pass, and allocates
/// only for strings with escapes and for names of nested objects.
pub fn scan_object<'a, const N: usize>(bytes: &'a [u8], names: &[&str; N]) -> Result<Scanned<'a, N>, JsonError> {
    document(bytes, |parser| {
        if parser.peek() != Some(b'{') {
            let span = parser.scan_value(1)?;
            return Ok(Scanned::NotObject(span.kind.type_name()));
        }
        let mut spans: [Option<Span>; N] = [None; N];
        // Members usually come in the order of `names`: try the next one first.
        let mut next_index = 0;
        let mut other_names = ObjectNames::default();
        parser.object_members(1, |parser, key, key_offset| {
            let found = match names.get(next_index) {
                Some(name) if *name == key => Some(next_index),
                _ => names.iter().position(|name| *name == key),
            };
            match found {
                Some(index) => {
                    next_index = index + 1;
                    if spans[index].is_some() {
                        return Err(duplicate_key(key_offset));
                    }
                    parser.name_separator()?;
                    spans[index] = Some(parser.scan_value(2)?);
                }
                None => {
                    if !other_names.insert(key) {
                        return Err(duplicate_key(key_offset));
                    }
                    parser.name_separator()?;
                    parser.scan_value(2)?;
                }
            }
            Ok(())
        })?;
        Ok(Scanned::Object(Members {
            text: parser.text,
            spans,
        }))
    })
}

/// Runs `read` on a whole document: UTF-8 first, then the value, then only
/// whitespace may follow.
fn document<'a, T>(
    bytes: &'a [u8],
    read: impl FnOnce(&mut Parser<'a>) -> Result<T, JsonError>,
) -> Result<T, JsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| JsonError {
        offset: e.valid_up_to(),
        message: "not valid UTF-8",
    })?;
    let mut parser = Parser { text, bytes, pos: 0 };
    parser.skip_whitespace();
    let value = read(&mut parser)?;
    parser.skip_whitespace();
    if parser.pos != bytes.len() {
        return Err(parser.error("trailing characters after the document"));
    }
    Ok(value)
}

/// The offset in `bytes` of the first byte that ends a run of plain string
/// characters (`"`, `\\` or a control character below 0x20), or its length.
/// UTF-8 boundaries are safe: only ASCII bytes stop the run.
pub(crate) fn special_byte_offset(bytes: &[u8]) -> usize {
    stop_byte_offset::<false>(bytes)
}

/// As [`special_byte_offset`], but a byte of 0x80 or above (any non-ASCII
/// character) stops the run too: the length of a run of plain ASCII.
pub(crate) fn plain_ascii_len(bytes: &[u8]) -> usize {
    stop_byte_offset::<true>(bytes)
}

/// `"`, `\\` and bytes below 0x20 stop the run; with `NON_ASCII`, bytes of
/// 0x80 and above too.
#[inline]
fn stop_byte_offset<const NON_ASCII: bool>(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_ne_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_ne_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_ne_bytes([0x20; 8]);
    let mut offset = 0;
    // Eight bytes at a time: a byte's high bit is set in `hits` where it is
    // zero after the XOR (a quote or a backslash) or below 0x20. The borrows of
    // the subtractions can only set bits above the first true hit, and the
    // bytes are read little-endian, so the lowest set bit is the first hit.
    while let Some(chunk) = bytes.get(offset..offset + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = word ^ QUOTES;
        let backslash = word ^ BACKSLASHES;
        let hits = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(SPACES) & !word)
            | if NON_ASCII { word } else { 0 })
            & HIGHS;
        if hits != 0 {
            return offset + (hits.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    offset
        + bytes[offset..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20 || (NON_ASCII && b >= 0x80))
            .unwrap_or(bytes.len() - offset)
}

/// The names read so far in one object, to refuse a repeated one (SPEC §2).
///
/// A linear search while the object has few names: every SPEC document has a
/// handful, and comparing a few short strings is cheaper than hashing them.
/// Past [`ObjectNames::SCANNED_MAX`] names they move into a hash set, so an
/// object with thousands of names (an 8 KiB document holds about 1300) costs
/// linear time, not quadratic.
#[derive(Default)]
struct ObjectNames<'a> {
    few: Vec<Cow<'a, str>>,
    many: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> ObjectNames<'a> {
    const SCANNED_MAX: usize = 16;

    /// Adds `name`; false when the object already had it.
    fn insert(&mut self, name: Cow<'a, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(name);
        }
        if self.few.contains(&name) {
            return false;
        }
        self.few.push(name);
        if self.few.len() > Self::SCANNED_MAX {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

fn duplicate_key(key_offset: usize) -> JsonError {
    JsonError {
        offset: key_offset,
        message: "duplicate key",
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, message: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &'static str) -> Result<(), JsonError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        if depth > NESTING_DEPTH_MAX {
            Err(self.error("nesting deeper than 128 levels"))
        } else {
            Ok(())
        }
    }

    /// Reads an object's braces, names, colons and commas; `member` checks each
    /// name (duplicates) and reads its value, positioned just after the name.
    /// The name's offset goes with it, for the duplicate key error.
    fn object_members(
        &mut self,
        depth: usize,
        mut member: impl FnMut(&mut Self, Cow<'a, str>, usize) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a member name"));
            }
            let key_offset = self.pos;
            let key = self.string()?;
            member(self, key, key_offset)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    /// The `:` between a member's name and its value, with the whitespace around it.
    fn name_separator(&mut self) -> Result<(), JsonError> {
        self.skip_whitespace();
        if self.peek() != Some(b':') {
            return Err(self.error("expected ':'"));
        }
        self.pos += 1;
        self.skip_whitespace();
        Ok(())
    }

    /// Reads an array's brackets and commas; `item` reads each element.
    fn array_items(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            item(self)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    /// Reads a value with every rule `value` applies without building it:
    /// an array or object is checked through (nesting, duplicate keys at every
    /// level, strings, numbers) and only where the value stands, and what it
    /// is, are kept.
    fn scan_value(&mut self, depth: usize) -> Result<Span, JsonError> {
        let start = self.pos;
        let kind = match self.peek() {
            Some(b'{') => {
                let mut names = ObjectNames::default();
                self.object_members(depth, |parser, key, key_offset| {
                    if !names.insert(key) {
                        return Err(duplicate_key(key_offset));
                    }
                    parser.name_separator()?;
                    parser.scan_value(depth + 1)?;
                    Ok(())
                })?;
                Kind::Object
            }
            Some(b'[') => {
                self.array_items(depth, |parser| parser.scan_value(depth + 1).map(drop))?;
                Kind::Array
            }
            Some(b'"') => Kind::String {
                escaped: !self.scan_string()?,
            },
            Some(b't') => self.expect_literal("true").map(|()| Kind::Bool(true))?,
            Some(b'f') => self.expect_literal("false").map(|()| Kind::Bool(false))?,
            Some(b'n') => self.expect_literal("null").map(|()| Kind::Null)?,
            Some(b'-' | b'0'..=b'9') => Kind::Number {
                is_integer: self.number()?.is_integer,
            },
            None => return Err(self.error("unexpected end of document")),
            Some(_) => return Err(self.error("unexpected character")),
        };
        Ok(Span {
            kind,
            start,
            end: self.pos,
        })
    }

    /// Reads a string as `string` does; true when it has no escapes (then
    /// nothing is allocated).
    fn scan_string(&mut self) -> Result<bool, JsonError> {
        let plain_end = self.pos + 1 + special_byte_offset(&self.bytes[self.pos + 1..]);
        if self.bytes.get(plain_end) == Some(&b'"') {
            self.pos = plain_end + 1;
            return Ok(true);
        }
        // Escapes or an error: the full reader says which.
        self.string()?;
        Ok(false)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut is_integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digits after '.'"));
            }
            is_integer = false;
        }
        let mut has_exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digits in exponent"));
            }
            is_integer = false;
            has_exponent = true;
        }
        let raw = &self.text[start..self.pos];
        // Without an exponent, a number needs more than 308 integer digits to
        // leave the f64 range; only then (or with an exponent) is parsing needed.
        if (has_exponent || raw.len() > 300) && !raw.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(JsonError {
                offset: start,
                message: "number beyond the 64-bit float range",
            });
        }
        Ok(Number { raw, is_integer })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err(self.error("truncated \\u escape"));
        };
        let mut value = 0u32;
        for &b in digits {
            let nibble = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.error("invalid \\u escape")),
            };
            value = value * 16 + u32::from(nibble);
        }
        self.pos += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        let start = self.pos;
        // Fast path: no escapes, borrow the source.
        self.pos += special_byte_offset(&self.bytes[self.pos..]);
        match self.peek() {
            None => return Err(self.error("unterminated string")),
            Some(b'"') => {
                let s = &self.text[start..self.pos];
                self.pos += 1;
                return Ok(Cow::Borrowed(s));
            }
            Some(b'\\') => {}
            Some(_) => return Err(self.error("control character in string")),
        }
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(0x00..=0x1f) => return Err(self.error("control character in string")),
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => {
                    // Copy a run of plain characters at once (UTF-8 boundaries
                    // are safe: only ASCII bytes stop the run).
                    let run_start = self.pos;
                    self.pos += special_byte_offset(&self.bytes[self.pos..]);
                    out.push_str(&self.text[run_start..self.pos]);
                }
            }
        }
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone surrogate in \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("lone surrogate in \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone surrogate in \\u escape")),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value<'_> {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> JsonError {
        parse(s.as_bytes()).expect_err(s)
    }

    #[test]
    fn parses_documents() {
        assert_eq!(ok(" {} "), Value::Object(vec![]));
        assert_eq!(ok("[1, 2.5, \"x\", true, null]").type_name(), "array");
        match ok(r#"{"a":"b\n\u00e9\ud83d\ude00"}"#) {
            Value::Object(m) => assert_eq!(m[0].1, Value::String("b\né😀".into())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_keep_their_form() {
        fn n(s: &str) -> Number<'_> {
            match ok(s) {
                Value::Number(n) => n,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n("3").as_u64(), Some(3));
        assert_eq!(n("-0").as_u64(), Some(0));
        assert_eq!(n("-1").as_u64(), None);
        assert_eq!(n("3.0").as_u64(), None);
        assert_eq!(n("3e0").as_u64(), None);
        assert_eq!(n("18446744073709551616").as_u64(), None);
        assert_eq!(n("1e308").as_f64(), 1e308);
    }

    #[test]
    fn refuses_what_spec_calls_invalid() {
        assert_eq!(err(r#"{"a":1,"a":2}"#).message, "duplicate key");
        assert_eq!(err(r#"{"a":1,"\u0061":2}"#).message, "duplicate key");
        assert_eq!(err("NaN").message, "unexpected character");
        assert_eq!(err("[Infinity]").message, "unexpected character");
        assert_eq!(err("1e400").message, "number beyond the 64-bit float range");
        assert_eq!(err(&"9".repeat(400)).message, "number beyond the 64-bit float range");
        assert_eq!(err(r#""\ud800""#).message, "lone surrogate in \\u escape");
        assert_eq!(err(r#""\udc00x""#).message, "lone surrogate in \\u escape");
        assert!(parse(b"\"\xff\"").is_err());
        err("01");
        err("1.");
        err("{\"a\":1,}");
        err("{} {}");
        err("\"a\tb\"");
    }

    /// Objects with many names switch from a linear search to a hash set
    /// (`ObjectNames`): a repeat is still found wherever it stands, at every
    /// level, by both readers, and the error names the repeated key's offset.
    #[test]
    fn duplicate_keys_are_found_in_objects_with_many_names() {
        for count in [1, 15, 16, 17, 18, 40, 1300] {
            let names: Vec<String> = (0..count).map(|i| format!("\"k{i}\":0")).collect();
            let unique = format!("{{{}}}", names.join(","));
            assert!(parse(unique.as_bytes()).is_ok(), "{count} names");
            assert!(scan_object(unique.as_bytes(), &["type"]).is_ok(), "{count} names");
            let nested = format!("{{\"type\":1,\"x\":[{unique}]}}");
            assert!(scan_object(nested.as_bytes(), &["type"]).is_ok(), "{count} names");
            for repeated in [0, count / 2, count - 1] {
                let document = format!("{{{},\"k{repeated}\":1}}", names.join(","));
                let offset = document.rfind("\"k").unwrap();
                assert_eq!(err(&document).message, "duplicate key");
                assert_eq!(err(&document).offset, offset);
                let scanned = scan_object(document.as_bytes(), &["type"]).map(|_| ()).unwrap_err();
                assert_eq!((scanned.message, scanned.offset), ("duplicate key", offset));
                let nested = format!("{{\"type\":1,\"x\":{{\"y\":{document}}}}}");
                let scanned = scan_object(nested.as_bytes(), &["type"]).map(|_| ()).unwrap_err();
                assert_eq!(scanned.message, "duplicate key", "{count} names, k{repeated} nested");
            }
        }
    }

    #[test]
    fn special_byte_offset_finds_the_first_quote_backslash_or_control_byte() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(bytes.len())
        };
        let naive_ascii = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
                .unwrap_or(bytes.len())
        };
        for filler in [b'a', 0x20, 0x7f, 0x80, 0x81, 0xff, 0x21, 0x5d] {
            for len in 0..20 {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut bytes = vec![filler; len];
                        bytes[at] = byte;
                        if at + 2 < len {
                            bytes[at + 2] = 0;
                        }
                        assert_eq!(special_byte_offset(&bytes), naive(&bytes), "{bytes:?}");
                        assert_eq!(plain_ascii_len(&bytes), naive_ascii(&bytes), "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn scan_object_keeps_the_named_members_only() {
        let doc = br#"{"b":[1,{"x":null}],"a":"\u0041","c":3.0,"d":{}}"#;
        let Ok(Scanned::Object(members)) = scan_object(doc, &["a", "b", "c", "z"]) else {
            panic!("not an object")
        };
        let [a, b, c, z] = members.values();
        assert_eq!(a, Some(Shallow::String(Cow::Owned("A".into()))));
        assert_eq!(b, Some(Shallow::Array));
        assert_eq!(c.as_ref().map(Shallow::type_name), Some("number"));
        assert_eq!(z, None);
        assert_eq!(scan_object(b"[1] ", &["a"]), Ok(Scanned::NotObject("array")));
        // Duplicates count at every depth, known names or not.
        for doc in [r#"{"a":1,"a":2}"#, r#"{"q":1,"q":2}"#, r#"{"q":[{"r":1,"\u0072":2}]}"#] {
            assert_eq!(
                scan_object(doc.as_bytes(), &["a"]),
                Err(parse(doc.as_bytes()).unwrap_err())
            );
        }
    }

    #[test]
    fn nesting_limit_is_128_levels() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        ok(&deep(128));
        assert_eq!(err(&deep(129)).message, "nesting deeper than 128 levels");
    }
}
