//! The Grafana dashboards of `deploy/grafana/`, checked as Grafana would use
//! them (Grafana itself does not install here): every PromQL expression is
//! evaluated by a real Prometheus scraping a running stack and must return
//! series; every SQL panel and variable query, with Grafana's macros expanded
//! as Grafana expands them, must run against the query service and return
//! rows; the dashboard JSON survives the Grafana foundation SDK's model; and
//! every service's `/metrics` passes `promtool check metrics`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backbeat_tests::{free_port, http_get, wait_until_async, workspace_root, ChildGuard};
use serde_json::Value;

use crate::stack::{spawn, wait_ready, Stack, BAR, CLUSTER, TIMEOUT};

fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir = workspace_root().join("deploy/grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            found.push((name, serde_json::from_str(&std::fs::read_to_string(&path)?)?));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    anyhow::ensure!(
        found.len() >= 2,
        "expected the operations and bars dashboards in {}",
        dir.display()
    );
    Ok(found)
}

/// Every (panel title, target) of a dashboard whose data source has `uid`.
fn targets<'a>(dashboard: &'a Value, uid: &str) -> Vec<(String, &'a Value)> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let source = if target["datasource"].is_object() {
                &target["datasource"]
            } else {
                &panel["datasource"]
            };
            if source["uid"] == uid {
                found.push((title.clone(), target));
            }
        }
    }
    found
}

/// What a program needs, or a clear failure naming the script that installs it.
fn require(program: &str, installer: &str) -> anyhow::Result<()> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    anyhow::ensure!(
        found,
        "`{program}` is not on PATH: run `bash {installer}` (deploy/test.sh does)"
    );
    Ok(())
}

/// `%XX` for everything but unreserved characters (RFC 3986), for a query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A Prometheus on a free port, scraping `targets` (job name, address, path) every second.
struct Prometheus {
    _child: ChildGuard,
    port: u16,
}

