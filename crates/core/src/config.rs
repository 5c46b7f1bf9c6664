//! The filter's plugin configuration: parsed and compiled once, refused whole when any field
//! is wrong, with an error that names the field.

use std::fmt;

use serde::Deserialize;

use crate::cache::CachePolicy;
use crate::credential::CredentialSources;
use crate::feed::{FeedPolicy, FEED_PATH};
use crate::headers::HeaderRules;
use crate::jwt::{Algorithm, KeySet, Validation};
use crate::key::{GatewayKey, KeyConfigError, KeyPrefix};
use crate::principal::{PrincipalMap, PrincipalMapError, PrincipalsSpec};
use crate::route::{Mode, RouteError, RouteSpec, RouteTable};

/// Where the key service is and how the filter talks to it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyService {
    /// The Envoy cluster of the key service (the "revocation cluster").
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// `:authority` sent on lookups.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Timeout of one lookup.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Lookups in flight per worker; past it, uncached keys get 503 at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

impl Default for KeyService {
    fn default() -> Self {
        Self {
            cluster: default_cluster(),
            authority: default_authority(),
            timeout_ms: default_timeout_ms(),
            max_in_flight: default_max_in_flight(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSpec {
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
    #[serde(default = "default_negative_ttl")]
    negative_ttl_seconds: u64,
    #[serde(default = "default_max_stale")]
    max_stale_seconds: u64,
    /// Keys the record cache holds with (almost) no misses: shared data gets twice as many
    /// slot names, and each worker keeps at most this many decoded records. Memory grows with
    /// the keys in use only: about 0.3 KB per key in shared data (0.6 KB per key of capacity
    /// once more keys than that are in use) and about 1 KB per key in each worker, so 100,000
    /// keys take about 30 MB of shared data and 100 MB per worker (README, "Record cache").
    #[serde(default = "default_max_entries")]
    max_entries: u32,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            ttl_seconds: default_ttl(),
            negative_ttl_seconds: default_negative_ttl(),
            max_stale_seconds: default_max_stale(),
            max_entries: default_max_entries(),
        }
    }
}

/// Names of the identity headers added upstream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeaders {
    #[serde(default = "default_subject_header")]
    pub subject: String,
    #[serde(default = "default_key_id_header")]
    pub key_id: String,
    #[serde(default = "default_scopes_header")]
    pub scopes: String,
    /// Header carrying who vouched for the identity: `keygate` for Keygate keys, the
    /// token's `iss` for JWTs.
    #[serde(default = "default_issuer_header")]
    pub issuer: String,
    /// Header carrying the request's workload identity (verified peer certificate URI SAN),
    /// when it is known.
    #[serde(default = "default_principal_header")]
    pub principal: String,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            subject: default_subject_header(),
            key_id: default_key_id_header(),
            scopes: default_scopes_header(),
            issuer: default_issuer_header(),
            principal: default_principal_header(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsSpec {
    #[serde(default = "default_gateway_key_env")]
    gateway_key_env: String,
    #[serde(default = "default_service_token_env")]
    service_token_env: String,
}

impl Default for SecretsSpec {
    fn default() -> Self {
        Self {
            gateway_key_env: default_gateway_key_env(),
            service_token_env: default_service_token_env(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtSpec {
    #[serde(default = "default_max_token_bytes")]
    max_token_bytes: usize,
    #[serde(default = "default_token_cache_entries")]
    cache_max_entries: usize,
    #[serde(default)]
    issuers: Vec<IssuerSpec>,
    #[serde(default = "default_true")]
    host_crypto: bool,
}

impl Default for JwtSpec {
    fn default() -> Self {
        Self {
            max_token_bytes: default_max_token_bytes(),
            cache_max_entries: default_token_cache_entries(),
            issuers: Vec::new(),
            host_crypto: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerSpec {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    jwks: JwksSpec,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default)]
    max_lifetime_seconds: Option<u64>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    revocation: Revocation,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum JwksSpec {
    /// A JWKS document, inline.
    Inline(serde_json::Value),
    /// Fetched from a cluster and refreshed.
    Remote(RemoteJwksSpec),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteJwksSpec {
    cluster: String,
    #[serde(default = "default_authority")]
    authority: String,
    path: String,
    #[serde(default = "default_jwks_refresh")]
    refresh_seconds: u64,
    #[serde(default = "default_jwks_min_refetch")]
    min_refetch_seconds: u64,
    #[serde(default = "default_jwks_timeout")]
    timeout_ms: u64,
}

/// How a verified token's `jti` is checked for revocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Not checked (typical for an external IdP).
    #[default]
    None,
    /// The `jti` is a Keygate key id: looked up (and cached) like an opaque key's record.
    KeyService,
}

/// Where an issuer's signing keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    Inline(KeySet),
    Remote(RemoteJwks),
}

/// A JWKS fetched over an Envoy cluster by one worker per Envoy and shared with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub refresh_ms: u64,
    pub min_refetch_ms: u64,
    pub timeout_ms: u64,
}

/// One trusted token issuer.
#[derive(Clone, Debug)]
pub struct JwtIssuer {
    pub validation: Validation,
    pub jwks: JwksSource,
    pub revocation: Revocation,
}

/// Everything about JWT credentials; no issuers means JWTs are refused.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub issuers: Vec<JwtIssuer>,
    pub cache_max_entries: usize,
    pub max_token_bytes: usize,
    /// Verify ES256/RS256 signatures with the host's native crypto when it offers it.
    pub host_crypto: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedSpec {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_feed_path")]
    path: String,
    #[serde(default = "default_feed_wait")]
    wait_seconds: u64,
    #[serde(default = "default_feed_unreachable")]
    max_unreachable_seconds: u64,
    #[serde(default)]
    policy: FeedPolicy,
    #[serde(default = "default_feed_recent")]
    recent_seconds: u64,
    #[serde(default = "default_feed_max_revoked")]
    max_revoked: usize,
}

impl Default for FeedSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_feed_path(),
            wait_seconds: default_feed_wait(),
            max_unreachable_seconds: default_feed_unreachable(),
            policy: FeedPolicy::default(),
            recent_seconds: default_feed_recent(),
            max_revoked: default_feed_max_revoked(),
        }
    }
}

/// The revocation feed the filter follows (one follower per Envoy process).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSettings {
    pub enabled: bool,
    pub path: String,
    pub wait_s: u64,
    pub max_unreachable_ms: u64,
    pub policy: FeedPolicy,
    pub recent_ms: u64,
    pub max_revoked: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowSpec {
    #[serde(default = "default_decision_header")]
    decision_header: String,
}

impl Default for ShadowSpec {
    fn default() -> Self {
        Self {
            decision_header: default_decision_header(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacySpec {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default = "default_legacy_path")]
    lookup_path: String,
    #[serde(default = "default_legacy_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_legacy_negative_entries")]
    negative_cache_entries: usize,
    #[serde(default = "default_legacy_negative_ttl")]
    negative_ttl_seconds: u64,
}

impl Default for LegacySpec {
    fn default() -> Self {
        Self {
            header: None,
            prefixes: Vec::new(),
            lookup_path: default_legacy_path(),
            max_in_flight: default_legacy_in_flight(),
            negative_cache_entries: default_legacy_negative_entries(),
            negative_ttl_seconds: default_legacy_negative_ttl(),
        }
    }
}

/// Keys an older system issued, accepted by their digest during a migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyKeys {
    /// A credential that starts with one of these is treated as a legacy key.
    pub prefixes: Vec<String>,
    /// `GET {lookup_path}{sha256 hex}` on the key service.
    pub lookup_path: String,
    /// Legacy lookups in flight per worker, apart from `key_service.max_in_flight`; past it,
    /// uncached legacy keys get 503 at once.
    pub max_in_flight: usize,
    /// Digests the key service did not know, remembered per worker (oldest dropped first),
    /// apart from the record cache so that unknown strings never evict records.
    pub negative_cache_entries: usize,
    pub negative_ttl_ms: u64,
}

/// Fleet-wide limits: where leases are asked for and how long a request waits for one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetSpec {
    #[serde(default = "default_fleet_path")]
    path: String,
    #[serde(default = "default_fleet_wait")]
    max_wait_ms: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        Self {
            path: default_fleet_path(),
            max_wait_ms: default_fleet_wait(),
        }
    }
}

fn default_fleet_path() -> String {
    crate::machine::fleet::FleetSettings::default().path
}

fn default_fleet_wait() -> u64 {
    crate::machine::fleet::FleetSettings::default().max_wait_ms
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageSpec {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_usage_path")]
    path: String,
    #[serde(default = "default_usage_flush")]
    flush_seconds: u64,
    #[serde(default = "default_usage_rows")]
    max_rows: usize,
    #[serde(default = "default_usage_batch_bytes")]
    max_batch_bytes: usize,
}

impl Default for UsageSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_usage_path(),
            flush_seconds: default_usage_flush(),
            max_rows: default_usage_rows(),
            max_batch_bytes: default_usage_batch_bytes(),
        }
    }
}

/// Usage counts reported to the key service, one batch per interval per Envoy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageSettings {
    pub enabled: bool,
    pub path: String,
    pub flush_ms: u64,
    /// Rows (key × minute) kept waiting at most; past it, new counts are dropped (counted).
    pub max_rows: usize,
    /// Largest body of one `POST /v1/usage`: more rows go in further batches. Must stay below
    /// the key service's usage body limit ([`crate::wire::USAGE_BODY_LIMIT`] unless changed there).
    pub max_batch_bytes: usize,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientAddressSpec {
    #[serde(default)]
    trusted_hops: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_prefixes")]
    key_prefixes: Vec<String>,
    #[serde(default)]
    credential_sources: CredentialSources,
    #[serde(default)]
    key_service: KeyService,
    #[serde(default)]
    cache: CacheSpec,
    routes: Vec<RouteSpec>,
    #[serde(default)]
    identity_headers: IdentityHeaders,
    #[serde(default = "default_max_credential_bytes")]
    max_credential_bytes: usize,
    #[serde(default = "default_retry_after")]
    retry_after_seconds: u32,
    #[serde(default)]
    secrets: SecretsSpec,
    #[serde(default)]
    jwt: JwtSpec,
    #[serde(default)]
    revocation_feed: FeedSpec,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    shadow: ShadowSpec,
    #[serde(default)]
    route_metadata: bool,
    #[serde(default)]
    legacy_keys: LegacySpec,
    #[serde(default)]
    usage: UsageSpec,
    #[serde(default)]
    client_address: ClientAddressSpec,
    #[serde(default = "default_true")]
    strip_method_override: bool,
    #[serde(default)]
    principals: PrincipalsSpec,
    #[serde(default)]
    threat: crate::machine::threat::ThreatSpec,
    #[serde(default)]
    fleet: FleetSpec,
    #[serde(default)]
    rate_limit_headers: RateLimitHeaders,
    #[serde(default)]
    signatures: crate::signature::SignatureSettings,
    geo: Option<crate::geo::GeoSpec>,
}

/// Which responses of a rate-limited or fleet-limited key carry `RateLimit-Policy` and
/// `RateLimit`: every one (`always`, the default), or only refusals (`refusals`: an allowed
/// response then costs two header writes less, and tells the client nothing of its limit).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitHeaders {
    #[default]
    Always,
    Refusals,
}

