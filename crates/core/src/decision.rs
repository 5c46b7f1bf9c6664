//! Decisions: from a key record and a route to allow (with an identity) or deny (with a reason
//! that knows its status code, `WWW-Authenticate` header, problem body and metric name).

use std::net::IpAddr;
use std::sync::Arc;

use crate::binding::{Attributes, BindError, Requirement};
use crate::credential::CredentialError;
use crate::geo::Country;
use crate::jwt::JwtError;
use crate::key::KeyDigest;
use crate::limits::{AllowList, BucketOwner};
use crate::principal::PrincipalList;
use crate::scope::missing_scopes;
use crate::wire::{KeyLookup, KeyStatus, RateLimit};

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "keygate";

/// Why a request is refused. The detail shown to clients never contains the credential.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// No credential in the request.
    MissingCredential,
    /// The credential could not be read (too long, not ASCII, two different ones, ...).
    BadRequest(CredentialError),
    /// Not a key of ours: unknown prefix, wrong length or alphabet, bad checksum or tag.
    MalformedKey,
    /// The key's tag is not authentic under the gateway key.
    ForgedKey,
    /// The key service does not know the key id.
    UnknownKey,
    /// The key id is known but the secret does not match.
    DigestMismatch,
    /// A JWT that does not verify (signature, algorithm, claims, ...).
    InvalidToken(JwtError),
    Revoked,
    Expired,
    /// Before the key's `not_before`.
    NotYetValid,
    /// The client address is outside the key's allow-list.
    AddressNotAllowed,
    /// The key is restricted to countries and the request's (from Envoy's geoip filter) is
    /// not one of them, or unknown.
    CountryNotAllowed,
    /// Over the key's (or route's) rate limit; a token is back in this many seconds.
    RateLimited {
        retry_after_s: u64,
    },
    InsufficientScope(Vec<String>),
    /// The route binds a path parameter to an attribute of the key, and the key's differs
    /// (or it has none), or the path's value cannot be compared or put in a scope.
    Binding(BindError),
    /// No route in the table matches the request.
    NoRoute,
    /// The path has a `;` path parameter (raw or percent-encoded), which servers behind
    /// Keygate read differently: refused before any route is matched.
    PathParameter,
    /// The key service could not be asked and nothing usable is cached.
    ServiceUnavailable,
    /// Too many lookups are already in flight.
    Overloaded,
    /// The route requires a workload identity (a verified peer certificate URI SAN) and the
    /// connection has none.
    PrincipalRequired,
    /// The request's workload identity lacks scopes the route requires (or is not in the
    /// filter's principal map at all).
    PrincipalInsufficientScope(Vec<String>),
    /// The key is bound to workloads and the request's principal is absent or not one of them.
    PrincipalNotAllowed,
    /// The key's quota (credits) is spent; its window ends in this many seconds.
    QuotaExhausted {
        retry_after_s: u64,
    },
    /// The route requires a request signature (RFC 9421) and the request's is missing or
    /// does not verify with the key's signing material.
    BadSignature(crate::signature::SignatureError),
    /// A signed route's body is larger than the filter buffers (`signatures.max_body_bytes`).
    BodyTooLarge,
    /// The client address is blocked (too many authentication failures, or by an operator);
    /// the block ends in this many seconds.
    Blocked {
        retry_after_s: u64,
    },
}

impl DenyReason {
    pub fn status(&self) -> u32 {
        match self {
            Self::MissingCredential
            | Self::MalformedKey
            | Self::ForgedKey
            | Self::UnknownKey
            | Self::DigestMismatch
            | Self::InvalidToken(_)
            | Self::Revoked
            | Self::NotYetValid
            | Self::Expired => 401,
            Self::RateLimited { .. } | Self::QuotaExhausted { .. } | Self::Blocked { .. } => 429,
            Self::AddressNotAllowed | Self::CountryNotAllowed => 403,
            Self::BadRequest(_) | Self::PathParameter => 400,
            Self::InsufficientScope(_) | Self::NoRoute => 403,
            Self::Binding(err) => err.status(),
            Self::ServiceUnavailable | Self::Overloaded => 503,
            Self::PrincipalRequired
            | Self::PrincipalInsufficientScope(_)
            | Self::PrincipalNotAllowed => 403,
            Self::BadSignature(_) => 401,
            Self::BodyTooLarge => 413,
        }
    }

