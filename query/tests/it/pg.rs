//! The PostgreSQL wire protocol against a live `serve --pg-listen` and a real
//! nats-server: tokio-postgres (prepared statements, typed parameters, binary
//! results decoded natively, portals with row limits, simple queries in text),
//! every refusal and limit with its SQLSTATE on a connection that goes on,
//! cancel requests, the connection cap, users, databases and the password,
//! Grafana's macro expansions and catalog queries; psql and psycopg in
//! `pg_clients.rs`.

use async_nats::jetstream;
use backbeat_tests::{wait_until_async, NatsServer};
use chrono::{DateTime, TimeZone as _, Utc};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use crate::support::{beat, ensure_streams, publish, report, QueryServer, FORBIDDEN, LIMITS, TIMEOUT};

/// A nats-server, a `serve --pg-listen` with `args`, and data: beats 4 and 7
/// of cluster `c` (HLC times 1 s and 2 s after the epoch), a claim of agent
/// `a`, the reports of windows 1 and 2.
pub struct Fixture {
    pub server: QueryServer,
    _dir: tempfile::TempDir,
    _nats: NatsServer,
}

impl Fixture {
    pub async fn start(args: &[&str]) -> Fixture {
        let nats = NatsServer::start().expect("nats-server");
        let js = jetstream::new(nats.client().await.unwrap());
        ensure_streams(&js).await;
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["--bar-length", "4", "--pg-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let server = QueryServer::start(&nats.url(), dir.path(), &all).await;
        publish(&js, "backbeat.c.beat", beat("c", 4, "3e8:0000:0001")).await;
        publish(&js, "backbeat.c.beat", beat("c", 7, "7d0:0000:0001")).await;
        let claim = r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":5,"state":"executing","beats_left":2,"progress":0.5,"hlc":"3e9:0000:0002"}"#;
        let events_last = publish(&js, "backbeat.c.claim", claim.into()).await;
        publish(&js, "backbeat.c.bar", report("c", 1, 2)).await;
        let bars_last = publish(&js, "backbeat.c.bar", report("c", 2, 3)).await;
        server.wait_read("BACKBEAT_EVENTS", events_last).await;
        server.wait_read("BACKBEAT_BARS", bars_last).await;
        Fixture {
            server,
            _dir: dir,
            _nats: nats,
        }
    }

    pub async fn connect(&self) -> Client {
        connect(&self.server.pg_conninfo())
            .await
            .unwrap_or_else(|e| panic!("connecting over pg-wire: {e}\n{}", self.server.log_tail()))
    }
}

pub async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().expect("a time")
}