fn default_prefixes() -> Vec<String> {
    vec!["kg_live_".to_owned(), "kg_test_".to_owned()]
}
fn default_cluster() -> String {
    "keygate_service".to_owned()
}
fn default_authority() -> String {
    "keygate".to_owned()
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_max_in_flight() -> usize {
    64
}
fn default_ttl() -> u64 {
    30
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_max_stale() -> u64 {
    300
}
/// 100,000 keys: the low end of a platform with many API consumers, at most ~60 MB of shared
/// data and ~100 MB per worker, spent only as keys come into use.
fn default_max_entries() -> u32 {
    100_000
}
fn default_subject_header() -> String {
    "x-keygate-subject".to_owned()
}
fn default_key_id_header() -> String {
    "x-keygate-key-id".to_owned()
}
fn default_scopes_header() -> String {
    "x-keygate-scopes".to_owned()
}
fn default_issuer_header() -> String {
    "x-keygate-issuer".to_owned()
}
fn default_principal_header() -> String {
    "x-keygate-principal".to_owned()
}
fn default_max_credential_bytes() -> usize {
    512
}
fn default_retry_after() -> u32 {
    5
}
fn default_max_token_bytes() -> usize {
    8192
}
fn default_token_cache_entries() -> usize {
    10_000
}
fn default_algorithms() -> Vec<String> {
    Algorithm::ALL
        .iter()
        .map(|a| a.as_str().to_owned())
        .collect()
}
fn default_leeway() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refetch() -> u64 {
    5
}
fn default_jwks_timeout() -> u64 {
    2_000
}
fn default_decision_header() -> String {
    "x-keygate-decision".to_owned()
}
fn default_legacy_path() -> String {
    "/v1/legacy-keys/".to_owned()
}
fn default_legacy_in_flight() -> usize {
    8
}
fn default_legacy_negative_entries() -> usize {
    10_000
}
fn default_legacy_negative_ttl() -> u64 {
    60
}
fn default_usage_path() -> String {
    crate::wire::USAGE_PATH.to_owned()
}
fn default_usage_flush() -> u64 {
    10
}
fn default_usage_rows() -> usize {
    10_000
}
/// Default largest usage batch the filter sends: half the key service's default limit, so a
/// batch is never refused for its size (and a long backlog drains in a few round trips).
pub const DEFAULT_USAGE_BATCH_BYTES: usize = crate::wire::USAGE_BODY_LIMIT / 2;
fn default_usage_batch_bytes() -> usize {
    DEFAULT_USAGE_BATCH_BYTES
}
fn default_feed_path() -> String {
    FEED_PATH.to_owned()
}
fn default_feed_wait() -> u64 {
    20
}
fn default_feed_unreachable() -> u64 {
    30
}
fn default_feed_recent() -> u64 {
    60
}
fn default_feed_max_revoked() -> usize {
    100_000
}
fn default_gateway_key_env() -> String {
    "KEYGATE_GATEWAY_KEY".to_owned()
}
fn default_service_token_env() -> String {
    "KEYGATE_SERVICE_TOKEN".to_owned()
}

/// What is wrong with a field.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// The JSON does not parse or has unknown or mistyped fields (serde's message).
    Syntax(String),
    OutOfRange {
        min: u64,
        max: u64,
    },
    Empty,
    BadHeaderName,
    Key(KeyConfigError),
    Route(RouteError),
    Duplicate,
    UnknownAlgorithm,
    BadJwks,
    BadPath,
    BadLegacyPrefix,
    /// A secret's environment variable is missing from the VM's environment.
    MissingEnv(String),
    /// A secret's environment variable is set but unusable.
    BadEnv(String),
    /// The principal map is invalid (the message names the entry).
    Principals(PrincipalMapError),
    /// A route takes principals but `principals.map` is empty.
    NoPrincipalMap,
    /// `role` names no role Keygate has (only `strip`).
    UnknownRole,
    /// A header the filter removes from every request or writes itself cannot carry the
    /// geoip country.
    ReservedHeader,
}

/// A configuration error naming the field (`routes[3].scopes`, `cache.ttl_seconds`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: ConfigProblem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = &self.field;
        match &self.problem {
            ConfigProblem::Syntax(msg) if field.is_empty() => {
                write!(f, "invalid configuration: {msg}")
            }
            ConfigProblem::Syntax(msg) => write!(f, "`{field}`: {msg}"),
            ConfigProblem::OutOfRange { min, max } => {
                write!(f, "`{field}` must be between {min} and {max}")
            }
            ConfigProblem::Empty => write!(f, "`{field}` must not be empty"),
            ConfigProblem::BadHeaderName => {
                write!(
                    f,
                    "`{field}` must be a lower-case header name (a-z, 0-9, '-')"
                )
            }
            ConfigProblem::Duplicate => write!(f, "`{field}` appears twice"),
            ConfigProblem::UnknownAlgorithm => {
                write!(f, "`{field}` must be one of ES256, EdDSA, RS256 (HS*, none and others are refused)")
            }
            ConfigProblem::BadJwks => write!(
                f,
                "`{field}` must be a JWKS with at least one usable signing key"
            ),
            ConfigProblem::BadPath => write!(f, "`{field}` must be a path starting with '/'"),
            ConfigProblem::BadLegacyPrefix => write!(
                f,
                "`{field}` must be 1 to 64 printable characters and must not overlap a key prefix"
            ),
            ConfigProblem::Key(err) => write!(f, "`{field}`: {err}"),
            ConfigProblem::Route(err) => write!(f, "`{field}`: {err}"),
            ConfigProblem::MissingEnv(var) => write!(
                f,
                "`{field}`: environment variable {var} is not set in the Wasm VM \
                 (list it in vm_config.environment_variables)"
            ),
            ConfigProblem::Principals(err) => write!(f, "{err}"),
            ConfigProblem::NoPrincipalMap => write!(
                f,
                "`{field}` takes principals, but `principals.map` maps none to scopes"
            ),
            ConfigProblem::BadEnv(var) => {
                write!(f, "`{field}`: environment variable {var} is not usable")
            }
            ConfigProblem::UnknownRole => write!(
                f,
                "`{field}` must be \"strip\" (or absent for the authorizing filter)"
            ),
            ConfigProblem::ReservedHeader => write!(
                f,
                "`{field}` names a header Keygate removes or writes itself (an identity, \
                 decision, credential or x-keygate- header)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A configuration error for `field` (for the parsers beside this module's).
pub(crate) fn config_error(field: impl Into<String>, problem: ConfigProblem) -> ConfigError {
    error(field, problem)
}

/// Checks a header name option: lower case, 1 to 64 of a-z, 0-9 and '-'.
pub(crate) fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    header_name(field, name)
}

fn error(field: impl Into<String>, problem: ConfigProblem) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem,
    }
}

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(error(field, ConfigProblem::OutOfRange { min, max }))
    }
}

