//! Helpers for the limits and rollout tests (`e2e/limits.rs`, `e2e/rollout.rs`): raw admin
//! requests, RFC 3339 timestamps, and a [`Stack`] whose Envoy YAML (not only the plugin JSON) is
//! edited, e.g. to add named routes with `filter_metadata.keygate` before the catch-all.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{
    bearer, default_plugin_config, envoy_bin, free_port, keygate_bin, random_hex,
    render_envoy_config, send, wasm_path, Echo, Envoy, KeyService, Ports, Reply, Stack, TempDir,
    ADMIN_KEY,
};

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `secs` (Unix seconds, UTC) as RFC 3339, e.g. `2030-01-01T00:00:00Z`.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

/// A management request with a JSON body (or none) through the harness's own admin helper.
pub fn admin_json(service: &KeyService, method: &str, path: &str, body: Option<&Value>) -> Reply {
    service.admin(method, path, body)
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
    let line = lines[catch_all];
    let indent = " ".repeat(line.len() - line.trim_start().len());
    let mut out: Vec<String> = lines[..catch_all].iter().map(|s| s.to_string()).collect();
    out.extend(routes.lines().map(|l| format!("{indent}{l}")));
    out.extend(lines[catch_all..].iter().map(|s| s.to_string()));
    let mut text = out.join("\n");
    text.push('\n');
    text
}

impl Stack {
    /// Like [`Stack::start_with`], and the rendered Envoy YAML is then changed by `edit_yaml`.
    pub fn start_with_yaml(
        label: &str,
        edit: impl FnOnce(&mut Value),
        edit_yaml: impl FnOnce(&str) -> String,
    ) -> Self {
        let wasm = wasm_path();
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
        let config = edit_yaml(&render_envoy_config(ports, &wasm, &plugin));
        echo.wait_ready();
        service.wait_ready();
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

    /// The gateway key this stack's Envoy and key service share.
    pub fn gateway_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.key")).expect("reading gateway.key")
    }
}

impl Stack {
    /// Like [`Stack::start_prepared`], with more environment for the key service (`service_env`).
    pub fn start_with_service_env(
        label: &str,
        edit: impl FnOnce(&mut Value),
        service_env: &[(&str, &str)],
        prepare: impl FnOnce(&KeyService),
    ) -> Self {
        let wasm = wasm_path();
        let _ = keygate_bin();
        let _ = envoy_bin();
        let dir = TempDir::new(label);
        let gateway_key = random_hex(32);
        let service_token = random_hex(32);
        fs::write(dir.path().join("gateway.key"), &gateway_key).expect("writing gateway.key");
        fs::write(dir.path().join("service.token"), &service_token).expect("writing service.token");
        let mut echo = Echo::start(dir.path());
        let mut service = KeyService::start_with_env(
            &dir.path().join("service"),
            &gateway_key,
            &service_token,
            service_env,
        );
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
}
