//! The statements a PostgreSQL client sends about its session rather than
//! about data, answered here without the engine: transaction control (a
//! no-op: every query reads a consistent tail and nothing is written),
//! `SET` of the settings drivers set on connect (accepted and ignored: the
//! server's answers do not depend on them), and `SHOW` of the settings they
//! read, `DEALLOCATE` of prepared statements. Any other `SET` or `SHOW` goes to the engine, whose read-only rules
//! decide (a `SET` of a DataFusion option is refused there, 42501).

use datafusion::sql::sqlparser::ast::{Expr, ObjectName, Set, Statement};

use super::catalog::{DATABASE, SERVER_VERSION, USER};

/// A session statement, answered without the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatement {
    Begin,
    Commit,
    Rollback,
    /// A client setting, set: its command tag is `SET`.
    Set,
    /// A setting's value, as a one-row, one-column answer named `name`.
    Show {
        name: String,
        value: String,
    },
    /// `DEALLOCATE name` (the prepared statement is dropped) or `DEALLOCATE
    /// ALL` (`None`: nothing to do, a name Parse uses again is replaced).
    Deallocate(Option<String>),
}

/// The settings a `SET` of which is accepted (and ignored): those libpq,
/// JDBC, psycopg, pgx and Grafana send on connect or per query.
const CLIENT_SETTINGS: [&str; 14] = [
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "lc_monetary",
    "search_path",
    "standard_conforming_strings",
    "statement_timeout",
    "timezone",
    "idle_in_transaction_session_timeout",
    "lock_timeout",
];

/// The settings `SHOW` answers, with their values.
fn setting(name: &str) -> Option<String> {
    let value = match name {
        "server_version" => SERVER_VERSION.to_string(),
        "server_version_num" => server_version_num(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "standard_conforming_strings" | "integer_datetimes" => "on".into(),
        "search_path" => "\"$user\", public".into(),
        "timezone" => "UTC".into(),
        "datestyle" => "ISO, MDY".into(),
        "intervalstyle" => "postgres".into(),
        "transaction isolation level" | "transaction_isolation" | "default_transaction_isolation" => {
            "read committed".into()
        }
        "transaction_read_only" | "default_transaction_read_only" => "on".into(),
        "is_superuser" => "off".into(),
        "max_identifier_length" => "63".into(),
        "lc_collate" | "lc_ctype" => "C".into(),
        "session_authorization" => USER.into(),
        "application_name" => String::new(),
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0".into(),
        "extra_float_digits" => "1".into(),
        "bytea_output" => "hex".into(),
        "current_database" => DATABASE.into(),
        _ => return None,
    };
    Some(value)
}

/// `16.6` as PostgreSQL's number, `160006`.
fn server_version_num() -> String {
    let mut parts = SERVER_VERSION.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major * 10_000 + minor).to_string()
}

/// What `statement` is, when it is a session statement.
pub fn classify(statement: &Statement) -> Option<SessionStatement> {
    match statement {
        Statement::StartTransaction { .. } => Some(SessionStatement::Begin),
        Statement::Commit { .. } => Some(SessionStatement::Commit),
        Statement::Rollback { .. } => Some(SessionStatement::Rollback),
        Statement::Set(set) => classify_set(set),
        Statement::Deallocate { name, .. } => Some(SessionStatement::Deallocate(
            (!name.value.eq_ignore_ascii_case("all")).then(|| name.value.clone()),
        )),
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|ident| ident.value.to_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            let value = setting(&name)?;
            Some(SessionStatement::Show { name, value })
        }
        _ => None,
    }
}

fn classify_set(set: &Set) -> Option<SessionStatement> {
    match set {
        Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => Some(SessionStatement::Set),
        Set::SingleAssignment { variable, values, .. } => {
            let accepted = is_client_setting(variable) && values.iter().all(is_literal);
            accepted.then_some(SessionStatement::Set)
        }
        _ => None,
    }
}

fn is_client_setting(name: &ObjectName) -> bool {
    let name = name.to_string().to_lowercase();
    CLIENT_SETTINGS.contains(&name.as_str())
}

/// `SET x = 'v'`, `SET x TO v`, `SET x = DEFAULT`: a value, not an expression
/// (nothing is evaluated).
fn is_literal(value: &Expr) -> bool {
    matches!(value, Expr::Value(_) | Expr::Identifier(_))
        || matches!(value, Expr::UnaryOp { expr, .. } if matches!(**expr, Expr::Value(_)))
}

#[cfg(test)]
mod tests {
    use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    use super::*;

    fn classified(sql: &str) -> Option<SessionStatement> {
        let statements = PostgresCompatibilityParser::new().parse(sql).unwrap();
        classify(&statements[0])
    }

    #[test]
    fn transactions_client_settings_and_their_show_are_session_statements() {
        assert_eq!(classified("BEGIN"), Some(SessionStatement::Begin));
        assert_eq!(classified("BEGIN READ ONLY"), Some(SessionStatement::Begin));
        assert_eq!(classified("COMMIT"), Some(SessionStatement::Commit));
        assert_eq!(classified("ROLLBACK"), Some(SessionStatement::Rollback));
        assert_eq!(classified("SET extra_float_digits = 3"), Some(SessionStatement::Set));
        assert_eq!(
            classified("SET application_name TO 'grafana'"),
            Some(SessionStatement::Set)
        );
        assert_eq!(classified("SET TIME ZONE 'UTC'"), Some(SessionStatement::Set));
        assert_eq!(classified("DEALLOCATE ALL"), Some(SessionStatement::Deallocate(None)));
        assert_eq!(
            classified("DEALLOCATE _pg3_0"),
            Some(SessionStatement::Deallocate(Some("_pg3_0".into())))
        );
        assert_eq!(
            classified("SHOW transaction isolation level"),
            Some(SessionStatement::Show {
                name: "transaction isolation level".into(),
                value: "read committed".into()
            })
        );
        assert_eq!(
            classified("SHOW server_version_num"),
            Some(SessionStatement::Show {
                name: "server_version_num".into(),
                value: "160006".into()
            })
        );
    }

    #[test]
    fn other_settings_go_to_the_engine() {
        assert_eq!(classified("SET datafusion.execution.batch_size = 1"), None);
        assert_eq!(classified("SET work_mem = '1GB'"), None);
        assert_eq!(classified("SHOW datafusion.execution.batch_size"), None);
        assert_eq!(classified("SELECT 1"), None);
    }
}
