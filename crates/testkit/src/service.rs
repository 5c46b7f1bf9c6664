//! The key service (`keygate serve`) on a free port, on SQLite or PostgreSQL, over HTTP or
//! HTTPS, with the management calls and CLI runs the tests make against it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::envoy::STARTUP_TIMEOUT;
use crate::http::{bearer, http_ok, send, send_tls, Reply};
use crate::process::{free_port, keygate_bin, random_hex, Proc};
use crate::time::rfc3339;
use crate::tls::Pki;

/// The admin key every test key service starts with (`KEYGATE_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "kg-e2e-admin-key-0123456789abcdef0123456789abcdef";
/// The prefix the test key services mint under.
pub const KEY_PREFIX: &str = "kg_test_";

/// Secrets the key services and Envoy share.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub gateway_key: String,
    pub service_token: String,
    /// `KEYGATE_SIGNING_KEY_SECRET` (64 hex digits): the service signs JWT API keys and
    /// encrypts its signing keys. The same on every replica, which all read the signing keys
    /// from the shared database.
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

    /// These gateway key and service token, with a fresh signing-key secret.
    fn with(gateway_key: &str, service_token: &str) -> Self {
        Secrets {
            gateway_key: gateway_key.to_string(),
            service_token: service_token.to_string(),
            signing_secret: random_hex(32),
        }
    }
}

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

/// What `GET /v1/stats` says about the feed endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedStats {
    pub requests: u64,
    pub waiting: u64,
}

pub struct KeyService {
    pub port: u16,
    pub service_token: String,
    pub proc: Proc,
    /// The CA that signed its certificate, when it speaks HTTPS.
    ca: Option<PathBuf>,
}

/// A SQLite database file in `dir`, as a URL.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("keygate.db").display())
}

impl KeyService {
    /// Spawns `keygate serve` on 127.0.0.1:`port` against `database` (a URL), with its files
    /// (admin key, log) in `dir` (created if missing), the test prefix and admin key, `secrets`,
    /// more environment `env`, and HTTPS with `tls`. Does not wait (see [`KeyService::wait_ready`]).
    pub fn spawn(
        dir: &Path,
        port: u16,
        database: &str,
        secrets: &Secrets,
        env: &[(&str, &str)],
        tls: Option<&Pki>,
    ) -> Self {
        fs::create_dir_all(dir).expect("creating the key service dir");
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
            .env("KEYGATE_GATEWAY_KEY", &secrets.gateway_key)
            .env("KEYGATE_SERVICE_TOKEN", &secrets.service_token)
            .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
            .env("KEYGATE_SIGNING_KEY_SECRET", &secrets.signing_secret)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        if let Some(pki) = tls {
            command
                .arg("--tls-cert")
                .arg(&pki.cert)
                .arg("--tls-key")
                .arg(&pki.key);
        }
        let name = if tls.is_some() {
            "key service (TLS)"
        } else {
            "key service"
        };
        KeyService {
            port,
            service_token: secrets.service_token.clone(),
            proc: Proc::spawn(name, command, dir.join("keygate.log")),
            ca: tls.map(|pki| pki.ca.clone()),
        }
    }