    /// The name used in metrics and logs.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::MissingCredential => "missing_credential",
            Self::BadRequest(CredentialError::Conflicting) => "conflicting_credentials",
            Self::BadRequest(_) => "malformed_credential",
            Self::MalformedKey => "malformed_key",
            Self::ForgedKey => "forged_key",
            Self::UnknownKey => "unknown_key",
            Self::DigestMismatch => "digest_mismatch",
            Self::InvalidToken(err) => err.metric_name(),
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::CountryNotAllowed => "country_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::Binding(BindError::NotBound { .. }) => "not_bound",
            Self::Binding(BindError::NoAttribute { .. }) => "no_bound_attribute",
            Self::Binding(_) => "bad_path_value",
            Self::NoRoute => "no_route",
            Self::PathParameter => "path_parameter",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Overloaded => "overloaded",
            Self::PrincipalRequired => "principal_required",
            Self::PrincipalInsufficientScope(_) => "principal_insufficient_scope",
            Self::PrincipalNotAllowed => "principal_not_allowed",
            Self::QuotaExhausted { .. } => "quota_exhausted",
            Self::BadSignature(_) => "bad_signature",
            Self::BodyTooLarge => "body_too_large",
            Self::Blocked { .. } => "blocked",
        }
    }

    /// Every metric name, so a filter can define them all at start.
    pub const METRIC_NAMES: [&'static str; 28] = [
        "not_yet_valid",
        "address_not_allowed",
        "country_not_allowed",
        "rate_limited",
        "missing_credential",
        "conflicting_credentials",
        "malformed_credential",
        "malformed_key",
        "forged_key",
        "unknown_key",
        "digest_mismatch",
        "revoked",
        "expired",
        "insufficient_scope",
        "no_route",
        "service_unavailable",
        "overloaded",
        "path_parameter",
        "not_bound",
        "no_bound_attribute",
        "bad_path_value",
        "principal_required",
        "principal_insufficient_scope",
        "principal_not_allowed",
        "quota_exhausted",
        "bad_signature",
        "body_too_large",
        "blocked",
    ];

    fn problem(&self) -> (&'static str, &'static str, String) {
        match self {
            Self::MissingCredential => (
                "missing-credential",
                "API key required",
                "Send an API key in the Authorization header as 'Bearer <key>'.".to_owned(),
            ),
            Self::BadRequest(CredentialError::Conflicting) => (
                "conflicting-credentials",
                "Conflicting credentials",
                "The request carries two different credentials. Send exactly one API key."
                    .to_owned(),
            ),
            Self::BadRequest(err) => ("invalid-request", "Malformed credential", format!("{err}.")),
            Self::MalformedKey | Self::ForgedKey | Self::UnknownKey | Self::DigestMismatch => (
                "invalid-key",
                "Invalid API key",
                "The API key is not valid. Check that it was copied completely.".to_owned(),
            ),
            Self::InvalidToken(JwtError::Expired) => (
                "expired-key",
                "Expired API key",
                "The token has expired.".to_owned(),
            ),
            Self::InvalidToken(err) => (
                "invalid-token",
                "Invalid token",
                format!("{}.", capitalized(&err.to_string())),
            ),
            Self::Revoked => (
                "revoked-key",
                "Revoked API key",
                "The API key has been revoked.".to_owned(),
            ),
            Self::Expired => (
                "expired-key",
                "Expired API key",
                "The API key has expired.".to_owned(),
            ),
            Self::NotYetValid => (
                "not-yet-valid-key",
                "API key not valid yet",
                "The API key is not valid yet.".to_owned(),
            ),
            Self::AddressNotAllowed => (
                "address-not-allowed",
                "Forbidden",
                "The API key may not be used from this address.".to_owned(),
            ),
            Self::CountryNotAllowed => (
                "country-not-allowed",
                "Forbidden",
                "The API key may not be used from this country.".to_owned(),
            ),
            Self::RateLimited { retry_after_s } => (
                "rate-limited",
                "Too many requests",
                format!("The API key's rate limit is exhausted. Retry in {retry_after_s} s."),
            ),
            Self::InsufficientScope(missing) => (
                "insufficient-scope",
                "Insufficient scope",
                format!(
                    "The API key lacks the scope(s) this route requires: {}.",
                    missing.join(" ")
                ),
            ),
            Self::Binding(err @ (BindError::NotBound { .. } | BindError::NoAttribute { .. })) => (
                "not-bound",
                "Forbidden",
                format!("{}.", capitalized(&err.to_string())),
            ),
            Self::Binding(err) => (
                "bad-path-value",
                "Invalid path value",
                format!(
                    "{}: it may not be percent-encoded twice, hold control characters or, \
                     where a scope names it, characters other than A-Z a-z 0-9 . _ -.",
                    capitalized(&err.to_string())
                ),
            ),
            Self::PathParameter => (
                "path-parameter",
                "Path parameters not allowed",
                "The path contains a ';' path parameter (raw or percent-encoded). Send the path \
                 without it."
                    .to_owned(),
            ),
            Self::NoRoute => (
                "no-route",
                "Forbidden",
                "No access policy allows this method and path.".to_owned(),
            ),
            Self::ServiceUnavailable => (
                "service-unavailable",
                "Authorization temporarily unavailable",
                "The API key could not be checked right now. Retry later.".to_owned(),
            ),
            Self::Overloaded => (
                "overloaded",
                "Authorization temporarily unavailable",
                "Too many API keys are being checked right now. Retry later.".to_owned(),
            ),
            Self::PrincipalRequired => (
                "principal-required",
                "Forbidden",
                "This route requires a workload identity: connect with a client certificate \
                 that carries one."
                    .to_owned(),
            ),
            Self::PrincipalInsufficientScope(missing) => (
                "principal-insufficient-scope",
                "Insufficient scope",
                format!(
                    "The workload identity lacks the scope(s) this route requires: {}.",
                    missing.join(" ")
                ),
            ),
            Self::PrincipalNotAllowed => (
                "principal-not-allowed",
                "Forbidden",
                "The API key may not be used by this workload identity.".to_owned(),
            ),
            Self::QuotaExhausted { retry_after_s } => (
                "quota-exhausted",
                "Quota exhausted",
                format!(
                    "The API key's quota is spent (this is its quota, not its rate limit). \
                     It renews in {retry_after_s} s."
                ),
            ),
            Self::BadSignature(err) => (
                "bad-signature",
                "Invalid request signature",
                format!(
                    "{}. This route requires an HTTP message signature (RFC 9421) made with \
                     the key's signing material: cover what Accept-Signature names.",
                    capitalized(&err.to_string())
                ),
            ),
            Self::BodyTooLarge => (
                "body-too-large",
                "Request body too large",
                "The body of a signed request is larger than this route checks.".to_owned(),
            ),
            Self::Blocked { retry_after_s } => (
                "address-blocked",
                "Too many requests",
                format!(
                    "Requests from this address are blocked (repeated authentication failures \
                     or an operator's block). Retry in {retry_after_s} s."
                ),
            ),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), if this status carries one.
    pub fn www_authenticate(&self) -> Option<String> {
        let (_, _, detail) = self.problem();
        match self {
            Self::MissingCredential => Some(format!("Bearer realm=\"{REALM}\"")),
            Self::BadRequest(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{}\"",
                quoted_safe(&detail)
            )),
            Self::MalformedKey
            | Self::ForgedKey
            | Self::UnknownKey
            | Self::DigestMismatch
            | Self::InvalidToken(_)
            | Self::Revoked
            | Self::NotYetValid
            | Self::Expired => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted_safe(&detail)
            )),
            Self::InsufficientScope(missing) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted_safe(&missing.join(" "))
            )),
            Self::NoRoute
            | Self::Binding(_)
            | Self::PathParameter
            | Self::ServiceUnavailable
            | Self::Overloaded
            | Self::AddressNotAllowed
            | Self::CountryNotAllowed
            | Self::PrincipalRequired
            | Self::PrincipalInsufficientScope(_)
            | Self::PrincipalNotAllowed
            | Self::RateLimited { .. }
            | Self::QuotaExhausted { .. }
            | Self::BadSignature(_)
            | Self::BodyTooLarge => None,
            Self::Blocked { .. } => None,
        }
    }

    /// An RFC 9457 `application/problem+json` body.
    pub fn problem_json(&self) -> String {
        let (code, title, detail) = self.problem();
        serde_json::json!({
            "type": format!("urn:keygate:problem:{code}"),
            "title": title,
            "status": self.status(),
            "detail": detail,
        })
        .to_string()
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn quoted_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || !(' '..='~').contains(&c) {
                '\''
            } else {
                c
            }
        })
        .collect()
}

