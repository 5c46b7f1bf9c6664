//! HTTP as the tests speak it: one request per fresh connection, every status an answer
//! ([`Reply`]), raw bytes for what a client library refuses to send, and HTTPS trusting a test CA.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

/// A response, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self:?}"))
    }

    /// For a 200 from the echo upstream: the headers the upstream received.
    pub fn upstream_headers(&self) -> serde_json::Map<String, Value> {
        assert_eq!(
            self.status, 200,
            "expected 200 from the echo upstream: {self:?}"
        );
        match self.json().get("headers") {
            Some(Value::Object(map)) => map.clone(),
            _ => panic!("no `headers` object in the echo body: {self:?}"),
        }
    }

    /// For a 200 from the echo upstream: the path (with query) the upstream received.
    pub fn upstream_path(&self) -> String {
        assert_eq!(
            self.status, 200,
            "expected 200 from the echo upstream: {self:?}"
        );
        self.json()["path"].as_str().unwrap_or_default().to_string()
    }

    fn from_response(response: ureq::Response) -> Self {
        let status = response.status();
        let mut names = response.headers_names();
        names.dedup();
        let mut headers = Vec::new();
        for name in names {
            for value in response.all(&name) {
                headers.push((name.to_ascii_lowercase(), value.to_string()));
            }
        }
        let body = response.into_string().unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// `request` with `headers`, sent with `body` (or none); a 4xx/5xx is an answer too, a
/// transport failure is `Err` with its description.
fn call(
    mut request: ureq::Request,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, String> {
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(Reply::from_response(response)),
        Err(ureq::Error::Transport(error)) => Err(error.to_string()),
    }
}

/// One request on a fresh connection (a new agent each time, so Envoy's workers all get
/// traffic). Never fails on a 4xx/5xx: the status is in the `Reply`.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .redirects(0)
        .build();
    let request = agent.request(method, url).set("connection", "close");
    call(request, headers, body).unwrap_or_else(|e| panic!("{method} {url}: transport error: {e}"))
}

/// Whether `GET url` answers 200 within 2 s.
pub fn http_ok(url: &str) -> bool {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build()
        .get(url)
        .call()
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

/// Sends raw request bytes (for what ureq refuses to send, e.g. non-UTF-8 header values) and
/// reads the response until the server closes. Put `Connection: close` in the request.
pub fn send_raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream.write_all(request).expect("writing the raw request");
    let mut raw = Vec::new();
    // A reset after the response is fine; what we read so far is what counts.
    let _ = stream.read_to_end(&mut raw);
    parse_raw_response(&raw)
}

fn parse_raw_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete HTTP response: {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// One HTTPS request trusting `ca`, presenting `client` (certificate and key PEM files) when
/// given; `Err` on a transport (TLS) failure, else the reply.
pub fn send_mtls(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    call(mtls_agent(ca, client).request(method, url), headers, None)
}

/// A client that trusts only `ca` and presents `client` (certificate, key) when given.
pub fn mtls_agent(ca: &Path, client: Option<(&Path, &Path)>) -> ureq::Agent {
    let Some((cert, key)) = client else {
        return https_agent(ca);
    };
    let read =
        |path: &Path| fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let chain = CertificateDer::pem_slice_iter(&read(cert))
        .collect::<Result<Vec<_>, _>>()
        .expect("parsing the client certificate PEM");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(key))
        .expect("parsing the client key PEM");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots_of(ca))
    .with_client_auth_cert(chain, key)
    .expect("the client certificate and key");
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(40))
        .redirects(0)
        .tls_config(Arc::new(config))
        .build()
}

fn roots_of(ca: &Path) -> rustls::RootCertStore {
    let pem = fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("parsing the CA PEM");
    for cert in certs {
        roots.add(cert).expect("adding the test CA");
    }
    roots
}

/// A client that trusts only `ca`.
pub fn https_agent(ca: &Path) -> ureq::Agent {
    let pem = fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("parsing the CA PEM");
    for cert in certs {
        roots.add(cert).expect("adding the test CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(40))
        .redirects(0)
        .tls_config(Arc::new(config))
        .build()
}

/// One HTTPS request trusting `ca`; `Err` on a transport (TLS) failure, else the reply.
pub fn send_tls(
    ca: &Path,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    call(https_agent(ca).request(method, url), headers, None)
}