fn header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(error(field, ConfigProblem::BadHeaderName))
    }
}

fn compile_jwt(spec: &JwtSpec) -> Result<JwtSettings, ConfigError> {
    in_range(
        "jwt.max_token_bytes",
        spec.max_token_bytes as u64,
        256,
        65_536,
    )?;
    in_range(
        "jwt.cache_max_entries",
        spec.cache_max_entries as u64,
        1,
        1_000_000,
    )?;
    in_range("jwt.issuers", spec.issuers.len() as u64, 0, 16)?;
    let mut issuers = Vec::with_capacity(spec.issuers.len());
    for (i, raw) in spec.issuers.iter().enumerate() {
        let field = |name: &str| format!("jwt.issuers[{i}].{name}");
        if raw.issuer.is_empty() {
            return Err(error(field("issuer"), ConfigProblem::Empty));
        }
        if spec.issuers[..i]
            .iter()
            .any(|other| other.issuer == raw.issuer)
        {
            return Err(error(field("issuer"), ConfigProblem::Duplicate));
        }
        let mut algorithms = Vec::with_capacity(raw.algorithms.len());
        for (j, name) in raw.algorithms.iter().enumerate() {
            let alg = Algorithm::parse(name).ok_or_else(|| {
                error(
                    format!("jwt.issuers[{i}].algorithms[{j}]"),
                    ConfigProblem::UnknownAlgorithm,
                )
            })?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(error(field("algorithms"), ConfigProblem::Empty));
        }
        in_range(&field("leeway_seconds"), raw.leeway_seconds, 0, 600)?;
        if let Some(max) = raw.max_lifetime_seconds {
            in_range(&field("max_lifetime_seconds"), max, 1, 10 * 365 * 86_400)?;
        }
        let jwks = match &raw.jwks {
            JwksSpec::Inline(document) => {
                let json = serde_json::to_vec(document).unwrap_or_default();
                let (keys, _skipped) = KeySet::from_jwks_json(&json)
                    .map_err(|_| error(field("jwks.inline"), ConfigProblem::BadJwks))?;
                if keys.is_empty() {
                    return Err(error(field("jwks.inline"), ConfigProblem::BadJwks));
                }
                JwksSource::Inline(keys)
            }
            JwksSpec::Remote(remote) => {
                if remote.cluster.is_empty() {
                    return Err(error(field("jwks.remote.cluster"), ConfigProblem::Empty));
                }
                if !remote.path.starts_with('/') {
                    return Err(error(field("jwks.remote.path"), ConfigProblem::BadPath));
                }
                in_range(
                    &field("jwks.remote.refresh_seconds"),
                    remote.refresh_seconds,
                    10,
                    86_400,
                )?;
                in_range(
                    &field("jwks.remote.min_refetch_seconds"),
                    remote.min_refetch_seconds,
                    1,
                    3_600,
                )?;
                in_range(
                    &field("jwks.remote.timeout_ms"),
                    remote.timeout_ms,
                    10,
                    60_000,
                )?;
                JwksSource::Remote(RemoteJwks {
                    cluster: remote.cluster.clone(),
                    authority: remote.authority.clone(),
                    path: remote.path.clone(),
                    refresh_ms: remote.refresh_seconds * 1000,
                    min_refetch_ms: remote.min_refetch_seconds * 1000,
                    timeout_ms: remote.timeout_ms,
                })
            }
        };
        let mut validation = Validation::new(raw.issuer.clone());
        validation.audiences = raw.audiences.clone();
        validation.algorithms = algorithms;
        validation.leeway_s = raw.leeway_seconds;
        validation.require_exp = raw.require_exp;
        validation.max_lifetime_s = raw.max_lifetime_seconds;
        validation.typ = raw.typ.clone();
        validation.max_token_bytes = spec.max_token_bytes;
        issuers.push(JwtIssuer {
            validation,
            jwks,
            revocation: raw.revocation,
        });
    }
    Ok(JwtSettings {
        issuers,
        cache_max_entries: spec.cache_max_entries,
        max_token_bytes: spec.max_token_bytes,
        host_crypto: spec.host_crypto,
    })
}