impl Prometheus {
    async fn start(dir: &Path, targets: &[(&str, String, &str)]) -> anyhow::Result<Prometheus> {
        require("prometheus", "deploy/install-prometheus.sh")?;
        let mut config = String::from("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n");
        for (job, address, path) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs: [{{targets: [\"{address}\"]}}]\n"
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = ChildGuard::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        wait_until_async("prometheus /-/ready", TIMEOUT, || async move {
            http_get(port, "/-/ready").and_then(|(status, _)| (status == 200).then_some(()))
        })
        .await?;
        Ok(Prometheus { _child: child, port })
    }

    /// The series an instant query returns now (an error answer is an error).
    fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(self.port, &path).ok_or_else(|| anyhow::anyhow!("prometheus does not answer"))?;
        let answer: Value = serde_json::from_str(&body)?;
        anyhow::ensure!(
            status == 200 && answer["status"] == "success",
            "`{expr}`: {status} {body}"
        );
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// The stack of the end-to-end tests plus the query service, as `deploy/up.sh`
/// runs it, and a PostgreSQL connection to it: Grafana's SQL panels reach the
/// query service over pg-wire, so the test does too.
struct Full {
    stack: Stack,
    _query: ChildGuard,
    query_port: u16,
    pg: tokio_postgres::Client,
}

impl Full {
    async fn start() -> anyhow::Result<Full> {
        let stack = Stack::start().await?;
        let query_port = free_port();
        let pg_port = free_port();
        let data_dir = stack.logs().join("query-data");
        let query = spawn(
            "backbeat-query",
            &stack.logs(),
            &[
                "serve",
                "--nats",
                &stack.server.url(),
                "--listen",
                &format!("127.0.0.1:{query_port}"),
                "--pg-listen",
                &format!("127.0.0.1:{pg_port}"),
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--bar-length",
                BAR,
                "--nats-monitor-url",
                &stack.server.monitor_url(),
            ],
        )?;
        wait_ready("backbeat-query", query_port).await?;
        let (pg, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={pg_port} user=backbeat dbname=backbeat"),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(Full {
            stack,
            _query: query,
            query_port,
            pg,
        })
    }

    /// One statement over pg-wire, as Grafana sends it (the simple query
    /// protocol): the rows as text, or the server's error.
    async fn sql(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let messages = self
            .pg
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}\n{sql}", e.as_db_error().map_or(e.to_string(), |d| d.to_string())))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }
}

/// A plain `POST` of a JSON body: `(status, body)`.
fn post(port: u16, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok((status, body.to_string()))
}

/// Grafana's time range for the expansion: the last hour up to now.
struct Range {
    from: SystemTime,
    to: SystemTime,
}

impl Range {
    fn last_hour() -> Range {
        let to = SystemTime::now() + Duration::from_secs(60);
        Range {
            from: to - Duration::from_secs(3600),
            to,
        }
    }
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// RFC 3339 in UTC with seconds, as Grafana's PostgreSQL macros write it
/// (`time.Format(time.RFC3339)` on a UTC time: `2026-01-02T03:04:05Z`).
fn rfc3339(t: SystemTime) -> String {
    let millis = backbeat_schemas::timestamp::format_utc_ms(epoch(t) as i64 * 1000);
    millis.replace(".000Z", "Z")
}

/// The argument list of a macro call starting at `text[open]` == '(' and the index after ')'.
fn macro_args(text: &str, open: usize) -> (Vec<String>, usize) {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let inner = &text[open + 1..open + i];
                    let args = if inner.trim().is_empty() {
                        Vec::new()
                    } else {
                        inner.split(',').map(|a| a.trim().to_string()).collect()
                    };
                    return (args, open + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced macro call in {text}");
}

/// Seconds of a Grafana interval (`'1m'`, `5s`, `1h`).
fn interval_seconds(text: &str) -> u64 {
    let text = text.trim_matches('\'');
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().expect("an interval's number");
    n * match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => panic!("interval unit {other}"),
    }
}

/// The SQL Grafana's PostgreSQL data source sends for `raw`: macros expanded
/// as its `macros.go` expands them, template variables substituted.
fn expand(raw: &str, range: &Range, variables: &[(&str, &str)]) -> String {
    let mut sql = raw.to_string();
    for (name, value) in variables {
        sql = sql
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    let (from, to) = (rfc3339(range.from), rfc3339(range.to));
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(start) = rest.find("$__") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let name_len = after.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(after.len());
        let name = &after[..name_len];
        let open = start + 3 + name_len;
        let (args, end) = if rest[open..].starts_with('(') {
            macro_args(rest, open)
        } else {
            (Vec::new(), open)
        };
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        let expansion = match name {
            "time" => format!("{} AS \"time\"", arg(0)),
            "timeEpoch" => format!("extract(epoch from {}) AS \"time\"", arg(0)),
            "timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", arg(0)),
            "timeFrom" => format!("'{from}'"),
            "timeTo" => format!("'{to}'"),
            "timeGroup" => {
                let s = interval_seconds(&arg(1));
                format!("floor(extract(epoch from {})/{s})*{s}", arg(0))
            }
            "timeGroupAlias" => {
                let s = interval_seconds(&arg(1));
                format!("floor(extract(epoch from {})/{s})*{s} AS \"time\"", arg(0))
            }
            "unixEpochFilter" => {
                format!(
                    "{} >= {} AND {} <= {}",
                    arg(0),
                    epoch(range.from),
                    arg(0),
                    epoch(range.to)
                )
            }
            "unixEpochFrom" => epoch(range.from).to_string(),
            "unixEpochTo" => epoch(range.to).to_string(),
            other => panic!("macro $__{other} is not one Grafana's PostgreSQL data source has"),
        };
        out.push_str(&expansion);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn grafana_macros_expand_as_grafana_expands_them() {
    let range = Range {
        from: UNIX_EPOCH + Duration::from_secs(1_500_376_552),
        to: UNIX_EPOCH + Duration::from_secs(1_500_376_552 + 3600),
    };
    let expand = |sql: &str| expand(sql, &range, &[("cluster", "eu-1")]);
    // The expansions of Grafana's own macro tests (pkg/tsdb/grafana-postgresql-datasource/macros_test.go).
    assert_eq!(
        expand("$__timeFilter(time_column)"),
        "time_column BETWEEN '2017-07-18T11:15:52Z' AND '2017-07-18T12:15:52Z'"
    );
    assert_eq!(
        expand("$__timeGroup(time_column,'5m')"),
        "floor(extract(epoch from time_column)/300)*300"
    );
    assert_eq!(
        expand("$__timeGroupAlias(time_column, '1m')"),
        "floor(extract(epoch from time_column)/60)*60 AS \"time\""
    );
    assert_eq!(expand("$__unixEpochFilter(t)"), "t >= 1500376552 AND t <= 1500380152");
    assert_eq!(
        expand("$__timeFrom() < $__timeTo()"),
        "'2017-07-18T11:15:52Z' < '2017-07-18T12:15:52Z'"
    );
    assert_eq!(
        expand("WHERE c = '$cluster' OR c = '${cluster}'"),
        "WHERE c = 'eu-1' OR c = 'eu-1'"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
}

#[test]
fn the_dashboards_pass_the_grafana_sdk_model() -> anyhow::Result<()> {
    let script = workspace_root().join("deploy/grafana/check_dashboards.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(workspace_root().join("deploy/grafana"))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed (deploy/install-grafana-sdk.sh installs what it needs):\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_running_stack() -> anyhow::Result<()> {
    require("promtool", "deploy/install-prometheus.sh")?;
    let full = Full::start().await?;
    let logs: PathBuf = full.stack.logs();
    let query = format!("127.0.0.1:{}", full.query_port);
    let prometheus = Prometheus::start(
        &logs,
        &[
            ("pulse", format!("127.0.0.1:{}", full.stack.pulse_port), "/metrics"),
            ("ingest", format!("127.0.0.1:{}", full.stack.ingest_port), "/metrics"),
            (
                "processor",
                format!("127.0.0.1:{}", full.stack.processor_port),
                "/metrics",
            ),
            ("query", query.clone(), "/metrics"),
            ("nats", query.clone(), "/metrics/nats"),
        ],
    )
    .await?;

    // Traffic every panel charts: claims from a simulated fleet, one claim the
    // gateway refuses, and SQL queries.
    let mut sim = spawn(
        "backbeat-agent-sim",
        &logs,
        &[
            "--nats",
            &full.stack.server.url(),
            "--cluster",
            CLUSTER,
            "--bar-length",
            BAR,
            "--agents",
            "20",
            "--rate",
            "200",
            "--claims",
            "600",
            "--seed",
            "3",
        ],
    )?;
    let (status, _) = post(
        full.stack.ingest_port,
        &format!("/api/v1/clusters/{CLUSTER}/claims"),
        "{\"type\":\"nonsense\"}",
    )?;
    assert_eq!(status, 400, "the gateway refuses a claim that is not one");
    assert!(sim.wait_exit(TIMEOUT)?.success(), "the agent simulator failed");
    wait_until_async("three windows with agents in bar_reports", TIMEOUT, || async {
        let rows = full
            .sql("SELECT count(*) FROM bar_reports WHERE agents_reporting > 0")
            .await
            .ok()?;
        (rows.first()?[0].as_deref()?.parse::<i64>().ok()? >= 3).then_some(())
    })
    .await?;

    // Every service's /metrics is valid exposition format.
    for (name, port, path) in [
        ("pulse", full.stack.pulse_port, "/metrics"),
        ("ingest", full.stack.ingest_port, "/metrics"),
        ("processor", full.stack.processor_port, "/metrics"),
        ("query", full.query_port, "/metrics"),
        ("nats", full.query_port, "/metrics/nats"),
    ] {
        let (status, text) = http_get(port, path).ok_or_else(|| anyhow::anyhow!("{name} {path} does not answer"))?;
        assert_eq!(status, 200, "{name} {path}");
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(check.stdin.as_mut().expect("piped"), text.as_bytes())?;
        let output = check.wait_with_output()?;
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics on {name} {path}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let range = Range::last_hour();
    let variables = [("cluster", CLUSTER)];
    for (file, dashboard) in dashboards()? {
        // Template variables first: each must offer values (the cluster among them).
        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            if variable["datasource"]["uid"] == "backbeat-sql" {
                let sql = expand(variable["query"].as_str().unwrap_or_default(), &range, &variables);
                let rows = full.sql(&sql).await?;
                assert!(
                    rows.iter().any(|row| row[0].as_deref() == Some(CLUSTER)),
                    "{file}: variable {} offers {rows:?}, not the cluster {CLUSTER}",
                    variable["name"]
                );
            }
        }
        for (title, target) in targets(&dashboard, "backbeat-sql") {
            let sql = expand(target["rawSql"].as_str().unwrap_or_default(), &range, &variables);
            let rows = full
                .sql(&sql)
                .await
                .map_err(|e| anyhow::anyhow!("{file}: panel '{title}': {e}"))?;
            assert!(!rows.is_empty(), "{file}: panel '{title}' returns no rows:\n{sql}");
            if target["format"] == "time_series" {
                assert!(rows[0][0].is_some(), "{file}: panel '{title}': the time column is null");
            }
        }
        for (title, target) in targets(&dashboard, "backbeat-prometheus") {
            let expr = target["expr"].as_str().unwrap_or_default().to_string();
            let prometheus = &prometheus;
            wait_until_async(
                &format!("{file}: panel '{title}': `{expr}` to return series"),
                TIMEOUT,
                || {
                    let expr = expr.clone();
                    async move { prometheus.query(&expr).ok().filter(|series| !series.is_empty()) }
                },
            )
            .await?;
        }
    }
    Ok(())
}
