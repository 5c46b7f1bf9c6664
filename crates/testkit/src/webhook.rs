//! [`WebhookReceiver`]: a local HTTP endpoint that records what the key service's webhooks
//! deliver (every POST answered 200), for end-to-end tests of alerts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Largest delivery body read (the key service sends at most 64 KiB).
const MAX_BODY: usize = 1024 * 1024;

/// A delivery as received: its headers (names lower case) and its JSON body.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The event type (`key.new_country`, ...).
    pub fn event(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }
}

/// Records the deliveries POSTed to [`WebhookReceiver::url`]; stops when dropped.
pub struct WebhookReceiver {
    url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl WebhookReceiver {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the webhook receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopping) = (received.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    if let Some(delivery) = serve(stream) {
                        into.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(delivery);
                    }
                }
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            received,
            stop,
            port,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Everything received so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The deliveries of event `event` received so far.
    pub fn of(&self, event: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.event() == event)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request and answers 200; the delivery, if it was a POST with a JSON body.
fn serve(stream: TcpStream) -> Option<Delivery> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let post = line.starts_with("POST ");
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            break;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
            }
            headers.push((name, value));
        }
    }
    let mut body = vec![0; length.min(MAX_BODY)];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let body = serde_json::from_slice(&body).ok()?;
    post.then_some(Delivery { headers, body })
}
