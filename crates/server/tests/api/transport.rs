//! The key service on a real loopback socket, as `keygate serve` runs it: request-head limits,
//! HTTPS with a certificate made here, and the graceful stop answering held long-polls.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use keygate_server::tls::{client_config, ServerTls};
use keygate_server::{app, transport};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::spawn_blocking;

use crate::backends::eventually;
use crate::{harness, Harness, KEYS, SERVICE};

/// A key service serving `h.state` on 127.0.0.1, stopped like `keygate serve` on SIGTERM.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(h: &Harness, tls: Option<&ServerTls>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let feed = h.state.clone();
        let task = tokio::spawn(transport::serve(
            listener,
            app(h.state.clone()),
            tls.map(ServerTls::config),
            async move {
                let _ = stopped.await;
                feed.begin_shutdown();
            },
        ));
        Running {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }
}

/// A CA and a server certificate for 127.0.0.1 and `keygate.internal`, as PEM files.
struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Keygate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["keygate.internal".into(), "127.0.0.1".into()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        TestPki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::load(&self.path("cert.pem"), &self.path("key.pem")).unwrap()
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it: the status
/// and the body. The server may stop reading an oversized request and close early, so write
/// errors are not failures; the answer it sent before closing is what counts.
fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(&request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get_request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: keygate\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

fn agent(tls: Option<Arc<rustls::ClientConfig>>) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls);
    }
    builder.build()
}

