//! The read-only rules, checked twice: on the parsed statement (only
//! `SELECT`/`WITH`/`VALUES`, `EXPLAIN`/`DESCRIBE` and `SHOW`), and on the
//! logical plan (DataFusion's own `SQLOptions` with DDL, DML and statements
//! refused, then every table scan must be one of the service's tables,
//! `information_schema` or `pg_catalog`). The session registers no table function that
//! reads a file or URL, no `ListingTable`, and URL tables are off, so a
//! query can read nothing but what the tail holds.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::{ErrorKind, QueryError};
use crate::tables::Table;

/// The table functions a session may hold: DataFusion's defaults, which
/// generate rows and read nothing, and the PostgreSQL catalog's keyword list.
/// `QueryEngine` refuses to build a session holding any other (a
/// `read_parquet`, say).
pub const TABLE_FUNCTIONS: [&str; 3] = ["generate_series", "range", "pg_get_keywords"];

/// The rule every refusal names.
pub const READ_ONLY_RULE: &str = "read-only: only SELECT, WITH, EXPLAIN and SHOW are allowed";

/// Parses `sql` as exactly one statement (DataFusion's default dialect and
/// nesting limit: deeply nested SQL is a syntax error, not a stack overflow).
pub fn parse_one_statement(sql: &str, recursion_limit: usize) -> Result<DfStatement, QueryError> {
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .with_recursion_limit(recursion_limit)
        .build()?
        .parse_statements()?;
    match statements.len() {
        1 => statements
            .pop_front()
            .ok_or_else(|| QueryError::internal("one statement parsed, none held")),
        0 => Err(QueryError::new(ErrorKind::BadRequest, "the query holds no statement")),
        n => Err(QueryError::new(
            ErrorKind::Syntax,
            format!("one statement per query; this one holds {n}"),
        )),
    }
}

/// Refuses every statement but a query, an `EXPLAIN` of one, or a `SHOW`.
pub fn check_statement(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(statement) => check_sql_statement(statement),
        DfStatement::Explain(explain) => check_statement(&explain.statement),
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(refused("COPY")),
        DfStatement::Reset(_) => Err(refused("RESET")),
    }
}

fn check_sql_statement(statement: &Statement) -> Result<(), QueryError> {
    match statement {
        Statement::Query(query) => check_set_expr(&query.body),
        Statement::Explain { statement, .. } => check_sql_statement(statement),
        Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowCatalogs { .. } => Ok(()),
        other => Err(refused(&statement_name(other))),
    }
}

/// A query body that modifies (`WITH … INSERT`, …) is refused like the statement.
fn check_set_expr(body: &SetExpr) -> Result<(), QueryError> {
    match body {
        SetExpr::Insert(statement)
        | SetExpr::Update(statement)
        | SetExpr::Delete(statement)
        | SetExpr::Merge(statement) => Err(refused(&statement_name(statement))),
        SetExpr::Query(query) => check_set_expr(&query.body),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => Ok(()),
    }
}

/// The plan's check: DataFusion's DDL/DML/statement rules, then the tables read.
pub fn check_plan(plan: &LogicalPlan) -> Result<(), QueryError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    options
        .verify_plan(plan)
        .map_err(|e| QueryError::forbidden(format!("{READ_ONLY_RULE}; refused: {}", e.find_root())))?;
    let mut refusal = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = &scan.table_name;
            let ours = match name.schema() {
                None | Some("public") => {
                    Table::ALL.iter().any(|t| t.name() == name.table())
                        || TABLE_FUNCTIONS.iter().any(|f| name.table() == format!("{f}()"))
                }
                // Both are generated from the session's own catalog (and
                // tables of PostgreSQL's built-in types and functions held in
                // memory): nothing outside the process.
                Some("information_schema" | "pg_catalog") => true,
                Some(_) => false,
            };
            if !ours {
                refusal = Some(QueryError::forbidden(format!(
                    "{READ_ONLY_RULE}; a query reads only the tables bar_reports, claims, beats, rejects, information_schema and pg_catalog, not {name}"
                )));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(QueryError::from)?;
    refusal.map_or(Ok(()), Err)
}

fn refused(what: &str) -> QueryError {
    QueryError::forbidden(format!("{READ_ONLY_RULE}; refused: {what}"))
}

/// A statement's kind for people: its first two words (`INSERT INTO`, `CREATE TABLE`, `SET TIME`).
fn statement_name(statement: &Statement) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParser;

    use super::*;

    fn check(sql: &str) -> Result<(), QueryError> {
        let mut statements = DFParser::parse_sql(sql).unwrap();
        assert_eq!(statements.len(), 1, "{sql}");
        check_statement(&statements.pop_front().unwrap())
    }

    #[test]
    fn queries_explain_and_show_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "EXPLAIN SELECT * FROM claims",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TABLES",
            "SHOW COLUMNS FROM claims",
            "SHOW datafusion.execution.batch_size",
            "VALUES (1), (2)",
            "SELECT 1 UNION ALL SELECT 2",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn everything_else_is_refused_naming_the_rule() {
        for (sql, named) in [
            ("INSERT INTO claims VALUES (1)", "INSERT INTO"),
            ("UPDATE claims SET agent_id = 'x'", "UPDATE"),
            ("DELETE FROM claims", "DELETE FROM"),
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DROP TABLE claims", "DROP TABLE"),
            (
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
                "CREATE EXTERNAL TABLE",
            ),
            ("COPY claims TO '/tmp/x.csv'", "COPY"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
            ("EXPLAIN INSERT INTO claims VALUES (1)", "INSERT INTO"),
            ("EXPLAIN COPY claims TO '/tmp/x'", "COPY"),
            ("TRUNCATE claims", "TRUNCATE"),
        ] {
            let error = check(sql).unwrap_err();
            assert_eq!(error.kind, crate::error::ErrorKind::Forbidden, "{sql}");
            assert!(error.message.contains(READ_ONLY_RULE), "{sql}: {error}");
            assert!(error.message.contains(named), "{sql}: {error}");
        }
    }
}
