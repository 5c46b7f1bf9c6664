//! The key operations: create, list, show, revoke, expire, rotate, and the filter's lookup.
//! Each one checks its input, works on the store and answers records (never HTTP).

use keygate_core::jwt::Algorithm;
use keygate_core::key::{mint_opaque_key, KeyDigest, KeyId, ID_LEN, SECRET_LEN};
use keygate_core::scope::Scope;
use keygate_core::wire::{KeyLookup, KeyStatus, RoleRef};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::role::effective_scopes;
use crate::model::{KeyLimits, KeyRecord, PageAfter, FORMAT_JWT, FORMAT_OPAQUE};
use crate::service::access::{check_grant, Access};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::limits::{CreateLimits, RateLimitRequest};
use crate::service::signing::{JwtSettings, DEFAULT_ALGORITHM};
use crate::service::validate::{
    duration_seconds, valid_text, validate_metadata, validate_scopes, MAX_NAME_CHARS,
    MAX_OWNER_CHARS,
};
use crate::timestamp::parse_rfc3339;

/// Longest `expires_in`: ten years.
pub const MAX_EXPIRES_IN: i64 = 10 * 365 * 86_400;
/// Default rotation grace period: one day.
pub const DEFAULT_GRACE: i64 = 86_400;
/// Longest rotation grace period: thirty days.
pub const MAX_GRACE: i64 = 30 * 86_400;

// ---------------------------------------------------------------------------------------------
// Create

/// The body of `POST /api/v1/auth/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Seconds as a number, or a duration string (see
    /// [`crate::service::validate::parse_duration`]).
    #[serde(default)]
    pub expires_in: Option<Value>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub format: Option<String>,
    /// JWT keys only: `ES256` (default), `EdDSA` or `RS256`.
    #[serde(default)]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitRequest>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    /// Names of roles the key holds (opaque keys only).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_principals: Option<Vec<String>>,
    /// ISO 3166-1 alpha-2 codes the key may be used from.
    #[serde(default)]
    pub allowed_countries: Option<Vec<String>>,
    #[serde(default)]
    pub global_limit: Option<RateLimitRequest>,
    #[serde(default)]
    pub quota: Option<crate::service::limits::QuotaRequest>,
    /// Request-signing material to register with the key (see
    /// [`crate::service::request_signing`]).
    #[serde(default)]
    pub signing_material: Option<crate::service::request_signing::SigningMaterialRequest>,
}

/// What kind of key to mint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    Opaque,
    /// A JWT signed by the service with this algorithm.
    Jwt(Algorithm),
}

/// A create request that passed every check.
#[derive(Debug, PartialEq)]
pub struct ValidCreate {
    pub name: String,
    pub owner: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<i64>,
    pub metadata: Map<String, Value>,
    pub format: KeyFormat,
    pub limits: KeyLimits,
    pub roles: Vec<String>,
}

pub fn parse_algorithm(text: &str) -> Result<Algorithm, ApiError> {
    Algorithm::parse(text).ok_or(ApiError::UnknownAlgorithm)
}

