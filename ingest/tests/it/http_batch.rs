//! NDJSON batches over HTTP: per-line results in line order (blank lines
//! counted, not answered), status codes, the body and line limits, and a batch
//! larger than the gateway's ack limit.

use backbeat_ingest::gateway::{BatchReply, GatewayConfig, Reply, NDJSON_CONTENT_TYPE};
use reqwest::StatusCode;

use crate::support::{claim, claims_stored, dead_letters, metric, metrics_text, start_server, Running};

async fn post_batch(http: &reqwest::Client, url: &str, body: String) -> (StatusCode, bytes::Bytes) {
    let response = http
        .post(url)
        .header("content-type", NDJSON_CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .expect("HTTP answer");
    (response.status(), response.bytes().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_line_by_line_within_their_limits() {
    let server = start_server();
    let gateway = Running::start(
        &server.url(),
        GatewayConfig {
            acks_in_flight_max: 8,
            batch_lines_max: 300,
            batch_bytes_max: 64 * 1024,
            dead_letter_bytes_max: 8192,
            ..GatewayConfig::default()
        },
    )
    .await;
    let client = crate::support::client(&server).await;
    let http = reqwest::Client::new();
    let url = gateway.claims_url("delta");

    // Mixed: good, blank, bad progress, good with CRLF, not JSON.
    let good_1 = claim("a1", Some("t:1"), 5, 0x100);
    let good_2 = claim("a2", None, 5, 0x101);
    let bad = good_1.replace("0.5", "2");
    let body = format!("{good_1}\n\n{bad}\n{good_2}\r\nnot json\n");
    let (status, answer) = post_batch(&http, &url, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&answer));
    let batch: BatchReply = serde_json::from_slice(&answer).unwrap();
    let lines: Vec<(u64, bool, Option<String>)> = batch
        .results
        .iter()
        .map(|r| (r.line, r.reply.ok, r.reply.error.as_ref().map(|e| e.reason.clone())))
        .collect();
    assert_eq!(
        lines,
        vec![
            (1, true, None),
            (3, false, Some("invalid_field:progress".into())),
            (4, true, None),
            (5, false, Some("invalid_json".into())),
        ]
    );
    assert_eq!((batch.accepted, batch.rejected, batch.unavailable), (2, 2, 0));
    let seqs: Vec<u64> = batch.results.iter().filter_map(|r| r.reply.seq).collect();
    let stored = claims_stored(&client, "delta").await;
    assert_eq!(stored.iter().map(|s| s.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(
        stored[1].payload.as_ref(),
        good_2.as_bytes(),
        "the CR is not part of the claim"
    );
    // One dead letter for the batch: its refused lines as sent, with their
    // line numbers and reasons.
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), 1, "one dead letter per bad batch");
    let letter = &letters[0];
    assert_eq!(letter.payload.as_ref(), format!("{bad}\nnot json").as_bytes());
    assert_eq!(
        letter.header("Backbeat-Lines").as_deref(),
        Some("3=invalid_field:progress 5=invalid_json")
    );
    assert_eq!(letter.header("Backbeat-Lines-Refused").as_deref(), Some("2"));
    assert_eq!(
        letter.header("Backbeat-Reason").as_deref(),
        Some("invalid_field:progress")
    );
    assert_eq!(letter.header("Backbeat-Source").as_deref(), Some("http"));
    assert_eq!(
        letter.header("Backbeat-Subject").as_deref(),
        Some("/api/v1/clusters/delta/claims")
    );
    assert_eq!(letter.header("Backbeat-Truncated"), None);
    assert_eq!(letter.subject, "backbeat.delta.reject");

    // Every line refused: 400, still per line.
    let (status, answer) = post_batch(&http, &url, "{}\n[]\n".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let batch: BatchReply = serde_json::from_slice(&answer).unwrap();
    assert_eq!(batch.rejected, 2);
    assert_eq!(
        dead_letters(&client).await.len(),
        2,
        "the second batch: one more dead letter"
    );

    // No line at all.
    let (status, answer) = post_batch(&http, &url, "\n \n".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let reply: Reply = serde_json::from_slice(&answer).unwrap();
    assert_eq!(reply.error.unwrap().reason, "empty_batch");

    // More lines than allowed: 413, nothing taken.
    let many: String = (0..301).map(|i| claim("many", None, i, 0x200) + "\n").collect();
    let (status, _) = post_batch(&http, &url, many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Far more lines than allowed, within the byte limit: the same answer,
    // given by a splitter that stopped at line 301 (`got more`, not a count).
    let (status, answer) = post_batch(&http, &url, "{}\n".repeat(20_000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply: Reply = serde_json::from_slice(&answer).unwrap();
    let error = reply.error.unwrap();
    assert_eq!(error.reason, "too_large");
    assert_eq!(
        error.message,
        "a batch holds at most 300 lines (--batch-lines-max); got more"
    );
    assert_eq!(
        dead_letters(&client).await.len(),
        2,
        "a batch refused whole is not a dead letter"
    );
    // A body over the byte limit: 413.
    let huge = "x".repeat(64 * 1024 + 1);
    let (status, answer) = post_batch(&http, &url, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply: Reply = serde_json::from_slice(&answer).unwrap();
    assert_eq!(reply.error.unwrap().reason, "too_large");
    // Each request refused whole is counted by its reason.
    let text = metrics_text(&gateway.http_base).await;
    for (reason, count) in [
        ("empty_batch", 1.0),
        ("too_many_lines", 2.0),
        ("body_too_large", 1.0),
        ("invalid_body", 0.0),
    ] {
        let sample = format!("backbeat_ingest_requests_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &sample), Some(count), "{sample}");
    }
    // One oversize line in a batch is refused alone.
    let oversize = good_1.replace(
        "\"progress\":0.5",
        &format!("\"progress\":0.5,\"x\":\"{}\"", "x".repeat(8200)),
    );
    let (status, answer) = post_batch(&http, &url, format!("{oversize}\n{}\n", claim("a3", None, 6, 0x300))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let batch: BatchReply = serde_json::from_slice(&answer).unwrap();
    assert_eq!(batch.results[0].reply.error.as_ref().unwrap().reason, "too_large");
    assert!(batch.results[1].reply.ok);

    // 300 lines through 8 ack slots: the batch's own acks free its slots.
    let big: Vec<String> = (0..300).map(|i| claim(&format!("big-{i}"), None, 7, 0x400)).collect();
    let (status, answer) = post_batch(&http, &url, big.join("\n")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&answer));
    let batch: BatchReply = serde_json::from_slice(&answer).unwrap();
    assert_eq!((batch.accepted, batch.unavailable), (300, 0));
    assert_eq!(claims_stored(&client, "delta").await.len(), 2 + 1 + 300);

    // 300 bad lines of ~200 bytes: still one dead letter, within its size
    // limit, holding the first lines whole and counting them all.
    let letters_before = dead_letters(&client).await.len();
    let bad: Vec<String> = (0..300)
        .map(|i| claim(&format!("bad-{i}"), None, 8, 0x500).replace("0.5", "7"))
        .collect();
    let (status, answer) = post_batch(&http, &url, bad.join("\n")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let batch: BatchReply = serde_json::from_slice(&answer).unwrap();
    assert_eq!(batch.rejected, 300, "every line keeps its own answer");
    assert!(batch
        .results
        .iter()
        .all(|r| r.reply.error.as_ref().unwrap().reason == "invalid_field:progress"));
    let letters = dead_letters(&client).await;
    assert_eq!(letters.len(), letters_before + 1);
    let letter = letters.last().unwrap();
    let listed = letter.header("Backbeat-Lines").unwrap();
    assert!(letter.payload.len() + listed.len() <= 8192);
    let kept: Vec<&[u8]> = letter.payload.split(|&b| b == b'\n').collect();
    assert!(kept.len() > 10 && kept.len() < 300, "{} lines kept", kept.len());
    for (i, line) in kept.iter().enumerate() {
        assert_eq!(*line, bad[i].as_bytes(), "line {} is kept whole", i + 1);
    }
    assert!(listed.starts_with("1=invalid_field:progress 2=invalid_field:progress"));
    assert_eq!(listed.split(' ').count(), kept.len());
    assert_eq!(letter.header("Backbeat-Lines-Refused").as_deref(), Some("300"));
    let full_len: usize = bad.iter().map(|l| l.len() + 1).sum::<usize>() - 1;
    assert_eq!(letter.header("Backbeat-Truncated"), Some(full_len.to_string()));
    gateway.stop().await;
}
