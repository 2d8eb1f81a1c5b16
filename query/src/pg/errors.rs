//! A [`QueryError`] as a PostgreSQL error response: severity `ERROR`, the
//! kind's SQLSTATE (`crate::error`), the message that names the rule or the
//! limit. Errors of the connection itself (`FATAL`) are made here too.

use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::QueryError;

/// The error response of a query's error; the connection goes on.
pub fn error_info(error: &QueryError) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), error.kind.sqlstate().into(), error.message.clone())
}

pub fn to_pg_error(error: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(error)))
}

/// An error that ends the connection (after the client reads it).
pub fn fatal(sqlstate: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        sqlstate.into(),
        message.into(),
    )))
}

/// An error of a statement that is not the engine's (`25P02`, `42601`, …).
pub fn error(sqlstate: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        sqlstate.into(),
        message.into(),
    )))
}