    /// Starts `keygate serve` on a fresh SQLite database in `dir` (created if missing), with a
    /// fresh signing-key secret (so it can mint JWT API keys). Does not wait.
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
        let secrets = Secrets::with(gateway_key, service_token);
        Self::spawn(dir, free_port(), &sqlite_url(dir), &secrets, env, None)
    }

    /// `keygate serve --tls-cert --tls-key` on a fresh SQLite database in `dir`; waits until
    /// `GET https://127.0.0.1:<port>/healthz` answers 200 to a client trusting the test CA.
    pub fn start_tls(dir: &Path, gateway_key: &str, service_token: &str, pki: &Pki) -> Self {
        let secrets = Secrets::with(gateway_key, service_token);
        let mut service = Self::spawn(dir, free_port(), &sqlite_url(dir), &secrets, &[], Some(pki));
        service.wait_ready();
        service
    }

    /// Waits for `GET /healthz` → 200 (panics with the log tail if it exits or times out).
    pub fn wait_ready(&mut self) {
        let url = self.base_url("/healthz");
        let ca = self.ca.clone();
        self.proc
            .wait_ready(&url.clone(), STARTUP_TIMEOUT, || match &ca {
                Some(ca) => send_tls(ca, "GET", &url, &[]).is_ok_and(|r| r.status == 200),
                None => http_ok(&url),
            });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Its URL in the scheme it speaks.
    fn base_url(&self, path: &str) -> String {
        if self.ca.is_some() {
            self.https_url(path)
        } else {
            self.url(path)
        }
    }

    fn admin(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let body = body.map(Value::to_string);
        admin_send(self, method, path, body.as_deref(), "application/json")
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

    /// `GET /api/v1/auth/keys/{id}/usage` from `from` (Unix seconds) by minute, whatever the
    /// status.
    pub fn usage_reply(&self, id: &str, from: i64) -> Reply {
        let path = format!(
            "/api/v1/auth/keys/{id}/usage?from={}&step=60",
            rfc3339(from)
        );
        self.admin("GET", &path, None)
    }

    /// `GET /v1/stats` with the service token → the JSON document.
    fn stats(&self) -> Value {
        let auth = bearer(&self.service_token);
        let reply = send(
            "GET",
            &self.url("/v1/stats"),
            &[("authorization", auth.as_str())],
            None,
        );
        assert_eq!(reply.status, 200, "GET /v1/stats: {reply:?}");
        reply.json()
    }

    /// A numeric field of `GET /v1/stats`.
    fn stat(&self, field: &str) -> u64 {
        let json = self.stats();
        json[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric `{field}` in /v1/stats: {json}"))
    }

    /// `GET /v1/stats` → the number of filter lookups served so far.
    pub fn lookups(&self) -> u64 {
        self.stat("lookups")
    }

    /// What `GET /v1/stats` says about the feed endpoint.
    pub fn feed_stats(&self) -> FeedStats {
        FeedStats {
            requests: self.stat("feed_requests"),
            waiting: self.stat("feed_waiting"),
        }
    }

    /// Runs the CLI (`keygate <args>`) against `server` with `extra_env`; never asserts.
    fn cli_output_against(
        &self,
        server: String,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Output {
        let mut command = Command::new(keygate_bin());
        command
            .args(args)
            .env("KEYGATE_SERVER", server)
            .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
            .env_remove("KEYGATE_CA_CERT")
            .stdin(Stdio::null())
            .envs(extra_env.iter().copied());
        command
            .output()
            .unwrap_or_else(|e| panic!("running keygate {args:?}: {e}"))
    }

    /// Runs the CLI (`keygate <args>`) against this service; returns stdout (asserts success).
    pub fn cli(&self, args: &[&str]) -> String {
        successful_cli(args, self.cli_output_against(self.url(""), args, &[]))
    }

    /// Runs the CLI against this service's HTTPS address with `extra_env`; never asserts.
    pub fn cli_tls_output(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        self.cli_output_against(self.https_url(""), args, extra_env)
    }

    /// `keygate --ca-cert CA <args>` against this service over HTTPS; stdout (asserts success).
    pub fn cli_tls(&self, ca: &Path, args: &[&str]) -> String {
        let ca = ca.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--ca-cert", ca.as_str()]);
        successful_cli(&all, self.cli_tls_output(&all, &[]))
    }

    /// `keygate keys create --json` over HTTPS.
    pub fn create_key_tls(&self, ca: &Path, name: &str, extra: &[&str]) -> IssuedKey {
        let mut args = vec!["keys", "create", "--name", name, "--json"];
        args.extend(extra);
        let stdout = self.cli_tls(ca, &args);
        let raw: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("keygate keys create --json printed no JSON ({e}): {stdout}")
        });
        IssuedKey::from_json(raw)
    }

    /// Sends SIGTERM, as an orchestrator stopping the service does.
    pub fn terminate(&mut self) {
        self.proc.terminate();
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout)
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }
}

/// The stdout of a CLI run that must have succeeded.
fn successful_cli(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "keygate {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Starts `keygate serve` on `port` against `database` (a URL) with its files in `dir`, and
/// waits for `/healthz`. Its log is appended to: a restarted replica keeps its earlier log.
pub fn start_replica(dir: &Path, port: u16, database: &str, secrets: &Secrets) -> KeyService {
    let mut service = KeyService::spawn(dir, port, database, secrets, &[], None);
    service.wait_ready();
    service
}

/// What `GET /v1/stats` of `service` says about the feed endpoint.
pub fn feed_stats(service: &KeyService) -> FeedStats {
    service.feed_stats()
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

/// A management request with the admin key and an optional raw body of `content_type`.
pub fn admin_send(
    service: &KeyService,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> Reply {
    admin_send_as(service, ADMIN_KEY, method, path, body, content_type)
}

/// A management request presenting `admin_key` (possibly a wrong one).
pub fn admin_send_as(
    service: &KeyService,
    admin_key: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: &str,
) -> Reply {
    let auth = bearer(admin_key);
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", content_type));
    }
    send(method, &service.url(path), &headers, body)
}

/// A management request with a JSON body (or none).
pub fn admin_json(service: &KeyService, method: &str, path: &str, body: Option<&Value>) -> Reply {
    service.admin(method, path, body)
}
