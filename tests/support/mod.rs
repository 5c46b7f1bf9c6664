//! The end-to-end harness: a real Envoy running `keygate.wasm`, a real key service on a fresh
//! SQLite file, and the echo upstream (`scripts/echo_upstream.py`), each on free loopback ports.
//!
//! Every Envoy config is derived from `envoy/envoy.yaml` (the single source of truth): the four
//! `port_value`s, the wasm `filename` and the plugin JSON after the `KEYGATE-PLUGIN-CONFIG`
//! marker are substituted. Binaries come from `KEYGATE_WASM`, `KEYGATE_BIN`, `ENVOY_BIN`
//! (defaults under the project root); a missing one fails the test with the `make` command
//! that builds it. Everything started is killed on `Drop`; when a test fails, the tails of the
//! logs are printed and the temp dir is kept.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub mod cluster;
pub mod extra;
pub mod tls;

/// The admin key every test key service starts with (`KEYGATE_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "kg-e2e-admin-key-0123456789abcdef0123456789abcdef";
/// The prefix the test key services mint under.
pub const KEY_PREFIX: &str = "kg_test_";
const PLUGIN_CONFIG_MARKER: &str = "# KEYGATE-PLUGIN-CONFIG";
const WASM_IN_TEMPLATE: &str = "filename: target/wasm32-wasip1/release/keygate.wasm";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(45);

// ── paths ────────────────────────────────────────────────────────────────────────────────────

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary(var: &str, default: &str, make: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(default));
    let path = if path.is_absolute() {
        path
    } else {
        project_root().join(path)
    };
    assert!(
        path.is_file(),
        "{var}: {} does not exist. Build it with `{make}` (or run everything with `make test`).",
        path.display()
    );
    path
}

/// The filter (`KEYGATE_WASM`).
pub fn wasm_path() -> PathBuf {
    binary(
        "KEYGATE_WASM",
        "target/wasm32-wasip1/release/keygate.wasm",
        "make wasm",
    )
}

/// The key service + CLI (`KEYGATE_BIN`).
pub fn keygate_bin() -> PathBuf {
    binary("KEYGATE_BIN", "target/release/keygate", "make build")
}

/// Envoy (`ENVOY_BIN`).
pub fn envoy_bin() -> PathBuf {
    binary("ENVOY_BIN", ".venv/bin/envoy", "make envoy")
}

pub fn envoy_template() -> String {
    let path = project_root().join("envoy/envoy.yaml");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ── small utilities ──────────────────────────────────────────────────────────────────────────

/// A loopback port nobody listens on right now (and that this process never handed out).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding 127.0.0.1:0")
            .port();
        if given.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// `bytes` random bytes from the OS, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory under the system temp dir, removed on drop unless the test failed.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "keygate-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&path).expect("creating the temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept {} for debugging)", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning a log file handle");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Panics (with the log tail) if the process has exited.
    fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited during startup with {status}; last log lines ({}):\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log, 40)
                );
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a file (lossy UTF-8).
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

// ── HTTP ─────────────────────────────────────────────────────────────────────────────────────

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
}

/// One request on a fresh connection (a new agent each time, so Envoy's two workers both get
/// traffic). Never fails on a 4xx/5xx: the status is in the `Reply`.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .redirects(0)
        .build();
    let mut request = agent.request(method, url).set("connection", "close");
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{method} {url}: transport error: {e}"),
    };
    let status = response.status();
    let mut names = response.headers_names();
    names.dedup();
    let mut out_headers = Vec::new();
    for name in names {
        for value in response.all(&name) {
            out_headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
    }
    let body = response.into_string().unwrap_or_default();
    Reply {
        status,
        headers: out_headers,
        body,
    }
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

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

// ── echo upstream ────────────────────────────────────────────────────────────────────────────

pub struct Echo {
    pub port: u16,
    pub proc: Proc,
}

impl Echo {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let mut command = Command::new("python3");
        command
            .arg(project_root().join("scripts/echo_upstream.py"))
            .arg(port.to_string());
        let proc = Proc::spawn("echo upstream", command, dir.join("echo.log"));
        Echo { port, proc }
    }

    fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.port);
        let ok = wait_until(STARTUP_TIMEOUT, || {
            self.proc.assert_alive();
            http_ok(&url)
        });
        assert!(
            ok,
            "echo upstream not ready at {url}; log:\n{}",
            tail(&self.proc.log, 20)
        );
    }
}

