//! Envoy: its configuration rendered from `envoy/envoy.yaml` (the single source of truth), the
//! edits some tests make to it, and the running proxy with its admin `/stats`.
//!
//! [`render_envoy_config`] substitutes the four `port_value`s, the wasm `filename` and the plugin
//! JSON after the `KEYGATE-PLUGIN-CONFIG` marker; [`with_service_endpoints`],
//! [`with_routes_before_catch_all`] and [`with_key_service_tls`] edit the rendered YAML.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::http::{http_ok, send};
use crate::process::{envoy_bin, project_root, Proc};
use crate::tls::CertFiles;

const PLUGIN_CONFIG_MARKER: &str = "# KEYGATE-PLUGIN-CONFIG";
const WASM_IN_TEMPLATE: &str = "filename: target/wasm32-wasip1/release/keygate.wasm";
const TLS_MARKER: &str = "# KEYGATE-SERVICE-TLS";
const CA_IN_TEMPLATE: &str = "/etc/keygate/ca.pem";
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(45);

// ── rendering ────────────────────────────────────────────────────────────────────────────────

pub fn envoy_template() -> String {
    let path = project_root().join("envoy/envoy.yaml");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

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
    let indent = indent_of(value_line);
    let mut end = marker + 2;
    while end < lines.len() {
        let line = lines[end];
        if !line.trim().is_empty() && indent_of(line) <= indent {
            break;
        }
        end += 1;
    }
    let before = lines[..marker + 2].iter().map(|s| s.to_string()).collect();
    let json = lines[marker + 2..end].join("\n");
    let after = lines[end..].iter().map(|s| s.to_string()).collect();
    (before, json, after)
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Lines back into a text with a final newline.
fn join_lines(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
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
    let indent = " ".repeat(indent_of(&value_line) + 2);
    let json = serde_json::to_string_pretty(plugin_config).expect("serializing the plugin config");
    let mut out: Vec<String> = before;
    out.extend(json.lines().map(|l| format!("{indent}{l}")));
    out.extend(after);
    let mut text = join_lines(out);
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

/// `yaml` (rendered with `first` as the key service's port) with `keygate_service`
/// load-balancing over `more` endpoints too.
pub fn with_service_endpoints(yaml: &str, first: u16, more: &[u16]) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let needle = format!("port_value: {first} ");
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
    for port in more {
        out.push(lines[at - 2].to_string());
        out.push(lines[at - 1].to_string());
        out.push(lines[at].replace(&needle, &format!("port_value: {port} ")));
    }
    out.extend(lines[at + 1..].iter().map(|s| s.to_string()));
    join_lines(out)
}

/// `yaml` (a rendered `envoy/envoy.yaml`) with `routes` (YAML list items, written at column 0,
/// e.g. `"- name: x\n  match: ..."`) inserted before the catch-all `- match: { prefix: "/" }`
/// route, indented like it.
pub fn with_routes_before_catch_all(yaml: &str, routes: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let catch_all = lines
        .iter()
        .position(|l| l.trim_start() == r#"- match: { prefix: "/" }"#)
        .unwrap_or_else(|| {
            panic!("envoy/envoy.yaml has no catch-all route `- match: {{ prefix: \"/\" }}`")
        });
    let indent = " ".repeat(indent_of(lines[catch_all]));
    let mut out: Vec<String> = lines[..catch_all].iter().map(|s| s.to_string()).collect();
    out.extend(routes.lines().map(|l| format!("{indent}{l}")));
    out.extend(lines[catch_all..].iter().map(|s| s.to_string()));
    join_lines(out)
}

/// `yaml` (a rendered `envoy/envoy.yaml`) with the filters of `envoy/geoip.yaml` (Keygate in the
/// strip role, then Envoy's geoip filter) inserted before the Keygate filter, as the README
/// says to: the fragment's wasm `filename` becomes `wasm`, its database `db`, and with
/// `xff_hops` > 0 its commented `xff_config` line is switched on with that many hops.
pub fn with_geoip(yaml: &str, wasm: &Path, db: &Path, xff_hops: u32) -> String {
    let path = project_root().join("envoy/geoip.yaml");
    let mut fragment =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    fragment = replace_once(
        &fragment,
        WASM_IN_TEMPLATE,
        &format!("filename: {}", wasm.display()),
    );
    fragment = replace_once(
        &fragment,
        "country_db_path: /etc/keygate/GeoLite2-Country.mmdb",
        &format!("country_db_path: {}", db.display()),
    );
    if xff_hops > 0 {
        fragment = replace_once(
            &fragment,
            "# xff_config: { xff_num_trusted_hops: 1 }",
            &format!("xff_config: {{ xff_num_trusted_hops: {xff_hops} }}"),
        );
    }
    let lines: Vec<&str> = yaml.lines().collect();
    let keygate = lines
        .iter()
        .position(|l| l.trim_start() == "- name: envoy.filters.http.wasm")
        .unwrap_or_else(|| panic!("the rendered envoy.yaml has no wasm HTTP filter"));
    let indent = " ".repeat(indent_of(lines[keygate]));
    let mut out: Vec<String> = lines[..keygate].iter().map(|s| s.to_string()).collect();
    out.extend(fragment.lines().map(|l| format!("{indent}{l}")));
    out.extend(lines[keygate..].iter().map(|s| s.to_string()));
    join_lines(out)
}

/// `yaml` (rendered from envoy/envoy.yaml) with the key-service cluster's commented-out
/// `transport_socket` switched on and trusting `ca` (so the documented block is the one tested).
pub fn with_key_service_tls(yaml: &str, ca: &Path) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.trim_start().starts_with(TLS_MARKER))
        .unwrap_or_else(|| panic!("envoy/envoy.yaml lost its `{TLS_MARKER}` marker"));
    let indent = &lines[marker][..indent_of(lines[marker])];
    let commented = format!("{indent}# ");
    let mut out: Vec<String> = lines[..marker].iter().map(|s| s.to_string()).collect();
    let mut at = marker + 1;
    while let Some(rest) = lines.get(at).and_then(|l| l.strip_prefix(&commented)) {
        out.push(format!("{indent}{rest}"));
        at += 1;
    }
    assert!(
        at > marker + 1 && out[marker].trim_start() == "transport_socket:",
        "the lines after `{TLS_MARKER}` must be the commented `transport_socket:` block"
    );
    out.extend(lines[at..].iter().map(|s| s.to_string()));
    replace_once(&join_lines(out), CA_IN_TEMPLATE, &ca.display().to_string())
}

