//! The command line: `keygate serve`, `keygate keys
//! create|list|show|update|revoke|rotate|expire|usage|import`, `keygate signing-keys
//! list|rotate` and `keygate audit`.
//!
//! The client commands are a thin client of the REST API; they never touch the database.
//! Every client command takes `--json` (print the service's JSON answer instead of text);
//! `serve` does not (its logs are always JSON lines). Output to a closed pipe
//! (`keygate audit --json | head`) ends the command quietly.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keygate_core::key::KeyId;
use serde_json::{json, Map, Value};

use crate::config::{ServeArgs, ADMIN_KEY_ENV};

/// `println!` for the CLI: a closed stdout (the reader of a pipe went away) ends the process
/// quietly with success instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the CLI, with the same handling of a closed stdout as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod audit;
mod import;
mod limits;
pub use audit::{run_audit, AuditArgs};
pub use import::ImportArgs;
pub use limits::{LimitArgs, UpdateArgs, UsageArgs};

pub use crate::service::validate::parse_duration;

/// Writes to stdout. When the reader is gone (`EPIPE`), there is nobody left to tell: the
/// process exits at once with success, as `head` expects of the commands it cuts short.
pub(crate) fn write_stdout(text: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {error}");
        std::process::exit(1);
    }
}

/// Where the demo stack writes its admin key; the CLI's last resort.
pub const DEFAULT_ADMIN_KEY_FILE: &str = ".keygate/admin.key";
const ADMIN_KEY_FILE_ENV: &str = "KEYGATE_ADMIN_KEY_FILE";

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "Keygate: API keys for Envoy — key service and CLI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the key service (REST API and the filter's lookup endpoint).
    Serve(ServeArgs),
    /// Manage API keys through a running key service.
    Keys(KeysArgs),
    /// Manage the keys the service signs JWT API keys with.
    SigningKeys(SigningKeysArgs),
    /// Show the management audit log, newest first.
    Audit(AuditArgs),
}

/// How the CLI reaches the key service; shared by every client command.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the key service.
    #[arg(
        long,
        env = "KEYGATE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// File to read the admin key from. Without it: $KEYGATE_ADMIN_KEY, then the file named
    /// by $KEYGATE_ADMIN_KEY_FILE, then .keygate/admin.key.
    #[arg(long, global = true, value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Print the key service's JSON answer (one line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// For an https:// server: a CA certificate file (PEM) to trust besides the system's roots.
    #[arg(long, env = "KEYGATE_CA_CERT", global = true, value_name = "PEM FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Send the admin key over plain http:// to a host other than loopback (anyone on the
    /// network path can read it; use https:// instead).
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Args)]
pub struct SigningKeysArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SigningKeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// List signing keys (kid, algorithm, dates, whether the JWKS publishes it).
    List,
    /// Add a new signing key for an algorithm and retire the previous one; it stays in the
    /// JWKS until the last token it signed has expired.
    Rotate {
        /// ES256 (default), EdDSA or RS256.
        #[arg(long)]
        algorithm: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Mint a new key; its plaintext is printed once.
    Create(CreateArgs),
    /// List keys.
    List(ListArgs),
    /// Show one key.
    Show { id: String },
    /// Revoke a key (idempotent).
    Revoke { id: String },
    /// Replace a key with a new one; the old one keeps working for the grace period.
    Rotate(RotateArgs),
    /// End a key now: its expiry becomes the current time (idempotent).
    Expire { id: String },
    /// Change a key's name, scopes, metadata or limits (--clear-* removes a limit).
    Update(UpdateArgs),
    /// Show a key's usage per step: a table and a bar chart (--json: the raw answer).
    Usage(UsageArgs),
    /// Import legacy keys from CSV or JSON (plaintext keys are hashed before sending).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for people (1-128 characters).
    #[arg(long)]
    pub name: String,
    /// A scope the key grants, such as demo:read (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Who the key belongs to; becomes the subject upstream (default: the key id).
    #[arg(long)]
    pub owner: Option<String>,
    /// Lifetime: seconds (3600) or a duration such as 3600s, 90m, 12h or 30d.
    #[arg(long, conflicts_with = "expires_at")]
    pub expires_in: Option<String>,
    /// Expiry as RFC 3339, such as 2030-01-01T00:00:00Z.
    #[arg(long)]
    pub expires_at: Option<String>,
    /// A JSON object stored with the key.
    #[arg(long)]
    pub metadata: Option<String>,
    /// Key format: opaque (default) or jwt (a JWT signed by the service; needs an expiry
    /// unless the service allows JWT keys without one).
    #[arg(long)]
    pub format: Option<String>,
    /// JWT keys: signature algorithm ES256 (default), EdDSA or RS256.
    #[arg(long, requires = "format")]
    pub algorithm: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Keys per page (1-500, server default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Only keys with this status: active, revoked or expired.
    #[arg(long)]
    pub status: Option<String>,
    /// Continue from a previous page's next_cursor.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    pub id: String,
    /// How long the old key keeps working: 0, 3600s, 90m, 24h, 7d (default 24h, max 30d).
    #[arg(long)]
    pub grace: Option<String>,
}

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
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(2),
            Self::Api { .. } | Self::Transport(_) => ExitCode::from(1),
        }
    }
}

