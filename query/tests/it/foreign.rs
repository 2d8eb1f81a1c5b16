//! Foreign messages: anything on a bar subject that is not a valid BarReport
//! of its cluster is left out of `bar_reports` (counted), a later report of a
//! window replaces an earlier one (counted), invalid messages on beat and
//! claim subjects are not rows; the windows API, CSV, Arrow IPC and the CLI.

use std::process::Command;

use async_nats::jetstream;
use async_nats::HeaderMap;
use backbeat_schemas::window::window_id;
use backbeat_tests::NatsServer;

use crate::support::{beat, ensure_streams, publish, query_bin, report, QueryServer};

#[tokio::test]
async fn foreign_messages_are_left_out_and_the_last_report_of_a_window_is_kept() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let server = QueryServer::start(&nats.url(), dir.path(), &["--bar-length", "4"]).await;

    // Events: two beats of window 1 (first and last), garbage and a beat whose
    // phase is not its bar's on the beat subject, a claim and an invalid claim.
    publish(&js, "backbeat.c.beat", beat("c", 4, "3e8:0000:0001")).await;
    publish(&js, "backbeat.c.beat", "not a beat".into()).await;
    publish(&js, "backbeat.c.beat", beat("c", 7, "7d0:0000:0001")).await;
    publish(
        &js,
        "backbeat.c.beat",
        beat("c", 8, "bb8:0000:0001").replace("\"plan\"", "\"review\""),
    )
    .await;
    let claim = r#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":5,"state":"idle","beats_left":0,"progress":0,"hlc":"3e9:0000:0002"}"#;
    publish(&js, "backbeat.c.claim", claim.into()).await;
    let events_last = publish(&js, "backbeat.c.claim", r#"{"type":"backbeat.statusclaim.v1"}"#.into()).await;

    // Bars: garbage, a report of another cluster, a valid report, then a
    // second report of the same window (the last stored is kept), and a report of window 2.
    publish(&js, "backbeat.c.bar", "garbage".into()).await;
    publish(&js, "backbeat.c.bar", report("d", 1, 9)).await;
    publish(&js, "backbeat.c.bar", report("c", 1, 1)).await;
    publish(&js, "backbeat.c.bar", report("c", 1, 2)).await;
    let bars_last = publish(&js, "backbeat.c.bar", report("c", 2, 3)).await;

    // A dead letter, as the gateway writes one.
    let mut headers = HeaderMap::new();
    headers.insert("Backbeat-Reason", "invalid_json");
    headers.insert("Backbeat-Source", "http");
    let rejects_last = js
        .publish_with_headers("backbeat.c.reject", headers, "{oops".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    server.wait_read("BACKBEAT_EVENTS", events_last).await;
    server.wait_read("BACKBEAT_BARS", bars_last).await;
    server.wait_read("BACKBEAT_REJECTS", rejects_last).await;

    let rows = server
        .rows("SELECT window_index, agents_reporting, window_start, window_end, issues FROM bar_reports ORDER BY window_index")
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][0], 1);
    assert_eq!(rows[0][1], 2, "the last stored report of window 1 is kept");
    // 0x3e8 = 1000 ms and 0x7d0 = 2000 ms after the epoch: the window's first and last beats.
    assert!(
        rows[0][2].as_str().unwrap().starts_with("1970-01-01T00:00:01"),
        "{rows:?}"
    );
    assert!(
        rows[0][3].as_str().unwrap().starts_with("1970-01-01T00:00:02"),
        "{rows:?}"
    );
    assert_eq!(
        rows[0][4],
        serde_json::json!([{"code": "missing_beats", "count": 2, "sample": ["1", "2"]}])
    );
    assert_eq!(rows[1][2], serde_json::Value::Null, "no beat of window 2 was seen");
    assert_eq!(
        server
            .metric("backbeat_query_foreign_bars_total{reason=\"invalid\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        server
            .metric("backbeat_query_foreign_bars_total{reason=\"superseded\"}")
            .await,
        Some(1.0)
    );

    assert_eq!(server.count("beats").await, 2);
    assert_eq!(server.count("claims").await, 1);
    assert_eq!(
        server
            .metric("backbeat_query_foreign_events_total{kind=\"beat\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        server
            .metric("backbeat_query_foreign_events_total{kind=\"claim\"}")
            .await,
        Some(1.0)
    );
    let rejects = server
        .rows("SELECT cluster_id, reason, source, payload FROM rejects")
        .await;
    assert_eq!(
        rejects,
        vec![vec![
            serde_json::json!("c"),
            "invalid_json".into(),
            "http".into(),
            "{oops".into()
        ]]
    );
    let claims = server.rows("SELECT agent_id, window_index, hlc_time FROM claims").await;
    assert_eq!(claims[0][0], "a");
    assert_eq!(claims[0][1], 1);

    // The windows API answers the reports' documents.
    let windows = server.get("/api/v1/windows?cluster=c&from=1&to=1").await.unwrap();
    assert_eq!(windows.status, 200);
    assert_eq!(windows.text(), format!("[{}]", report("c", 1, 2)));
    let all = server.get("/api/v1/windows").await.unwrap().json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let one = server
        .get(&format!("/api/v1/windows/{}", window_id("c", 4, 2)))
        .await
        .unwrap();
    assert_eq!((one.status, one.text()), (200, report("c", 2, 3)));
    assert_eq!(server.get("/api/v1/windows/nope").await.unwrap().status, 404);
    let bad = server.get("/api/v1/windows?cluster=x'%20OR%20'1").await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("not a cluster id"), "{}", bad.text());

    // CSV and Arrow IPC.
    let csv = server
        .sql_as(
            "SELECT window_index, agents_reporting FROM bar_reports ORDER BY 1",
            "text/csv",
        )
        .await;
    assert_eq!((csv.status, csv.content_type.as_str()), (200, "text/csv"));
    assert_eq!(csv.text(), "window_index,agents_reporting\n1,2\n2,3\n");
    let arrow = server
        .sql_as("SELECT * FROM bar_reports", "application/vnd.apache.arrow.stream")
        .await;
    assert_eq!(arrow.status, 200);
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow.body), None).unwrap();
    assert_eq!(reader.schema().field(0).name(), "window_id");
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 2);

    // The CLI prints an aligned table, JSON or CSV.
    let cli = |format: &str| {
        let output = Command::new(query_bin())
            .args([
                "sql",
                "SELECT window_index, agents_reporting FROM bar_reports ORDER BY 1",
            ])
            .args(["--url", &server.url(), "--format", format])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let table = cli("table");
    assert!(table.contains("| window_index | agents_reporting |"), "{table}");
    assert!(table.contains("| 2            | 3                |"), "{table}");
    assert!(cli("json").contains(r#""rows":[[1,2],[2,3]]"#));
    assert_eq!(cli("csv"), "window_index,agents_reporting\n1,2\n2,3\n");
    let refused = Command::new(query_bin())
        .args(["sql", "DROP TABLE claims", "--url", &server.url()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("42501"));
}