#[tokio::test]
async fn prepared_statements_bind_typed_parameters_and_decode_native_types() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.connect().await;

    // Parse and Describe: the parameters' and columns' types.
    let statement = client
        .prepare(
            "SELECT window_index, agents_reporting, secret_rotations_ok, tempo_bpm, window_start, issues, published_at, cluster_id \
             FROM bar_reports WHERE cluster_id = $1 AND window_index >= $2 ORDER BY window_index",
        )
        .await
        .unwrap();
    assert_eq!(statement.params(), &[Type::TEXT, Type::INT8]);
    let types: Vec<&Type> = statement.columns().iter().map(|c| c.type_()).collect();
    assert_eq!(
        types,
        vec![
            &Type::INT8,
            &Type::INT8,
            &Type::BOOL,
            &Type::INT4,
            &Type::TIMESTAMPTZ,
            &Type::JSON,
            &Type::TIMESTAMPTZ,
            &Type::TEXT
        ]
    );

    // Bind and Execute, results in binary, decoded without casts.
    let rows = client.query(&statement, &[&"c", &1i64]).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert_eq!(rows[0].get::<_, i64>(1), 2);
    assert!(rows[0].get::<_, bool>(2));
    assert_eq!(rows[0].get::<_, i32>(3), 60);
    assert_eq!(rows[0].get::<_, Option<DateTime<Utc>>>(4), Some(at_ms(1000)));
    assert_eq!(
        rows[0].get::<_, serde_json::Value>(5),
        serde_json::json!([{"code": "missing_beats", "count": 2, "sample": ["1", "2"]}])
    );
    let published_at: DateTime<Utc> = rows[0].get(6);
    assert!(published_at > at_ms(1_700_000_000_000), "{published_at}");
    assert_eq!(rows[0].get::<_, &str>(7), "c");
    assert_eq!(rows[1].get::<_, Option<DateTime<Utc>>>(4), None, "no beat of window 2");
    // The same statement, other values.
    assert_eq!(client.query(&statement, &[&"c", &2i64]).await.unwrap().len(), 1);
    assert!(client.query(&statement, &[&"nowhere", &0i64]).await.unwrap().is_empty());

    // Timestamps and floats as parameters, arrays as results.
    let row = client
        .query_one(
            "SELECT count(*), array_agg(beat_index ORDER BY beat_index), array_agg(phase ORDER BY beat_index), \
             min(hlc_time) FROM beats WHERE hlc_time >= $1 AND cluster_id = $2",
            &[&at_ms(500), &"c"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, Vec<i64>>(1), vec![4, 7]);
    assert_eq!(row.get::<_, Vec<String>>(2), vec!["plan", "review"]);
    assert_eq!(row.get::<_, DateTime<Utc>>(3), at_ms(1000));
    let row = client
        .query_one(
            "SELECT progress, beats_left, task_id FROM claims WHERE progress > $1",
            &[&0.25f64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 0.5);
    assert_eq!(row.get::<_, i64>(1), 2);
    assert_eq!(row.get::<_, Option<&str>>(2), None);

    // A portal read two rows at a time (Execute with a row limit), in a transaction.
    let mut client = client;
    let transaction = client.transaction().await.unwrap();
    let portal = transaction
        .bind("SELECT value FROM generate_series(1, 5) ORDER BY value", &[])
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let rows = transaction.query_portal(&portal, 2).await.unwrap();
        if rows.is_empty() {
            break;
        }
        assert!(rows.len() <= 2);
        seen.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    transaction.commit().await.unwrap();

    // The simple protocol: text, several statements in one string.
    let messages = client
        .simple_query("SELECT window_start, issues FROM bar_reports WHERE window_index = 1; SELECT 2 AS two")
        .await
        .unwrap();
    let rows: Vec<&tokio_postgres::SimpleQueryRow> = messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].get(0).unwrap().starts_with("1970-01-01 00:00:01"),
        "{:?}",
        rows[0].get(0)
    );
    let issues: serde_json::Value = serde_json::from_str(rows[0].get(1).unwrap()).unwrap();
    assert_eq!(issues[0]["code"], "missing_beats");
    assert_eq!(rows[1].get(0), Some("2"));

    // What clients read on connect.
    for (sql, expected) in [
        ("SELECT current_database()", "backbeat"),
        ("SELECT current_schema()", "public"),
        ("SHOW search_path", "\"$user\", public"),
        ("SHOW transaction isolation level", "read committed"),
        ("SHOW server_version_num", "160006"),
    ] {
        let row = client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(row.get::<_, &str>(0), expected, "{sql}");
    }
    let version: String = client.query_one("SELECT version()", &[]).await.unwrap().get(0);
    assert!(version.starts_with("PostgreSQL 16."), "{version}");
    client
        .batch_execute("SET extra_float_digits = 3; SET application_name = 'test'")
        .await
        .unwrap();

    // Every pg-wire statement counted.
    assert!(
        fixture
            .server
            .metric("backbeat_query_pg_queries_total{outcome=\"ok\"}")
            .await
            >= Some(10.0)
    );
    assert_eq!(fixture.server.metric("backbeat_query_pg_connections").await, Some(1.0));
}

/// Asserts `sql` fails with `state` and a message naming `named`, on both
/// protocols, and the connection answers the next query.
async fn assert_refused(client: &Client, sql: &str, state: &SqlState, named: &str) {
    let simple = client.simple_query(sql).await.expect_err(sql);
    let extended = client.query(sql, &[]).await.expect_err(sql);
    for error in [simple, extended] {
        let db = error.as_db_error().unwrap_or_else(|| panic!("{sql}: {error:?}"));
        assert_eq!(db.code(), state, "{sql}: {}", db.message());
        assert!(
            db.message().contains(named),
            "{sql}: {:?} does not name {named:?}",
            db.message()
        );
        let one: i64 = client.query_one("SELECT 1::bigint", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "after {sql}");
    }
}

