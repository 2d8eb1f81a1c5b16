//! Hostile HTTP clients against every listener of the real binaries (issue 22
//! item 7): the pulse's public and raft listeners, the gateway, the
//! processor and the query service, each started with short limits through
//! its `--http-*` flags. Per listener:
//! - a request announcing a 1 GiB body is answered 413 before the body is sent;
//! - a chunked body without a length is refused once past the limit (the
//!   exchange ends long before 1 GiB is sent);
//! - headers trickled a byte at a time: the connection is closed by the
//!   header timeout;
//! - a body trickled a byte at a time: 408 (or closed) by the request timeout;
//! - idle connections past `--http-connections-max` are refused and counted
//!   (`…_connections_refused_total`), and a fresh `/health` is answered once
//!   the idle ones are cut off;
//! - overload past the in-flight bounds: the gateway answers 503 with
//!   `Retry-After` while JetStream does not ack; every service's peak RSS
//!   (`VmHWM`) stays far below what reading the bodies would take.
//!
//! The test raises its own open-files limit (soft to hard) for the 10,000
//! idle connections it holds at once; the services keep theirs: each holds at
//! most `--http-connections-max` (512 by default) of a listener's connections
//! and closes the rest as it accepts them.

use std::time::{Duration, Instant};

use backbeat_tests::{http_get, FaultRecord, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stack::{metric_sum, ServicesOptions, Stack, StackOptions, CLUSTER, TIMEOUT};

const HEADER_TIMEOUT_MS: u64 = 1000;
const REQUEST_TIMEOUT_MS: u64 = 2000;
const GIB: u64 = 1 << 30;
/// No service may need this much memory for anything these tests send.
const RSS_BOUND_BYTES: u64 = 512 << 20;
/// The most a client sends of a chunked body before it must have been
/// refused: every listener's limit is below 8 MiB, the rest is the sockets' buffers.
const CHUNKED_SEND_MAX: u64 = 64 << 20;

/// One listener under attack.
#[derive(Clone, Debug)]
struct Target {
    /// e.g. "gateway HTTP".
    name: &'static str,
    port: u16,
    pid: u32,
    /// A route that reads a request body (`None`: the service has none, a GET is sent).
    body_route: Option<String>,
    /// Extra request headers (a token), each ending in CRLF.
    headers: String,
    /// The listener's metrics prefix and the port its metrics are served on.
    metrics_prefix: &'static str,
    metrics_port: u16,
}

impl Target {
    fn request_head(&self, framing: &str) -> String {
        let (method, path) = match self.body_route.as_deref() {
            Some(route) => ("POST", route),
            None => ("GET", "/api/v1/status"),
        };
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{}{framing}\r\n",
            self.headers
        )
    }
}

/// `VmRSS` and `VmHWM` (the peak) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Reads until a whole response head arrived, the peer closed, or `wait` passed.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin), wait: Duration) -> ReadOutcome {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                return ReadOutcome::Head(String::from_utf8_lossy(&seen[..end]).into_owned());
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return ReadOutcome::Closed,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    result.unwrap_or(ReadOutcome::TimedOut)
}

#[derive(Debug)]
enum ReadOutcome {
    Head(String),
    /// Closed before a whole head arrived.
    Closed,
    TimedOut,
}

impl ReadOutcome {
    fn status(&self) -> Option<u16> {
        match self {
            ReadOutcome::Head(head) => head.split_whitespace().nth(1)?.parse().ok(),
            _ => None,
        }
    }
}

/// 1 GiB announced, a little sent: 413 before the rest would be.
async fn huge_content_length(target: &Target) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", target.port)).await?;
    let started = Instant::now();
    stream
        .write_all(target.request_head(&format!("Content-Length: {GIB}\r\n")).as_bytes())
        .await?;
    stream.write_all(&[b'x'; 1024]).await?;
    let outcome = read_head(&mut stream, TIMEOUT).await;
    let answered_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(
        outcome.status(),
        Some(413),
        "{}: a 1 GiB Content-Length: {outcome:?}",
        target.name
    );
    record(
        target,
        "a 1 GiB Content-Length, 1 KiB sent",
        "413 before the body is sent",
        format!("answered 413 after {answered_ms:.1} ms"),
    )
}