/// What the issuer identity header says for Keygate's own opaque and legacy keys.
pub const KEYGATE_ISSUER: &str = "keygate";

/// Who a request runs as, once allowed: forwarded upstream in the identity headers.
///
/// Cheap to clone (shared text): the filter keeps one per cached record or token and hands
/// out copies per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: Arc<str>,
    /// A Keygate key id, or empty: a token of an outside issuer carries none (its `jti` is
    /// not a Keygate key id, and must never pass for one).
    pub key_id: Arc<str>,
    pub scopes: Arc<[String]>,
    /// The scopes as one header value, space-separated (as the OAuth `scope` claim).
    pub scopes_header: Arc<str>,
    /// The key's own rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
    /// The token's `iss` for a JWT; `None` for Keygate's opaque and legacy keys.
    pub issuer: Option<Arc<str>>,
    /// Whose rate-limit bucket this identity draws from: the key id's, or (without one)
    /// the issuer's and subject's.
    pub bucket_owner: BucketOwner,
    /// The key's fleet-wide limits (global rate, quota, owner pool), if it has any.
    pub fleet: Option<Arc<crate::machine::fleet::FleetLimits>>,
    /// What routes may bind: the key's owner and metadata, the token's claims (`None`:
    /// nothing, and no allocation for keys without).
    pub attributes: Option<Arc<Attributes>>,
    /// The key's request-signing material (signed routes), if it has any.
    pub signing: Option<Arc<crate::signature::KeySigning>>,
}

impl Identity {
    pub fn new(
        subject: &str,
        key_id: &str,
        scopes: Vec<String>,
        rate_limit: Option<RateLimit>,
    ) -> Self {
        let key_id: Arc<str> = key_id.into();
        let bucket_owner = Self::bucket_owner_of(&key_id, None, subject);
        Self {
            subject: subject.into(),
            key_id,
            scopes_header: scopes.join(" ").into(),
            scopes: scopes.into(),
            rate_limit,
            issuer: None,
            bucket_owner,
            fleet: None,
            attributes: None,
            signing: None,
        }
    }

    /// The same identity, with these attributes for bound routes.
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = (!attributes.is_empty()).then(|| Arc::new(attributes));
        self
    }

    /// The same identity, vouched for by the token issuer `issuer`.
    pub fn issued_by(mut self, issuer: &str) -> Self {
        self.bucket_owner = Self::bucket_owner_of(&self.key_id, Some(issuer), &self.subject);
        self.issuer = Some(issuer.into());
        self
    }

    /// The issuer as the identity header shows it: the token's `iss`, or `keygate`.
    pub fn issuer_name(&self) -> &str {
        self.issuer.as_deref().unwrap_or(KEYGATE_ISSUER)
    }

    /// The key usage is counted under: the key id. `None` without one (a token of an outside
    /// issuer, a service principal): the key service keeps usage per Keygate key and would
    /// refuse the row, so none is kept.
    pub fn usage_key(&self) -> Option<&Arc<str>> {
        (!self.key_id.is_empty()).then_some(&self.key_id)
    }

    fn bucket_owner_of(key_id: &str, issuer: Option<&str>, subject: &str) -> BucketOwner {
        if key_id.is_empty() {
            BucketOwner::subject(issuer.unwrap_or(KEYGATE_ISSUER), subject)
        } else {
            BucketOwner::key(key_id)
        }
    }
}

