//! The simple and extended query protocols over the engine. A statement is
//! parsed in PostgreSQL's dialect (`datafusion-pg-catalog`'s parser, which
//! also rewrites the catalog queries of psql, Grafana and the drivers into
//! SQL DataFusion plans); a session statement (`super::session`) is answered
//! here; every other one goes to the engine, which checks it by the
//! read-only rules and runs it within the limits: `execute_statement` for a
//! simple query, `plan` at Parse and `execute_plan` at Execute for a prepared
//! one. An error is an error response with its SQLSTATE; the connection goes on.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::Sink;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::PgWireBackendMessage;

use super::errors::{error, error_info, to_pg_error};
use super::metrics::PgMetrics;
use super::results::{fields, query_response};
use super::session::{classify, SessionStatement};
use super::startup::Cancellation;
use crate::engine::{CheckedPlan, QueryEngine, QueryOutput};
use crate::error::{ErrorKind, QueryError};
use crate::readonly::check_statement;

/// A statement of a query string, parsed.
enum Parsed {
    Session(SessionStatement),
    Query(DfStatement),
}

/// A prepared statement (the extended protocol's Parse).
#[derive(Debug, Clone)]
pub enum Prepared {
    Session(SessionStatement),
    Query(CheckedPlan),
}

/// Parses in PostgreSQL's dialect and plans prepared statements.
pub struct PgParser {
    engine: QueryEngine,
    sql: PostgresCompatibilityParser,
}

impl PgParser {
    pub fn new(engine: QueryEngine) -> Self {
        PgParser {
            engine,
            sql: PostgresCompatibilityParser::new(),
        }
    }