/// Checks a create request at time `now`.
pub fn validate_create(request: CreateKeyRequest, now: i64) -> Result<ValidCreate, ApiError> {
    let format = match (request.format.as_deref(), request.algorithm.as_deref()) {
        (None | Some(FORMAT_OPAQUE), None) => KeyFormat::Opaque,
        (None | Some(FORMAT_OPAQUE), Some(_)) => return Err(ApiError::AlgorithmWithoutJwt),
        (Some(FORMAT_JWT), None) => KeyFormat::Jwt(DEFAULT_ALGORITHM),
        (Some(FORMAT_JWT), Some(text)) => KeyFormat::Jwt(parse_algorithm(text)?),
        (Some(_), _) => return Err(ApiError::UnknownFormat),
    };
    if request.name.is_empty() || !valid_text(&request.name, MAX_NAME_CHARS) {
        return Err(ApiError::BadName);
    }
    let owner = request.owner.unwrap_or_default();
    if !valid_text(&owner, MAX_OWNER_CHARS) {
        return Err(ApiError::BadOwner);
    }
    let scopes = validate_scopes(&request.scopes)?;
    let expires_at = match (request.expires_in, request.expires_at) {
        (Some(_), Some(_)) => return Err(ApiError::ExpiryConflict),
        (Some(duration), None) => {
            let seconds = duration_seconds(&duration)
                .filter(|seconds| (1..=MAX_EXPIRES_IN).contains(seconds))
                .ok_or(ApiError::BadExpiresIn)?;
            Some(now.saturating_add(seconds))
        }
        (None, Some(text)) => {
            let at = parse_rfc3339(&text).ok_or(ApiError::UnparsableExpiresAt)?;
            if at <= now {
                return Err(ApiError::ExpiresAtInPast);
            }
            Some(at)
        }
        (None, None) => None,
    };
    let metadata = validate_metadata(request.metadata)?;
    let limits = CreateLimits {
        rate_limit: request.rate_limit,
        allowed_cidrs: request.allowed_cidrs,
        not_before: request.not_before,
        not_after: request.not_after,
        allowed_principals: request.allowed_principals,
        allowed_countries: request.allowed_countries,
        global_limit: request.global_limit,
        quota: request.quota,
    }
    .validate(now)?;
    let roles = crate::service::roles::validate_key_roles(&request.roles.unwrap_or_default())?;
    if !roles.is_empty() && format != KeyFormat::Opaque {
        return Err(ApiError::JwtRoles);
    }
    Ok(ValidCreate {
        name: request.name,
        owner,
        scopes,
        expires_at,
        metadata,
        format,
        limits,
        roles,
    })
}

/// What a new key record copies from its request (create) or its predecessor (rotate).
struct KeyFields {
    name: String,
    owner: String,
    scopes: Vec<String>,
    metadata: Map<String, Value>,
    expires_at: Option<i64>,
    limits: KeyLimits,
    roles: Vec<String>,
}

fn random_key_id() -> Result<KeyId, ApiError> {
    let mut id = [0u8; ID_LEN];
    getrandom::getrandom(&mut id)
        .map_err(|error| ApiError::Internal(format!("OS random number generator: {error}")))?;
    Ok(KeyId::from_bytes(id))
}

/// Mints a key of `format` and builds its record (not yet stored). Answers the record and
/// the plaintext, which is shown once.
async fn mint(
    service: &Service,
    format: KeyFormat,
    fields: KeyFields,
    now: i64,
) -> Result<(KeyRecord, String), ApiError> {
    let mut record = KeyRecord {
        id: String::new(),
        prefix: String::new(),
        name: fields.name,
        owner: fields.owner,
        scopes: fields.scopes,
        metadata: fields.metadata,
        digest: String::new(),
        format: String::new(),
        created_at: now,
        expires_at: fields.expires_at,
        grace_until: None,
        revoked_at: None,
        last_used_at: None,
        last_used_address: None,
        rotated_from: None,
        rotated_to: None,
        algorithm: None,
        signing_kid: None,
        limits: fields.limits,
        roles: fields.roles,
    };
    let plaintext = match format {
        KeyFormat::Opaque => {
            let mut id = [0u8; ID_LEN];
            let mut secret = [0u8; SECRET_LEN];
            getrandom::getrandom(&mut id)
                .and_then(|()| getrandom::getrandom(&mut secret))
                .map_err(|error| {
                    ApiError::Internal(format!("OS random number generator: {error}"))
                })?;
            let minted = mint_opaque_key(service.prefix(), service.gateway_key(), id, secret);
            record.id = minted.id.to_string();
            record.prefix = service.prefix().to_string();
            record.digest = minted.digest.to_hex();
            record.format = FORMAT_OPAQUE.into();
            minted.plaintext
        }
        KeyFormat::Jwt(algorithm) => {
            let settings = service.jwt().settings();
            if record.expires_at.is_none() && !settings.allow_without_expiry {
                return Err(ApiError::JwtExpiryRequired);
            }
            if !service.jwt().is_configured() {
                return Err(ApiError::JwtSigningNotConfigured);
            }
            record.id = random_key_id()?.to_string();
            let claims = jwt_claims(&record, settings);
            let (token, kid) = service
                .jwt()
                .sign(service.store(), algorithm, &claims, now)
                .await?;
            record.digest = KeyDigest::of(token.as_bytes()).to_hex();
            record.format = FORMAT_JWT.into();
            record.algorithm = Some(algorithm.as_str().into());
            record.signing_kid = Some(kid);
            token
        }
    };
    Ok((record, plaintext))
}

