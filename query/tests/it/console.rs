//! The built-in console: its files as served (types, the security policy,
//! revalidation, no token needed to load it), `/api/v1/clusters` with a pulse
//! node that answers and one that does not, and the page itself in headless
//! Chromium (`query/tests/console/console.mjs` through playwright-core)
//! against a cluster whose windows keep coming, on a server with a token: it
//! loads with no console error and no failed request (but the calls made
//! before the token was typed into it), shows the leader, the charts and the windows,
//! shows a newer window without a reload, and runs a query typed into the SQL
//! box; the screenshot is kept beside the target directory's `debug/`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use axum::routing::get;
use backbeat_schemas::window::window_id;
use backbeat_tests::{free_port, workspace_root, NatsServer};

use crate::support::{ensure_streams, query_bin, QueryServer};

const BAR_LENGTH: u64 = 4;
/// The query service's bearer token, typed into the page as a person would.
const TOKEN: &str = "console-test-token";
/// The pulse node the fake status names as the leader.
const LEADER_NODE_ID: u64 = 2;
/// How long the browser's run may take in all (it waits at most 45 s for each step).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// A BarReport of window `w` (bar length 4) whose measures vary with `w`.
fn report(cluster: &str, w: u64) -> String {
    let id = window_id(cluster, BAR_LENGTH, w);
    let (from, to) = (w * BAR_LENGTH, w * BAR_LENGTH + BAR_LENGTH - 1);
    let agents = 20 + (w * 7) % 11;
    let (on_time, drift, late, rejected) = (w % 9, (w % 5) as i64 - 2, w % 3, (w / 2) % 4);
    format!(
        r#"{{"type":"backbeat.barreport.v1","window_id":"{id}","from_beat":{from},"to_beat":{to},"agents_reporting":{agents},"on_time_reviews":{on_time},"help_promises_fulfilled":1,"secret_rotations_ok":true,"tempo_drift_ms":{drift},"issues":[],"cluster_id":"{cluster}","window_index":{w},"bar_length":4,"beats_observed":4,"claims_accepted":{agents},"claims_late":{late},"claims_rejected":{rejected},"tempo_bpm":60,"seq_first":1,"seq_last":3}}"#
    )
}

/// A beat frame of `index` (bar length 4), stamped now.
fn beat(cluster: &str, index: u64) -> String {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    let phase = match index % BAR_LENGTH {
        0 => "plan",
        3 => "review",
        _ => "execution",
    };
    format!(
        r#"{{"type":"backbeat.beatframe.v1","cluster_id":"{cluster}","beat_index":{index},"downbeat":{},"phase":"{phase}","hlc":"{now_ms:x}:0000:0001","deadline_at":"2026-01-01T00:00:01Z","tempo_bpm":60,"window_id":"{}"}}"#,
        index.is_multiple_of(BAR_LENGTH),
        window_id(cluster, BAR_LENGTH, index / BAR_LENGTH)
    )
}

