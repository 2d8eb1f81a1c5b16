use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One plain `GET path` to `127.0.0.1:port`: `(status, body)`, or `None` while
/// nothing answers there. Enough for the admin endpoints every service has.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at(SocketAddr::from(([127, 0, 0, 1], port)), path)
}

/// [`http_get`] to any address (a service in another network namespace).
pub fn http_get_at(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    request(
        address,
        &format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            address.ip()
        ),
    )
}

/// One plain `POST path` of `body` (`content_type`) to `127.0.0.1:port`:
/// `(status, body)`, or `None` when the connection fails or no answer comes
/// within 10 s.
pub fn http_post(port: u16, path: &str, content_type: &str, body: &str) -> Option<(u16, String)> {
    request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn request(address: SocketAddr, request: &str) -> Option<(u16, String)> {
    // A bounded connect: an address cut off by a test's network fault must
    // not hang the caller for the kernel's SYN retries.
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