/// A chunked body without a length, sent until the server answers or closes.
async fn endless_chunked_body(target: &Target) -> anyhow::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", target.port)).await?;
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(target.request_head("Transfer-Encoding: chunked\r\n").as_bytes())
        .await?;
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend(std::iter::repeat_n(b'a', 64 * 1024));
    chunk.extend_from_slice(b"\r\n");
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent_by_writer = sent.clone();
    let write = async move {
        while sent_by_writer.load(std::sync::atomic::Ordering::Relaxed) < CHUNKED_SEND_MAX {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
            sent_by_writer.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // The cap reached without an answer: wait for one.
        std::future::pending::<()>().await;
    };
    tokio::pin!(write);
    let answered = tokio::select! {
        outcome = read_head(&mut reader, TIMEOUT) => Some(outcome),
        () = &mut write => None,
    };
    // The writer stopped (the connection broke): whatever answer came is read.
    let outcome = match answered {
        Some(outcome) => outcome,
        None => read_head(&mut reader, Duration::from_secs(5)).await,
    };
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sent < CHUNKED_SEND_MAX,
        "{}: {sent} bytes of a chunked body were taken without an answer: {outcome:?}",
        target.name
    );
    match (target.body_route.is_some(), &outcome) {
        // A route that reads the body refuses it past the limit.
        (true, ReadOutcome::Head(_)) => assert_eq!(outcome.status(), Some(413), "{}: {outcome:?}", target.name),
        // Or the server closed the connection (a reset can lose the answer).
        (true, ReadOutcome::Closed) => {}
        // A route that reads no body answers without reading it.
        (false, ReadOutcome::Head(_) | ReadOutcome::Closed) => {}
        (_, ReadOutcome::TimedOut) => panic!("{}: no answer to an endless chunked body", target.name),
    }
    record(
        target,
        "a chunked body without a length, sent until refused",
        "refused (413 or closed) long before 1 GiB",
        format!(
            "{:?} after {:.1} MiB sent",
            outcome.status().map_or("closed".to_string(), |s| s.to_string()),
            mib(sent)
        ),
    )
}

/// Headers a byte every 100 ms: closed by the header timeout.
async fn slow_headers(target: &Target) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", target.port)).await?;
    let started = Instant::now();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await?;
    let trickle = async {
        for byte in b"X-Slow: ".iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The header timeout is a second; a minute without a close is a failure.
    let closed = tokio::time::timeout(TIMEOUT, trickle).await.is_ok();
    let closed_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        closed,
        "{}: headers trickled for {closed_ms:.0} ms, still open",
        target.name
    );
    record(
        target,
        "slowloris: headers a byte every 100 ms",
        "closed by the header timeout",
        format!("closed after {closed_ms:.0} ms (--http-header-timeout-ms {HEADER_TIMEOUT_MS})"),
    )
}

/// A body a byte every 100 ms: 408 or closed by the request timeout.
async fn slow_body(target: &Target) -> anyhow::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", target.port)).await?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer
        .write_all(target.request_head("Content-Length: 1000\r\n").as_bytes())
        .await?;
    let trickle = async move {
        for _ in 0..1000 {
            if writer.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    };
    let outcome = tokio::select! {
        outcome = read_head(&mut reader, TIMEOUT) => outcome,
        () = trickle => unreachable!("the trickle never ends by itself"),
    };
    let ended_ms = started.elapsed().as_secs_f64() * 1000.0;
    match (target.body_route.is_some(), &outcome) {
        (true, ReadOutcome::Head(_)) => assert_eq!(outcome.status(), Some(408), "{}: {outcome:?}", target.name),
        (_, ReadOutcome::TimedOut) => panic!("{}: a body trickled for {ended_ms:.0} ms, no end", target.name),
        _ => {}
    }
    record(
        target,
        "slowloris: a body a byte every 100 ms",
        "408 or closed by the request timeout",
        format!(
            "{} after {ended_ms:.0} ms (--http-request-timeout-ms {REQUEST_TIMEOUT_MS})",
            outcome.status().map_or("closed".to_string(), |s| s.to_string())
        ),
    )
}