fn compile_feed(spec: &FeedSpec) -> Result<FeedSettings, ConfigError> {
    if !spec.path.starts_with('/') {
        return Err(error("revocation_feed.path", ConfigProblem::BadPath));
    }
    in_range("revocation_feed.wait_seconds", spec.wait_seconds, 1, 55)?;
    in_range(
        "revocation_feed.max_unreachable_seconds",
        spec.max_unreachable_seconds,
        spec.wait_seconds + 1,
        86_400,
    )?;
    in_range(
        "revocation_feed.recent_seconds",
        spec.recent_seconds,
        1,
        86_400,
    )?;
    in_range(
        "revocation_feed.max_revoked",
        spec.max_revoked as u64,
        1,
        1_000_000,
    )?;
    Ok(FeedSettings {
        enabled: spec.enabled,
        path: spec.path.clone(),
        wait_s: spec.wait_seconds,
        max_unreachable_ms: spec.max_unreachable_seconds * 1000,
        policy: spec.policy,
        recent_ms: spec.recent_seconds * 1000,
        max_revoked: spec.max_revoked,
    })
}

/// The compiled configuration one root context owns.
#[derive(Clone, Debug)]
pub struct FilterConfig {
    pub key_prefixes: Vec<String>,
    pub credential_sources: CredentialSources,
    pub key_service: KeyService,
    pub cache: CachePolicy,
    pub routes: RouteTable,
    pub identity_headers: IdentityHeaders,
    pub max_credential_bytes: usize,
    pub retry_after_seconds: u32,
    pub gateway_key_env: String,
    pub service_token_env: String,
    pub jwt: JwtSettings,
    pub revocation_feed: FeedSettings,
    /// Global mode; a route may override it.
    pub mode: Mode,
    /// Header carrying the decision upstream in shadow mode.
    pub decision_header: String,
    /// Read route policy from Envoy route metadata (`filter_metadata.keygate`).
    pub route_metadata: bool,
    /// `None` when legacy keys are not accepted.
    pub legacy_keys: Option<LegacyKeys>,
    pub usage: UsageSettings,
    /// Fleet-wide limits and quotas: the lease endpoint and the longest wait for a lease.
    pub fleet: crate::machine::fleet::FleetSettings,
    /// Proxies in front of Envoy that append to `X-Forwarded-For` (0: the peer is the client).
    pub trusted_hops: u32,
    /// Which responses carry the rate-limit headers.
    pub rate_limit_headers: RateLimitHeaders,
    /// Request signatures (RFC 9421) on routes that require them.
    pub signatures: crate::signature::SignatureSettings,
    /// Client-sent request headers removed from every request (any spelling of an identity,
    /// decision or `x-keygate-` header; method-override headers unless configured otherwise).
    pub header_rules: HeaderRules,
    /// Workload identities → scopes (`principals.map`), for routes that take principals.
    pub principals: PrincipalMap,
    /// Where the geoip country is read, for keys restricted to countries (`None`: such keys
    /// are refused).
    pub geo: Option<crate::geo::GeoSettings>,
    /// Threat detection: failures counted per client address, blocks.
    pub threat: crate::machine::threat::ThreatSettings,
}