/// The claims of a JWT API key (RFC 9068 access-token profile): `jti` and `client_id` are the
/// key id, so revocation and lookups work as for opaque keys.
fn jwt_claims(record: &KeyRecord, settings: &JwtSettings) -> Value {
    let mut claims = Map::new();
    claims.insert("iss".into(), settings.issuer.clone().into());
    let subject = if record.owner.is_empty() {
        &record.id
    } else {
        &record.owner
    };
    claims.insert("sub".into(), subject.clone().into());
    claims.insert("aud".into(), settings.audience.clone().into());
    claims.insert("jti".into(), record.id.clone().into());
    claims.insert("client_id".into(), record.id.clone().into());
    claims.insert("iat".into(), record.created_at.into());
    if let Some(exp) = record.expires_at {
        claims.insert("exp".into(), exp.into());
    }
    if !record.scopes.is_empty() {
        claims.insert("scope".into(), record.scopes.join(" ").into());
    }
    Value::Object(claims)
}

/// Creates a key: checks `request`, mints the key and stores its record. Answers the record
/// and the plaintext, which is shown once. An owner caller creates keys of its own owner
/// only (the request's `owner` is replaced) and may not grant a `keygate:` scope.
pub async fn create(
    service: &Service,
    access: &Access,
    mut request: CreateKeyRequest,
    now: i64,
) -> Result<(KeyRecord, String), ApiError> {
    check_grant(access, &request.scopes)?;
    if let Some(owner) = access.owner() {
        request.owner = Some(owner.to_owned());
    }
    let valid = validate_create(request, now)?;
    let fields = KeyFields {
        name: valid.name,
        owner: valid.owner,
        scopes: valid.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        metadata: valid.metadata,
        expires_at: valid.expires_at,
        limits: valid.limits,
        roles: valid.roles,
    };
    let (record, plaintext) = mint(service, valid.format, fields, now).await?;
    service.store().insert_key(&record).await?;
    service.events().key_created(&record);
    crate::service::alerts::key_created(service, &record).await;
    tracing::info!(key_id = %record.id, name = %record.name, format = %record.format, "key created");
    Ok((record, plaintext))
}