/// `count` idle connections: those past the cap refused and counted; a fresh
/// `/health` answered once the idle ones are cut off by the header timeout.
async fn idle_connections(target: &Target, count: usize, connections_max: usize) -> anyhow::Result<()> {
    let refused_name = format!("{}_connections_refused_total", target.metrics_prefix);
    let refused_before = metric_sum(target.metrics_port, &refused_name).unwrap_or(0.0);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect(("127.0.0.1", target.port)).await {
            Ok(stream) => idle.push(stream),
            Err(e) => anyhow::bail!("{}: connection {} of {count}: {e}", target.name, idle.len() + 1),
        }
    }
    let opened_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The listener still answers a fresh request once the idle ones are cut
    // off (any status: the raft listener answers only signed requests).
    let port = target.port;
    let (answered, probes) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut probes = 0u32;
        while started.elapsed() < TIMEOUT {
            probes += 1;
            if http_get(port, "/health").is_some() {
                return (Some(started.elapsed()), probes);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, probes)
    })
    .await?;
    let answered = answered.ok_or_else(|| anyhow::anyhow!("{}: /health never answered", target.name))?;
    let refused = metric_sum(target.metrics_port, &refused_name).unwrap_or(0.0) - refused_before;
    drop(idle);
    let past_cap = count.saturating_sub(connections_max) as f64;
    assert!(
        refused >= past_cap / 2.0 && refused <= (count + probes as usize) as f64,
        "{}: {count} idle connections with a cap of {connections_max}: {refused} refused",
        target.name
    );
    let (rss_now, peak) = rss(target.pid);
    assert!(peak < RSS_BOUND_BYTES, "{}: peak RSS {:.0} MiB", target.name, mib(peak));
    record(
        target,
        &format!("{count} idle connections (cap {connections_max})"),
        "past the cap refused and counted; a fresh /health answered",
        format!(
            "opened in {opened_ms:.0} ms; {refused} refused; /health answered after {:.0} ms; RSS {:.1} MiB, peak {:.1} MiB",
            answered.as_secs_f64() * 1000.0,
            mib(rss_now),
            mib(peak)
        ),
    )
}

fn record(target: &Target, attack: &str, checked: &str, notes: String) -> anyhow::Result<()> {
    FaultRecord {
        fault: format!("HTTP {}: {attack}", target.name),
        injected: 1,
        checked: checked.into(),
        notes,
        ..FaultRecord::default()
    }
    .record()
}

/// The soft limit of open files raised to the hard one, for the idle connections.
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_survives_huge_slow_idle_and_overloading_clients() -> anyhow::Result<()> {
    let open_files = raise_open_files_limit();
    // The services' default connection cap; 10,000 idle connections per listener.
    let connections_max: usize = 512;
    let idle_count: usize = 10_000;
    anyhow::ensure!(
        open_files as usize > idle_count + 1000,
        "the open-files limit ({open_files}) is too low for {idle_count} idle connections"
    );
    let limits: Vec<String> = [
        "--http-header-timeout-ms".to_string(),
        HEADER_TIMEOUT_MS.to_string(),
        "--http-request-timeout-ms".to_string(),
        REQUEST_TIMEOUT_MS.to_string(),
        "--http-connections-max".to_string(),
        connections_max.to_string(),
    ]
    .into();
    let mut gateway_args = limits.clone();
    gateway_args.extend(
        ["--acks-in-flight-max", "4", "--backpressure-wait-ms", "100"]
            .iter()
            .map(|s| s.to_string()),
    );
    let stack = Stack::start_with(StackOptions {
        server: None,
        services: ServicesOptions {
            extra_args: vec![
                ("backbeat-pulse", limits.clone()),
                ("backbeat-ingest", gateway_args),
                ("backbeat-processor", limits.clone()),
                ("backbeat-query", limits.clone()),
            ],
            query: true,
            ..ServicesOptions::default()
        },
    })
    .await?;
    let query = stack.query.as_ref().expect("a query node");
    let targets = [
        Target {
            name: "pulse public",
            port: stack.pulse_port,
            pid: stack.pulse.pid(),
            body_route: Some("/api/v1/tempo".into()),
            headers: "Authorization: Bearer test-token\r\n".into(),
            metrics_prefix: "backbeat_http",
            metrics_port: stack.pulse_port,
        },
        Target {
            name: "pulse raft",
            port: stack.raft_port,
            pid: stack.pulse.pid(),
            body_route: Some("/raft/append".into()),
            headers: String::new(),
            metrics_prefix: "backbeat_pulse_raft_http",
            metrics_port: stack.pulse_port,
        },
        Target {
            name: "gateway",
            port: stack.ingest_port,
            pid: stack.ingest.pid(),
            body_route: Some(format!("/api/v1/clusters/{CLUSTER}/claims")),
            headers: String::new(),
            metrics_prefix: "backbeat_http",
            metrics_port: stack.ingest_port,
        },
        Target {
            name: "processor",
            port: stack.processor_port,
            pid: stack.processor.pid(),
            body_route: None,
            headers: String::new(),
            metrics_prefix: "backbeat_http",
            metrics_port: stack.processor_port,
        },
        Target {
            name: "query",
            port: query.port,
            pid: query.child.pid(),
            body_route: Some("/api/v1/sql".into()),
            headers: String::new(),
            metrics_prefix: "backbeat_http",
            metrics_port: query.port,
        },
    ];
    for target in &targets {
        huge_content_length(target).await?;
        endless_chunked_body(target).await?;
        slow_headers(target).await?;
        slow_body(target).await?;
    }
    for target in &targets {
        idle_connections(target, idle_count, connections_max).await?;
    }
    overload_the_gateway(&stack, &targets[2]).await?;
    for target in &targets {
        let (rss_now, peak) = rss(target.pid);
        assert!(
            peak < RSS_BOUND_BYTES,
            "{}: peak RSS {:.0} MiB after the attacks",
            target.name,
            mib(peak)
        );
        eprintln!(
            "{}: RSS {:.1} MiB, peak {:.1} MiB after every attack",
            target.name,
            mib(rss_now),
            mib(peak)
        );
    }
    Ok(())
}

