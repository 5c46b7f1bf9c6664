//! The whole stack on fresh loopback ports in a fresh directory, built by one
//! [`StackBuilder`]: the echo upstream (`scripts/echo_upstream.py`), N key services on one
//! database (SQLite file or PostgreSQL), optionally over HTTPS or behind a [`FeedProxy`], and
//! Envoy with N workers running `keygate.wasm`, its config rendered from `envoy/envoy.yaml`.
//!
//! [`Cluster`] holds every key service; [`Stack`] is the common case of one. Everything started
//! is killed on drop; when a test fails, the tails of the logs are printed and the temp dir is
//! kept.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::envoy::{
    default_plugin_config, render_envoy_config, with_key_service_tls, with_service_endpoints,
    Envoy, Ports, STARTUP_TIMEOUT,
};
use crate::http::{bearer, http_ok, send, Reply};
use crate::poll::wait_until;
use crate::process::{envoy_bin, free_port, keygate_bin, project_root, tail, wasm_path};
use crate::process::{Proc, TempDir};
use crate::proxy::FeedProxy;
use crate::service::{sqlite_url, start_replica, FeedStats, KeyService, Secrets};
use crate::tls::Pki;

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
        self.proc
            .wait_ready(&url.clone(), STARTUP_TIMEOUT, || http_ok(&url));
    }
}

// ── the builder ──────────────────────────────────────────────────────────────────────────────

/// Where the key services keep their keys.
pub enum Database {
    /// One SQLite file beside the first key service's log (one replica only makes sense).
    Sqlite,
    /// This PostgreSQL database URL (shared by every replica).
    Postgres(String),
}

/// The shape of a [`Cluster`], for [`Cluster::start`].
pub struct Options {
    pub replicas: usize,
    pub database: Database,
    /// Put a [`FeedProxy`] in front of replica 0 and make it Envoy's only endpoint.
    pub feed_proxy: bool,
}

type PrepareFn<'a> = Box<dyn FnOnce(&[KeyService], Option<&Pki>) + 'a>;

/// What to start; [`StackBuilder::start`] starts it. By default: one key service on SQLite,
/// Envoy with 2 workers and `envoy/envoy.yaml`'s own plugin configuration.
pub struct StackBuilder<'a> {
    label: String,
    replicas: usize,
    database: Database,
    feed_proxy: bool,
    tls: bool,
    workers: usize,
    service_env: Vec<(String, String)>,
    plugin: Box<dyn FnOnce(&mut Value) + 'a>,
    yaml: Box<dyn FnOnce(&str) -> String + 'a>,
    prepare: PrepareFn<'a>,
}

impl<'a> StackBuilder<'a> {
    /// `label` names the temp dir.
    pub fn new(label: &str) -> Self {
        StackBuilder {
            label: label.to_string(),
            replicas: 1,
            database: Database::Sqlite,
            feed_proxy: false,
            tls: false,
            workers: 2,
            service_env: Vec::new(),
            plugin: Box::new(|_| {}),
            yaml: Box::new(str::to_owned),
            prepare: Box::new(|_, _| {}),
        }
    }

