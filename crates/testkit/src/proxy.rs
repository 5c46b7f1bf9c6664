//! A switchable proxy in front of a key service: it forwards everything, except that the
//! revocation feed can be made to answer 500 or garbage.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;

/// What the proxy answers to `GET /v1/revocations...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FeedMode {
    /// Forwarded to the key service like everything else.
    Forward = 0,
    /// `500 Internal Server Error`.
    Error500 = 1,
    /// `200` with a body that is not a feed document.
    Garbage = 2,
}

/// A tiny HTTP/1.1 proxy (one request per connection, `connection: close`) in front of a key
/// service: forwards every request, except that the revocation feed can be switched to answer
/// 500 or garbage.
pub struct FeedProxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// Feed requests answered with 500 or garbage so far.
    pub sabotaged: Arc<AtomicU64>,
}

impl FeedProxy {
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the feed proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mode = Arc::new(AtomicU8::new(FeedMode::Forward as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let sabotaged = Arc::new(AtomicU64::new(0));
        let (m, s, n) = (mode.clone(), stop.clone(), sabotaged.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (m, n) = (m.clone(), n.clone());
                thread::spawn(move || proxy_one(stream, upstream, &m, &n));
            }
        });
        FeedProxy {
            port,
            mode,
            stop,
            sabotaged,
        }
    }

    pub fn set_mode(&self, mode: FeedMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn sabotaged(&self) -> u64 {
        self.sabotaged.load(Ordering::SeqCst)
    }
}

impl Drop for FeedProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request head (+ body by content-length) from `stream`.
fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

fn proxy_one(mut client: TcpStream, upstream: u16, mode: &AtomicU8, sabotaged: &AtomicU64) {
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    let target = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mode = mode.load(Ordering::SeqCst);
    if target.starts_with("/v1/revocations") && mode != FeedMode::Forward as u8 {
        sabotaged.fetch_add(1, Ordering::SeqCst);
        let (status, content_type, text) = if mode == FeedMode::Error500 as u8 {
            (
                "500 Internal Server Error",
                "application/problem+json",
                r#"{"status":500,"title":"injected failure"}"#,
            )
        } else {
            (
                "200 OK",
                "application/json",
                r#"{"seq": "not a number", "events": [{"oops": true}], garbage"#,
            )
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = client.write_all(response.as_bytes());
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    // Forward with `connection: close` so the upstream ends the response by closing.
    let mut rewritten: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        })
        .map(str::to_string)
        .collect();
    rewritten.push("connection: close".to_string());
    let mut request = rewritten.join("\r\n").into_bytes();
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(&body);
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        return;
    };
    if server.write_all(&request).is_err() {
        return;
    }
    let mut chunk = [0u8; 16384];
    loop {
        match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if client.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}
