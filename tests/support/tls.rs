//! The key service over HTTPS: a CA and a server certificate generated per test (`rcgen`),
//! `keygate serve --tls-cert --tls-key`, an HTTPS client that trusts only that CA, and Envoy's
//! `keygate_service` cluster switched to TLS by uncommenting the `transport_socket` block that
//! `envoy/envoy.yaml` ships commented out (so the documented block is the one tested).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::{
    default_plugin_config, envoy_bin, free_port, keygate_bin, random_hex, render_envoy_config,
    replace_once, serve_command, tail, wait_until, wasm_path, Echo, Envoy, IssuedKey, KeyService,
    Ports, Proc, Reply, Stack, TempDir, ADMIN_KEY, STARTUP_TIMEOUT,
};

/// The key service's name in its certificate, and the SNI Envoy sends (as in envoy.yaml).
pub const SERVICE_NAME: &str = "keygate.internal";
const TLS_MARKER: &str = "# KEYGATE-SERVICE-TLS";
const CA_IN_TEMPLATE: &str = "/etc/keygate/ca.pem";

/// PEM files: a CA, and a certificate for [`SERVICE_NAME`] and 127.0.0.1 that it signed.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("creating the PKI dir");
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca_params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Keygate e2e CA");
        let ca = ca_params.self_signed(&ca_key).expect("the CA certificate");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params = rcgen::CertificateParams::new(vec![SERVICE_NAME.into(), "127.0.0.1".into()])
            .expect("server certificate parameters");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("the server certificate");
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&pki.ca, ca.pem()).expect("writing ca.pem");
        fs::write(&pki.cert, cert.pem()).expect("writing cert.pem");
        fs::write(&pki.key, key.serialize_pem()).expect("writing key.pem");
        pki
    }
}

/// `yaml` (rendered from envoy/envoy.yaml) with the key-service cluster's commented-out
/// `transport_socket` switched on and trusting `ca`.
pub fn with_key_service_tls(yaml: &str, ca: &Path) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let marker = lines
        .iter()
        .position(|l| l.trim_start().starts_with(TLS_MARKER))
        .unwrap_or_else(|| panic!("envoy/envoy.yaml lost its `{TLS_MARKER}` marker"));
    let indent = &lines[marker][..lines[marker].len() - lines[marker].trim_start().len()];
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
    let mut text = out.join("\n");
    text.push('\n');
    replace_once(&text, CA_IN_TEMPLATE, &ca.display().to_string())
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
    let mut request = https_agent(ca).request(method, url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(error)) => return Err(error.to_string()),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    let body = response.into_string().unwrap_or_default();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl KeyService {
    /// `keygate serve --tls-cert --tls-key` on a fresh SQLite database in `dir`; waits until
    /// `GET https://127.0.0.1:<port>/healthz` answers 200 to a client trusting the test CA.
    pub fn start_tls(dir: &Path, gateway_key: &str, service_token: &str, pki: &Pki) -> Self {
        let port = free_port();
        let database = format!("sqlite://{}", dir.join("keygate.db").display());
        let mut command = serve_command(
            dir,
            port,
            &database,
            [gateway_key, service_token, &random_hex(32)],
        );
        command
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key);
        let mut service = KeyService {
            port,
            service_token: service_token.to_string(),
            proc: Proc::spawn("key service (TLS)", command, dir.join("keygate.log")),
        };
        let url = service.https_url("/healthz");
        let ok = wait_until(STARTUP_TIMEOUT, || {
            service.proc.assert_alive();
            send_tls(&pki.ca, "GET", &url, &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ok,
            "key service not healthy at {url}; log:\n{}",
            tail(&service.proc.log, 30)
        );
        service
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Runs the CLI against this service's HTTPS address with `extra_env`; never asserts.
    pub fn cli_tls_output(&self, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(keygate_bin());
        command
            .args(args)
            .env("KEYGATE_SERVER", self.https_url(""))
            .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
            .env_remove("KEYGATE_CA_CERT")
            .stdin(Stdio::null());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command
            .output()
            .unwrap_or_else(|e| panic!("running keygate {args:?}: {e}"))
    }

    /// `keygate --ca-cert CA <args>` against this service over HTTPS; stdout (asserts success).
    pub fn cli_tls(&self, ca: &Path, args: &[&str]) -> String {
        let ca = ca.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--ca-cert", ca.as_str()]);
        let output = self.cli_tls_output(&all, &[]);
        assert!(
            output.status.success(),
            "keygate {all:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
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
        let pid = self
            .proc
            .child
            .as_ref()
            .expect("the key service is running")
            .id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.proc.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let wasm = wasm_path();
    let _ = envoy_bin();
    let dir = TempDir::new(label);
    let pki = Pki::generate(&dir.path().join("pki"));
    let gateway_key = random_hex(32);
    let service_token = random_hex(32);
    let mut echo = Echo::start(dir.path());
    let service = KeyService::start_tls(
        &dir.path().join("service"),
        &gateway_key,
        &service_token,
        &pki,
    );
    let ports = Ports {
        listener: free_port(),
        admin: free_port(),
        service: service.port,
        echo: echo.port,
    };
    let rendered = render_envoy_config(ports, &wasm, &default_plugin_config());
    let config = edit_yaml(&with_key_service_tls(&rendered, &pki.ca));
    echo.wait_ready();
    prepare(&service, &pki);
    let mut envoy = Envoy::start(dir.path(), &config, ports, &gateway_key, &service_token);
    envoy.wait_ready();
    let stack = Stack {
        envoy,
        service,
        echo,
        ports,
        dir,
    };
    (stack, pki)
}