impl FilterConfig {
    /// Parses and checks the plugin configuration JSON.
    pub fn parse(json: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(json))
                .map_err(|e| {
                    let field = match e.path().to_string() {
                        path if path == "." => String::new(),
                        path => path,
                    };
                    error(field, ConfigProblem::Syntax(e.into_inner().to_string()))
                })?;

        if raw.key_prefixes.is_empty() {
            return Err(error("key_prefixes", ConfigProblem::Empty));
        }
        for (i, prefix) in raw.key_prefixes.iter().enumerate() {
            KeyPrefix::parse(prefix)
                .map_err(|e| error(format!("key_prefixes[{i}]"), ConfigProblem::Key(e)))?;
        }
        let sources = &raw.credential_sources;
        if let Some(header) = &sources.header {
            header_name("credential_sources.header", header)?;
        }
        if let Some(param) = &sources.query_param {
            let ok = (1..=64).contains(&param.len())
                && param
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(error(
                    "credential_sources.query_param",
                    ConfigProblem::BadHeaderName,
                ));
            }
        }
        if !sources.bearer && sources.header.is_none() && sources.query_param.is_none() {
            return Err(error("credential_sources", ConfigProblem::Empty));
        }
        let ks = &raw.key_service;
        if ks.cluster.is_empty() {
            return Err(error("key_service.cluster", ConfigProblem::Empty));
        }
        if ks.authority.is_empty() {
            return Err(error("key_service.authority", ConfigProblem::Empty));
        }
        in_range("key_service.timeout_ms", ks.timeout_ms, 10, 60_000)?;
        in_range(
            "key_service.max_in_flight",
            ks.max_in_flight as u64,
            1,
            10_000,
        )?;
        let c = &raw.cache;
        in_range("cache.ttl_seconds", c.ttl_seconds, 1, 86_400)?;
        in_range(
            "cache.negative_ttl_seconds",
            c.negative_ttl_seconds,
            1,
            86_400,
        )?;
        in_range(
            "cache.max_stale_seconds",
            c.max_stale_seconds,
            0,
            7 * 86_400,
        )?;
        in_range("cache.max_entries", u64::from(c.max_entries), 1, 1_000_000)?;
        let routes = RouteTable::compile(&raw.routes)
            .map_err(|(i, e)| error(format!("routes[{i}]"), ConfigProblem::Route(e)))?;
        let ih = &raw.identity_headers;
        header_name("identity_headers.subject", &ih.subject)?;
        header_name("identity_headers.key_id", &ih.key_id)?;
        header_name("identity_headers.scopes", &ih.scopes)?;
        header_name("identity_headers.issuer", &ih.issuer)?;
        header_name("identity_headers.principal", &ih.principal)?;
        let principals = PrincipalMap::compile(&raw.principals)
            .map_err(|e| error("principals", ConfigProblem::Principals(e)))?;
        if principals.is_empty() {
            if let Some(i) = routes.first_taking_principals() {
                return Err(error(
                    format!("routes[{i}].principal"),
                    ConfigProblem::NoPrincipalMap,
                ));
            }
        }
        in_range(
            "max_credential_bytes",
            raw.max_credential_bytes as u64,
            64,
            16_384,
        )?;
        in_range(
            "retry_after_seconds",
            u64::from(raw.retry_after_seconds),
            1,
            3_600,
        )?;
        let mut jwt = compile_jwt(&raw.jwt)?;
        // Claims that routes bind: every issuer's verifier keeps them.
        let bound_claims = routes.bound_claims();
        for issuer in &mut jwt.issuers {
            issuer.validation.bound_claims.clone_from(&bound_claims);
        }
        let revocation_feed = compile_feed(&raw.revocation_feed)?;
        header_name("shadow.decision_header", &raw.shadow.decision_header)?;
        let legacy = &raw.legacy_keys;
        if let Some(header) = &legacy.header {
            header_name("legacy_keys.header", header)?;
        }
        for (i, prefix) in legacy.prefixes.iter().enumerate() {
            let ok = (1..=64).contains(&prefix.len())
                && prefix.bytes().all(|b| (0x21..=0x7e).contains(&b))
                && !raw
                    .key_prefixes
                    .iter()
                    .any(|p| p.starts_with(prefix.as_str()) || prefix.starts_with(p.as_str()));
            if !ok {
                return Err(error(
                    format!("legacy_keys.prefixes[{i}]"),
                    ConfigProblem::BadLegacyPrefix,
                ));
            }
        }
        if !legacy.lookup_path.starts_with('/') || !legacy.lookup_path.ends_with('/') {
            return Err(error("legacy_keys.lookup_path", ConfigProblem::BadPath));
        }
        in_range(
            "legacy_keys.max_in_flight",
            legacy.max_in_flight as u64,
            1,
            10_000,
        )?;
        in_range(
            "legacy_keys.negative_cache_entries",
            legacy.negative_cache_entries as u64,
            1,
            1_000_000,
        )?;
        in_range(
            "legacy_keys.negative_ttl_seconds",
            legacy.negative_ttl_seconds,
            1,
            86_400,
        )?;
        let legacy_keys =
            (legacy.header.is_some() || !legacy.prefixes.is_empty()).then(|| LegacyKeys {
                prefixes: legacy.prefixes.clone(),
                lookup_path: legacy.lookup_path.clone(),
                max_in_flight: legacy.max_in_flight,
                negative_cache_entries: legacy.negative_cache_entries,
                negative_ttl_ms: legacy.negative_ttl_seconds * 1000,
            });
        let u = &raw.usage;
        if !u.path.starts_with('/') {
            return Err(error("usage.path", ConfigProblem::BadPath));
        }
        in_range("usage.flush_seconds", u.flush_seconds, 1, 3_600)?;
        in_range("usage.max_rows", u.max_rows as u64, 1, 1_000_000)?;
        // Above 4 KiB so one row always fits; below the key service's default limit less
        // room for the request's framing.
        in_range(
            "usage.max_batch_bytes",
            u.max_batch_bytes as u64,
            4096,
            (crate::wire::USAGE_BODY_LIMIT - 64 * 1024) as u64,
        )?;
        if !raw.fleet.path.starts_with('/') {
            return Err(error("fleet.path", ConfigProblem::BadPath));
        }
        in_range("fleet.max_wait_ms", raw.fleet.max_wait_ms, 0, 10_000)?;
        if let Some((field, min, max)) = raw.signatures.out_of_range() {
            return Err(error(field, ConfigProblem::OutOfRange { min, max }));
        }
        in_range(
            "client_address.trusted_hops",
            u64::from(raw.client_address.trusted_hops),
            0,
            10,
        )?;
        let t = &raw.threat;
        in_range("threat.threshold", u64::from(t.threshold), 1, 10_000)?;
        in_range("threat.window_seconds", t.window_seconds, 1, 86_400)?;
        in_range("threat.block_seconds", t.block_seconds, 1, 7 * 86_400)?;
        in_range(
            "threat.max_addresses",
            u64::from(t.max_addresses),
            64,
            262_144,
        )?;
        in_range("threat.max_blocks", u64::from(t.max_blocks), 1, 65_536)?;
        let mut credential_sources = raw.credential_sources;
        credential_sources.legacy_header = legacy.header.clone();
        let ih = &raw.identity_headers;
        let header_rules = HeaderRules::new(
            [
                ih.subject.as_str(),
                ih.key_id.as_str(),
                ih.scopes.as_str(),
                ih.issuer.as_str(),
                ih.principal.as_str(),
                raw.shadow.decision_header.as_str(),
            ],
            raw.strip_method_override,
        );
        let geo = match &raw.geo {
            None => None,
            Some(spec) => {
                let name = spec.country_header.as_str();
                header_name("geo.country_header", name)?;
                let credential = [
                    credential_sources.header.as_deref(),
                    credential_sources.legacy_header.as_deref(),
                ];
                if header_rules.removes(name)
                    || credential.contains(&Some(name))
                    || (credential_sources.bearer && name == "authorization")
                {
                    return Err(error("geo.country_header", ConfigProblem::ReservedHeader));
                }
                Some(crate::geo::GeoSettings {
                    country_header: name.to_owned(),
                })
            }
        };

        Ok(Self {
            key_prefixes: raw.key_prefixes,
            credential_sources,
            key_service: raw.key_service,
            cache: CachePolicy {
                ttl_ms: c.ttl_seconds * 1000,
                negative_ttl_ms: c.negative_ttl_seconds * 1000,
                max_stale_ms: c.max_stale_seconds * 1000,
                max_entries: c.max_entries,
            },
            routes,
            identity_headers: raw.identity_headers,
            max_credential_bytes: raw.max_credential_bytes,
            retry_after_seconds: raw.retry_after_seconds,
            gateway_key_env: raw.secrets.gateway_key_env,
            service_token_env: raw.secrets.service_token_env,
            jwt,
            revocation_feed,
            mode: raw.mode,
            decision_header: raw.shadow.decision_header,
            route_metadata: raw.route_metadata,
            legacy_keys,
            usage: UsageSettings {
                enabled: raw.usage.enabled,
                path: raw.usage.path,
                flush_ms: raw.usage.flush_seconds * 1000,
                max_rows: raw.usage.max_rows,
                max_batch_bytes: raw.usage.max_batch_bytes,
            },
            trusted_hops: raw.client_address.trusted_hops,
            rate_limit_headers: raw.rate_limit_headers,
            header_rules,
            principals,
            fleet: crate::machine::fleet::FleetSettings {
                path: raw.fleet.path,
                max_wait_ms: raw.fleet.max_wait_ms,
            },
            signatures: raw.signatures,
            geo,
            threat: raw.threat.settings(),
        })
    }

    /// Reads the secrets from the VM's environment through `env`.
    pub fn load_secrets(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, ConfigError> {
        let gw_var = &self.gateway_key_env;
        let gateway_hex = env(gw_var).ok_or_else(|| {
            error(
                "secrets.gateway_key_env",
                ConfigProblem::MissingEnv(gw_var.clone()),
            )
        })?;
        let gateway_key = GatewayKey::from_hex(&gateway_hex).map_err(|_| {
            error(
                "secrets.gateway_key_env",
                ConfigProblem::BadEnv(gw_var.clone()),
            )
        })?;
        let token_var = &self.service_token_env;
        let service_token = env(token_var).map(|t| t.trim().to_owned()).ok_or_else(|| {
            error(
                "secrets.service_token_env",
                ConfigProblem::MissingEnv(token_var.clone()),
            )
        })?;
        let token_ok = (32..=512).contains(&service_token.len())
            && service_token.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if !token_ok {
            return Err(error(
                "secrets.service_token_env",
                ConfigProblem::BadEnv(token_var.clone()),
            ));
        }
        Ok(Secrets {
            gateway_key,
            service_token,
        })
    }
}

