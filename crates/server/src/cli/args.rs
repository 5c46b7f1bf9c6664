//! The command line's arguments (clap): every command, subcommand and flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeArgs;
use crate::service::audit::ACTIONS;

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
    /// Manage roles: named scope sets that keys hold.
    Roles(RolesArgs),
    /// Manage owners' pooled limits (one fleet-wide rate limit shared by an owner's keys).
    Pools(PoolsArgs),
    /// Print the headers that sign a request (HTTP Message Signatures, RFC 9421) for routes
    /// that require signatures: `Signature-Input`, `Signature` and, with a body,
    /// `Content-Digest`, one per line, for `curl -H`. Works offline.
    Sign(SignArgs),
    /// Block and unblock client addresses or networks; list operator and automatic blocks.
    Blocks(BlocksArgs),
    /// Manage webhooks on security events and their deliveries.
    Webhooks(WebhooksArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The request's method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// The request's URL as sent (`https://api.example.com/v1/pay?x=1`).
    pub url: String,
    /// The key's id (the `keyid` parameter).
    #[arg(long)]
    pub key_id: String,
    /// A PKCS#8 PEM private key file (Ed25519 or P-256).
    #[arg(long, value_name = "FILE", conflicts_with = "secret_file")]
    pub private_key: Option<PathBuf>,
    /// A file holding the base64 HMAC secret shown when `hmac-sha256` was registered.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// The body (covered by `Content-Digest`).
    #[arg(long, short = 'd', conflicts_with = "data_file")]
    pub data: Option<String>,
    /// A file holding the body.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// A header the signature also covers, as `name: value` (repeat it; send it too).
    #[arg(long, short = 'H', value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// Seconds the signature is valid for (the `expires` parameter); absent: none.
    #[arg(long)]
    pub expires_in: Option<u64>,
    /// The nonce (default: 16 random bytes, base64url).
    #[arg(long)]
    pub nonce: Option<String>,
}

#[derive(Debug, Args)]
pub struct BlocksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: BlocksCommand,
}

#[derive(Debug, Subcommand)]
pub enum BlocksCommand {
    /// Block an address or a network (CIDR) at every Envoy, through the revocation feed.
    Add {
        /// An address (198.51.100.7) or a network (203.0.113.0/24).
        cidr: String,
        /// How long: seconds (3600) or a duration such as 90m, 12h or 7d (default 1h, at most 30d).
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Why, for the audit log and the list.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the blocks in force: operator and automatic, newest first.
    List,
    /// Lift a block by its id (as `blocks list` shows it): an operator block is deleted, an
    /// automatic one is lifted at every Envoy through the revocation feed.
    Remove { id: String },
}

#[derive(Debug, Args)]
pub struct PoolsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: PoolsCommand,
}