    fn parse(&self, sql: &str) -> Result<Vec<Parsed>, QueryError> {
        match self.sql.parse(sql) {
            Ok(statements) => Ok(statements
                .into_iter()
                .map(|statement| match classify(&statement) {
                    Some(session) => Parsed::Session(session),
                    None => Parsed::Query(DfStatement::Statement(Box::new(statement))),
                })
                .collect()),
            Err(parse_error) => {
                // DataFusion's own statements (CREATE EXTERNAL TABLE, COPY …
                // TO) are not PostgreSQL's: they are refused by the read-only
                // rules, as over HTTP, rather than called a syntax error.
                let statements = DFParserBuilder::new(sql)
                    .with_dialect(&PostgreSqlDialect {})
                    .build()
                    .and_then(|mut parser| parser.parse_statements());
                if let Ok(statements) = statements {
                    for statement in &statements {
                        check_statement(statement)?;
                    }
                }
                Err(QueryError::new(ErrorKind::Syntax, parse_error.to_string()))
            }
        }
    }
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut parsed = self.parse(sql).map_err(|e| self.engine_refusal(e))?;
        if parsed.len() > 1 {
            return Err(self.engine_refusal(QueryError::new(
                ErrorKind::Syntax,
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        match parsed.pop() {
            None => Ok(None),
            Some(Parsed::Session(session)) => Ok(Some(Prepared::Session(session))),
            Some(Parsed::Query(statement)) => {
                let plan = self.engine.plan(statement).await.map_err(|e| to_pg_error(&e))?;
                Ok(Some(Prepared::Query(plan)))
            }
        }
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        match statement {
            Prepared::Session(_) => Ok(Vec::new()),
            Prepared::Query(plan) => parameter_types(plan)?
                .iter()
                .map(|t| match t {
                    Some(t) => arrow_pg::datatypes::into_pg_type(t),
                    // As PostgreSQL types a parameter nothing constrains.
                    None => Ok(Type::TEXT),
                })
                .collect(),
        }
    }

    fn get_result_schema(&self, statement: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match statement {
            Prepared::Session(SessionStatement::Show { name, .. }) => fields(&show_schema(name), format),
            Prepared::Session(_) => Ok(Vec::new()),
            Prepared::Query(plan) => fields(plan.plan().schema().as_arrow(), format),
        }
    }
}

impl PgParser {
    /// A statement refused before the engine planned it, counted as the engine counts its own.
    fn engine_refusal(&self, error: QueryError) -> PgWireError {
        self.engine.record(Some(error.kind));
        to_pg_error(&error)
    }
}

/// The types DataFusion inferred for `$1`, `$2`, … in order.
fn parameter_types(plan: &CheckedPlan) -> PgWireResult<Vec<Option<DataType>>> {
    let types = plan
        .plan()
        .get_parameter_types()
        .map_err(|e| to_pg_error(&QueryError::from(e)))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .map(|(id, t)| (id.trim_start_matches('$').parse::<usize>().unwrap_or(usize::MAX), t))
        .collect();
    numbered.sort_by_key(|(number, _)| *number);
    Ok(numbered.into_iter().map(|(_, t)| t).collect())
}

/// Both query protocols.
pub struct PgQueries {
    engine: QueryEngine,
    parser: Arc<PgParser>,
    metrics: PgMetrics,
}

impl PgQueries {
    pub fn new(engine: QueryEngine, metrics: PgMetrics) -> Self {
        PgQueries {
            parser: Arc::new(PgParser::new(engine.clone())),
            engine,
            metrics,
        }
    }

    fn count<T>(&self, result: &Result<T, QueryError>) {
        let outcome = result.as_ref().err().map_or("ok", |e| e.kind.as_str());
        self.metrics.queries.with_label_values(&[outcome]).inc();
    }
}

#[async_trait]
impl SimpleQueryHandler for PgQueries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parsed = match self.parser.parse(query) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.count::<()>(&Err(e.clone()));
                return Err(self.parser.engine_refusal(e));
            }
        };
        if parsed.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(parsed.len());
        for statement in parsed {
            let response = match statement {
                Parsed::Session(session) => session_response(client, &session, &Format::UnifiedText),
                Parsed::Query(statement) => {
                    refuse_in_failed_transaction(client)?;
                    let cancel = cancel_signal(client).await;
                    let result = self.engine.execute_statement(statement, cancel).await;
                    self.count(&result);
                    match result {
                        Ok(output) => query_response(output, &Format::UnifiedText).map(Response::Query),
                        // As PostgreSQL: the statements after a failed one are not run.
                        Err(e) => {
                            responses.push(Response::Error(Box::new(error_info(&e))));
                            break;
                        }
                    }
                }
            };
            match response {
                Ok(response) => responses.push(response),
                Err(e) => {
                    responses.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgQueries {
    type Statement = Prepared;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            Prepared::Session(session) => session_response(client, session, &portal.result_column_format),
            Prepared::Query(plan) => {
                refuse_in_failed_transaction(client)?;
                let types = parameter_types(plan)?;
                let type_refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
                let params = arrow_pg::datatypes::df::deserialize_parameters(portal, &type_refs)?;
                let cancel = cancel_signal(client).await;
                let result = self.engine.execute_plan(plan, params, cancel).await;
                self.count(&result);
                // Row limits of Execute are pgwire's: it keeps the portal's
                // rows and sends them `max_rows` at a time.
                query_response(result.map_err(|e| to_pg_error(&e))?, &portal.result_column_format).map(Response::Query)
            }
        }
    }
}

/// A future that resolves when a cancel request names this connection during
/// the query that starts now (never, when none does).
async fn cancel_signal<C: ClientInfo + ?Sized>(client: &C) -> impl Future<Output = ()> + Send + 'static {
    let receiver = match client.session_extensions().get::<Cancellation>() {
        Some(cancellation) => Some(cancellation.handle.start_query().await),
        None => None,
    };
    async move {
        // A receiver whose sender was replaced (the next query) or dropped
        // (the connection) resolves with an error: that is no cancel.
        if let Some(receiver) = receiver {
            if receiver.await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// As PostgreSQL: in a failed transaction block, only its end is accepted.
fn refuse_in_failed_transaction<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<()> {
    if client.transaction_status() == TransactionStatus::Error {
        return Err(error(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        ));
    }
    Ok(())
}

/// The answer to a session statement.
fn session_response<C>(client: &C, statement: &SessionStatement, format: &Format) -> PgWireResult<Response>
where
    C: ClientInfo + ClientPortalStore + ?Sized,
    C::PortalStore: PortalStore,
{
    let failed = client.transaction_status() == TransactionStatus::Error;
    Ok(match statement {
        SessionStatement::Begin => {
            refuse_in_failed_transaction(client)?;
            Response::TransactionStart(Tag::new("BEGIN"))
        }
        SessionStatement::Commit => Response::TransactionEnd(Tag::new(if failed { "ROLLBACK" } else { "COMMIT" })),
        SessionStatement::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        SessionStatement::Set => {
            refuse_in_failed_transaction(client)?;
            Response::Execution(Tag::new("SET"))
        }
        SessionStatement::Deallocate(name) => {
            if let Some(name) = name {
                client.portal_store().rm_statement(name);
            }
            Response::Execution(Tag::new("DEALLOCATE"))
        }
        SessionStatement::Show { name, value } => {
            refuse_in_failed_transaction(client)?;
            let schema = Arc::new(show_schema(name));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![value.as_str()]))])
                .map_err(|e| to_pg_error(&QueryError::internal(format!("the SHOW answer: {e}"))))?;
            let output = QueryOutput {
                schema,
                batches: vec![batch],
            };
            Response::Query(query_response(output, format)?)
        }
    })
}

/// `SHOW name`'s one column, named as PostgreSQL names it.
fn show_schema(name: &str) -> Schema {
    let column = if name == "transaction isolation level" {
        "transaction_isolation".to_string()
    } else {
        name.replace(' ', "_")
    };
    Schema::new(vec![Field::new(column, DataType::Utf8, false)])
}
