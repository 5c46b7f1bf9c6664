//! Harness for the revocation-feed tests (`e2e/feed.rs`): several key-service replicas on one
//! database (a fresh PostgreSQL database, or one SQLite file), an Envoy whose `keygate_service`
//! cluster has every replica as an endpoint (or a switchable "bad feed" proxy in front of the
//! first one), throwaway PostgreSQL clusters (`scripts/postgres.sh`) for restart tests, and
//! readers for the feed counters on both sides.
//!
//! PostgreSQL is never optional here: without `KEYGATE_TEST_POSTGRES_URL` the tests fail and say
//! how to start a server.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    bearer, default_plugin_config, envoy_bin, free_port, keygate_bin, parse_counter, project_root,
    random_hex, render_envoy_config, send, serve_command, tail, wait_until, wasm_path, Echo, Envoy,
    KeyService, Ports, Proc, Reply, TempDir,
};

pub const POSTGRES_URL_ENV: &str = "KEYGATE_TEST_POSTGRES_URL";

// ── PostgreSQL ───────────────────────────────────────────────────────────────────────────────

/// The server URL from `KEYGATE_TEST_POSTGRES_URL`; panics (never skips) when it is unset.
pub fn postgres_server_url() -> String {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => panic!(
            "{POSTGRES_URL_ENV} is not set: these tests need a real PostgreSQL server. Start one \
             with `export {POSTGRES_URL_ENV}=$(scripts/postgres.sh start /tmp/pg-e2e)` \
             (or run everything with `make test`)."
        ),
    }
}

/// `url` with its database (the last path segment) replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

