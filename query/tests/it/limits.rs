//! Read-only and bounded: every refusal and every limit is a 4xx naming the
//! rule or the limit, within the time limit, and the server answers the next query.

use std::sync::Arc;

use async_nats::jetstream;
use backbeat_tests::{wait_until_async, NatsServer};

use crate::support::{ensure_streams, QueryServer, FORBIDDEN, LIMITS, TIMEOUT};

const JSON: &str = "application/json";

/// Asserts `sql` is answered `status` with `sqlstate`, and a message naming `named`.
async fn assert_refused(server: &QueryServer, sql: &str, status: u16, sqlstate: &str, named: &str) {
    let answer = server.sql_as(sql, JSON).await;
    let text = answer.text();
    let shown = &text[..text.len().min(400)];
    assert_eq!(answer.status, status, "{sql}: {shown}");
    let body = answer.json();
    assert_eq!(body["error"]["sqlstate"], sqlstate, "{sql}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(named), "{sql}: {message:?} does not name {named:?}");
    // And the server goes on answering.
    assert_eq!(server.rows("SELECT 1 AS one").await, vec![vec![serde_json::json!(1)]]);
}

#[tokio::test]
async fn forbidden_statements_and_every_limit_are_4xx_and_the_server_goes_on() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let server = QueryServer::start(&nats.url(), dir.path(), &[&LIMITS[..], &["--token", "sesame"]].concat()).await;

    let forbidden = FORBIDDEN;
    for (sql, named) in forbidden {
        assert_refused(&server, sql, 403, "42501", named).await;
    }
    // Nothing names a file or a URL: no such table or table function exists.
    assert_refused(&server, "SELECT * FROM '/etc/passwd'", 400, "42P01", "not found").await;
    assert_refused(
        &server,
        "SELECT * FROM read_csv('/etc/passwd')",
        400,
        "42883",
        "read_csv",
    )
    .await;
    assert_refused(
        &server,
        "SELECT * FROM 'http://127.0.0.1:1/x.parquet'",
        400,
        "42P01",
        "not found",
    )
    .await;
    // Errors of the query, classed as PostgreSQL does.
    assert_refused(&server, "SELEC 1", 400, "42601", "SELEC").await;
    assert_refused(&server, "SELECT 1; SELECT 2", 400, "42601", "one statement per query").await;
    assert_refused(&server, "SELECT * FROM nowhere", 400, "42P01", "nowhere").await;
    assert_refused(
        &server,
        "SELECT no_such_column FROM claims",
        400,
        "42703",
        "no_such_column",
    )
    .await;
    assert_refused(&server, "SELECT no_such_function(1)", 400, "42883", "no_such_function").await;

    // The limits, each named.
    assert_refused(
        &server,
        "SELECT * FROM generate_series(1, 10)",
        422,
        "54000",
        "--max-result-rows",
    )
    .await;
    assert_refused(
        &server,
        "SELECT repeat('x', 400000) FROM generate_series(1, 4)",
        422,
        "54000",
        "--max-result-bytes",
    )
    .await;
    assert_refused(
        &server,
        "SELECT count(DISTINCT value) FROM generate_series(1, 3000000)",
        422,
        "53200",
        "--query-memory-bytes",
    )
    .await;

    // The time limit and the concurrency cap: a query that would run for
    // ever holds the only slot; another is refused at once; the first is
    // cancelled at the time limit.
    let server = Arc::new(server);
    let slow = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .sql_as("SELECT count(*) FROM generate_series(1, 1000000000000)", JSON)
                .await
        })
    };
    wait_until_async("the slow query to be running", TIMEOUT, || async {
        (server.metric("backbeat_query_queries_running").await? >= 1.0).then_some(())
    })
    .await
    .unwrap();
    let busy = server.sql_as("SELECT 1", JSON).await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.json()["error"]["sqlstate"], "53300");
    assert!(busy.text().contains("--max-concurrent-queries"), "{}", busy.text());
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 408, "{}", slow.text());
    assert_eq!(slow.json()["error"]["sqlstate"], "57014");
    assert!(slow.text().contains("--query-timeout-ms"), "{}", slow.text());
    assert_eq!(server.rows("SELECT 2 AS two").await, vec![vec![serde_json::json!(2)]]);

    // The token: none or a wrong one is 401; the common routes need none.
    for token in [None, Some("wrong")] {
        let answer = server.sql_with("SELECT 1", JSON, token).await;
        assert_eq!(answer.status, 401, "{}", answer.text());
        assert_eq!(answer.json()["error"]["sqlstate"], "28P01");
    }
    assert_eq!(
        reqwest::get(format!("{}/health", server.url())).await.unwrap().status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/api/v1/windows", server.url()))
            .await
            .unwrap()
            .status(),
        401
    );

    // Every outcome counted.
    assert!(
        server
            .metric("backbeat_query_queries_total{outcome=\"forbidden\"}")
            .await
            >= Some(11.0)
    );
    assert!(server.metric("backbeat_query_queries_total{outcome=\"timeout\"}").await >= Some(1.0));
    assert!(
        server
            .metric("backbeat_query_queries_total{outcome=\"memory_limit\"}")
            .await
            >= Some(1.0)
    );
    assert!(server.metric("backbeat_query_queries_total{outcome=\"ok\"}").await >= Some(20.0));
    assert!(server.metric("backbeat_query_duration_seconds_count").await >= Some(30.0));
}