fn status_of(result: Result<ureq::Response, ureq::Error>) -> Result<u16, String> {
    match result {
        Ok(response) => Ok(response.status()),
        Err(ureq::Error::Status(status, _)) => Ok(status),
        Err(ureq::Error::Transport(error)) => Err(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_refused_and_the_service_keeps_serving() {
    let h = harness().await;
    let server = Running::start(&h, None).await;
    let addr = server.addr;
    spawn_blocking(move || {
        let huge = "a".repeat(100 * 1024);
        // 100 KB: past what a connection buffers for one head. hyper answers 431 and closes;
        // with the head incomplete it cannot tell a long path from long headers.
        let (status, _) = raw_exchange(addr, get_request(&format!("/healthz/{huge}"), &[]));
        assert_eq!(status, 431, "a 100 KB path");
        let (status, _) = raw_exchange(addr, get_request("/healthz", &[("x-filler", &huge)]));
        assert_eq!(status, 431, "a 100 KB header");
        // A complete head past the head limit (40 KB of headers within the 64 KiB buffered).
        let forty = "b".repeat(40 * 1024);
        let (status, _) = raw_exchange(addr, get_request("/healthz", &[("x-filler", &forty)]));
        assert_eq!(status, 431, "a 40 KB header");
        // Within what is buffered but past the limits checked before routing: problem+json.
        let long = "a".repeat(10 * 1024);
        let (status, body) = raw_exchange(addr, get_request(&format!("/healthz?{long}"), &[]));
        assert_eq!(status, 414, "a 10 KB request target: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], 414);
        assert_eq!(problem["type"], "urn:keygate:problem:uri-too-long");
        let (status, body) = raw_exchange(
            addr,
            get_request("/healthz", &[("x-a", &long), ("x-b", &long)]),
        );
        assert_eq!(status, 431, "20 KB of headers: {body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], 431);
        // A request with more header fields than the parser takes.
        let many: Vec<(String, String)> =
            (0..150).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let (status, _) = raw_exchange(addr, get_request("/healthz", &many));
        assert_eq!(status, 431, "150 header fields");
        // Still serving, on new connections, ordinary requests.
        for _ in 0..3 {
            let (status, _) = raw_exchange(addr, get_request("/healthz", &[]));
            assert_eq!(status, 200);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() {
    let h = harness().await;
    let pki = TestPki::new();
    let server = Running::start(&h, Some(&pki.server_tls())).await;
    let https = server.url("https", "/healthz");
    let http = server.url("http", "/healthz");
    let ca = pki.path("ca.pem");
    spawn_blocking(move || {
        let trusted = agent(Some(client_config(Some(&ca)).unwrap()));
        assert_eq!(status_of(trusted.get(&https).call()), Ok(200));

        // TLS 1.2 is still accepted.
        let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots_from(&ca))
        .with_no_client_auth();
        assert_eq!(
            status_of(agent(Some(Arc::new(tls12))).get(&https).call()),
            Ok(200)
        );

        // Without the test CA the certificate is not trusted.
        if let Ok(system_only) = client_config(None) {
            let refused = status_of(agent(Some(system_only)).get(&https).call());
            assert!(refused.is_err(), "an untrusted certificate was accepted");
        }
        // Plain HTTP to the TLS port gets no answer.
        assert!(status_of(agent(None).get(&http).call()).is_err());
    })
    .await
    .unwrap();
}

fn roots_from(ca: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_held_long_polls_over_tls_and_ends_the_server() {
    let h = harness().await;
    let created = h.create(json!({"name": "x", "scopes": []})).await;
    let id = created["id"].as_str().unwrap();
    let revoked = h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let pki = TestPki::new();
    let mut server = Running::start(&h, Some(&pki.server_tls())).await;
    let url = server.url("https", "/v1/revocations?since=1&wait=30");
    let ca = pki.path("ca.pem");
    let poll = spawn_blocking(move || {
        let agent = agent(Some(client_config(Some(&ca)).unwrap()));
        let answer = agent
            .get(&url)
            .set("authorization", &format!("Bearer {SERVICE}"))
            .call();
        let answered_at = Instant::now();
        let body: Value = answer.unwrap().into_json().unwrap();
        (body, answered_at)
    });
    assert!(
        eventually(Duration::from_secs(20), || h
            .state
            .feed_counters()
            .waiting()
            == 1)
        .await,
        "the long-poll is not held"
    );
    let stopped_at = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    let (body, answered_at) = poll.await.unwrap();
    assert!(
        answered_at.duration_since(stopped_at) < Duration::from_secs(5),
        "the held long-poll was answered {:?} after the stop began",
        answered_at.duration_since(stopped_at)
    );
    assert_eq!(body["seq"], 1, "{body}");
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server did not stop within 10 s of the signal")
        .unwrap();
}

/// Serves `h.state` with other connection limits until the returned sender is dropped.
async fn start_with_limits(
    h: &Harness,
    limits: transport::ConnectionLimits,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(transport::serve_with_limits(
        listener,
        app(h.state.clone()),
        None,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

/// What the server sent before it ended the connection (EOF or reset) within `within`;
/// `None` when the connection was still open then.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Some(raw),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(raw),
    }
}

/// A client that never finishes its request head is cut off after the header read timeout,
/// and past the connection cap a new connection is closed at once: slow or many clients
/// without any credential cannot hold the service's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_surplus_connections_are_closed() {
    let h = harness().await;
    let (slow, _stop_slow) = start_with_limits(
        &h,
        transport::ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            max_connections: 64,
        },
    )
    .await;
    spawn_blocking(move || {
        let mut stream = TcpStream::connect(slow).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: kee")
            .unwrap();
        let started = Instant::now();
        assert!(
            closed_within(&mut stream, Duration::from_secs(15)).is_some(),
            "a request head that never ends kept its connection"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
    })
    .await
    .unwrap();
    // The timeout does not cut a client that sends its head in time.
    let url = format!("http://{slow}/healthz");
    let status = spawn_blocking(move || status_of(agent(None).get(&url).call()))
        .await
        .unwrap();
    assert_eq!(status, Ok(200));

    let (capped, _stop_capped) = start_with_limits(
        &h,
        transport::ConnectionLimits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 2,
        },
    )
    .await;
    spawn_blocking(move || {
        let idle: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(capped).unwrap())
            .collect();
        // Both idle connections hold their place: a third is closed without an answer.
        let mut surplus = TcpStream::connect(capped).unwrap();
        let _ = surplus.write_all(&get_request("/healthz", &[]));
        let answer = closed_within(&mut surplus, Duration::from_secs(10));
        assert_eq!(
            answer.as_deref(),
            Some(&b""[..]),
            "a connection past the cap was not closed at once"
        );
        // Once they go, connections are served again.
        drop(idle);
        let served = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            let mut stream = TcpStream::connect(capped).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = stream.write_all(&get_request("/healthz", &[]));
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw);
            raw.starts_with(b"HTTP/1.1 200")
        });
        assert!(
            served,
            "the service did not serve again after the idle connections closed"
        );
    })
    .await
    .unwrap();
}