/// Publishes window `w` of `cluster`: its four beats, then its report. The bar stream's sequence.
async fn publish_window(js: &jetstream::Context, cluster: &str, w: u64) -> u64 {
    for index in w * BAR_LENGTH..(w + 1) * BAR_LENGTH {
        js.publish(format!("backbeat.{cluster}.beat"), beat(cluster, index).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish(format!("backbeat.{cluster}.bar"), report(cluster, w).into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A stand-in pulse node: `/api/v1/status` says it leads `cluster`. Its base URL.
async fn fake_pulse_leader(cluster: &'static str) -> String {
    let status = serde_json::json!({
        "node_id": LEADER_NODE_ID, "leader_id": LEADER_NODE_ID, "term": 7, "role": "leader",
        "cluster_id": cluster, "bar_length": BAR_LENGTH, "tempo_bpm": 60, "last_beat": 12,
        "emitting": true, "degraded": false, "degraded_reason": null,
    });
    let router = axum::Router::new().route("/api/v1/status", get(move || async move { axum::Json(status) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

/// What the browser test needs, or a panic saying how to install it (never a skip).
fn browser_tools() -> (PathBuf, PathBuf) {
    let install = "install it with `bash deploy/install-chromium.sh` (deploy/test.sh does)";
    let chromium = PathBuf::from(std::env::var("BACKBEAT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "chromium is missing at {}: {install}",
        chromium.display()
    );
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(node_ok, "node (Node.js >= 20) is not on PATH: install Debian's nodejs");
    let node_dir = std::env::var("BACKBEAT_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/backbeat-node"));
    assert!(
        node_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing in {}: {install}",
        node_dir.display()
    );
    (chromium, node_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_live_cluster_and_runs_sql_in_chromium() {
    let (chromium, node_dir) = browser_tools();
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let leader = fake_pulse_leader("c").await;
    // A node nobody answers for: listed with its error, never failing the page.
    let silent = format!("http://127.0.0.1:{}", free_port());
    let pulse_urls = format!("{leader},{silent}");
    let server = QueryServer::start(
        &nats.url(),
        dir.path(),
        &["--bar-length", "4", "--pulse-urls", &pulse_urls, "--token", TOKEN],
    )
    .await;

    let mut last = 0;
    for w in 0..6 {
        last = publish_window(&js, "c", w).await;
    }
    server.wait_read("BACKBEAT_BARS", last).await;

    // What the page's cluster list reads.
    let clusters = server.get("/api/v1/clusters").await.expect("an answer").json();
    let cluster = &clusters["clusters"][0];
    assert_eq!(cluster["cluster_id"], "c", "{clusters}");
    assert_eq!(cluster["current_beat"], 23, "{clusters}");
    assert_eq!(cluster["tempo_bpm"], 60, "{clusters}");
    assert_eq!(cluster["last_window"]["window_index"], 5, "{clusters}");
    assert_eq!(cluster["windows_held"], 6, "{clusters}");
    assert_eq!(cluster["leader"]["node_id"], LEADER_NODE_ID, "{clusters}");
    assert_eq!(cluster["leader"]["term"], 7, "{clusters}");
    let nodes = clusters["pulse_nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{clusters}");
    assert_eq!(nodes[0]["role"], "leader");
    assert!(nodes[1]["error"].as_str().is_some_and(|e| !e.is_empty()), "{clusters}");

    // The stack goes on: a new window every 400 ms while the browser looks (bounded).
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for w in 6..600 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                publish_window(&js, "c", w).await;
            }
        })
    };

    let screenshot = dir.path().join("console.png");
    let script = workspace_root().join("query/tests/console/console.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .args(["--url", &format!("{}/", server.url()), "--cluster", "c"])
        .args(["--expect-leader", &LEADER_NODE_ID.to_string(), "--token", TOKEN])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--user-data-dir")
        .arg(dir.path().join("chromium-profile"))
        .env("BACKBEAT_CHROMIUM", &chromium)
        .env("BACKBEAT_NODE_DIR", &node_dir)
        .kill_on_drop(true);
    let output = match tokio::time::timeout(BROWSER_TIMEOUT, command.output()).await {
        Ok(output) => output.expect("running node"),
        Err(_) => panic!(
            "the browser test took longer than {BROWSER_TIMEOUT:?}\n{}",
            server.log_tail()
        ),
    };
    publisher.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("--- console.mjs ---\n{stdout}\n{stderr}\n{}", server.log_tail());
    assert!(output.status.success(), "the browser test failed\n{report}");
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line\n{report}"));

    assert_eq!(result["charts"], 4, "{report}");
    assert!(
        result["clusterCells"][1]
            .as_str()
            .is_some_and(|leader| leader.starts_with(&format!("node {LEADER_NODE_ID}"))),
        "{report}"
    );
    assert!(
        result["newerWindow"].as_u64() > result["firstWindow"].as_u64(),
        "{report}"
    );
    // The SQL box shows what the server answers to the same query.
    let expected: Vec<Vec<String>> = server
        .rows("SELECT window_index, agents_reporting FROM bar_reports WHERE cluster_id = 'c' ORDER BY window_index LIMIT 3")
        .await
        .iter()
        .map(|row| row.iter().map(|v| v.to_string()).collect())
        .collect();
    assert_eq!(result["sqlRows"], serde_json::json!(expected), "{report}");
    assert_eq!(
        result["header"],
        serde_json::json!(["window_index", "agents_reporting"])
    );
    assert!(
        result["sqlError"].as_str().is_some_and(|e| e.contains("DROP")),
        "the refusal names the statement\n{report}"
    );

    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot");
    // One copy where a person can look at it: beside the build's `debug/`.
    let kept = query_bin()
        .parent()
        .and_then(|debug| debug.parent())
        .expect("the binary is in a target directory")
        .join("console-screenshot.png");
    std::fs::write(&kept, &png).expect("keeping the screenshot");
    println!("{stdout}screenshot kept at {}", kept.display());
}

#[tokio::test]
async fn the_console_is_served_with_its_types_and_a_strict_policy_and_needs_no_token() {
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream::new(nats.client().await.unwrap());
    ensure_streams(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let server = QueryServer::start(&nats.url(), dir.path(), &["--token", "s3cret"]).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.url()));

    // The page and its files, without the token.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/vendor/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("/console/vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let response = get(path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache", "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            policy.contains("default-src 'none'") && policy.contains("script-src 'self';"),
            "{path}: {policy}"
        );
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        // Asked again with its tag: not modified, no body.
        let again = get(path)
            .header("if-none-match", headers["etag"].clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let page = get("/").send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<script type="module" src="/console/console.js"></script>"#));
    let license = get("/console/vendor/uPlot.LICENSE")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(license.contains("MIT License"), "{license}");
    let missing = get("/console/%2e%2e/Cargo.toml").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(get("/console/nothing.js").send().await.unwrap().status(), 404);

    // Its API call needs the token; with it, clusters (none yet) and no pulse nodes.
    let refused = get("/api/v1/clusters").send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer: serde_json::Value = get("/api/v1/clusters")
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!({"clusters": [], "pulse_nodes": []}));
}