/// Runs a `keys` command and reports failures on stderr.
pub fn run_keys(args: KeysArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

/// Runs a `signing-keys` command and reports failures on stderr.
pub fn run_signing_keys(args: SigningKeysArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute_signing_keys(args))
}

fn report(json_output: bool, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let (
                true,
                CliError::Api {
                    body: Some(body), ..
                },
            ) = (json_output, &error)
            {
                outln!("{body}");
            }
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let transport = Transport::for_server(&args.server, args.insecure)?;
    let admin_key = read_admin_key(args.admin_key_file.as_deref())?;
    Client::new(&args.server, transport, args.ca_cert.as_deref(), admin_key)
}

fn execute_signing_keys(args: SigningKeysArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    match args.command {
        SigningKeysCommand::List => {
            let answer = client.call("GET", "/api/v1/signing-keys", None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_signing_keys(&answer);
            }
        }
        SigningKeysCommand::Rotate { algorithm } => {
            let mut body = Map::new();
            if let Some(algorithm) = algorithm {
                body.insert("algorithm".into(), json!(algorithm));
            }
            let answer = client.call(
                "POST",
                "/api/v1/signing-keys/rotate",
                Some(Value::Object(body)),
            )?;
            if json_output {
                outln!("{answer}");
            } else {
                outln!(
                    "new signing key: {} ({})",
                    text(&answer, "kid"),
                    text(&answer, "algorithm")
                );
                outln!(
                    "published now; signs new tokens from {} (until then the previous key does)",
                    or_dash(text(&answer, "signs_from"))
                );
                match text(&answer, "retired_kid") {
                    "" => outln!("retired:         - (it is the first key of its algorithm)"),
                    kid => {
                        outln!("retired:         {kid} (published until its last token expires)")
                    }
                }
            }
        }
    }
    Ok(())
}

