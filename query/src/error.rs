//! What can go wrong with a query, classified once for every protocol: each
//! [`ErrorKind`] maps to an HTTP status (this crate's HTTP API) and to a
//! PostgreSQL SQLSTATE (the pg-wire front end, `crate::pg`), so the two answer
//! the same rule with the same class.
//!
//! The rule: a refusal or a limit reached is the client's (4xx); only a fault
//! of the server itself is a 5xx.

use datafusion::error::DataFusionError;

/// The class of a query error, which decides its HTTP status and SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is malformed (not JSON, no `sql`, an empty query).
    BadRequest,
    /// No or a wrong bearer token.
    Unauthorized,
    /// A statement or a reference the read-only rules refuse.
    Forbidden,
    /// The SQL does not parse (or holds more than one statement).
    Syntax,
    /// A table that does not exist.
    UndefinedTable,
    /// A column that does not exist.
    UndefinedColumn,
    /// A function that does not exist.
    UndefinedFunction,
    /// Any other planning error of the query (types that do not fit, …).
    InvalidQuery,
    /// The query ran into bad data (division by zero, a cast that fails, …).
    DataError,
    /// SQL DataFusion does not implement.
    NotSupported,
    /// The per-query time limit was reached.
    Timeout,
    /// The client cancelled the query (a pg-wire cancel request).
    Cancelled,
    /// The per-query memory limit was reached.
    MemoryLimit,
    /// What queries spilled to disk reached `--query-spill-bytes-max`.
    SpillLimit,
    /// The result has more rows or bytes than allowed.
    ResultTooLarge,
    /// As many queries as allowed are running.
    TooManyQueries,
    /// A window (or other named thing) that is not held.
    NotFound,
    /// A fault of the server: a bug, or something it depends on.
    Internal,
}

impl ErrorKind {
    /// The HTTP status code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::Syntax
            | ErrorKind::UndefinedTable
            | ErrorKind::UndefinedColumn
            | ErrorKind::UndefinedFunction
            | ErrorKind::InvalidQuery
            | ErrorKind::DataError
            | ErrorKind::NotSupported => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Timeout | ErrorKind::Cancelled => 408,
            // A limit of the query, not of the request body: 422 rather than 413.
            ErrorKind::MemoryLimit | ErrorKind::SpillLimit | ErrorKind::ResultTooLarge => 422,
            ErrorKind::TooManyQueries => 429,
            ErrorKind::Internal => 500,
        }
    }

    /// The PostgreSQL SQLSTATE, as PostgreSQL gives it for the same condition.
    pub fn sqlstate(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "08P01",        // protocol_violation
            ErrorKind::Unauthorized => "28P01",      // invalid_password
            ErrorKind::Forbidden => "42501",         // insufficient_privilege
            ErrorKind::Syntax => "42601",            // syntax_error
            ErrorKind::UndefinedTable => "42P01",    // undefined_table
            ErrorKind::UndefinedColumn => "42703",   // undefined_column
            ErrorKind::UndefinedFunction => "42883", // undefined_function
            ErrorKind::InvalidQuery => "42804",      // datatype_mismatch (the usual planning error)
            ErrorKind::DataError => "22000",         // data_exception
            ErrorKind::NotSupported => "0A000",      // feature_not_supported
            ErrorKind::Timeout => "57014",           // query_canceled
            ErrorKind::Cancelled => "57014",         // query_canceled
            ErrorKind::MemoryLimit => "53200",       // out_of_memory
            ErrorKind::SpillLimit => "53100",        // disk_full
            ErrorKind::ResultTooLarge => "54000",    // program_limit_exceeded
            ErrorKind::TooManyQueries => "53300",    // too_many_connections
            ErrorKind::NotFound => "02000",          // no_data
            ErrorKind::Internal => "XX000",          // internal_error
        }
    }

    /// A short stable name, the `outcome` label of the query metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Syntax => "syntax",
            ErrorKind::UndefinedTable => "undefined_table",
            ErrorKind::UndefinedColumn => "undefined_column",
            ErrorKind::UndefinedFunction => "undefined_function",
            ErrorKind::InvalidQuery => "invalid_query",
            ErrorKind::DataError => "data_error",
            ErrorKind::NotSupported => "not_supported",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::SpillLimit => "spill_limit",
            ErrorKind::ResultTooLarge => "result_too_large",
            ErrorKind::TooManyQueries => "too_many_queries",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A query's error: its kind and a message for people that names the rule or the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub kind: ErrorKind,
    pub message: String,
}

impl QueryError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        QueryError {
            kind,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        QueryError::new(ErrorKind::Forbidden, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        QueryError::new(ErrorKind::Internal, message)
    }
}

impl From<DataFusionError> for QueryError {
    /// Classifies DataFusion's errors by their root cause. DataFusion has no
    /// error codes for "table not found" and the like, only messages: those
    /// are matched on the stable part of the text (the live test
    /// `tests/it/limits.rs` checks each class's SQLSTATE, so a change in a
    /// DataFusion upgrade shows up as a failing test, not as a wrong class).
    fn from(error: DataFusionError) -> Self {
        let root = error.find_root();
        let message = root.to_string();
        // DataFusion's DiskManager: "The used disk space during the spilling
        // process has exceeded the allowable limit of …", as resources
        // exhausted or inside the I/O error of a spill writer.
        if message.contains("spilling process has exceeded") {
            return QueryError::new(ErrorKind::SpillLimit, message);
        }
        let kind = match root {
            DataFusionError::SQL(..) => ErrorKind::Syntax,
            DataFusionError::SchemaError(schema_error, _) => match **schema_error {
                datafusion::common::SchemaError::FieldNotFound { .. } => ErrorKind::UndefinedColumn,
                _ => ErrorKind::InvalidQuery,
            },
            DataFusionError::Plan(text) => {
                if text.contains("table '") && text.contains("not found") {
                    ErrorKind::UndefinedTable
                } else if text.contains("Invalid function")
                    || (text.contains("function '") && text.contains("not found"))
                {
                    ErrorKind::UndefinedFunction
                } else {
                    ErrorKind::InvalidQuery
                }
            }
            DataFusionError::NotImplemented(_) => ErrorKind::NotSupported,
            DataFusionError::ResourcesExhausted(_) => ErrorKind::MemoryLimit,
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => ErrorKind::DataError,
            _ => ErrorKind::Internal,
        };
        QueryError::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_a_4xx_and_only_internal_is_5xx() {
        let all = [
            ErrorKind::BadRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::Syntax,
            ErrorKind::UndefinedTable,
            ErrorKind::UndefinedColumn,
            ErrorKind::UndefinedFunction,
            ErrorKind::InvalidQuery,
            ErrorKind::DataError,
            ErrorKind::NotSupported,
            ErrorKind::Timeout,
            ErrorKind::Cancelled,
            ErrorKind::MemoryLimit,
            ErrorKind::SpillLimit,
            ErrorKind::ResultTooLarge,
            ErrorKind::TooManyQueries,
            ErrorKind::NotFound,
        ];
        for kind in all {
            assert!((400..500).contains(&kind.http_status()), "{kind:?}");
            assert_eq!(kind.sqlstate().len(), 5);
        }
        assert_eq!(ErrorKind::Internal.http_status(), 500);
        assert_eq!(ErrorKind::Forbidden.sqlstate(), "42501");
        assert_eq!(ErrorKind::Timeout.sqlstate(), "57014");
        assert_eq!(ErrorKind::MemoryLimit.sqlstate(), "53200");
    }
}