    /// `n` key-service replicas (at least one), all endpoints of Envoy's `keygate_service`.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    pub fn database(mut self, database: Database) -> Self {
        self.database = database;
        self
    }

    /// A [`FeedProxy`] in front of replica 0, Envoy's only endpoint.
    pub fn feed_proxy(mut self, on: bool) -> Self {
        self.feed_proxy = on;
        self
    }

    /// The key services speak HTTPS with a test CA ([`Pki`]) that Envoy trusts.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Envoy's worker threads (`--concurrency`).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// More environment for `keygate serve`.
    pub fn service_env(mut self, env: &[(&str, &str)]) -> Self {
        self.service_env = env
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Changes the plugin configuration (e.g. a 1 s cache TTL).
    pub fn plugin(mut self, edit: impl FnOnce(&mut Value) + 'a) -> Self {
        self.plugin = Box::new(edit);
        self
    }

    /// Changes the rendered Envoy YAML (e.g. to add named routes).
    pub fn yaml(mut self, edit: impl FnOnce(&str) -> String + 'a) -> Self {
        self.yaml = Box::new(edit);
        self
    }

    /// Runs against the ready key services before Envoy starts (e.g. to mint keys whose
    /// signing keys Envoy's first JWKS fetch must see).
    pub fn prepare(mut self, prepare: impl FnOnce(&[KeyService], Option<&Pki>) + 'a) -> Self {
        self.prepare = Box::new(prepare);
        self
    }

    /// Starts everything with one key service.
    pub fn start_one(self) -> Stack {
        let Cluster {
            envoy,
            services,
            echo,
            pki,
            ports,
            dir,
            ..
        } = self.replicas(1).start();
        let service = services
            .into_iter()
            .next()
            .expect("a stack has a key service");
        Stack {
            _logs_on_panic: LogsOnPanic::of(&envoy, std::slice::from_ref(&service)),
            envoy,
            service,
            echo,
            pki,
            ports,
            dir,
        }
    }

    /// Starts everything: the echo upstream, the key services one after the other, then Envoy.
    pub fn start(self) -> Cluster {
        let wasm = wasm_path();
        // Resolve the other binaries before starting anything, so a missing one fails first.
        let _ = keygate_bin();
        let _ = envoy_bin();
        let dir = TempDir::new(&self.label);
        let secrets = Secrets::random();
        fs::write(dir.path().join("gateway.key"), &secrets.gateway_key)
            .expect("writing gateway.key");
        fs::write(dir.path().join("service.token"), &secrets.service_token)
            .expect("writing service.token");
        let pki = self.tls.then(|| Pki::generate(&dir.path().join("pki")));
        let database = match self.database {
            Database::Sqlite => sqlite_url(&replica_dir(dir.path(), 0)),
            Database::Postgres(url) => url,
        };
        let env: Vec<(&str, &str)> = self
            .service_env
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut echo = Echo::start(dir.path());
        // One after the other: the first one migrates the database and installs the admin key.
        let services: Vec<KeyService> = (0..self.replicas)
            .map(|i| {
                let dir = replica_dir(dir.path(), i);
                let mut service =
                    KeyService::spawn(&dir, free_port(), &database, &secrets, &env, pki.as_ref());
                service.wait_ready();
                service
            })
            .collect();
        let proxy = self.feed_proxy.then(|| FeedProxy::start(services[0].port));
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
        (self.plugin)(&mut plugin);
        let render = |ports: Ports| {
            let mut config = render_envoy_config(ports, &wasm, &plugin);
            config = with_service_endpoints(&config, endpoints[0], &endpoints[1..]);
            if let Some(pki) = &pki {
                config = with_key_service_tls(&config, &pki.ca);
            }
            config
        };
        let config = (self.yaml)(&render(ports));
        // Further Envoys (`Cluster::extra_envoy`) get the same configuration on their own
        // listener and admin ports (the YAML edit is not repeated).
        let extra_config = render(Ports {
            listener: EXTRA_LISTENER,
            admin: EXTRA_ADMIN,
            ..ports
        });
        echo.wait_ready();
        (self.prepare)(&services, pki.as_ref());
        let mut envoy = Envoy::start(
            dir.path(),
            &config,
            ports,
            self.workers,
            [&secrets.gateway_key, &secrets.service_token],
        );
        envoy.wait_ready();
        Cluster {
            _logs_on_panic: LogsOnPanic::of(&envoy, &services),
            envoy,
            extra_config,
            workers: self.workers,
            proxy,
            services,
            echo,
            database,
            secrets,
            pki,
            ports,
            dir,
        }
    }
}

/// Placeholder ports in the configuration of further Envoys (replaced when one starts).
const EXTRA_LISTENER: u16 = 1;
const EXTRA_ADMIN: u16 = 2;

fn replica_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("replica-{i}"))
}

/// Log tails (Envoy's, then each key service's) for assertion messages and failed tests.
fn log_tails(envoy: &Path, services: &[PathBuf]) -> String {
    let mut out = format!(
        "──── envoy log tail ({}) ────\n{}\n",
        envoy.display(),
        tail(envoy, 60)
    );
    for (i, log) in services.iter().enumerate() {
        out.push_str(&format!(
            "──── key service {i} log tail ({}) ────\n{}\n",
            log.display(),
            tail(log, 30)
        ));
    }
    out
}

/// Prints the log tails when dropped while the test panics.
struct LogsOnPanic {
    envoy: PathBuf,
    services: Vec<PathBuf>,
}

impl LogsOnPanic {
    fn of(envoy: &Envoy, services: &[KeyService]) -> Self {
        LogsOnPanic {
            envoy: envoy.proc.log.clone(),
            services: services.iter().map(|s| s.proc.log.clone()).collect(),
        }
    }
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", log_tails(&self.envoy, &self.services));
        }
    }
}

// ── N key services ───────────────────────────────────────────────────────────────────────────

/// Echo upstream + N key services on one database + Envoy.
pub struct Cluster {
    // Field order is drop order: the log tails of a failed test, Envoy, ..., the temp dir last.
    _logs_on_panic: LogsOnPanic,
    pub envoy: Envoy,
    /// The configuration of further Envoys, with placeholder ports.
    extra_config: String,
    workers: usize,
    pub proxy: Option<FeedProxy>,
    pub services: Vec<KeyService>,
    #[allow(dead_code)] // held so that it lives (and is killed) with the cluster
    echo: Echo,
    pub database: String,
    pub secrets: Secrets,
    /// The test CA, when the key services speak HTTPS.
    pub pki: Option<Pki>,
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
        StackBuilder::new(label)
            .replicas(options.replicas)
            .database(options.database)
            .feed_proxy(options.feed_proxy)
            .plugin(edit)
            .prepare(|services, _| prepare(services))
            .start()
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