fn http_ok(url: &str) -> bool {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build()
        .get(url)
        .call()
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

// ── key service ──────────────────────────────────────────────────────────────────────────────

/// A key as the key service issued it.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: String,
    pub key: String,
    pub raw: Value,
}

impl IssuedKey {
    fn from_json(raw: Value) -> Self {
        let id = raw["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `id` in {raw}"))
            .to_string();
        let key = raw["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `key` in {raw}"))
            .to_string();
        IssuedKey { id, key, raw }
    }
}

pub struct KeyService {
    pub port: u16,
    pub service_token: String,
    pub proc: Proc,
}

/// `keygate serve` on 127.0.0.1:`port` against `database` (a URL), with its files (admin key,
/// log) in `dir` (created if missing), the test prefix and admin key, and `secrets`: the
/// gateway key, the service token and the signing-key secret.
pub fn serve_command(dir: &Path, port: u16, database: &str, secrets: [&str; 3]) -> Command {
    fs::create_dir_all(dir).expect("creating the key service dir");
    let [gateway_key, service_token, signing_secret] = secrets;
    let mut command = Command::new(keygate_bin());
    command
        .current_dir(dir)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--database")
        .arg(database)
        .arg("--key-prefix")
        .arg(KEY_PREFIX)
        .arg("--save-admin-key")
        .arg(dir.join("admin.key"))
        .env("KEYGATE_GATEWAY_KEY", gateway_key)
        .env("KEYGATE_SERVICE_TOKEN", service_token)
        .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
        .env("KEYGATE_SIGNING_KEY_SECRET", signing_secret)
        .env("RUST_LOG", "info");
    command
}

impl KeyService {
    /// Starts `keygate serve` on a fresh SQLite database in `dir` (created if missing), with a
    /// fresh signing-key secret (so it can mint JWT API keys).
    pub fn start(dir: &Path, gateway_key: &str, service_token: &str) -> Self {
        Self::start_with_env(dir, gateway_key, service_token, &[])
    }

    /// Like [`KeyService::start`], with more environment for `keygate serve` (such as
    /// `KEYGATE_USAGE_MAX_BODY_BYTES`).
    pub fn start_with_env(
        dir: &Path,
        gateway_key: &str,
        service_token: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let database = format!("sqlite://{}", dir.join("keygate.db").display());
        // 64 hex digits: the service signs JWT API keys (and encrypts its signing keys).
        let mut command = serve_command(
            dir,
            port,
            &database,
            [gateway_key, service_token, &random_hex(32)],
        );
        command.envs(env.iter().copied());
        let proc = Proc::spawn("key service", command, dir.join("keygate.log"));
        KeyService {
            port,
            service_token: service_token.to_string(),
            proc,
        }
    }