fn execute(args: KeysArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    match args.command {
        KeysCommand::Create(create) => {
            let body = create_body(create)?;
            let answer = client.call("POST", "/api/v1/auth/keys", Some(body))?;
            print_minted(&answer, json_output);
        }
        KeysCommand::List(list) => {
            let mut query = Vec::new();
            if let Some(limit) = list.limit {
                query.push(format!("limit={limit}"));
            }
            if let Some(status) = &list.status {
                query.push(format!("status={}", query_escape(status)));
            }
            if let Some(cursor) = &list.cursor {
                query.push(format!("cursor={}", query_escape(cursor)));
            }
            let path = if query.is_empty() {
                "/api/v1/auth/keys".to_owned()
            } else {
                format!("/api/v1/auth/keys?{}", query.join("&"))
            };
            let answer = client.call("GET", &path, None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_table(&answer, &list);
            }
        }
        KeysCommand::Show { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("GET", &format!("/api/v1/auth/keys/{id}"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Revoke { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("DELETE", &format!("/api/v1/auth/keys/{id}"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Expire { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("POST", &format!("/api/v1/auth/keys/{id}/expire"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Rotate(rotate) => {
            let id = parse_id(&rotate.id)?;
            let mut body = Map::new();
            if let Some(grace) = rotate.grace {
                let seconds = parse_duration(&grace).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--grace {grace:?} is not a duration such as 0, 3600s, 90m, 24h or 7d"
                    ))
                })?;
                body.insert("grace".into(), json!(seconds));
            }
            let answer = client.call(
                "POST",
                &format!("/api/v1/auth/keys/{id}/rotate"),
                Some(Value::Object(body)),
            )?;
            print_minted(&answer, json_output);
        }
        KeysCommand::Update(update) => limits::update(&client, update, json_output)?,
        KeysCommand::Usage(usage) => limits::usage(&client, usage, json_output)?,
        KeysCommand::Import(args) => import::import(&client, args, json_output)?,
    }
    Ok(())
}

fn parse_id(text: &str) -> Result<KeyId, CliError> {
    KeyId::parse(text).map_err(|_| {
        CliError::Usage(format!(
            "{text:?} is not a key id (16 characters of a-z and 2-7)"
        ))
    })
}

fn create_body(create: CreateArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("name".into(), json!(create.name));
    body.insert("scopes".into(), json!(create.scopes));
    if let Some(owner) = create.owner {
        body.insert("owner".into(), json!(owner));
    }
    if let Some(text) = create.expires_in {
        let seconds = parse_duration(&text).ok_or_else(|| {
            CliError::Usage(format!(
                "--expires-in {text:?} is not a duration such as 3600s, 90m, 12h or 30d"
            ))
        })?;
        body.insert("expires_in".into(), json!(seconds));
    }
    if let Some(at) = create.expires_at {
        body.insert("expires_at".into(), json!(at));
    }
    if let Some(text) = create.metadata {
        let metadata: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("--metadata is not valid JSON: {e}")))?;
        body.insert("metadata".into(), metadata);
    }
    if let Some(format) = create.format {
        body.insert("format".into(), json!(format));
    }
    if let Some(algorithm) = create.algorithm {
        body.insert("algorithm".into(), json!(algorithm));
    }
    create.limits.insert_into(&mut body)?;
    Ok(Value::Object(body))
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

struct Client {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

/// How the CLI may reach a `--server`: decided before the admin key is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `https://`: the server's certificate is verified.
    Https,
    /// `http://` to a loopback address.
    Loopback,
    /// `http://` elsewhere, allowed by `--insecure`.
    InsecureHttp,
}

impl Transport {
    fn for_server(server: &str, insecure: bool) -> Result<Self, CliError> {
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

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
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

fn query_escape(text: &str) -> String {
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

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

fn scopes_text(key: &Value) -> String {
    key.get("scopes")
        .and_then(Value::as_array)
        .map(|scopes| {
            scopes
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn print_minted(answer: &Value, json_output: bool) {
    if json_output {
        outln!("{answer}");
        return;
    }
    let key = text(answer, "key");
    let title = "API key (shown once, store it now):";
    if key.len() > 160 {
        // A JWT: too long for a box; print it alone on its line so it copies cleanly.
        outln!("{title}\n\n{key}\n");
        print_fields(answer);
        return;
    }
    let width = key.len().max(title.len()) + 2;
    let rule = format!("+{}+", "-".repeat(width + 2));
    outln!("{rule}");
    outln!("|  {title:<width$}|");
    outln!("|  {:<width$}|", "");
    outln!("|  {key:<width$}|");
    outln!("{rule}");
    print_fields(answer);
}

fn print_key(answer: &Value, json_output: bool) {
    if json_output {
        outln!("{answer}");
    } else {
        print_fields(answer);
    }
}

fn print_fields(key: &Value) {
    let or_dash = |field: &str| or_dash(text(key, field));
    outln!("id:           {}", or_dash("id"));
    outln!("name:         {}", or_dash("name"));
    outln!("owner:        {}", or_dash("owner"));
    outln!("status:       {}", or_dash("status"));
    outln!("scopes:       {}", scopes_text(key));
    outln!("created_at:   {}", or_dash("created_at"));
    outln!(
        "expires_at:   {}",
        match text(key, "expires_at") {
            "" => "never".to_owned(),
            at => at.to_owned(),
        }
    );
    outln!("revoked_at:   {}", or_dash("revoked_at"));
    outln!("rotated_from: {}", or_dash("rotated_from"));
    outln!("rotated_to:   {}", or_dash("rotated_to"));
    if key.get("algorithm").is_some() {
        outln!("algorithm:    {}", or_dash("algorithm"));
        outln!("kid:          {}", or_dash("kid"));
    }
    limits::print_limits(key);
    match key
        .get("metadata")
        .filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))
    {
        Some(metadata) => outln!("metadata:     {metadata}"),
        None => outln!("metadata:     -"),
    }
}

fn print_signing_keys(answer: &Value) {
    if answer.get("configured") == Some(&Value::Bool(false)) {
        outln!("JWT signing is not configured on the key service (KEYGATE_SIGNING_KEY_SECRET)");
    }
    let keys = answer
        .get("signing_keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if keys.is_empty() {
        outln!("(no signing keys)");
        return;
    }
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|key| {
            let published = key.get("published").and_then(Value::as_bool) == Some(true);
            [
                text(key, "kid").to_owned(),
                text(key, "algorithm").to_owned(),
                text(key, "created_at").to_owned(),
                or_dash(text(key, "signs_from")),
                or_dash(text(key, "retired_at")),
                if published { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let headers = [
        "KID",
        "ALGORITHM",
        "CREATED_AT",
        "SIGNS_FROM",
        "RETIRED_AT",
        "PUBLISHED",
    ];
    print_columns(headers, &rows, "(no signing keys)");
}

/// A field's text, or `-` when it is absent, `null` or empty: how every text output shows
/// "none" (an owner, a revocation time, a limit).
pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The command that fetches the next page: the same command and filters, with `--cursor`.
pub(crate) fn next_page_hint(
    command: &str,
    options: &[(&str, Option<String>)],
    cursor: &str,
) -> String {
    let mut line = format!("more: keygate {command}");
    for (flag, value) in options {
        if let Some(value) = value {
            line.push_str(&format!(" --{flag} {}", shell_word(value)));
        }
    }
    line.push_str(&format!(" --cursor {}", shell_word(cursor)));
    line
}

/// `text` as one shell word: as is when it is plainly safe, else in single quotes.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=+@%,".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

fn print_table(page: &Value, list: &ListArgs) {
    let headers = ["ID", "NAME", "OWNER", "STATUS", "SCOPES", "EXPIRES_AT"];
    let rows: Vec<[String; 6]> = page
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|key| {
                    [
                        text(key, "id").to_owned(),
                        text(key, "name").to_owned(),
                        or_dash(text(key, "owner")),
                        text(key, "status").to_owned(),
                        scopes_text(key),
                        match text(key, "expires_at") {
                            "" => "never".to_owned(),
                            at => at.to_owned(),
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_columns(headers, &rows, "(no keys)");
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        let options = [
            ("limit", list.limit.map(|n| n.to_string())),
            ("status", list.status.clone()),
        ];
        outln!("{}", next_page_hint("keys list", &options, cursor));
    }
}

/// Prints rows under headers in aligned columns (or `empty` when there are none).
pub(crate) fn print_columns<const N: usize>(headers: [&str; N], rows: &[[String; N]], empty: &str) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    outln!("{}", line(&headers.map(str::to_owned)));
    for row in rows {
        outln!("{}", line(row));
    }
    if rows.is_empty() {
        outln!("{empty}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("3600"), Some(3600));
        assert_eq!(parse_duration("3600s"), Some(3600));
        assert_eq!(parse_duration("90m"), Some(5400));
        assert_eq!(parse_duration("12h"), Some(43_200));
        assert_eq!(parse_duration("30d"), Some(2_592_000));
        assert_eq!(parse_duration("0"), Some(0));
        for bad in [
            "",
            "h",
            "12x",
            "-5s",
            "1.5h",
            "12hh",
            "99999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn escapes_query_values() {
        assert_eq!(query_escape("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(query_escape("123.abc"), "123.abc");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_expire_command() {
        let cli = Cli::try_parse_from(["keygate", "keys", "expire", "aaaaaaaaaaaaaaaa"]).unwrap();
        let Command::Keys(KeysArgs {
            command: KeysCommand::Expire { id },
            ..
        }) = cli.command
        else {
            panic!("not keys expire")
        };
        assert_eq!(id, "aaaaaaaaaaaaaaaa");
    }

    #[test]
    fn json_flag_works_before_and_after_the_subcommand() {
        for argv in [
            ["keygate", "keys", "--json", "show", "aaaaaaaaaaaaaaaa"],
            ["keygate", "keys", "show", "aaaaaaaaaaaaaaaa", "--json"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            let Command::Keys(keys) = cli.command else {
                panic!("not keys")
            };
            assert!(keys.client.json);
        }
    }

    #[test]
    fn parses_jwt_and_signing_key_commands() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "create",
            "--name",
            "n",
            "--format",
            "jwt",
            "--algorithm",
            "EdDSA",
            "--expires-in",
            "30d",
        ])
        .unwrap();
        let Command::Keys(KeysArgs {
            command: KeysCommand::Create(create),
            ..
        }) = cli.command
        else {
            panic!("not keys create")
        };
        let body = create_body(create).unwrap();
        assert_eq!(body["format"], "jwt");
        assert_eq!(body["algorithm"], "EdDSA");
        assert_eq!(body["expires_in"], 2_592_000);
        let cli = Cli::try_parse_from([
            "keygate",
            "signing-keys",
            "rotate",
            "--algorithm",
            "RS256",
            "--json",
        ])
        .unwrap();
        let Command::SigningKeys(args) = cli.command else {
            panic!("not signing-keys")
        };
        assert!(args.client.json);
        assert!(matches!(
            args.command,
            SigningKeysCommand::Rotate { algorithm: Some(ref a) } if a == "RS256"
        ));
    }

    #[test]
    fn plain_http_carries_the_admin_key_only_to_loopback_unless_insecure() {
        for server in [
            "http://127.0.0.1:8080",
            "http://127.9.9.9:8080/",
            "http://localhost:8080",
            "http://LOCALHOST",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]:8080",
        ] {
            assert_eq!(
                Transport::for_server(server, false).unwrap(),
                Transport::Loopback,
                "{server}"
            );
        }
        for server in [
            "http://keygate.example.com:8080",
            "http://10.1.2.3:8080",
            "http://0.0.0.0:8080",
            "http://[2001:db8::1]:8080",
            "http://localhost.example.com",
            "http://127.0.0.1.example.com",
        ] {
            let Err(CliError::Usage(message)) = Transport::for_server(server, false) else {
                panic!("{server} was allowed without --insecure");
            };
            assert!(
                message.contains("refusing to send the admin key over plain http://")
                    && message.contains("--insecure")
                    && message.contains("https://"),
                "{message}"
            );
            assert_eq!(
                Transport::for_server(server, true).unwrap(),
                Transport::InsecureHttp,
                "{server}"
            );
        }
        assert_eq!(
            Transport::for_server("https://keygate.example.com", false).unwrap(),
            Transport::Https
        );
        for bad in ["keygate.example.com:8080", "ftp://keygate.example.com", ""] {
            assert!(
                matches!(Transport::for_server(bad, true), Err(CliError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_refused_server_is_refused_before_the_admin_key_is_read() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "list",
            "--server",
            "http://keygate.example.com:8080",
            "--admin-key-file",
            "/nonexistent/admin.key",
        ])
        .unwrap();
        let Command::Keys(keys) = cli.command else {
            panic!("not keys")
        };
        let Err(CliError::Usage(message)) = connect(&keys.client) else {
            panic!("connect accepted plain http to a remote host");
        };
        assert!(message.contains("refusing"), "{message}");
    }

    #[test]
    fn parses_the_transport_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "keygate",
            "keys",
            "--ca-cert",
            "/etc/keygate/ca.pem",
            "list",
            "--insecure",
        ])
        .unwrap();
        let Command::Keys(keys) = cli.command else {
            panic!("not keys")
        };
        assert_eq!(
            keys.client.ca_cert.as_deref(),
            Some(Path::new("/etc/keygate/ca.pem"))
        );
        assert!(keys.client.insecure);
    }
}
