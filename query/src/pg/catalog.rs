//! PostgreSQL's catalog as clients read it: the `pg_catalog` schema
//! (`pg_namespace`, `pg_class`, `pg_attribute`, `pg_type`, `pg_database`,
//! `pg_settings`, …) and the functions psql, psycopg and Grafana call
//! (`current_database()`, `current_schema()`, `pg_table_is_visible`,
//! `format_type`, …), from `datafusion-pg-catalog`, generated from the
//! session's own catalog. Installed in every query's session (HTTP's too):
//! it reads nothing but the session's tables and the crate's in-memory tables.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility};
use datafusion::prelude::{create_udf, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;

use crate::error::QueryError;

/// The one database (DataFusion's catalog) and the one user.
pub const DATABASE: &str = "backbeat";
pub const USER: &str = "backbeat";

/// The PostgreSQL version the server claims, in `server_version` and
/// `version()`: the catalog emulation follows PostgreSQL 16's, and clients
/// choose their catalog queries by it.
pub const SERVER_VERSION: &str = "16.6";

/// `version()`'s answer: PostgreSQL's form first, since clients parse it.
pub fn version_text() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (BACKBEAT query {}, read-only; DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    )
}

/// Installs `pg_catalog` and PostgreSQL's functions in `context`.
pub fn install(context: &SessionContext) -> Result<(), QueryError> {
    setup_pg_catalog(context, DATABASE, EmptyContextProvider)
        .map_err(|e| QueryError::internal(format!("installing pg_catalog: {e}")))?;
    context.register_udf(version_udf());
    Ok(())
}

/// `version()` in PostgreSQL's form (DataFusion's own names DataFusion first).
fn version_udf() -> ScalarUDF {
    let text = Arc::new(version_text());
    create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(text.to_string()))))),
    )
}