/// Replaces anything that is not printable ASCII, so a value is always a safe header value.
pub fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .collect()
}

/// What repeated decisions from one key record need, worked out once: the stored digest
/// decoded, the identity rendered as header-safe text and the address allow-list parsed.
#[derive(Clone, Debug)]
pub struct PreparedRecord {
    digest: Option<KeyDigest>,
    identity: Identity,
    allowed: AllowList,
    principals: PrincipalList,
}

impl PreparedRecord {
    pub fn of(record: &KeyLookup) -> Self {
        let mut identity = Identity::new(
            &header_safe(&record.subject),
            &record.id,
            record.scopes.iter().map(|s| header_safe(s)).collect(),
            record.rate_limit.filter(RateLimit::is_valid),
        );
        identity.fleet = crate::machine::fleet::FleetLimits::of(record);
        identity.signing = record
            .signing
            .as_ref()
            .map(|wire| Arc::new(crate::signature::KeySigning::of(wire)));
        let identity = identity.with_attributes(Attributes::of_record(
            record.owner.as_deref(),
            &record.metadata,
        ));
        Self {
            digest: KeyDigest::from_hex(&record.digest),
            identity,
            allowed: AllowList::parse(&record.allowed_cidrs),
            principals: PrincipalList::parse(&record.allowed_principals),
        }
    }

    /// Does the record restrict client addresses (so the client's must be read)?
    pub fn restricts_addresses(&self) -> bool {
        self.allowed.is_restricted()
    }

    /// Is the key bound to workloads (so the request's principal must be read)?
    pub fn restricts_principals(&self) -> bool {
        self.principals.is_restricted()
    }

    /// Does the presented key's digest match the record's? In constant time.
    pub fn digest_matches(&self, presented: &KeyDigest) -> bool {
        self.digest
            .as_ref()
            .is_some_and(|stored| stored.ct_eq(presented))
    }
}

/// Decides a request for an opaque key whose record is known.
///
/// The presented secret is compared first, in constant time, so nothing about the record
/// (status, scopes) is revealed to someone who only knows a key id.
pub fn authorize_record(
    record: &KeyLookup,
    presented: &KeyDigest,
    required: &Requirement,
    client: Option<IpAddr>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    let prepared = PreparedRecord::of(record);
    if !prepared.digest_matches(presented) {
        return Err(DenyReason::DigestMismatch);
    }
    authorize_proven(record, &prepared, required, client, now_s)
}

/// Decides a request whose key is already proven to match `record` (its digest compared,
/// now or earlier for the same key text). No principal is known: a key bound to workloads is
/// refused (see [`authorize_proven_peer`]).
pub fn authorize_proven(
    record: &KeyLookup,
    prepared: &PreparedRecord,
    required: &Requirement,
    client: Option<IpAddr>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    authorize_proven_peer(record, prepared, required, Peer::address(client), now_s)
}

/// What the request's connection says about who sent it: the client address (for
/// `allowed_cidrs`), the workload identity Envoy's TLS verified (for `allowed_principals`)
/// and the country Envoy's geoip filter found (for `allowed_countries`).
/// Each is `None` when unknown or not read (nothing that needs it passes then).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer<'a> {
    pub client: Option<IpAddr>,
    pub principal: Option<&'a str>,
    pub country: Option<Country>,
}

impl Peer<'_> {
    /// A peer known only by its address.
    pub fn address(client: Option<IpAddr>) -> Self {
        Self {
            client,
            principal: None,
            country: None,
        }
    }
}

/// [`authorize_proven`] with the request's principal as well.
pub fn authorize_proven_peer(
    record: &KeyLookup,
    prepared: &PreparedRecord,
    required: &Requirement,
    peer: Peer<'_>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    check_record(record, prepared, peer, now_s)?;
    authorize_scopes(prepared.identity.clone(), required)
}

/// Status, expiry, validity window, address allow-list, workload binding and countries of a
/// record whose holder is already proven.
fn check_record(
    record: &KeyLookup,
    prepared: &PreparedRecord,
    peer: Peer<'_>,
    now_s: u64,
) -> Result<(), DenyReason> {
    match record.status {
        KeyStatus::Active => {}
        KeyStatus::Revoked => return Err(DenyReason::Revoked),
        KeyStatus::Expired => return Err(DenyReason::Expired),
    }
    if record.expires_at.is_some_and(|at| at <= now_s)
        || record.not_after.is_some_and(|at| at <= now_s)
    {
        return Err(DenyReason::Expired);
    }
    if record.not_before.is_some_and(|at| now_s < at) {
        return Err(DenyReason::NotYetValid);
    }
    if !prepared.allowed.allows(peer.client) {
        return Err(DenyReason::AddressNotAllowed);
    }
    if !prepared.principals.allows(peer.principal) {
        return Err(DenyReason::PrincipalNotAllowed);
    }
    // Read from the record on each request, not prepared: a few two-letter compares, only
    // for restricted keys, where a prepared list would grow every cached record's copy.
    if !crate::geo::countries_allow(&record.allowed_countries, peer.country) {
        return Err(DenyReason::CountryNotAllowed);
    }
    Ok(())
}

