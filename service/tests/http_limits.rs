//! The limits every service's HTTP listener puts on its clients (`HttpLimits`),
//! against a real listener on a loopback port: a slow or idle client is cut
//! off, a body over the limit is refused before it is read, connections and
//! concurrent requests are capped. Short timeouts keep the tests quick; each
//! waits for the event (a closed connection, an answer) with a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use backbeat_service::{serve_http, HttpLimits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// A limit on each wait, far above the timeouts under test.
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: std::net::SocketAddr,
    registry: prometheus::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(router: Router, limits: HttpLimits) -> Server {
        let registry = prometheus::Registry::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = HttpLimits {
            registry: Some(registry.clone()),
            ..limits
        };
        let (addr, task) = serve_http(
            "127.0.0.1:0",
            router,
            async move {
                let _ = stopped.await;
            },
            limits,
        )
        .await
        .expect("listens");
        Server {
            addr,
            registry,
            stop: Some(stop),
            task,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .find(|family| family.name() == name)
            .map(|family| {
                let metric = &family.get_metric()[0];
                if metric.get_gauge().get_value() != 0.0 {
                    metric.get_gauge().get_value()
                } else {
                    metric.get_counter().get_value()
                }
            })
            .unwrap_or(0.0)
    }

    async fn wait_for_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.metric(name) != value {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at {} (wanted {value})",
                self.metric(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops")
            .expect("the task ends");
    }
}

fn router() -> Router {
    Router::new().route("/health", get(|| async { "ok" })).route(
        "/echo",
        post(|body: bytes::Bytes| async move { body.len().to_string() }),
    )
}

/// Reads until the peer closes the connection; returns what was read.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server did not close the connection; read so far: {:?}",
        String::from_utf8_lossy(&seen)
    );
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads one response head and the body it announces.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if seen.len() >= head_end + 4 + length {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.expect("reads");
            assert!(n > 0, "closed before a whole response: {text:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time")
}

fn quick_limits() -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(600),
        ..HttpLimits::default()
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = Server::start(router(), quick_limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    server.wait_for_metric("backbeat_http_connections_open", 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = Server::start(router(), quick_limits()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Nothing more is sent: the connection waits for a next request head, which
    // never comes, so the header-read timeout closes it.
    read_until_closed(&mut stream).await;
    server.wait_for_metric("backbeat_http_connections_open", 0.0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let limits = HttpLimits {
        body_bytes_max: 1000,
        ..quick_limits()
    };
    let server = Server::start(router(), limits).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Announces 100 MB and sends none of it: the answer comes from the header alone.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body within the limit is read and served.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n5"),
        "{answer}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_trickled_slower_than_the_request_timeout_is_cut_off() {
    let server = Server::start(router(), quick_limits()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // The slow client: a byte every 100 ms would take 10 s; the server answers
    // 408 after the request timeout (600 ms), long before.
    let trickle = async move {
        for _ in 0..100 {
            if writer.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answer = tokio::select! {
        answer = read_response(&mut reader) => answer,
        () = trickle => panic!("the whole body was read: no timeout"),
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let limits = HttpLimits {
        connections_max: 2,
        header_read_timeout: Duration::from_secs(30),
        ..HttpLimits::default()
    };
    let server = Server::start(router(), limits).await;
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    server.wait_for_metric("backbeat_http_connections_open", 2.0).await;

    let mut third = TcpStream::connect(server.addr).await.unwrap();
    read_until_closed(&mut third).await;
    assert_eq!(server.metric("backbeat_http_connections_refused_total"), 1.0);

    // A freed place is taken by the next client.
    drop(first);
    server.wait_for_metric("backbeat_http_connections_open", 1.0).await;
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut fourth).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_wait_their_turn() {
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let router = {
        let (inside, entered, most_inside, release) =
            (inside.clone(), entered.clone(), most_inside.clone(), release.clone());
        Router::new().route(
            "/slow",
            get(move || {
                let (inside, entered, most_inside, release) =
                    (inside.clone(), entered.clone(), most_inside.clone(), release.clone());
                async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    release.notified().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    "done"
                }
            }),
        )
    };
    let limits = HttpLimits {
        concurrency_max: 1,
        ..HttpLimits::default()
    };
    let server = Server::start(router, limits).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        clients.push(stream);
    }
    for turn in 1..=clients.len() {
        // One request at a time enters the handler; release it, then the next.
        let deadline = tokio::time::Instant::now() + WAIT;
        while entered.load(Ordering::SeqCst) < turn {
            assert!(
                tokio::time::Instant::now() < deadline,
                "request {turn} never reached the handler"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        release.notify_one();
    }
    for client in &mut clients {
        let answer = read_response(client).await;
        assert!(answer.ends_with("done"), "{answer}");
    }
    assert_eq!(
        most_inside.load(Ordering::SeqCst),
        1,
        "never more than one request inside"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_address_in_use_is_a_bind_error_naming_it() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let error = serve_http(&listen, router(), std::future::pending(), HttpLimits::default())
        .await
        .expect_err("the address is taken");
    assert!(
        matches!(&error, backbeat_service::ServiceError::Bind { listen: named, .. } if *named == listen),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("binding HTTP listener {listen}"));
}

#[tokio::test]
async fn a_request_that_finds_every_turn_taken_for_the_queue_wait_is_shed_with_retry_after() {
    let release = Arc::new(Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let router = {
        let (release, entered) = (release.clone(), entered.clone());
        Router::new().route(
            "/slow",
            get(move || {
                let (release, entered) = (release.clone(), entered.clone());
                async move {
                    entered.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    "done"
                }
            }),
        )
    };
    let limits = HttpLimits {
        concurrency_max: 1,
        ..HttpLimits::default()
    };
    let server = Server::start(router, limits).await;
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while entered.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first request never reached the handler"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The only turn is taken and stays taken: the next request waits the
    // queue wait, then is told to come back.
    let mut shed = TcpStream::connect(server.addr).await.unwrap();
    shed.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answer = read_response(&mut shed).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("\"error\":\"overloaded\""), "{answer}");
    assert_eq!(server.metric("backbeat_http_requests_shed_total"), 1.0);
    // The holder is served once released.
    release.notify_one();
    assert!(read_response(&mut holder).await.ends_with("done"));
    server.stop().await;
}