/// JetStream stopped (SIGSTOP): claims past the acks in flight are answered
/// 503 with `Retry-After`, and the gateway's memory stays bounded.
async fn overload_the_gateway(stack: &Stack, target: &Target) -> anyhow::Result<()> {
    let beat = 1u64;
    let body = format!(
        r#"{{"type":"backbeat.statusclaim.v1","agent_id":"flood","beat_index":{beat},"state":"executing","beats_left":3,"progress":0.5,"hlc":"1:0000:0001"}}"#
    );
    stack.server.signal(Signal::Stop)?;
    let requests = 48;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let target = target.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", target.port)).await.ok()?;
            let request = format!(
                "{}{body}",
                target.request_head(&format!("Content-Length: {}\r\nConnection: close\r\n", body.len()))
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            match read_head(&mut stream, TIMEOUT).await {
                ReadOutcome::Head(head) => Some(head),
                _ => None,
            }
        }));
    }
    let mut heads = Vec::new();
    for task in tasks {
        heads.push(task.await?);
    }
    stack.server.signal(Signal::Cont)?;
    let unavailable: Vec<&String> = heads
        .iter()
        .flatten()
        .filter(|head| head.starts_with("HTTP/1.1 503"))
        .collect();
    assert!(
        !unavailable.is_empty(),
        "no claim was answered 503 with JetStream stopped: {heads:?}"
    );
    for head in &unavailable {
        assert!(
            head.to_ascii_lowercase().contains("\r\nretry-after: "),
            "a 503 without Retry-After: {head}"
        );
    }
    let (rss_now, peak) = rss(target.pid);
    assert!(peak < RSS_BOUND_BYTES, "gateway peak RSS {:.0} MiB", mib(peak));
    FaultRecord {
        fault: format!("HTTP {}: {requests} claims at once, JetStream stopped (acks in flight 4)", target.name),
        injected: 1,
        checked: "503 with Retry-After past the in-flight bound; RSS bounded".into(),
        notes: format!(
            "{} of {requests} answered 503 with Retry-After, {} answered otherwise, {} not answered; RSS {:.1} MiB, peak {:.1} MiB",
            unavailable.len(),
            heads.iter().flatten().count() - unavailable.len(),
            heads.iter().filter(|h| h.is_none()).count(),
            mib(rss_now),
            mib(peak)
        ),
        ..FaultRecord::default()
    }
    .record()
}