/// Secrets the filter takes from its VM environment, never from the plugin configuration.
#[derive(Clone)]
pub struct Secrets {
    pub gateway_key: GatewayKey,
    pub service_token: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"{
        "key_prefixes": ["kg_live_", "kg_test_"],
        "credential_sources": {"bearer": true, "header": "x-api-key", "query_param": null},
        "key_service": {"cluster": "keygate_service", "authority": "keygate", "timeout_ms": 1000, "max_in_flight": 64},
        "cache": {"ttl_seconds": 30, "negative_ttl_seconds": 5, "max_stale_seconds": 300, "max_entries": 10000},
        "routes": [
            {"prefix": "/public/", "public": true},
            {"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]},
            {"prefix": "/v1/", "scopes": ["demo:write"]}
        ],
        "identity_headers": {"subject": "x-keygate-subject", "key_id": "x-keygate-key-id", "scopes": "x-keygate-scopes"},
        "max_credential_bytes": 512,
        "retry_after_seconds": 5
    }"#;

    fn with(field_json: &str) -> Result<FilterConfig, ConfigError> {
        let mut value: serde_json::Value = serde_json::from_str(DEMO).unwrap();
        let patch: serde_json::Value = serde_json::from_str(field_json).unwrap();
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        FilterConfig::parse(value.to_string().as_bytes())
    }

    #[test]
    fn parses_the_demo_config() {
        let config = FilterConfig::parse(DEMO.as_bytes()).unwrap();
        assert_eq!(config.routes.len(), 3);
        assert_eq!(config.cache.ttl_ms, 30_000);
        assert_eq!(config.identity_headers.scopes, "x-keygate-scopes");
    }