#[derive(Debug, Subcommand)]
pub enum PoolsCommand {
    /// Set (create or replace) an owner's pooled limit.
    Set {
        owner: String,
        /// Rate such as 100/s, 6000/m or 360000/h.
        #[arg(long, value_name = "N/UNIT")]
        rate: String,
        /// Bucket size (default: one second's worth, rounded up).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Show an owner's pooled limit.
    Show { owner: String },
    /// Remove an owner's pooled limit.
    Delete { owner: String },
    /// List pooled limits.
    List,
}

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register a webhook; prints its signing secret once.
    Add {
        /// Where deliveries are POSTed (http:// or https://).
        url: String,
        /// An event it receives (repeat, or `*` for all): key.created, key.rotated,
        /// key.revoked, key.expiring, address.blocked, auth.failure_spike, key.new_country,
        /// key.leaked.
        #[arg(long = "event", required = true, value_name = "EVENT")]
        events: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List webhooks.
    List,
    /// Show a webhook.
    Show { id: String },
    /// Remove a webhook and its deliveries.
    Remove { id: String },
    /// List a webhook's deliveries, newest first.
    Deliveries {
        id: String,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Send a delivery again now (same idempotency id).
    Redeliver { id: String, delivery: String },
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
    /// Register, replace or remove a key's request-signing material (signed routes).
    #[command(name = "signing-material", subcommand)]
    SigningMaterial(SigningMaterialCommand),
}

#[derive(Debug, Subcommand)]
pub enum SigningMaterialCommand {
    /// Register or replace it: a public key file (PEM or JWK), or --hmac (the secret is
    /// printed once).
    Set(SigningMaterialArgs),
    /// Remove it: signed routes then refuse the key.
    Remove { id: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("material").required(true).multiple(false)))]
pub struct SigningMaterialArgs {
    pub id: String,
    /// An Ed25519 public key file: PEM (BEGIN PUBLIC KEY) or JWK.
    #[arg(long, value_name = "FILE", group = "material")]
    pub ed25519_public_key: Option<std::path::PathBuf>,
    /// A P-256 public key file: PEM (BEGIN PUBLIC KEY) or JWK.
    #[arg(long, value_name = "FILE", group = "material")]
    pub p256_public_key: Option<std::path::PathBuf>,
    /// hmac-sha256: the service derives a secret for the key and prints it once.
    #[arg(long, group = "material")]
    pub hmac: bool,
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
    /// A role the key holds (repeat for several; opaque keys only).
    #[arg(long = "role", value_name = "NAME")]
    pub roles: Vec<String>,
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

/// Limit flags shared by `keys create` and `keys update`.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Rate limit such as 10/s, 600/m or 36000/h (token bucket refill).
    #[arg(long, value_name = "N/UNIT")]
    pub rate_limit: Option<String>,
    /// Bucket size of the rate limit (default: one second's worth, rounded up).
    #[arg(long, requires = "rate_limit")]
    pub burst: Option<u32>,
    /// A CIDR the client address must be in, such as 10.0.0.0/8 (repeat for several).
    #[arg(long = "allow-cidr", value_name = "CIDR")]
    pub allow_cidrs: Vec<String>,
    /// The key is refused before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub not_before: Option<String>,
    /// The key is refused from this time on (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub not_after: Option<String>,
    /// A workload identity (mTLS peer URI SAN) the key is bound to, such as
    /// spiffe://cluster.local/ns/payments/sa/api or .../sa/* (repeat for several).
    #[arg(long = "allowed-principal", value_name = "PRINCIPAL")]
    pub allowed_principals: Vec<String>,
    /// A country the key may be used from, as an ISO 3166-1 alpha-2 code such as DE (repeat
    /// for several; needs Envoy's geoip filter, see the README).
    #[arg(long = "allow-country", value_name = "CODE")]
    pub allow_countries: Vec<String>,
    /// Fleet-wide rate limit such as 100/s, enforced across every Envoy through leases.
    #[arg(long, value_name = "N/UNIT")]
    pub global_rate: Option<String>,
    /// Bucket size of the fleet-wide rate limit (default: one second's worth).
    #[arg(long, requires = "global_rate")]
    pub global_burst: Option<u32>,
    /// Quota (credits): units per --quota-period, such as 100000.
    #[arg(long, value_name = "UNITS", requires = "quota_period")]
    pub quota: Option<u64>,
    /// Quota window: day, week, month (30 days), or seconds / 12h / 7d.
    #[arg(long, value_name = "PERIOD", requires = "quota")]
    pub quota_period: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Replace the scopes with these (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Remove every scope.
    #[arg(long, conflicts_with = "scopes")]
    pub clear_scopes: bool,
    /// Replace the metadata with this JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Remove the rate limit.
    #[arg(long, conflicts_with = "rate_limit")]
    pub clear_rate_limit: bool,
    /// Remove the address allow-list.
    #[arg(long, conflicts_with = "allow_cidrs")]
    pub clear_cidrs: bool,
    /// Remove not_before.
    #[arg(long, conflicts_with = "not_before")]
    pub clear_not_before: bool,
    /// Remove not_after.
    #[arg(long, conflicts_with = "not_after")]
    pub clear_not_after: bool,
    /// Unbind the key from workloads (any principal, or none, may use it).
    #[arg(long, conflicts_with = "allowed_principals")]
    pub clear_principals: bool,
    /// Remove the country restriction.
    #[arg(long, conflicts_with = "allow_countries")]
    pub clear_countries: bool,
    /// Replace the roles the key holds with these (repeat for several).
    #[arg(long = "role", value_name = "NAME")]
    pub roles: Vec<String>,
    /// Remove every role.
    #[arg(long, conflicts_with = "roles")]
    pub clear_roles: bool,
    /// Remove the fleet-wide rate limit.
    #[arg(long, conflicts_with = "global_rate")]
    pub clear_global_rate: bool,
    /// Remove the quota.
    #[arg(long, conflicts_with = "quota")]
    pub clear_quota: bool,
}

#[derive(Debug, Args)]
pub struct RolesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: RolesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// Create a role.
    Create(RoleArgs),
    /// List every role.
    List,
    /// Show one role.
    Show { name: String },
    /// Change a role: every key holding it changes, within the revocation feed's latency.
    Update(RoleUpdateArgs),
    /// Delete a role (refused while a key that is not revoked holds it).
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct RoleArgs {
    /// 1-64 characters of a-z, 0-9, '-', '_', '.'.
    pub name: String,
    /// A scope the role grants (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// A description for people.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct RoleUpdateArgs {
    pub name: String,
    /// Replace the role's scopes with these (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Remove every scope.
    #[arg(long, conflicts_with = "scopes")]
    pub clear_scopes: bool,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    pub id: String,
    /// Start (RFC 3339; default: 24 hours before --to).
    #[arg(long)]
    pub from: Option<String>,
    /// End (RFC 3339; default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// Step: 1m, 5m, 1h (default) or 1d.
    #[arg(long)]
    pub step: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV (header name,owner,scopes,expires_at,key,sha256) or JSON (an array of objects).
    pub file: PathBuf,
    /// csv or json (default: from the file extension, else json).
    #[arg(long)]
    pub format: Option<String>,
    /// Check and report what would change, without storing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this action.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ACTIONS))]
    pub action: Option<String>,
    /// Only entries about this key id.
    #[arg(long)]
    pub target: Option<String>,
    /// Only entries by this admin key id.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this outcome, such as ok or denied.
    #[arg(long)]
    pub outcome: Option<String>,
    /// Entries from this time on (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// Entries up to this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub to: Option<String>,
    /// Entries per page (1-500, server default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Continue from a previous page's next_cursor.
    #[arg(long)]
    pub cursor: Option<String>,
}