    /// Starts one more Envoy (`n`: 1, 2, ... names its directory) with the first one's plugin
    /// configuration and worker count, on the same key services and upstream: a fleet of
    /// gateways. Waits until it is ready; answers it and its listener port.
    pub fn extra_envoy(&self, n: usize) -> (Envoy, u16) {
        let ports = Ports {
            listener: free_port(),
            admin: free_port(),
            ..self.ports
        };
        let config = self
            .extra_config
            .replacen(
                &format!("port_value: {EXTRA_LISTENER} "),
                &format!("port_value: {} ", ports.listener),
                1,
            )
            .replacen(
                &format!("port_value: {EXTRA_ADMIN} "),
                &format!("port_value: {} ", ports.admin),
                1,
            );
        let dir = self.dir.path().join(format!("envoy-{n}"));
        fs::create_dir_all(&dir).expect("creating an Envoy dir");
        let mut envoy = Envoy::start(
            &dir,
            &config,
            ports,
            self.workers,
            [&self.secrets.gateway_key, &self.secrets.service_token],
        );
        envoy.wait_ready();
        (envoy, ports.listener)
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
            &replica_dir(self.dir.path(), i),
            port,
            &self.database,
            &self.secrets,
        );
    }

    /// `wasmcustom.keygate.<name>` (0 when absent).
    pub fn counter(&self, name: &str) -> u64 {
        self.envoy.keygate_counter(name)
    }

    /// Feed stats of every replica.
    pub fn feed_stats(&self) -> Vec<FeedStats> {
        self.services.iter().map(KeyService::feed_stats).collect()
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
        let services: Vec<PathBuf> = self.services.iter().map(|s| s.proc.log.clone()).collect();
        log_tails(&self.envoy.proc.log, &services)
    }
}

// ── one key service ──────────────────────────────────────────────────────────────────────────

/// Echo upstream + one key service + Envoy with the filter.
pub struct Stack {
    // Field order is drop order: the log tails of a failed test, Envoy, ..., the temp dir last.
    _logs_on_panic: LogsOnPanic,
    pub envoy: Envoy,
    pub service: KeyService,
    #[allow(dead_code)] // held so that it lives (and is killed) with the stack
    echo: Echo,
    /// The test CA, when the key service speaks HTTPS.
    pub pki: Option<Pki>,
    pub ports: Ports,
    pub dir: TempDir,
}

impl Stack {
    /// The stack with `envoy/envoy.yaml`'s own plugin configuration.
    pub fn start(label: &str) -> Self {
        StackBuilder::new(label).start_one()
    }

    /// The stack with the plugin configuration changed by `edit` (e.g. a 1 s cache TTL).
    pub fn start_with(label: &str, edit: impl FnOnce(&mut Value)) -> Self {
        StackBuilder::new(label).plugin(edit).start_one()
    }

    /// Like [`Stack::start_with`], and runs `prepare` against the ready key service before
    /// Envoy starts (e.g. to mint keys whose signing keys Envoy's first JWKS fetch must see).
    pub fn start_prepared(
        label: &str,
        edit: impl FnOnce(&mut Value),
        prepare: impl FnOnce(&KeyService),
    ) -> Self {
        Self::start_with_service_env(label, edit, &[], prepare)
    }

    /// Like [`Stack::start_with`], and the rendered Envoy YAML is then changed by `edit_yaml`.
    pub fn start_with_yaml(
        label: &str,
        edit: impl FnOnce(&mut Value),
        edit_yaml: impl FnOnce(&str) -> String,
    ) -> Self {
        StackBuilder::new(label)
            .plugin(edit)
            .yaml(edit_yaml)
            .start_one()
    }

    /// Like [`Stack::start_prepared`], with more environment for the key service (`service_env`).
    pub fn start_with_service_env(
        label: &str,
        edit: impl FnOnce(&mut Value),
        service_env: &[(&str, &str)],
        prepare: impl FnOnce(&KeyService),
    ) -> Self {
        StackBuilder::new(label)
            .plugin(edit)
            .service_env(service_env)
            .prepare(|services, _| prepare(&services[0]))
            .start_one()
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

    /// The gateway key this stack's Envoy and key service share.
    pub fn gateway_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.key")).expect("reading gateway.key")
    }
}

/// Echo upstream + the key service over HTTPS + Envoy whose `keygate_service` cluster speaks
/// TLS to it, trusting the test CA. The rendered Envoy YAML is then changed by `edit_yaml`;
/// `prepare` runs against the ready key service before Envoy starts.
pub fn start_tls_stack(
    label: &str,
    edit_yaml: impl FnOnce(&str) -> String,
    prepare: impl FnOnce(&KeyService, &Pki),
) -> (Stack, Pki) {
    let mut stack = StackBuilder::new(label)
        .tls()
        .yaml(edit_yaml)
        .prepare(|services, pki| prepare(&services[0], pki.expect("the test CA")))
        .start_one();
    let pki = stack.pki.take().expect("the test CA");
    (stack, pki)
}