fn psql(server_url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .arg(with_database(server_url, "postgres"))
        .args(["-XtAq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql: {e} (is /usr/bin/psql installed?)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql {sql:?} against {server_url} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A fresh database `t_<random>` on the server at `server_url`; returns its URL. Panics when
/// the server cannot be reached.
pub fn create_database(server_url: &str) -> String {
    let name = format!("t_{}", random_hex(8));
    psql(server_url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("{e}"));
    with_database(server_url, &name)
}

/// A private PostgreSQL cluster (`scripts/postgres.sh start DIR`) that a test may stop and
/// start; stopped on drop.
pub struct PgCluster {
    dir: PathBuf,
    pub server_url: String,
}

impl PgCluster {
    pub fn start(dir: &Path) -> Self {
        let server_url = postgres_script("start", dir);
        PgCluster {
            dir: dir.to_path_buf(),
            server_url,
        }
    }

    pub fn stop(&self) {
        postgres_script("stop", &self.dir);
    }

    /// Starts it again (same port, same data).
    pub fn restart_started(&self) {
        let url = postgres_script("start", &self.dir);
        assert_eq!(url, self.server_url, "the cluster came back on another URL");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(project_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output();
    }
}

fn postgres_script(action: &str, dir: &Path) -> String {
    let output = Command::new(project_root().join("scripts/postgres.sh"))
        .arg(action)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/postgres.sh {action}: {e}"));
    assert!(
        output.status.success(),
        "scripts/postgres.sh {action} {} failed ({}): {}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

// ── key-service replicas ─────────────────────────────────────────────────────────────────────

/// Secrets every replica and Envoy share.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub gateway_key: String,
    pub service_token: String,
    /// `KEYGATE_SIGNING_KEY_SECRET`: the same on every replica, which all read the signing
    /// keys from the shared database.
    pub signing_secret: String,
}

impl Secrets {
    pub fn random() -> Self {
        Secrets {
            gateway_key: random_hex(32),
            service_token: random_hex(32),
            signing_secret: random_hex(32),
        }
    }
}

/// Starts `keygate serve` on `port` against `database` (a URL) with its files in `dir`, and
/// waits for `/healthz`.
pub fn start_replica(dir: &Path, port: u16, database: &str, secrets: &Secrets) -> KeyService {
    let command = serve_command(
        dir,
        port,
        database,
        [
            &secrets.gateway_key,
            &secrets.service_token,
            &secrets.signing_secret,
        ],
    );
    // Append: a restarted replica keeps the log of its previous life.
    let log = dir.join("keygate.log");
    let mut service = KeyService {
        port,
        service_token: secrets.service_token.clone(),
        proc: Proc::spawn_appending("key service", command, log),
    };
    service.wait_ready();
    service
}

/// What `GET /v1/stats` says about the feed endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedStats {
    pub requests: u64,
    pub waiting: u64,
}

pub fn feed_stats(service: &KeyService) -> FeedStats {
    let auth = bearer(&service.service_token);
    let reply = send(
        "GET",
        &service.url("/v1/stats"),
        &[("authorization", auth.as_str())],
        None,
    );
    assert_eq!(reply.status, 200, "GET /v1/stats: {reply:?}");
    let json = reply.json();
    let number = |field: &str| {
        json[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric `{field}` in /v1/stats: {json}"))
    };
    FeedStats {
        requests: number("feed_requests"),
        waiting: number("feed_waiting"),
    }
}

// ── Envoy config with several key-service endpoints ──────────────────────────────────────────

/// `render_envoy_config` with `keygate_service` load-balancing over every port of `endpoints`
/// (the first one takes the template's place).
pub fn render_with_endpoints(
    ports: Ports,
    wasm: &Path,
    plugin: &Value,
    endpoints: &[u16],
) -> String {
    assert!(!endpoints.is_empty(), "keygate_service needs an endpoint");
    let ports = Ports {
        service: endpoints[0],
        ..ports
    };
    let text = render_envoy_config(ports, wasm, plugin);
    let lines: Vec<&str> = text.lines().collect();
    let needle = format!("port_value: {} ", endpoints[0]);
    let at = lines
        .iter()
        .position(|l| l.contains("socket_address") && l.contains(&needle))
        .expect("the keygate_service endpoint in the rendered config");
    assert!(
        at >= 2 && lines[at - 2].trim_start() == "- endpoint:",
        "unexpected shape of the keygate_service endpoint in envoy/envoy.yaml: {:?}",
        &lines[at.saturating_sub(2)..=at]
    );
    let mut out: Vec<String> = lines[..=at].iter().map(|s| s.to_string()).collect();
    for port in &endpoints[1..] {
        out.push(lines[at - 2].to_string());
        out.push(lines[at - 1].to_string());
        out.push(lines[at].replace(&needle, &format!("port_value: {port} ")));
    }
    out.extend(lines[at + 1..].iter().map(|s| s.to_string()));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

impl Proc {
    /// Like `Proc::spawn`, appending to `log` (a restarted replica keeps its earlier log).
    fn spawn_appending(name: &str, mut command: Command, log: PathBuf) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
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
}

// ── the switchable feed proxy ────────────────────────────────────────────────────────────────

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

// ── the whole cluster ────────────────────────────────────────────────────────────────────────

/// Where the replicas keep their keys.
pub enum Database {
    /// One SQLite file in the test dir (one replica only makes sense).
    Sqlite,
    /// This PostgreSQL database URL (shared by every replica).
    Postgres(String),
}

pub struct Options {
    pub replicas: usize,
    pub database: Database,
    /// Put a [`FeedProxy`] in front of replica 0 and make it Envoy's only endpoint.
    pub feed_proxy: bool,
}

/// Echo upstream + N key-service replicas on one database + Envoy (2 workers).
pub struct Cluster {
    // Field order is drop order: Envoy first, the temp dir last.
    pub envoy: Envoy,
    pub proxy: Option<FeedProxy>,
    pub services: Vec<KeyService>,
    #[allow(dead_code)] // lives (and is killed) with the cluster
    echo: Echo,
    pub database: String,
    pub secrets: Secrets,
    pub ports: Ports,
    pub dir: TempDir,
}

impl Cluster {
    /// Starts everything; `edit` changes the plugin configuration, `prepare` runs against the
    /// ready replicas before Envoy starts.
    pub fn start(
        label: &str,
        options: Options,
        edit: impl FnOnce(&mut Value),
        prepare: impl FnOnce(&[KeyService]),
    ) -> Self {
        let wasm = wasm_path();
        let _ = keygate_bin();
        let _ = envoy_bin();
        let dir = TempDir::new(label);
        let secrets = Secrets::random();
        let database = match options.database {
            Database::Sqlite => format!("sqlite://{}", dir.path().join("keygate.db").display()),
            Database::Postgres(url) => url,
        };
        let mut echo = Echo::start(dir.path());
        // One after the other: the first one migrates the database and installs the admin key.
        let services: Vec<KeyService> = (0..options.replicas.max(1))
            .map(|i| {
                start_replica(
                    &dir.path().join(format!("replica-{i}")),
                    free_port(),
                    &database,
                    &secrets,
                )
            })
            .collect();
        let proxy = options
            .feed_proxy
            .then(|| FeedProxy::start(services[0].port));
        let endpoints: Vec<u16> = match &proxy {
            Some(p) => vec![p.port],
            None => services.iter().map(|s| s.port).collect(),
        };
        let ports = Ports {
            listener: free_port(),
            admin: free_port(),
            service: endpoints[0],
            echo: echo.port,
        };
        let mut plugin = default_plugin_config();
        edit(&mut plugin);
        let config = render_with_endpoints(ports, &wasm, &plugin, &endpoints);
        echo.wait_ready();
        prepare(&services);
        let mut envoy = Envoy::start(
            dir.path(),
            &config,
            ports,
            &secrets.gateway_key,
            &secrets.service_token,
        );
        envoy.wait_ready();
        Cluster {
            envoy,
            proxy,
            services,
            echo,
            database,
            secrets,
            ports,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.listener)
    }

    /// GET `path` through Envoy with `Authorization: Bearer <key>`, on a fresh connection.
    pub fn get_with_key(&self, path: &str, key: &str) -> Reply {
        let auth = bearer(key);
        send(
            "GET",
            &self.url(path),
            &[("authorization", auth.as_str())],
            None,
        )
    }

    /// Kills replica `i` (SIGKILL).
    pub fn kill_replica(&mut self, i: usize) {
        self.services[i].stop();
    }

    /// Starts replica `i` again on its port and database; waits for `/healthz`.
    pub fn restart_replica(&mut self, i: usize) {
        self.services[i].stop();
        let port = self.services[i].port;
        self.services[i] = start_replica(
            &self.dir.path().join(format!("replica-{i}")),
            port,
            &self.database,
            &self.secrets,
        );
    }

    /// `wasmcustom.keygate.<name>` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        parse_counter(&self.envoy.stats(), &format!("wasmcustom.keygate.{name}")).unwrap_or(0)
    }

    /// Feed stats of every replica.
    pub fn feed_stats(&self) -> Vec<FeedStats> {
        self.services.iter().map(feed_stats).collect()
    }

    /// Waits until exactly one long-poll is held across the replicas; returns the index of the
    /// replica holding it.
    pub fn wait_follower(&self, timeout: Duration) -> usize {
        let mut holder = None;
        let ok = wait_until(timeout, || {
            let stats = self.feed_stats();
            let total: u64 = stats.iter().map(|s| s.waiting).sum();
            holder = stats.iter().position(|s| s.waiting == 1);
            total == 1
        });
        assert!(
            ok,
            "no single held long-poll across the replicas within {timeout:?}: {:?}\n{}\n{}",
            self.feed_stats(),
            self.envoy.keygate_stats(),
            self.logs()
        );
        holder.expect("a holder")
    }

    /// Sends requests with `key` on fresh connections, as fast as possible, until one is
    /// refused with 401 (or `timeout` passes); returns (time to the first 401 since `from`,
    /// number of non-401 answers before it).
    pub fn until_refused(&self, key: &str, from: Instant, timeout: Duration) -> (Duration, u32) {
        let mut before = 0;
        loop {
            let reply = self.get_with_key("/v1/feed", key);
            let elapsed = from.elapsed();
            if reply.status == 401 {
                return (elapsed, before);
            }
            assert!(
                elapsed < timeout,
                "the key is still answered {} {:?} {elapsed:?} after its revocation ({before} \
                 requests since)\n{}\n{}",
                reply.status,
                reply.body,
                self.envoy.keygate_stats(),
                self.logs()
            );
            before += 1;
        }
    }

    /// The Envoy log lines written by the filter about the feed.
    pub fn feed_log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.envoy.proc.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("revocation feed"))
            .map(str::to_string)
            .collect()
    }

    /// Log tails for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = format!(
            "──── envoy log tail ({}) ────\n{}\n",
            self.envoy.proc.log.display(),
            tail(&self.envoy.proc.log, 40)
        );
        for (i, s) in self.services.iter().enumerate() {
            out.push_str(&format!(
                "──── replica {i} log tail ({}) ────\n{}\n",
                s.proc.log.display(),
                tail(&s.proc.log, 15)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Creates and revokes a throwaway key, so the feed is not empty (sequence > 0).
///
/// Needed because a follower at sequence 0 never waits: it asks `since=0&wait=0` and the
/// service answers every `since=0` with an immediate snapshot, so with an empty feed the
/// follower re-polls back to back (see `idle_cost_with_an_empty_feed`).
pub fn prime_feed(service: &KeyService) {
    let key = service.create_key("feed-primer", &["demo:read"]);
    service.revoke(&key.id);
}

/// Polls `check` until true or `timeout`; panics with `what` otherwise.
pub fn must(timeout: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, check),
        "timed out ({timeout:?}): {what}"
    );
}
