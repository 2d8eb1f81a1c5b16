//! The tree-building reader: the same grammar and rules as the scanner, built
//! into a borrowed [`Value`] tree. Validation does not use it (admission reads
//! documents with [`super::scan_object`]); it is compiled for tests and
//! benchmarks only (`cfg(test)` or the `tree` feature), so it is not part of
//! the library's surface. It shares the scanner's reader of objects, arrays,
//! strings and numbers, so the two cannot drift apart; the contract tests hold
//! both to serde_json's grammar, which shares no code with either.

use std::borrow::Cow;

use super::{document, duplicate_key, JsonError, Number, ObjectNames, Parser};

/// A parsed JSON value borrowing from its source text.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Members in document order; keys are unique (a duplicate is an error).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The JSON type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

/// Parses one complete JSON document (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Result<Value<'_>, JsonError> {
    document(bytes, |parser| parser.value(1))
}

impl<'a> Parser<'a> {
    pub(super) fn value(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        match self.peek() {
            None => Err(self.error("unexpected end of document")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.expect_literal("true").map(|()| Value::Bool(true)),
            Some(b'f') => self.expect_literal("false").map(|()| Value::Bool(false)),
            Some(b'n') => self.expect_literal("null").map(|()| Value::Null),
            Some(b'-' | b'0'..=b'9') => Ok(Value::Number(self.number()?)),
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        let mut members: Vec<(Cow<'a, str>, Value<'a>)> = Vec::with_capacity(10);
        let mut names = ObjectNames::default();
        self.object_members(depth, |parser, key, key_offset| {
            if !names.insert(key.clone()) {
                return Err(duplicate_key(key_offset));
            }
            parser.name_separator()?;
            let value = parser.value(depth + 1)?;
            members.push((key, value));
            Ok(())
        })?;
        Ok(Value::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<Value<'a>, JsonError> {
        let mut items = Vec::new();
        self.array_items(depth, |parser| {
            items.push(parser.value(depth + 1)?);
            Ok(())
        })?;
        Ok(Value::Array(items))
    }
}