/// The cursor of the page that follows `record`.
pub fn encode_cursor(record: &KeyRecord) -> String {
    format!("{}.{}", record.created_at, record.id)
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(text: &str) -> Result<PageAfter, ApiError> {
    let (created_at, id) = text.split_once('.').ok_or(ApiError::BadCursor)?;
    let created_at = created_at.parse().map_err(|_| ApiError::BadCursor)?;
    let id = KeyId::parse(id).map_err(|_| ApiError::BadCursor)?;
    Ok(PageAfter {
        created_at,
        id: id.to_string(),
    })
}

/// One page of keys, oldest first: up to `limit` records after `after` (see
/// [`decode_cursor`]; of `status` if given), and the cursor of the next page if there is one.
pub async fn list(
    service: &Service,
    access: &Access,
    after: Option<PageAfter>,
    limit: u32,
    status: Option<KeyStatus>,
    now: i64,
) -> Result<(Vec<KeyRecord>, Option<String>), ApiError> {
    let mut records = service
        .store()
        .list_keys_of(after.as_ref(), limit + 1, status, access.owner(), now)
        .await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_cursor = if more {
        records.last().map(encode_cursor)
    } else {
        None
    };
    Ok((records, next_cursor))
}

/// A key id as given in a request.
pub fn parse_key_id(text: &str) -> Result<KeyId, ApiError> {
    KeyId::parse(text).map_err(|_| ApiError::BadKeyId)
}

/// The key with this id, if `access` may see it (another owner's key answers
/// [`ApiError::KeyNotFound`]).
pub async fn show(service: &Service, access: &Access, id: &KeyId) -> Result<KeyRecord, ApiError> {
    let record = service
        .store()
        .get_key(id.as_str())
        .await?
        .ok_or(ApiError::KeyNotFound)?;
    access.visible(record)
}

/// Revokes a key (idempotent).
pub async fn revoke(
    service: &Service,
    access: &Access,
    id: &KeyId,
    now: i64,
) -> Result<KeyRecord, ApiError> {
    let already = show(service, access, id).await?.revoked_at.is_some();
    let record = service.store().revoke_key(id.as_str(), now).await?;
    if already {
        tracing::debug!(key_id = %record.id, "key already revoked");
    } else {
        service.metrics().count_key_revoked();
        service.events().key_revoked(&record);
        crate::service::alerts::key_revoked(service, &record).await;
        tracing::info!(key_id = %record.id, "key revoked");
    }
    Ok(record)
}

/// The key's own expiry becomes now (idempotent).
pub async fn expire(
    service: &Service,
    access: &Access,
    id: &KeyId,
    now: i64,
) -> Result<KeyRecord, ApiError> {
    show(service, access, id).await?;
    let record = service.store().expire_key(id.as_str(), now).await?;
    service.events().key_expired(&record);
    tracing::info!(key_id = %record.id, "key expired now");
    Ok(record)
}

/// The rotation grace a request asks for: [`DEFAULT_GRACE`] when absent.
pub fn grace_seconds(grace: Option<&Value>) -> Result<i64, ApiError> {
    match grace {
        None => Ok(DEFAULT_GRACE),
        Some(value) => duration_seconds(value)
            .filter(|grace| (0..=MAX_GRACE).contains(grace))
            .ok_or(ApiError::BadGrace),
    }
}

/// Rotates a key: mints a successor of the same format with the same fields; the old key
/// keeps working for `grace` seconds. Answers the successor and its plaintext.
pub async fn rotate(
    service: &Service,
    access: &Access,
    id: &KeyId,
    grace: i64,
    now: i64,
) -> Result<(KeyRecord, String), ApiError> {
    let old = show(service, access, id).await?;
    // Refuse early what the store would refuse, before signing a token for nothing.
    match old.status(now) {
        KeyStatus::Revoked => return Err(ApiError::RotateRevoked),
        KeyStatus::Expired => return Err(ApiError::RotateExpired),
        KeyStatus::Active if old.rotated_to.is_some() => {
            return Err(ApiError::RotateAlreadyRotated)
        }
        KeyStatus::Active => {}
    }
    let format = if old.format == FORMAT_JWT {
        let algorithm = old
            .algorithm
            .as_deref()
            .and_then(Algorithm::parse)
            .ok_or_else(|| ApiError::Internal(format!("key {} has no valid algorithm", old.id)))?;
        KeyFormat::Jwt(algorithm)
    } else {
        KeyFormat::Opaque
    };
    let fields = KeyFields {
        name: old.name,
        owner: old.owner,
        scopes: old.scopes,
        metadata: old.metadata,
        expires_at: old.expires_at,
        limits: old.limits,
        roles: old.roles,
    };
    let (mut successor, plaintext) = mint(service, format, fields, now).await?;
    successor.rotated_from = Some(old.id);
    let (old, new) = service
        .store()
        .rotate_key(id.as_str(), &successor, now.saturating_add(grace), now)
        .await?;
    service.events().key_rotated(&old, &new.id);
    service.events().key_created(&new);
    crate::service::alerts::key_rotated(service, &old, &new.id).await;
    tracing::info!(key_id = %old.id, successor = %new.id, grace, "key rotated");
    Ok((new, plaintext))
}

/// The filter's lookup: what the filter needs to know of the key with this id, `None` if
/// there is none.
pub async fn lookup(service: &Service, id: &KeyId) -> Result<Option<KeyLookup>, ApiError> {
    let Some(record) = service.store().get_key(id.as_str()).await? else {
        tracing::debug!(key_id = %id, found = false, "lookup");
        return Ok(None);
    };
    let status = record.status(service.now());
    tracing::debug!(key_id = %id, found = true, status = status.as_str(), "lookup");
    // For routes that bind a path parameter to the owner or a metadata field: the owner, and
    // the string metadata fields (bounded by the metadata limits, 32 fields and 4 KiB).
    let owner = (!record.owner.is_empty()).then(|| record.owner.clone());
    let metadata = record
        .metadata
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect();
    // The roles the key holds, at their current version: their scopes join the key's own.
    // A role that no longer exists adds nothing.
    let roles = service.store().roles_named(&record.roles).await?;
    let scopes = effective_scopes(&record.scopes, &roles);
    let roles = roles
        .into_iter()
        .map(|role| RoleRef {
            name: role.name,
            version: role.version,
        })
        .collect();
    let pool = if record.owner.is_empty() {
        None
    } else {
        service.store().get_pool(&record.owner).await?.map(|pool| {
            Box::new(keygate_core::fleet::PoolRef {
                owner: pool.owner,
                limit: pool.limit,
            })
        })
    };
    let signing = crate::service::request_signing::wire(service, &record.id).await?;
    Ok(Some(KeyLookup {
        owner,
        metadata,
        subject: if record.owner.is_empty() {
            record.id.clone()
        } else {
            record.owner.clone()
        },
        expires_at: record
            .effective_expiry()
            .map(|end| u64::try_from(end).unwrap_or(0)),
        id: record.id,
        digest: record.digest,
        scopes,
        status,
        rate_limit: record.limits.rate_limit,
        allowed_cidrs: record.limits.allowed_cidrs,
        not_before: record
            .limits
            .not_before
            .map(|t| u64::try_from(t).unwrap_or(0)),
        not_after: record
            .limits
            .not_after
            .map(|t| u64::try_from(t).unwrap_or(0)),
        roles,
        allowed_principals: record.limits.allowed_principals,
        allowed_countries: record.limits.allowed_countries,
        global_limit: record.limits.global_limit,
        quota: record.limits.quota.map(|quota| quota.wire()),
        pool,
        signing,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> CreateKeyRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn accepts_a_minimal_request() {
        let valid = validate_create(
            request(serde_json::json!({"name": "ci", "scopes": ["b", "a", "a"]})),
            1000,
        )
        .unwrap();
        assert_eq!(valid.owner, "");
        assert_eq!(valid.expires_at, None);
        let scopes: Vec<_> = valid.scopes.iter().map(Scope::as_str).collect();
        assert_eq!(scopes, ["a", "b"]);
    }

    #[test]
    fn expiry_comes_from_either_field_not_both() {
        let now = 1000;
        let valid = validate_create(
            request(serde_json::json!({"name": "x", "scopes": [], "expires_in": 60})),
            now,
        )
        .unwrap();
        assert_eq!(valid.expires_at, Some(1060));
        let both = request(serde_json::json!({
            "name": "x", "scopes": [], "expires_in": 60, "expires_at": "2030-01-01T00:00:00Z"
        }));
        assert!(matches!(
            validate_create(both, now),
            Err(ApiError::ExpiryConflict)
        ));
        for (text, seconds) in [
            ("30d", 2_592_000),
            ("90m", 5400),
            ("3600", 3600),
            ("12h", 43_200),
        ] {
            let r = request(serde_json::json!({"name": "x", "scopes": [], "expires_in": text}));
            assert_eq!(
                validate_create(r, now).unwrap().expires_at,
                Some(now + seconds)
            );
        }
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(MAX_EXPIRES_IN + 1),
            serde_json::json!(1.5),
            serde_json::json!("1.5h"),
            serde_json::json!("soon"),
            serde_json::json!("0s"),
            serde_json::json!("3651d"),
            serde_json::json!([60]),
        ] {
            let r = request(serde_json::json!({"name": "x", "scopes": [], "expires_in": bad}));
            assert!(matches!(
                validate_create(r, now),
                Err(ApiError::BadExpiresIn)
            ));
        }
        let past = request(serde_json::json!({
            "name": "x", "scopes": [], "expires_at": "1970-01-01T00:00:01Z"
        }));
        assert!(matches!(
            validate_create(past, now),
            Err(ApiError::ExpiresAtInPast)
        ));
    }

    #[test]
    fn refuses_bad_names_scopes_metadata_and_formats() {
        let cases = [
            serde_json::json!({"name": "", "scopes": []}),
            serde_json::json!({"name": "a".repeat(129), "scopes": []}),
            serde_json::json!({"name": "x", "scopes": ["has space"]}),
            serde_json::json!({"name": "x", "scopes": [], "metadata": [1]}),
            serde_json::json!({"name": "x", "scopes": [], "metadata": {"k": "v".repeat(5000)}}),
            serde_json::json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "HS256"}),
            serde_json::json!({"name": "x", "scopes": [], "format": "jwt", "algorithm": "none"}),
            serde_json::json!({"name": "x", "scopes": [], "algorithm": "ES256"}),
            serde_json::json!({"name": "x", "scopes": [], "format": "pgp"}),
            serde_json::json!({"name": "x", "scopes": [], "owner": "o".repeat(129)}),
        ];
        for case in cases {
            assert!(validate_create(request(case.clone()), 0).is_err(), "{case}");
        }
        let many: Map<String, Value> = (0..33).map(|i| (format!("k{i}"), Value::Null)).collect();
        let r = request(serde_json::json!({"name": "x", "scopes": [], "metadata": many}));
        assert!(matches!(
            validate_create(r, 0),
            Err(ApiError::MetadataTooManyKeys)
        ));
    }

    #[test]
    fn jwt_format_defaults_to_es256_and_names_the_algorithm() {
        let jwt = |extra: Value| {
            let mut body = serde_json::json!({"name": "x", "scopes": [], "format": "jwt"});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            validate_create(request(body), 0).map(|valid| valid.format)
        };
        assert_eq!(jwt(Value::Null).unwrap(), KeyFormat::Jwt(Algorithm::ES256));
        for (name, algorithm) in [
            ("ES256", Algorithm::ES256),
            ("EdDSA", Algorithm::EdDSA),
            ("RS256", Algorithm::RS256),
        ] {
            assert_eq!(
                jwt(serde_json::json!({"algorithm": name})).unwrap(),
                KeyFormat::Jwt(algorithm)
            );
        }
        assert!(matches!(
            jwt(serde_json::json!({"algorithm": "HS256"})),
            Err(ApiError::UnknownAlgorithm)
        ));
        let opaque = validate_create(request(serde_json::json!({"name": "x", "scopes": []})), 0);
        assert_eq!(opaque.unwrap().format, KeyFormat::Opaque);
    }

    #[test]
    fn jwt_claims_follow_rfc_9068() {
        let record = KeyRecord {
            id: "aaaaaaaaaaaaaaaa".into(),
            prefix: String::new(),
            name: "n".into(),
            owner: String::new(),
            scopes: vec!["demo:read".into(), "demo:write".into()],
            metadata: Map::new(),
            digest: String::new(),
            format: FORMAT_JWT.into(),
            created_at: 1000,
            expires_at: Some(2000),
            grace_until: None,
            revoked_at: None,
            last_used_at: None,
            last_used_address: None,
            rotated_from: None,
            rotated_to: None,
            algorithm: None,
            signing_kid: None,
            limits: Default::default(),
            roles: Vec::new(),
        };
        let settings = JwtSettings {
            issuer: "https://keys.example".into(),
            audience: "api".into(),
            ..JwtSettings::default()
        };
        assert_eq!(
            jwt_claims(&record, &settings),
            serde_json::json!({
                "iss": "https://keys.example", "sub": "aaaaaaaaaaaaaaaa", "aud": "api",
                "jti": "aaaaaaaaaaaaaaaa", "client_id": "aaaaaaaaaaaaaaaa",
                "iat": 1000, "exp": 2000, "scope": "demo:read demo:write"
            })
        );
        let owned = KeyRecord {
            owner: "team-a".into(),
            scopes: vec![],
            expires_at: None,
            ..record
        };
        let claims = jwt_claims(&owned, &settings);
        assert_eq!(claims["sub"], "team-a");
        assert!(claims.get("exp").is_none() && claims.get("scope").is_none());
    }

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let after = decode_cursor("1700000000.aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(after.created_at, 1_700_000_000);
        assert_eq!(after.id, "aaaaaaaaaaaaaaaa");
        for junk in ["", "x", "1.x", "a.aaaaaaaaaaaaaaaa"] {
            assert!(decode_cursor(junk).is_err(), "{junk}");
        }
    }
}