/// Checks that an already authenticated identity (a verified JWT) holds the route's scopes
/// (wildcards honoured) and, on a bound route, the attributes the path names.
pub fn authorize_scopes(
    identity: Identity,
    required: &Requirement,
) -> Result<Identity, DenyReason> {
    let missing = missing_scopes(&required.scopes, &identity.scopes);
    if !missing.is_empty() {
        return Err(DenyReason::InsufficientScope(
            missing.iter().map(|s| s.as_str().to_owned()).collect(),
        ));
    }
    if required.bindings.is_empty() {
        return Ok(identity);
    }
    let none = Attributes::default();
    required
        .check_bindings(identity.attributes.as_deref().unwrap_or(&none))
        .map_err(DenyReason::Binding)?;
    Ok(identity)
}

/// Decides a verified JWT whose `jti` names a key record of the key service: the signature
/// already proved the token, so only the record's status and expiry matter here (`None`:
/// the service does not know the `jti`, so it did not issue this token).
pub fn authorize_token_record(
    record: Option<&KeyLookup>,
    identity: Identity,
    required: &Requirement,
    client: Option<IpAddr>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    let prepared = record.map(|record| (record, PreparedRecord::of(record)));
    let prepared = prepared
        .as_ref()
        .map(|(record, prepared)| (*record, prepared));
    authorize_token_prepared(prepared, identity, required, client, now_s)
}

/// [`authorize_token_record`] with the record already prepared.
pub fn authorize_token_prepared(
    record: Option<(&KeyLookup, &PreparedRecord)>,
    identity: Identity,
    required: &Requirement,
    client: Option<IpAddr>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    authorize_token_peer(record, identity, required, Peer::address(client), now_s)
}