    #[test]
    fn principals_map_to_scopes_and_routes_take_them() {
        let config = with(
            r#"{"principals": {"map": [
                    {"principal": "spiffe://cluster.local/ns/payments/sa/*", "scopes": ["demo:read"]}
                ]},
                "routes": [
                    {"prefix": "/a/", "scopes": ["demo:read"], "principal": "accept"},
                    {"prefix": "/r/", "scopes": ["demo:read"], "principal": "require"},
                    {"prefix": "/k/", "scopes": ["demo:read"]}
                ]}"#,
        )
        .unwrap();
        assert_eq!(
            config
                .principals
                .scopes_of("spiffe://cluster.local/ns/payments/sa/api")
                .map(|s| s.to_vec()),
            Some(vec!["demo:read".to_owned()])
        );
        assert_eq!(config.identity_headers.principal, "x-keygate-principal");
        let route = |path| config.routes.find("GET", path, None).unwrap().principal;
        assert_eq!(route("/a/x"), crate::principal::PrincipalMode::Accept);
        assert_eq!(route("/r/x"), crate::principal::PrincipalMode::Require);
        assert_eq!(route("/k/x"), crate::principal::PrincipalMode::None);
        assert!(config.header_rules.removes("X_Keygate_Principal"));
        let renamed = with(r#"{"identity_headers": {"principal": "x-workload"}}"#).unwrap();
        assert!(renamed.header_rules.removes("x_workload"));

        // A route taking principals with nothing mapped, a public one, an ambiguous pattern.
        let err = with(r#"{"routes": [{"prefix": "/", "scopes": ["a"], "principal": "accept"}]}"#)
            .unwrap_err();
        assert_eq!(err.field, "routes[0].principal");
        assert_eq!(err.problem, ConfigProblem::NoPrincipalMap);
        let err = with(
            r#"{"principals": {"map": [{"principal": "spiffe://td/a", "scopes": ["a"]}]},
                           "routes": [{"prefix": "/", "public": true, "principal": "require"}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.problem,
            ConfigProblem::Route(RouteError::PublicWithPrincipal)
        );
        let err = with(
            r#"{"principals": {"map": [{"principal": "spiffe://td/ns/*/sa/a", "scopes": ["a"]}]}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "principals");
        assert!(
            err.to_string().contains("principals.map[0].principal"),
            "{err}"
        );
        let err = with(r#"{"routes": [{"prefix": "/", "scopes": ["a"], "principal": "maybe"}]}"#)
            .unwrap_err();
        assert_eq!(err.field, "routes[0].principal");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config =
            FilterConfig::parse(br#"{"routes": [{"prefix": "/", "scopes": ["a"]}]}"#).unwrap();
        assert_eq!(config.key_service.cluster, "keygate_service");
        assert_eq!(
            config.credential_sources.header.as_deref(),
            Some("x-api-key")
        );
        assert_eq!(config.credential_sources.query_param, None);
        assert_eq!(config.max_credential_bytes, 512);
        assert_eq!(config.identity_headers.issuer, "x-keygate-issuer");
        assert!(config.legacy_keys.is_none());
        let legacy = FilterConfig::parse(
            br#"{"routes": [{"prefix": "/", "scopes": ["a"]}], "legacy_keys": {"header": "x-old"}}"#,
        )
        .unwrap()
        .legacy_keys
        .unwrap();
        assert_eq!(legacy.max_in_flight, 8);
        assert_eq!(legacy.negative_cache_entries, 10_000);
        assert_eq!(legacy.negative_ttl_ms, 60_000);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"key_prefixes": ["KG_"]}"#, "key_prefixes[0]"),
            (r#"{"key_prefixes": []}"#, "key_prefixes"),
            (r#"{"cache": {"ttl_seconds": 0}}"#, "cache.ttl_seconds"),
            (
                r#"{"key_service": {"timeout_ms": 5}}"#,
                "key_service.timeout_ms",
            ),
            (r#"{"routes": [{"prefix": "/"}]}"#, "routes[0]"),
            (
                r#"{"identity_headers": {"subject": "X-Bad"}}"#,
                "identity_headers.subject",
            ),
            (
                r#"{"credential_sources": {"bearer": false, "header": null}}"#,
                "credential_sources",
            ),
            (r#"{"max_credential_bytes": 10}"#, "max_credential_bytes"),
            (
                r#"{"revocation_feed": {"wait_seconds": 20, "max_unreachable_seconds": 10}}"#,
                "revocation_feed.max_unreachable_seconds",
            ),
            (
                r#"{"revocation_feed": {"policy": "maybe"}}"#,
                "revocation_feed.policy",
            ),
            (r#"{"mode": "loud"}"#, "mode"),
            (r#"{"usage": {"flush_seconds": 0}}"#, "usage.flush_seconds"),
            (r#"{"fleet": {"path": "v1/leases"}}"#, "fleet.path"),
            (r#"{"fleet": {"max_wait_ms": 10001}}"#, "fleet.max_wait_ms"),
            (
                r#"{"signatures": {"max_age_seconds": 0}}"#,
                "signatures.max_age_seconds",
            ),
            (
                r#"{"signatures": {"max_body_bytes": 16777217}}"#,
                "signatures.max_body_bytes",
            ),
            (
                r#"{"routes": [{"prefix": "/", "scopes": ["a"], "cost": 0}]}"#,
                "routes[0]",
            ),
            (
                r#"{"usage": {"max_batch_bytes": 1048576}}"#,
                "usage.max_batch_bytes",
            ),
            (
                r#"{"client_address": {"trusted_hops": 11}}"#,
                "client_address.trusted_hops",
            ),
            (
                r#"{"routes": [{"prefix": "/", "scopes": ["a"], "rate_limit": {"requests_per_second": 0, "burst": 1}}]}"#,
                "routes[0]",
            ),
            (
                r#"{"shadow": {"decision_header": "X Bad"}}"#,
                "shadow.decision_header",
            ),
            (
                r#"{"legacy_keys": {"prefixes": ["kg_"]}}"#,
                "legacy_keys.prefixes[0]",
            ),
            (
                r#"{"legacy_keys": {"header": "x-old", "lookup_path": "/v1/legacy"}}"#,
                "legacy_keys.lookup_path",
            ),
            (
                r#"{"legacy_keys": {"header": "x-old", "max_in_flight": 0}}"#,
                "legacy_keys.max_in_flight",
            ),
            (
                r#"{"legacy_keys": {"header": "x-old", "negative_cache_entries": 0}}"#,
                "legacy_keys.negative_cache_entries",
            ),
            (
                r#"{"legacy_keys": {"header": "x-old", "negative_ttl_seconds": 0}}"#,
                "legacy_keys.negative_ttl_seconds",
            ),
            (
                r#"{"identity_headers": {"issuer": "X Issuer"}}"#,
                "identity_headers.issuer",
            ),
        ];
        for (patch, field) in cases {
            let err = with(patch).unwrap_err();
            assert_eq!(err.field, field, "{patch}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn header_rules_cover_renamed_headers_and_method_override() {
        let config = with(
            r#"{"shadow": {"decision_header": "authz-decision"}, "identity_headers": {"subject": "x-user"}}"#,
        )
        .unwrap();
        let rules = &config.header_rules;
        assert!(rules.removes("AUTHZ_DECISION"));
        assert!(rules.removes("x_user"));
        assert!(rules.removes("x_keygate_key_id"));
        assert!(rules.removes("x_http_method_override"));
        let config = with(r#"{"strip_method_override": false}"#).unwrap();
        assert!(!config.header_rules.removes("x-http-method-override"));
        assert!(config.header_rules.removes("x-keygate-decision"));
    }

    #[test]
    fn jwt_issuers_compile_and_errors_name_the_field() {
        let key = crate::jwt::SigningKey::generate(
            crate::jwt::Algorithm::ES256,
            &mut crate::jwt::testing::rng(1),
        )
        .unwrap();
        let jwks = serde_json::json!({"keys": [key.public_jwk("k1")]});
        let ok = with(&serde_json::json!({"jwt": {"issuers": [
            {"issuer": "keygate", "audiences": ["api"], "algorithms": ["ES256"], "jwks": {"inline": jwks}, "revocation": "key_service"},
            {"issuer": "https://idp.example", "jwks": {"remote": {"cluster": "idp", "path": "/jwks.json"}}}
        ]}}).to_string())
        .unwrap();
        assert_eq!(ok.jwt.issuers.len(), 2);
        assert_eq!(ok.jwt.issuers[0].revocation, Revocation::KeyService);
        assert!(
            matches!(&ok.jwt.issuers[1].jwks, JwksSource::Remote(r) if r.refresh_ms == 300_000)
        );
        assert_eq!(ok.jwt.issuers[1].validation.leeway_s, 60);

        let cases = [
            (
                r#"{"jwt": {"issuers": [{"issuer": "a", "algorithms": ["HS256"], "jwks": {"inline": {"keys": []}}}]}}"#,
                "jwt.issuers[0].algorithms[0]",
            ),
            (
                r#"{"jwt": {"issuers": [{"issuer": "a", "algorithms": ["none"], "jwks": {"inline": {"keys": []}}}]}}"#,
                "jwt.issuers[0].algorithms[0]",
            ),
            (
                r#"{"jwt": {"issuers": [{"issuer": "a", "jwks": {"inline": {"keys": []}}}]}}"#,
                "jwt.issuers[0].jwks.inline",
            ),
            (
                r#"{"jwt": {"issuers": [{"issuer": "a", "jwks": {"remote": {"cluster": "c", "path": "x"}}}]}}"#,
                "jwt.issuers[0].jwks.remote.path",
            ),
            (
                r#"{"jwt": {"issuers": [{"issuer": "", "jwks": {"remote": {"cluster": "c", "path": "/x"}}}]}}"#,
                "jwt.issuers[0].issuer",
            ),
            (r#"{"jwt": {"max_token_bytes": 10}}"#, "jwt.max_token_bytes"),
        ];
        for (patch, field) in cases {
            let err = with(patch).unwrap_err();
            assert_eq!(err.field, field, "{patch}: {err}");
        }
    }

    #[test]
    fn rate_limit_headers_go_on_every_response_unless_told_refusals() {
        let default = with(r#"{"routes": [{"prefix": "/", "scopes": ["a"]}]}"#).unwrap();
        assert_eq!(default.rate_limit_headers, RateLimitHeaders::Always);
        let refusals = with(r#"{"rate_limit_headers": "refusals"}"#).unwrap();
        assert_eq!(refusals.rate_limit_headers, RateLimitHeaders::Refusals);
        let err = with(r#"{"rate_limit_headers": "sometimes"}"#).unwrap_err();
        assert_eq!(err.field, "rate_limit_headers", "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let err = with(r#"{"cache": {"ttl": 3}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `ttl`"), "{err}");
        let err = with(r#"{"routes": "not a list"}"#).unwrap_err();
        assert_eq!(err.field, "routes");
        assert!(
            err.to_string().starts_with("`routes`: invalid type"),
            "{err}"
        );
        let err = with(r#"{"routes": [{"prefix": "/", "scopes": "a"}]}"#).unwrap_err();
        assert_eq!(err.field, "routes[0].scopes", "{err}");
        assert!(FilterConfig::parse(b"{not json").is_err());
        assert!(FilterConfig::parse(b"{}")
            .unwrap_err()
            .to_string()
            .contains("routes"));
    }

    #[test]
    fn secrets_come_from_the_environment_and_are_checked() {
        let config = FilterConfig::parse(DEMO.as_bytes()).unwrap();
        let good = |var: &str| match var {
            "KEYGATE_GATEWAY_KEY" => Some("ab".repeat(32)),
            "KEYGATE_SERVICE_TOKEN" => Some("t".repeat(32)),
            _ => None,
        };
        assert!(config.load_secrets(good).is_ok());
        let err = config.load_secrets(|_| None).unwrap_err();
        assert_eq!(
            err.problem,
            ConfigProblem::MissingEnv("KEYGATE_GATEWAY_KEY".into())
        );
        let short = |var: &str| match var {
            "KEYGATE_GATEWAY_KEY" => Some("ab".repeat(32)),
            _ => Some("short".into()),
        };
        let err = config.load_secrets(short).unwrap_err();
        assert_eq!(
            err.problem,
            ConfigProblem::BadEnv("KEYGATE_SERVICE_TOKEN".into())
        );
        assert!(!format!("{:?}", config.load_secrets(good).unwrap()).contains("tttt"));
    }
}
