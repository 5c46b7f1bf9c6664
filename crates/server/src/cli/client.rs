//! The CLI's client of the REST API: the admin key, the transport (plain http only to
//! loopback unless `--insecure`, https with the system roots and `--ca-cert`), and errors.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use keygate_core::key::KeyId;
use serde_json::Value;

use crate::cli::args::ClientArgs;
use crate::config::ADMIN_KEY_ENV;

/// Where the demo stack writes its admin key; the CLI's last resort.
pub const DEFAULT_ADMIN_KEY_FILE: &str = ".keygate/admin.key";

const ADMIN_KEY_FILE_ENV: &str = "KEYGATE_ADMIN_KEY_FILE";

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{detail} (HTTP {status})")]
    Api {
        status: u16,
        detail: String,
        body: Option<Value>,
    },
    #[error("{0}")]
    Transport(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Api { .. } | Self::Transport(_) => ExitCode::from(1),
        }
    }
}

pub fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let transport = Transport::for_server(&args.server, args.insecure)?;
    let admin_key = read_admin_key(args.admin_key_file.as_deref())?;
    Client::new(&args.server, transport, args.ca_cert.as_deref(), admin_key)
}

pub fn parse_id(text: &str) -> Result<KeyId, CliError> {
    KeyId::parse(text).map_err(|_| {
        CliError::Usage(format!(
            "{text:?} is not a key id (16 characters of a-z and 2-7)"
        ))
    })
}

fn read_admin_key(flag_file: Option<&Path>) -> Result<String, CliError> {
    let from_file = |path: &Path| -> Result<String, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the admin key file {}: {e}",
                path.display()
            ))
        })?;
        let key = text.trim().to_owned();
        if key.is_empty() {
            return Err(CliError::Usage(format!(
                "the admin key file {} is empty",
                path.display()
            )));
        }
        Ok(key)
    };
    if let Some(path) = flag_file {
        return from_file(path);
    }
    if let Some(key) = std::env::var(ADMIN_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
    {
        return Ok(key.trim().to_owned());
    }
    if let Some(path) = std::env::var_os(ADMIN_KEY_FILE_ENV).filter(|p| !p.is_empty()) {
        return from_file(Path::new(&path));
    }
    let fallback = Path::new(DEFAULT_ADMIN_KEY_FILE);
    if fallback.exists() {
        return from_file(fallback);
    }
    Err(CliError::Usage(format!(
        "no admin key: set {ADMIN_KEY_ENV}, or pass --admin-key-file / set {ADMIN_KEY_FILE_ENV}"
    )))
}

/// A connection to the key service's REST API, with the admin key.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

/// How the CLI may reach a `--server`: decided before the admin key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `https://`: the server's certificate is verified.
    Https,
    /// `http://` to a loopback address.
    Loopback,
    /// `http://` elsewhere, allowed by `--insecure`.
    InsecureHttp,
}

impl Transport {
    pub fn for_server(server: &str, insecure: bool) -> Result<Self, CliError> {
        let url = url::Url::parse(server).map_err(|_| {
            CliError::Usage(format!(
                "--server {server:?} is not a URL such as https://keygate.example.com:8080 or http://127.0.0.1:8080"
            ))
        })?;
        match url.scheme() {
            "https" => Ok(Self::Https),
            "http" if is_loopback(&url) => Ok(Self::Loopback),
            "http" if insecure => Ok(Self::InsecureHttp),
            "http" => Err(CliError::Usage(format!(
                "refusing to send the admin key over plain http:// to {}: anyone on the network path could read it and manage every key. Serve the key service over HTTPS (keygate serve --tls-cert/--tls-key) and use https://, or pass --insecure if this network is trusted",
                url.host_str().unwrap_or_default()
            ))),
            other => Err(CliError::Usage(format!(
                "--server {server:?} has the scheme {other:?}: use https:// (or http:// on loopback)"
            ))),
        }
    }
}

/// `localhost`, 127.0.0.0/8 and ::1 (also as an IPv4-mapped address).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

impl Client {
    fn new(
        server: &str,
        transport: Transport,
        ca_cert: Option<&Path>,
        admin_key: String,
    ) -> Result<Self, CliError> {
        let base = server.trim_end_matches('/').to_owned();
        // No redirects: the admin key goes to the server named, and nowhere else.
        let mut agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .redirects(0);
        match transport {
            Transport::Https => {
                let tls = crate::tls::client_config(ca_cert)
                    .map_err(|error| CliError::Usage(error.to_string()))?;
                agent = agent.tls_config(tls);
            }
            Transport::Loopback => {}
            Transport::InsecureHttp => {
                eprintln!("warning: --insecure: sending the admin key unencrypted to {base}")
            }
        }
        let agent = agent.build();
        Ok(Self {
            agent,
            base,
            authorization: format!("Bearer {admin_key}"),
        })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.authorization)
            .set("Accept", "application/json");
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => response.into_json::<Value>().map_err(|e| {
                CliError::Transport(format!("the key service sent an unreadable answer: {e}"))
            }),
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_json::<Value>().ok();
                let detail = body
                    .as_ref()
                    .and_then(|b| b.get("detail"))
                    .and_then(Value::as_str)
                    .map_or_else(
                        || format!("the key service answered {status}"),
                        str::to_owned,
                    );
                Err(CliError::Api {
                    status,
                    detail,
                    body,
                })
            }
            Err(ureq::Error::Transport(error)) => Err(CliError::Transport(format!(
                "cannot reach the key service at {}: {error}",
                self.base
            ))),
        }
    }
}

pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