#[tokio::test]
async fn every_refusal_and_limit_has_its_sqlstate_and_the_connection_goes_on() {
    let fixture = Fixture::start(&[&LIMITS[..], &["--pg-max-connections", "3"]].concat()).await;
    let client = fixture.connect().await;
    let server = &fixture.server;

    // Beside the HTTP test's: PostgreSQL's own forms.
    let more = [("COPY claims TO STDOUT", "COPY"), ("TRUNCATE claims", "TRUNCATE")];
    for (sql, named) in FORBIDDEN.iter().chain(&more) {
        assert_refused(&client, sql, &SqlState::INSUFFICIENT_PRIVILEGE, named).await;
    }
    // Nothing names a file or a URL.
    assert_refused(
        &client,
        "SELECT * FROM '/etc/passwd'",
        &SqlState::UNDEFINED_TABLE,
        "not found",
    )
    .await;
    assert_refused(
        &client,
        "SELECT * FROM read_csv('/etc/passwd')",
        &SqlState::UNDEFINED_FUNCTION,
        "read_csv",
    )
    .await;
    // Errors of the query, classed as PostgreSQL does.
    assert_refused(&client, "SELEC 1", &SqlState::SYNTAX_ERROR, "SELEC").await;
    assert_refused(&client, "SELECT * FROM nowhere", &SqlState::UNDEFINED_TABLE, "nowhere").await;
    assert_refused(
        &client,
        "SELECT no_such_column FROM claims",
        &SqlState::UNDEFINED_COLUMN,
        "no_such_column",
    )
    .await;
    assert_refused(
        &client,
        "SELECT no_such_function(1)",
        &SqlState::UNDEFINED_FUNCTION,
        "no_such_function",
    )
    .await;
    // The limits, each named.
    assert_refused(
        &client,
        "SELECT * FROM generate_series(1, 10)",
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "--max-result-rows",
    )
    .await;
    assert_refused(
        &client,
        "SELECT repeat('x', 400000) FROM generate_series(1, 4)",
        &SqlState::PROGRAM_LIMIT_EXCEEDED,
        "--max-result-bytes",
    )
    .await;
    assert_refused(
        &client,
        "SELECT count(DISTINCT value) FROM generate_series(1, 3000000)",
        &SqlState::OUT_OF_MEMORY,
        "--query-memory-bytes",
    )
    .await;

    // The time limit and the concurrency cap: a query that would run for ever
    // holds the only slot; another connection's query is refused at once; the
    // first is cancelled at the time limit, and its connection goes on.
    let slow = {
        let client = fixture.connect().await;
        tokio::spawn(async move {
            let error = client
                .query("SELECT count(*) FROM generate_series(1, 1000000000000)", &[])
                .await
                .expect_err("the slow query ends at the time limit");
            let after: i64 = client.query_one("SELECT 1::bigint", &[]).await.unwrap().get(0);
            (client, error, after)
        })
    };
    wait_running(server).await;
    let busy = client.query("SELECT 1", &[]).await.expect_err("no slot");
    let busy = busy.as_db_error().unwrap();
    assert_eq!(busy.code(), &SqlState::TOO_MANY_CONNECTIONS);
    assert!(
        busy.message().contains("--max-concurrent-queries"),
        "{}",
        busy.message()
    );
    let (second, slow, after) = slow.await.unwrap();
    let slow = slow.as_db_error().unwrap();
    assert_eq!(slow.code(), &SqlState::QUERY_CANCELED);
    assert!(slow.message().contains("--query-timeout-ms"), "{}", slow.message());
    assert_eq!(after, 1);

    // A cancel request stops the running query at once (57014), the connection goes on.
    let cancel = client.cancel_token();
    let running = {
        let server_log = server.log_tail();
        let client = client;
        tokio::spawn(async move {
            let error = client
                .query("SELECT count(*) FROM generate_series(1, 1000000000000)", &[])
                .await
                .expect_err(&server_log);
            (client, error)
        })
    };
    wait_running(server).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let (client, cancelled) = running.await.unwrap();
    let cancelled = cancelled.as_db_error().unwrap();
    assert_eq!(cancelled.code(), &SqlState::QUERY_CANCELED);
    assert!(cancelled.message().contains("user request"), "{}", cancelled.message());
    assert_eq!(
        client
            .query_one("SELECT 3::bigint", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        3
    );
    assert!(
        server
            .metric("backbeat_query_queries_total{outcome=\"cancelled\"}")
            .await
            >= Some(1.0)
    );

    // In a failed transaction block only its end is accepted; after ROLLBACK all goes on.
    client.batch_execute("BEGIN").await.unwrap();
    client.batch_execute("DELETE FROM claims").await.expect_err("refused");
    let aborted = client.query("SELECT 1", &[]).await.expect_err("aborted block");
    assert_eq!(aborted.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        client
            .query_one("SELECT 4::bigint", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        4
    );

    // The connection cap: with three open (this one, the slow query's and
    // one more, all still open), the fourth is refused with 53300.
    let third = fixture.connect().await;
    let refused = connect(&server.pg_conninfo()).await.expect_err("past the cap");
    assert_eq!(refused.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{refused:?}");
    assert!(
        server
            .metric("backbeat_query_pg_connections_total{outcome=\"refused\"}")
            .await
            >= Some(1.0)
    );
    drop((client, second, third));
    wait_until_async("the connections to close", TIMEOUT, || async {
        (server.metric("backbeat_query_pg_connections").await? == 0.0).then_some(())
    })
    .await
    .unwrap();

    // One user, one database.
    let port = server.pg_port.unwrap();
    let wrong_user = connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=backbeat"))
        .await
        .expect_err("no such user");
    assert_eq!(wrong_user.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION));
    let wrong_database = connect(&format!("host=127.0.0.1 port={port} user=backbeat dbname=postgres"))
        .await
        .expect_err("no such database");
    assert_eq!(wrong_database.code(), Some(&SqlState::INVALID_CATALOG_NAME));

    // Every outcome counted, by the engine and by pg-wire.
    assert!(
        server
            .metric("backbeat_query_queries_total{outcome=\"forbidden\"}")
            .await
            >= Some(26.0)
    );
    assert!(server.metric("backbeat_query_queries_total{outcome=\"timeout\"}").await >= Some(1.0));
    assert!(
        server
            .metric("backbeat_query_pg_queries_total{outcome=\"memory_limit\"}")
            .await
            >= Some(2.0)
    );
}

/// Waits until a query is running.
async fn wait_running(server: &QueryServer) {
    wait_until_async("a query to be running", TIMEOUT, || async {
        (server.metric("backbeat_query_queries_running").await? >= 1.0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_configured_password_is_asked_with_scram() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, "sesame\n").unwrap();
    let fixture = Fixture::start(&["--pg-password-file", password_file.to_str().unwrap()]).await;
    let conninfo = fixture.server.pg_conninfo();
    let missing = connect(&conninfo).await.expect_err("a password is asked");
    assert!(format!("{missing:?}").contains("password missing"), "{missing:?}");
    let wrong = connect(&format!("{conninfo} password=wrong"))
        .await
        .expect_err("wrong password");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong:?}");
    let client = connect(&format!("{conninfo} password=sesame channel_binding=disable"))
        .await
        .unwrap();
    assert_eq!(
        client
            .query_one("SELECT 5::bigint", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        5
    );
}

/// The search_path lookup of Grafana's table list.
const SEARCH_PATH: &str = r#"SELECT
    CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
  FROM
    generate_series(
      array_lower(string_to_array(current_setting('search_path'),','),1),
      array_upper(string_to_array(current_setting('search_path'),','),1)
    ) as i,
    string_to_array(current_setting('search_path'),',') s"#;

/// Grafana's PostgreSQL data source sends its SQL with the macros expanded:
/// each expansion runs and returns rows (in both protocols; Grafana's driver
/// uses the extended one). And its query builder's table and column lists.
#[tokio::test]
async fn grafana_macro_expansions_and_catalog_queries_return_rows() {
    let fixture = Fixture::start(&[]).await;
    let client = fixture.connect().await;
    // The query builder's table list (Grafana 10/11's own SQL).
    let tables_query = format!(
        r#"SELECT
            CASE WHEN
                  quote_ident(table_schema) IN (
                  {SEARCH_PATH}
                  )
              THEN quote_ident(table_name)
              ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
            END AS "table"
            FROM information_schema.tables
            WHERE quote_ident(table_schema) NOT IN ('information_schema',
                                     'pg_catalog',
                                     '_timescaledb_cache',
                                     '_timescaledb_catalog',
                                     '_timescaledb_internal',
                                     '_timescaledb_config',
                                     'timescaledb_information',
                                     'timescaledb_experimental')
            ORDER BY CASE WHEN
                  quote_ident(table_schema) IN (
                  {SEARCH_PATH}
                  ) THEN 0 ELSE 1 END, 1"#
    );
    let queries: [&str; 9] = [
        // $__timeFilter(hlc_time)
        "SELECT hlc_time AS \"time\", beat_index FROM beats \
         WHERE hlc_time BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' ORDER BY 1",
        // $__timeGroupAlias(hlc_time, '1m') and the time series' float value
        "SELECT floor(extract(epoch from hlc_time)/60)*60 AS \"time\", count(*)::float8 AS beats FROM beats \
         WHERE hlc_time BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' GROUP BY 1 ORDER BY 1",
        // $__timeGroupAlias over the reports' publication time, with a cast of the value
        "SELECT floor(extract(epoch from published_at)/300)*300 AS \"time\", avg(agents_reporting)::double precision AS agents \
         FROM bar_reports WHERE published_at BETWEEN '1970-01-01T00:00:00Z' AND '2100-01-01T00:00:00Z' GROUP BY 1 ORDER BY 1",
        // $__timeFrom() / $__timeTo()
        "SELECT window_index, window_start FROM bar_reports \
         WHERE published_at >= '1970-01-01T00:00:00Z' AND published_at <= '2100-01-01T00:00:00Z'",
        // $__unixEpochFilter(col) over an epoch column
        "SELECT beat_index FROM (SELECT beat_index, extract(epoch from hlc_time)::bigint AS epoch FROM beats) b \
         WHERE epoch >= 0 AND epoch <= 4102444800",
        // $__time(col), $__timeEpoch(col) and the time series' casts
        "SELECT hlc_time AS \"time\", extract(epoch from hlc_time) AS \"epoch\", beat_index::float8 AS value, \
         hlc_time::timestamptz AS t, CAST(tempo_bpm AS bigint) AS tempo FROM beats ORDER BY 1",
        "SELECT to_timestamp(extract(epoch from hlc_time)) AS \"time\", cluster_id AS metric, beat_index AS value FROM beats ORDER BY 1",
        // The query builder: tables and columns.
        &tables_query,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'bar_reports' ORDER BY column_name",
    ];
    for sql in queries {
        let rows = client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", fixture.server.log_tail()));
        assert!(!rows.is_empty(), "{sql}: no rows");
        let simple = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            simple
                .iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))),
            "{sql}: no rows over the simple protocol"
        );
    }
    let tables: Vec<String> = client
        .query(queries[7], &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // As `public.bar_reports`: the catalog's parser stands the search_path
    // lookup (`current_setting`, which DataFusion lacks) in with none.
    for table in ["bar_reports", "beats", "claims", "rejects"] {
        assert!(
            tables.iter().any(|t| t == table || *t == format!("public.{table}")),
            "{table} not in {tables:?}"
        );
    }
    // The time-group bucket of both beats (1 s and 2 s after the epoch) is 0.
    let row = client.query_one(queries[1], &[]).await.unwrap();
    assert_eq!(row.get::<_, f64>(0), 0.0);
    assert_eq!(row.get::<_, f64>(1), 2.0);
}