    /// Waits for `GET /healthz` → 200 (panics with the log tail if it exits or times out).
    pub fn wait_ready(&mut self) {
        let url = self.url("/healthz");
        let ok = wait_until(STARTUP_TIMEOUT, || {
            self.proc.assert_alive();
            http_ok(&url)
        });
        assert!(
            ok,
            "key service not healthy at {url}; log:\n{}",
            tail(&self.proc.log, 30)
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let auth = bearer(ADMIN_KEY);
        let mut headers = vec![("authorization", auth.as_str())];
        let body_text = body.map(Value::to_string);
        if body_text.is_some() {
            headers.push(("content-type", "application/json"));
        }
        send(method, &self.url(path), &headers, body_text.as_deref())
    }

    /// `POST /api/v1/auth/keys` → 201.
    pub fn create_key(&self, name: &str, scopes: &[&str]) -> IssuedKey {
        self.create_key_from(&serde_json::json!({
            "name": name,
            "scopes": scopes,
            "owner": format!("{name}-owner"),
        }))
    }

    /// `POST /api/v1/auth/keys` with this exact JSON body → 201.
    pub fn create_key_from(&self, body: &Value) -> IssuedKey {
        let reply = self.admin("POST", "/api/v1/auth/keys", Some(body));
        assert_eq!(reply.status, 201, "creating key {body}: {reply:?}");
        IssuedKey::from_json(reply.json())
    }

    /// `DELETE /api/v1/auth/keys/{id}` → 2xx.
    pub fn revoke(&self, id: &str) {
        let reply = self.admin("DELETE", &format!("/api/v1/auth/keys/{id}"), None);
        assert!(
            (200..300).contains(&reply.status),
            "revoking {id}: {reply:?}"
        );
    }

    /// `POST /api/v1/auth/keys/{id}/rotate {"grace": s}` → 201 with the new key.
    pub fn rotate(&self, id: &str, grace_seconds: u64) -> IssuedKey {
        let reply = self.admin(
            "POST",
            &format!("/api/v1/auth/keys/{id}/rotate"),
            Some(&serde_json::json!({ "grace": grace_seconds })),
        );
        assert_eq!(reply.status, 201, "rotating {id}: {reply:?}");
        IssuedKey::from_json(reply.json())
    }

    /// `POST /api/v1/auth/keys` with `format: jwt` → 201; `key` is the signed token (header
    /// `typ: at+jwt`, claims iss/aud `keygate`, sub = owner, jti = key id, scope).
    pub fn create_jwt_key(
        &self,
        name: &str,
        scopes: &[&str],
        algorithm: &str,
        expires_in: u64,
    ) -> IssuedKey {
        let issued = self.create_key_from(&serde_json::json!({
            "name": name,
            "scopes": scopes,
            "owner": format!("{name}-owner"),
            "format": "jwt",
            "algorithm": algorithm,
            "expires_in": expires_in,
        }));
        assert_eq!(
            issued.key.split('.').count(),
            3,
            "a JWT key is not a compact JWS: {}",
            issued.raw
        );
        issued
    }

    /// `POST /api/v1/signing-keys/rotate {"algorithm": alg}` → 201; answers the new `kid`.
    pub fn rotate_signing_key(&self, algorithm: &str) -> String {
        let reply = self.admin(
            "POST",
            "/api/v1/signing-keys/rotate",
            Some(&serde_json::json!({ "algorithm": algorithm })),
        );
        assert_eq!(
            reply.status, 201,
            "rotating the {algorithm} signing key: {reply:?}"
        );
        reply.json()["kid"]
            .as_str()
            .unwrap_or_else(|| panic!("no `kid` in the rotation answer: {reply:?}"))
            .to_string()
    }

    /// `GET /.well-known/jwks.json` (no credential) → the JWKS document.
    pub fn jwks(&self) -> Value {
        let reply = send("GET", &self.url("/.well-known/jwks.json"), &[], None);
        assert_eq!(reply.status, 200, "GET /.well-known/jwks.json: {reply:?}");
        reply.json()
    }

    /// The JWK with `kid` from the published JWKS.
    pub fn jwk(&self, kid: &str) -> Value {
        let jwks = self.jwks();
        jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
            .cloned()
            .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS: {jwks}"))
    }

    /// `GET /v1/stats` → the number of filter lookups served so far.
    pub fn lookups(&self) -> u64 {
        let auth = bearer(&self.service_token);
        let reply = send(
            "GET",
            &self.url("/v1/stats"),
            &[("authorization", auth.as_str())],
            None,
        );
        assert_eq!(reply.status, 200, "GET /v1/stats: {reply:?}");
        reply.json()["lookups"]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric `lookups` in /v1/stats: {reply:?}"))
    }

    /// Runs the CLI (`keygate <args>`) against this service; returns stdout (asserts success).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(keygate_bin())
            .args(args)
            .env("KEYGATE_SERVER", self.url(""))
            .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running keygate {args:?}: {e}"));
        assert!(
            output.status.success(),
            "keygate {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

// ── Envoy config derived from envoy/envoy.yaml ───────────────────────────────────────────────

/// The plugin configuration JSON embedded in `envoy/envoy.yaml`.
pub fn default_plugin_config() -> Value {
    let template = envoy_template();
    let (_, json, _) = split_plugin_config(&template);
    serde_json::from_str(&json).unwrap_or_else(|e| {
        panic!("the plugin config in envoy/envoy.yaml is not JSON: {e}\n{json}")
    })
}

/// Splits the template into (lines before the block scalar's content, the JSON, lines after).
/// The block is the `value: |` line after the marker comment, and every following line that
/// is blank or indented deeper than it.
fn split_plugin_config(template: &str) -> (Vec<String>, String, Vec<String>) {
    let lines: Vec<&str> = template.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.trim_start().starts_with(PLUGIN_CONFIG_MARKER))
        .unwrap_or_else(|| panic!("envoy/envoy.yaml lost its `{PLUGIN_CONFIG_MARKER}` marker"));
    let value_line = lines.get(marker + 1).copied().unwrap_or_default();
    assert!(
        value_line.trim() == "value: |",
        "the line after `{PLUGIN_CONFIG_MARKER}` in envoy/envoy.yaml must be `value: |`, found {value_line:?}"
    );
    let indent = value_line.len() - value_line.trim_start().len();
    let mut end = marker + 2;
    while end < lines.len() {
        let line = lines[end];
        let line_indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && line_indent <= indent {
            break;
        }
        end += 1;
    }
    let before = lines[..marker + 2].iter().map(|s| s.to_string()).collect();
    let json = lines[marker + 2..end].join("\n");
    let after = lines[end..].iter().map(|s| s.to_string()).collect();
    (before, json, after)
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listener: u16,
    pub admin: u16,
    pub service: u16,
    pub echo: u16,
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    let count = text.matches(from).count();
    assert_eq!(
        count, 1,
        "envoy/envoy.yaml must contain `{from}` exactly once (found {count})"
    );
    text.replacen(from, to, 1)
}

/// `envoy/envoy.yaml` with the ports, the absolute wasm path and `plugin_config` substituted.
pub fn render_envoy_config(ports: Ports, wasm: &Path, plugin_config: &Value) -> String {
    let template = envoy_template();
    let (before, _, after) = split_plugin_config(&template);
    let value_line = before.last().cloned().unwrap_or_default();
    let indent = " ".repeat(value_line.len() - value_line.trim_start().len() + 2);
    let json = serde_json::to_string_pretty(plugin_config).expect("serializing the plugin config");
    let mut out: Vec<String> = before;
    out.extend(json.lines().map(|l| format!("{indent}{l}")));
    out.extend(after);
    let mut text = out.join("\n");
    text.push('\n');
    for (from, to) in [
        (10000, ports.listener),
        (9901, ports.admin),
        (8080, ports.service),
        (8090, ports.echo),
    ] {
        text = replace_once(
            &text,
            &format!("port_value: {from} "),
            &format!("port_value: {to} "),
        );
    }
    replace_once(
        &text,
        WASM_IN_TEMPLATE,
        &format!("filename: {}", wasm.display()),
    )
}

// ── Envoy ────────────────────────────────────────────────────────────────────────────────────

pub struct Envoy {
    pub admin_port: u16,
    pub proc: Proc,
}

impl Envoy {
    /// Starts Envoy on `config` with the gateway key and service token in its environment.
    pub fn start(
        dir: &Path,
        config: &str,
        ports: Ports,
        gateway_key: &str,
        service_token: &str,
    ) -> Self {
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config).expect("writing envoy.yaml");
        let mut command = Command::new(envoy_bin());
        command
            .current_dir(project_root())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "2", "--disable-hot-restart", "-l", "info"])
            .env("KEYGATE_GATEWAY_KEY", gateway_key)
            .env("KEYGATE_SERVICE_TOKEN", service_token);
        let proc = Proc::spawn("envoy", command, dir.join("envoy.log"));
        Envoy {
            admin_port: ports.admin,
            proc,
        }
    }

    fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        let ok = wait_until(STARTUP_TIMEOUT, || {
            self.proc.assert_alive();
            http_ok(&url)
        });
        assert!(
            ok,
            "envoy not ready at {url}; log:\n{}",
            tail(&self.proc.log, 40)
        );
    }

    /// The admin `/stats` text.
    pub fn stats(&self) -> String {
        let reply = send(
            "GET",
            &format!("http://127.0.0.1:{}/stats", self.admin_port),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "GET /stats: {reply:?}");
        reply.body
    }

    /// The value of the counter named exactly `name` (e.g. `wasmcustom.keygate.allowed`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        parse_counter(&self.stats(), name)
    }

    /// `wasmcustom.keygate.<name>`, 0 when absent.
    pub fn keygate_counter(&self, name: &str) -> u64 {
        self.counter(&format!("wasmcustom.keygate.{name}"))
            .unwrap_or(0)
    }

    /// Every `wasmcustom.keygate.*` line of `/stats`, for assertion messages.
    pub fn keygate_stats(&self) -> String {
        self.stats()
            .lines()
            .filter(|l| l.contains("keygate"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn parse_counter(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        if n.trim() == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

// ── the whole stack ──────────────────────────────────────────────────────────────────────────

/// Echo upstream + key service + Envoy with the filter, all on fresh ports in a fresh dir.
pub struct Stack {
    // Field order is drop order: Envoy first, the temp dir last.
    pub envoy: Envoy,
    pub service: KeyService,
    #[allow(dead_code)] // held so that it lives (and is killed) with the stack
    echo: Echo,
    pub ports: Ports,
    pub dir: TempDir,
}

impl Stack {
    /// The stack with `envoy/envoy.yaml`'s own plugin configuration.
    pub fn start(label: &str) -> Self {
        Self::start_with(label, |_| {})
    }

    /// The stack with the plugin configuration changed by `edit` (e.g. a 1 s cache TTL).
    pub fn start_with(label: &str, edit: impl FnOnce(&mut Value)) -> Self {
        Self::start_prepared(label, edit, |_| {})
    }

    /// Like [`Stack::start_with`], and runs `prepare` against the ready key service before
    /// Envoy starts (e.g. to mint keys whose signing keys Envoy's first JWKS fetch must see).
    pub fn start_prepared(
        label: &str,
        edit: impl FnOnce(&mut Value),
        prepare: impl FnOnce(&KeyService),
    ) -> Self {
        let wasm = wasm_path();
        // Resolve the other binaries before starting anything, so a missing one fails first.
        let _ = keygate_bin();
        let _ = envoy_bin();
        let dir = TempDir::new(label);
        let gateway_key = random_hex(32);
        let service_token = random_hex(32);
        fs::write(dir.path().join("gateway.key"), &gateway_key).expect("writing gateway.key");
        fs::write(dir.path().join("service.token"), &service_token).expect("writing service.token");

        let mut echo = Echo::start(dir.path());
        let mut service =
            KeyService::start(&dir.path().join("service"), &gateway_key, &service_token);
        let ports = Ports {
            listener: free_port(),
            admin: free_port(),
            service: service.port,
            echo: echo.port,
        };
        let mut plugin = default_plugin_config();
        edit(&mut plugin);
        let config = render_envoy_config(ports, &wasm, &plugin);
        echo.wait_ready();
        service.wait_ready();
        prepare(&service);
        let mut envoy = Envoy::start(dir.path(), &config, ports, &gateway_key, &service_token);
        envoy.wait_ready();
        Stack {
            envoy,
            service,
            echo,
            ports,
            dir,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.ports.listener)
    }

    pub fn listener(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.listener))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        send("GET", &self.url(path), headers, None)
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        send("POST", &self.url(path), headers, Some("{}"))
    }

    /// GET `path` with `Authorization: Bearer <key>`.
    pub fn get_with_key(&self, path: &str, key: &str) -> Reply {
        let auth = bearer(key);
        self.get(path, &[("authorization", auth.as_str())])
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "──── envoy log tail ({}) ────\n{}\n──── key service log tail ({}) ────\n{}\n────",
                self.envoy.proc.log.display(),
                tail(&self.envoy.proc.log, 60),
                self.service.proc.log.display(),
                tail(&self.service.proc.log, 30),
            );
        }
    }
}