/// `yaml` (rendered from envoy/envoy.yaml) with the listener speaking TLS and requiring a
/// client certificate signed by `ca` (mTLS): `server` is the listener's certificate. The
/// filter then reads the client's URI SAN (`connection.uri_san_peer_certificate`).
pub fn with_listener_mtls(yaml: &str, ca: &Path, server: &CertFiles) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let chains = lines
        .iter()
        .position(|l| l.trim_start() == "filter_chains:")
        .expect("the listener's `filter_chains:` in envoy/envoy.yaml");
    let item = chains + 1;
    assert!(
        lines.get(item).map(|l| l.trim_start()) == Some("- filters:"),
        "the listener's first filter chain must start with `- filters:`"
    );
    let indent = " ".repeat(indent_of(lines[item]));
    let tls = format!(
        r#"- transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      require_client_certificate: true
      common_tls_context:
        tls_certificates:
        - certificate_chain: {{ filename: "{cert}" }}
          private_key: {{ filename: "{key}" }}
        validation_context:
          trusted_ca: {{ filename: "{ca}" }}
  filters:"#,
        cert = server.cert.display(),
        key = server.key.display(),
        ca = ca.display(),
    );
    let mut out: Vec<String> = lines[..item].iter().map(|s| s.to_string()).collect();
    out.extend(tls.lines().map(|l| format!("{indent}{l}")));
    out.extend(lines[item + 1..].iter().map(|s| s.to_string()));
    join_lines(out)
}

// ── the proxy ────────────────────────────────────────────────────────────────────────────────

pub struct Envoy {
    pub admin_port: u16,
    pub proc: Proc,
}

impl Envoy {
    /// Starts Envoy with `workers` worker threads on `config`, with the gateway key and service
    /// token in its environment; does not wait (see [`Envoy::wait_ready`]).
    pub fn start(
        dir: &Path,
        config: &str,
        ports: Ports,
        workers: usize,
        secrets: [&str; 2],
    ) -> Self {
        let [gateway_key, service_token] = secrets;
        let config_path = dir.join("envoy.yaml");
        fs::write(&config_path, config).expect("writing envoy.yaml");
        let mut command = Command::new(envoy_bin());
        command
            .current_dir(project_root())
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(workers.to_string())
            .args(["--disable-hot-restart", "-l", "info"])
            .env("KEYGATE_GATEWAY_KEY", gateway_key)
            .env("KEYGATE_SERVICE_TOKEN", service_token);
        let proc = Proc::spawn("envoy", command, dir.join("envoy.log"));
        Envoy {
            admin_port: ports.admin,
            proc,
        }
    }

    /// Waits for the admin `/ready` → 200.
    pub fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        self.proc
            .wait_ready(&url.clone(), STARTUP_TIMEOUT, || http_ok(&url));
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