/// [`authorize_token_prepared`] with the request's principal as well.
pub fn authorize_token_peer(
    record: Option<(&KeyLookup, &PreparedRecord)>,
    mut identity: Identity,
    required: &Requirement,
    peer: Peer<'_>,
    now_s: u64,
) -> Result<Identity, DenyReason> {
    let (record, prepared) = record.ok_or(DenyReason::UnknownKey)?;
    check_record(record, prepared, peer, now_s)?;
    identity.rate_limit = identity
        .rate_limit
        .or(record.rate_limit.filter(RateLimit::is_valid));
    if identity.fleet.is_none() {
        identity.fleet = prepared.identity.fleet.clone();
    }
    // The record vouches for the owner and metadata; the token for its claims.
    if !required.bindings.is_empty() {
        let mut attributes = prepared
            .identity
            .attributes
            .as_deref()
            .cloned()
            .unwrap_or_default();
        attributes.claims = identity
            .attributes
            .as_deref()
            .map(|a| a.claims.clone())
            .unwrap_or_default();
        identity = identity.with_attributes(attributes);
    }
    authorize_scopes(identity, required)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::parse_scopes;

    fn req(scopes: &[&str]) -> Requirement {
        Requirement::from(Arc::<[crate::scope::Scope]>::from(
            parse_scopes(scopes).unwrap(),
        ))
    }

    fn token_identity() -> Identity {
        Identity::new("team-a", "aaaaaaaaaaaaaaaa", vec!["demo:read".into()], None)
    }

    #[test]
    fn token_records_decide_by_status_and_scopes() {
        let read = req(&["demo:read"]);
        let write = req(&["demo:write"]);
        let (active, _) = record(KeyStatus::Active, None);
        assert!(authorize_token_record(Some(&active), token_identity(), &read, None, 0).is_ok());
        assert_eq!(
            authorize_token_record(Some(&active), token_identity(), &write, None, 0),
            Err(DenyReason::InsufficientScope(vec!["demo:write".into()]))
        );
        let (revoked, _) = record(KeyStatus::Revoked, None);
        assert_eq!(
            authorize_token_record(Some(&revoked), token_identity(), &read, None, 0),
            Err(DenyReason::Revoked)
        );
        let (ending, _) = record(KeyStatus::Active, Some(10));
        assert_eq!(
            authorize_token_record(Some(&ending), token_identity(), &read, None, 10),
            Err(DenyReason::Expired)
        );
        assert_eq!(
            authorize_token_record(None, token_identity(), &read, None, 0),
            Err(DenyReason::UnknownKey)
        );
        assert!(authorize_scopes(token_identity(), &read).is_ok());
    }

    fn record(status: KeyStatus, expires_at: Option<u64>) -> (KeyLookup, KeyDigest) {
        let digest = KeyDigest::of(b"kg_test_secret");
        let record = KeyLookup {
            scopes: vec!["demo:read".into()],
            status,
            expires_at,
            ..KeyLookup::active("aaaaaaaaaaaaaaaa", digest.to_hex())
        };
        (record, digest)
    }

    #[test]
    fn allows_an_active_key_with_the_scope() {
        let (rec, digest) = record(KeyStatus::Active, Some(2000));
        let id = authorize_record(&rec, &digest, &req(&["demo:read"]), None, 1000).unwrap();
        assert_eq!(&*id.subject, "team-a");
        assert_eq!(&*id.scopes_header, "demo:read");
    }

    #[test]
    fn checks_the_secret_before_anything_else() {
        let (rec, _) = record(KeyStatus::Revoked, None);
        let other = KeyDigest::of(b"kg_test_other");
        assert_eq!(
            authorize_record(&rec, &other, &req(&[]), None, 0),
            Err(DenyReason::DigestMismatch)
        );
    }

    #[test]
    fn refuses_revoked_expired_and_missing_scope() {
        let (rec, d) = record(KeyStatus::Revoked, None);
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), None, 0),
            Err(DenyReason::Revoked)
        );
        let (rec, d) = record(KeyStatus::Expired, None);
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), None, 0),
            Err(DenyReason::Expired)
        );
        let (rec, d) = record(KeyStatus::Active, Some(1000));
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), None, 1000),
            Err(DenyReason::Expired)
        );
        let (rec, d) = record(KeyStatus::Active, None);
        let need = req(&["demo:write", "demo:read"]);
        assert_eq!(
            authorize_record(&rec, &d, &need, None, 0),
            Err(DenyReason::InsufficientScope(vec!["demo:write".into()]))
        );
    }

    #[test]
    fn records_restrict_window_address_and_carry_their_rate_limit() {
        let (mut rec, d) = record(KeyStatus::Active, None);
        rec.not_before = Some(100);
        rec.not_after = Some(200);
        rec.allowed_cidrs = vec!["127.0.0.0/8".into(), "2001:db8::/32".into()];
        rec.rate_limit = Some(RateLimit {
            requests_per_second: 5.0,
            burst: 5,
        });
        let local: Option<IpAddr> = "127.0.0.1".parse().ok();
        let foreign: Option<IpAddr> = "192.0.2.9".parse().ok();
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), local, 99),
            Err(DenyReason::NotYetValid)
        );
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), local, 200),
            Err(DenyReason::Expired)
        );
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), foreign, 150),
            Err(DenyReason::AddressNotAllowed)
        );
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), None, 150),
            Err(DenyReason::AddressNotAllowed)
        );
        let ok = authorize_record(&rec, &d, &req(&[]), local, 150).unwrap();
        assert_eq!(ok.rate_limit.map(|l| l.burst), Some(5));
        let token =
            authorize_token_record(Some(&rec), token_identity(), &req(&[]), local, 150).unwrap();
        assert_eq!(token.rate_limit.map(|l| l.burst), Some(5));
        assert_eq!(DenyReason::RateLimited { retry_after_s: 2 }.status(), 429);
        assert_eq!(DenyReason::AddressNotAllowed.status(), 403);
        assert!(DenyReason::NotYetValid
            .www_authenticate()
            .unwrap()
            .contains("invalid_token"));
    }

    #[test]
    fn keys_restricted_to_countries_need_a_known_country_of_theirs() {
        let (mut rec, d) = record(KeyStatus::Active, None);
        rec.allowed_countries = vec!["DE".into(), "AT".into()];
        let prepared = PreparedRecord::of(&rec);
        let decide = |country: &[u8]| {
            let peer = Peer {
                country: Country::parse(country),
                ..Peer::default()
            };
            authorize_proven_peer(&rec, &prepared, &req(&[]), peer, 0)
        };
        assert!(decide(b"DE").is_ok());
        assert!(decide(b"at").is_ok());
        for refused in [&b"US"[..], b"", b"Germany"] {
            assert_eq!(
                decide(refused),
                Err(DenyReason::CountryNotAllowed),
                "{refused:?}"
            );
        }
        assert_eq!(DenyReason::CountryNotAllowed.status(), 403);
        // The secret is compared first: a wrong one learns nothing about the countries.
        assert_eq!(
            authorize_record(&rec, &KeyDigest::of(b"other"), &req(&[]), None, 0),
            Err(DenyReason::DigestMismatch)
        );
        assert!(authorize_record(&rec, &d, &req(&[]), None, 0).is_err());
        // A token whose record is restricted is held to it as well.
        let identity = Identity::new("s", &rec.id, vec![], None);
        let token = |country: &[u8]| {
            authorize_token_peer(
                Some((&rec, &prepared)),
                identity.clone(),
                &req(&[]),
                Peer {
                    country: Country::parse(country),
                    ..Peer::default()
                },
                0,
            )
        };
        assert!(token(b"AT").is_ok());
        assert_eq!(token(b"FR"), Err(DenyReason::CountryNotAllowed));
    }

    #[test]
    fn keys_bound_to_workloads_need_one_of_their_principals() {
        let (mut rec, d) = record(KeyStatus::Active, None);
        rec.allowed_principals = vec![
            "spiffe://td/ns/a/sa/x".into(),
            "spiffe://td/ns/b/sa/*".into(),
        ];
        let prepared = PreparedRecord::of(&rec);
        assert!(prepared.restricts_principals());
        let peer = |principal| Peer {
            client: None,
            principal,
            country: None,
        };
        let decide =
            |principal| authorize_proven_peer(&rec, &prepared, &req(&[]), peer(principal), 0);
        assert!(decide(Some("spiffe://td/ns/a/sa/x")).is_ok());
        assert!(decide(Some("spiffe://td/ns/b/sa/y")).is_ok());
        for denied in [
            None,
            Some("spiffe://td/ns/a/sa/y"),
            Some("spiffe://td/ns/b/sa/y/z"),
        ] {
            assert_eq!(
                decide(denied),
                Err(DenyReason::PrincipalNotAllowed),
                "{denied:?}"
            );
        }
        // Without a principal (the old entry points) a bound key is refused.
        assert_eq!(
            authorize_record(&rec, &d, &req(&[]), None, 0),
            Err(DenyReason::PrincipalNotAllowed)
        );
        let token = authorize_token_peer(
            Some((&rec, &prepared)),
            token_identity(),
            &req(&[]),
            peer(Some("spiffe://td/ns/a/sa/x")),
            0,
        );
        assert!(token.is_ok());
        assert_eq!(
            authorize_token_record(Some(&rec), token_identity(), &req(&[]), None, 0),
            Err(DenyReason::PrincipalNotAllowed)
        );
        // Status and address come first; scopes after the binding.
        let (mut revoked, _) = record(KeyStatus::Revoked, None);
        revoked.allowed_principals = rec.allowed_principals.clone();
        let prepared_revoked = PreparedRecord::of(&revoked);
        assert_eq!(
            authorize_proven_peer(&revoked, &prepared_revoked, &req(&[]), peer(None), 0),
            Err(DenyReason::Revoked)
        );
        let write = req(&["demo:write"]);
        assert_eq!(
            authorize_proven_peer(&rec, &prepared, &write, peer(None), 0),
            Err(DenyReason::PrincipalNotAllowed)
        );
        // An unbound key ignores the principal.
        let (open, _) = record(KeyStatus::Active, None);
        let open_prepared = PreparedRecord::of(&open);
        assert!(!open_prepared.restricts_principals());
        assert!(authorize_proven_peer(&open, &open_prepared, &req(&[]), peer(None), 0).is_ok());
        let reason = DenyReason::PrincipalNotAllowed;
        assert_eq!(
            (reason.status(), reason.metric_name()),
            (403, "principal_not_allowed")
        );
        assert_eq!(reason.www_authenticate(), None);
        let body: serde_json::Value = serde_json::from_str(&reason.problem_json()).unwrap();
        assert_eq!(body["type"], "urn:keygate:problem:principal-not-allowed");
        let scope = DenyReason::PrincipalInsufficientScope(vec!["a:b".into()]);
        assert_eq!(scope.status(), 403);
        assert!(scope.problem_json().contains("workload identity lacks"));
        assert_eq!(DenyReason::PrincipalRequired.status(), 403);
    }

    #[test]
    fn responses_follow_rfc6750_and_rfc9457() {
        let deny = DenyReason::InsufficientScope(vec!["demo:write".into()]);
        assert_eq!(deny.status(), 403);
        assert_eq!(
            deny.www_authenticate().unwrap(),
            "Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"demo:write\""
        );
        let body: serde_json::Value = serde_json::from_str(&deny.problem_json()).unwrap();
        assert_eq!(body["status"], 403);
        assert_eq!(body["type"], "urn:keygate:problem:insufficient-scope");
        assert_eq!(
            DenyReason::MissingCredential.www_authenticate().unwrap(),
            "Bearer realm=\"keygate\""
        );
        assert!(DenyReason::Revoked
            .www_authenticate()
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert!(DenyReason::BadRequest(CredentialError::TooLong)
            .www_authenticate()
            .unwrap()
            .contains("error=\"invalid_request\""));
        assert_eq!(DenyReason::ServiceUnavailable.status(), 503);
    }

    #[test]
    fn every_reason_has_a_listed_metric() {
        let all = [
            DenyReason::MissingCredential,
            DenyReason::BadRequest(CredentialError::Conflicting),
            DenyReason::BadRequest(CredentialError::TooLong),
            DenyReason::MalformedKey,
            DenyReason::ForgedKey,
            DenyReason::UnknownKey,
            DenyReason::DigestMismatch,
            DenyReason::InvalidToken(JwtError::BadSignature),
            DenyReason::Revoked,
            DenyReason::Expired,
            DenyReason::NotYetValid,
            DenyReason::AddressNotAllowed,
            DenyReason::RateLimited { retry_after_s: 1 },
            DenyReason::InsufficientScope(vec![]),
            DenyReason::NoRoute,
            DenyReason::PathParameter,
            DenyReason::Binding(crate::binding::BindError::NotBound { param: "t".into() }),
            DenyReason::Binding(crate::binding::BindError::NoAttribute { param: "t".into() }),
            DenyReason::Binding(crate::binding::BindError::BadParameter { param: "t".into() }),
            DenyReason::ServiceUnavailable,
            DenyReason::Overloaded,
            DenyReason::PrincipalRequired,
            DenyReason::PrincipalInsufficientScope(vec![]),
            DenyReason::PrincipalNotAllowed,
        ];
        for reason in all {
            let name = reason.metric_name();
            assert!(
                DenyReason::METRIC_NAMES.contains(&name) || JwtError::METRIC_NAMES.contains(&name),
                "{reason:?}"
            );
        }
        let jwt = DenyReason::InvalidToken(JwtError::UnknownKeyId);
        assert_eq!(jwt.status(), 401);
        assert!(jwt
            .www_authenticate()
            .unwrap()
            .contains("error=\"invalid_token\""));
        assert!(jwt
            .problem_json()
            .contains("No key with the token's key id."));
    }

    #[test]
    fn conflicting_credentials_and_path_parameters_have_their_own_problem() {
        let conflict = DenyReason::BadRequest(CredentialError::Conflicting);
        let body: serde_json::Value = serde_json::from_str(&conflict.problem_json()).unwrap();
        assert_eq!(body["title"], "Conflicting credentials");
        assert_eq!(body["type"], "urn:keygate:problem:conflicting-credentials");
        assert_eq!(conflict.status(), 400);
        let malformed = DenyReason::BadRequest(CredentialError::NotPrintableAscii);
        let body: serde_json::Value = serde_json::from_str(&malformed.problem_json()).unwrap();
        assert_eq!(body["title"], "Malformed credential");
        let path = DenyReason::PathParameter;
        assert_eq!((path.status(), path.metric_name()), (400, "path_parameter"));
        assert_eq!(path.www_authenticate(), None);
        let body: serde_json::Value = serde_json::from_str(&path.problem_json()).unwrap();
        assert_eq!(body["type"], "urn:keygate:problem:path-parameter");
    }

    #[test]
    fn outside_identities_are_namespaced_by_issuer() {
        let key_id = "pqiwdlk7mv5ft2xr";
        let key = Identity::new("team-a", key_id, vec![], None);
        assert_eq!(key.issuer_name(), KEYGATE_ISSUER);
        assert_eq!(key.bucket_owner, BucketOwner::key(key_id));
        assert_eq!(key.usage_key().map(|k| &**k), Some(key_id));
        // A Keygate JWT (its jti is a key id) shares the key's bucket and usage rows.
        let keygate_jwt = Identity::new("team-a", key_id, vec![], None).issued_by("keygate");
        assert_eq!(keygate_jwt.bucket_owner, key.bucket_owner);
        assert_eq!(keygate_jwt.usage_key(), key.usage_key());
        // An outside token whose sub spells the key id, or the owner, shares neither.
        for sub in [key_id, "team-a"] {
            let outside = Identity::new(sub, "", vec![], None).issued_by("https://idp/");
            assert_eq!(outside.issuer_name(), "https://idp/");
            assert_ne!(outside.bucket_owner, key.bucket_owner);
            assert_eq!(
                outside.usage_key(),
                None,
                "no usage row the service would refuse"
            );
        }
        // The same subject at two issuers: two buckets; the same at one issuer: one bucket,
        // whatever the token (jti) it came in.
        let a = Identity::new("bob", "", vec![], None).issued_by("https://a/");
        let b = Identity::new("bob", "", vec![], None).issued_by("https://b/");
        let a_again = Identity::new("bob", "", vec!["x".into()], None).issued_by("https://a/");
        assert_ne!(a.bucket_owner, b.bucket_owner);
        assert_eq!(a.bucket_owner, a_again.bucket_owner);
    }

    fn bound_to(value: &str, attribute: crate::binding::Attribute, scopes: &[&str]) -> Requirement {
        Requirement {
            scopes: req(scopes).scopes,
            bindings: vec![crate::binding::Binding {
                param: "tenant".into(),
                attribute,
                value: value.into(),
            }],
        }
    }

    #[test]
    fn bound_routes_check_the_record_and_the_token() {
        use crate::binding::Attribute;
        let (mut rec, d) = record(KeyStatus::Active, None);
        rec.owner = Some("acme".into());
        rec.metadata.insert("team".into(), "red".into());
        let acme = bound_to("acme", Attribute::Owner, &["demo:read"]);
        assert!(authorize_record(&rec, &d, &acme, None, 0).is_ok());
        let other = bound_to("globex", Attribute::Owner, &["demo:read"]);
        let denied = authorize_record(&rec, &d, &other, None, 0).unwrap_err();
        assert_eq!(denied.metric_name(), "not_bound");
        assert_eq!(denied.status(), 403);
        let body = denied.problem_json();
        assert!(body.contains("not bound to this tenant"), "{body}");
        assert!(!body.contains("acme"), "{body}");
        // Scopes are reported first.
        let both = bound_to("globex", Attribute::Owner, &["demo:write"]);
        assert_eq!(
            authorize_record(&rec, &d, &both, None, 0),
            Err(DenyReason::InsufficientScope(vec!["demo:write".into()]))
        );
        let team = bound_to("red", Attribute::Metadata("team".into()), &[]);
        assert!(authorize_record(&rec, &d, &team, None, 0).is_ok());
        let claim = bound_to("acme", Attribute::Claim("org".into()), &[]);
        assert_eq!(
            authorize_record(&rec, &d, &claim, None, 0)
                .unwrap_err()
                .metric_name(),
            "no_bound_attribute"
        );
        // A token: its claims, and its record's owner and metadata.
        let token = token_identity().with_attributes(crate::binding::Attributes {
            claims: [("org".to_owned(), "acme".to_owned())].into(),
            ..Default::default()
        });
        assert!(authorize_scopes(token.clone(), &claim).is_ok());
        assert!(authorize_scopes(token.clone(), &acme).is_err());
        assert!(authorize_token_record(Some(&rec), token.clone(), &acme, None, 0).is_ok());
        assert!(authorize_token_record(Some(&rec), token.clone(), &claim, None, 0).is_ok());
        assert!(authorize_token_record(Some(&rec), token, &other, None, 0).is_err());
        // Wildcard grants reach parameter scopes.
        rec.scopes = vec!["datasets:*".into()];
        let asset = req(&["datasets:x:read"]);
        assert!(authorize_record(&rec, &d, &asset, None, 0).is_ok());
    }

    #[test]
    fn header_values_are_made_safe() {
        assert_eq!(header_safe("a\r\nb\u{e9}"), "a__b_");
    }
}
