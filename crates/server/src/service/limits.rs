//! Per-key limits: a rate limit, a client address allow-list and a validity window. The key
//! service stores them on the key record and hands them to the filter in the lookup answer
//! ([`keygate_core::wire::KeyLookup`]); the filter enforces them.
//!
//! Also the update operation, which changes limits, scopes, name and metadata of a key.

use std::net::IpAddr;

use keygate_core::key::KeyId;
use keygate_core::scope::Scope;
use keygate_core::wire::RateLimit;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::model::key::new_anchor;
use crate::model::{KeyLimits, KeyPatch, KeyQuota, KeyRecord, FORMAT_JWT};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::service::validate::{valid_text, validate_metadata, validate_scopes, MAX_NAME_CHARS};
use crate::timestamp::parse_rfc3339;
use keygate_core::fleet::parse_period;

/// Most entries in `allowed_cidrs`.
pub const MAX_CIDRS: usize = 64;

/// Parses one CIDR (`addr/len`, or a bare address meaning a single host) into its canonical
/// text: the network address with the host bits cleared. `None` if it is not a CIDR.
pub fn parse_cidr(text: &str) -> Option<String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => {
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (addr.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?))
        }
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    match addr {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return None;
            }
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            let net = std::net::Ipv4Addr::from(u32::from(v4) & mask);
            Some(format!("{net}/{len}"))
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return None;
            }
            let mask = u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            Some(format!("{net}/{len}"))
        }
    }
}

/// Checks an `allowed_cidrs` list: at most [`MAX_CIDRS`] entries, each a CIDR. Answers the
/// canonical texts, without duplicates, in the given order.
pub fn validate_cidrs(items: &[String]) -> Result<Vec<String>, ApiError> {
    if items.len() > MAX_CIDRS {
        return Err(ApiError::TooManyCidrs);
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let canonical = parse_cidr(item.trim()).ok_or_else(|| ApiError::BadCidr {
            index,
            entry: item.chars().take(64).collect(),
        })?;
        if !out.contains(&canonical) {
            out.push(canonical);
        }
    }
    Ok(out)
}

/// The `rate_limit` member as a request sends it.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRequest {
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Default burst for a rate: one second's worth, at least 1.
pub fn default_burst(requests_per_second: f64) -> u32 {
    let ceil = requests_per_second.ceil();
    if ceil >= f64::from(u32::MAX) {
        u32::MAX
    } else if ceil >= 1.0 {
        // In range: checked just above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let burst = ceil as u32;
        burst
    } else {
        1
    }
}

pub fn validate_rate_limit(request: RateLimitRequest) -> Result<RateLimit, ApiError> {
    let limit = RateLimit {
        requests_per_second: request.requests_per_second,
        burst: request
            .burst
            .unwrap_or_else(|| default_burst(request.requests_per_second)),
    };
    if limit.is_valid() {
        Ok(limit)
    } else {
        Err(ApiError::BadRateLimit)
    }
}

fn parse_time(text: &str, field: &'static str) -> Result<i64, ApiError> {
    parse_rfc3339(text).ok_or(ApiError::BadTimestamp(field))
}

fn check_window(not_before: Option<i64>, not_after: Option<i64>) -> Result<(), ApiError> {
    match (not_before, not_after) {
        (Some(start), Some(end)) if start >= end => Err(ApiError::EmptyValidityWindow),
        _ => Ok(()),
    }
}

/// Largest quota limit.
pub const MAX_QUOTA_LIMIT: u64 = 1_000_000_000_000;

/// The `quota` member as a request sends it: `limit` units per `period` (seconds as a number,
/// or `day`, `week`, `month` (30 days), `3600`, `12h`, `7d`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    pub limit: u64,
    pub period: Value,
}

/// Checks a quota: answers (limit, period in seconds).
pub fn validate_quota(request: QuotaRequest) -> Result<(u64, u64), ApiError> {
    let period = match &request.period {
        Value::Number(n) => n.as_u64().and_then(|s| parse_period(&s.to_string())),
        Value::String(text) => parse_period(text),
        _ => None,
    }
    .ok_or(ApiError::BadQuota)?;
    if request.limit == 0 || request.limit > MAX_QUOTA_LIMIT {
        return Err(ApiError::BadQuota);
    }
    Ok((request.limit, period))
}

pub fn validate_global_limit(request: RateLimitRequest) -> Result<RateLimit, ApiError> {
    validate_rate_limit(request).map_err(|_| ApiError::BadGlobalLimit)
}

/// The limit members of a create request (all optional; absent: no limit).
#[derive(Debug, Default, Deserialize)]
pub struct CreateLimits {
    #[serde(default)]
    pub rate_limit: Option<RateLimitRequest>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    #[serde(default)]
    pub allowed_principals: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_countries: Option<Vec<String>>,
    #[serde(default)]
    pub global_limit: Option<RateLimitRequest>,
    #[serde(default)]
    pub quota: Option<QuotaRequest>,
}

/// Checks an `allowed_countries` list: at most [`keygate_core::geo::MAX_COUNTRIES`] entries,
/// each two letters (either case, stored upper case), duplicates removed.
pub fn validate_countries(items: &[String]) -> Result<Vec<String>, ApiError> {
    if items.len() > keygate_core::geo::MAX_COUNTRIES {
        return Err(ApiError::TooManyCountries);
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let country =
            keygate_core::geo::Country::parse(item.trim().as_bytes()).ok_or_else(|| {
                ApiError::BadCountry {
                    index,
                    entry: item.chars().take(16).collect(),
                }
            })?;
        let code = country.to_string();
        if !out.contains(&code) {
            out.push(code);
        }
    }
    Ok(out)
}

/// Checks an `allowed_principals` list: at most 64 entries, each a principal or a `.../*`
/// pattern ([`keygate_core::principal`]), duplicates removed.
pub fn validate_principals(items: &[String]) -> Result<Vec<String>, ApiError> {
    keygate_core::principal::validate_key_principals(items).map_err(|(index, err)| match index {
        None => ApiError::TooManyPrincipals,
        Some(index) => ApiError::BadPrincipal {
            index,
            reason: err.to_string(),
        },
    })
}

impl CreateLimits {
    /// Checks the limits of a key created at `now` (which anchors its quota windows).
    pub fn validate(self, now: i64) -> Result<KeyLimits, ApiError> {
        let quota = self
            .quota
            .map(validate_quota)
            .transpose()?
            .map(|(limit, period_s)| KeyQuota {
                limit,
                period_s,
                anchor: new_anchor(now, period_s),
            });
        let limits = KeyLimits {
            global_limit: self.global_limit.map(validate_global_limit).transpose()?,
            quota,
            rate_limit: self.rate_limit.map(validate_rate_limit).transpose()?,
            allowed_cidrs: validate_cidrs(&self.allowed_cidrs.unwrap_or_default())?,
            not_before: self
                .not_before
                .as_deref()
                .map(|t| parse_time(t, "not_before"))
                .transpose()?,
            not_after: self
                .not_after
                .as_deref()
                .map(|t| parse_time(t, "not_after"))
                .transpose()?,
            allowed_principals: validate_principals(&self.allowed_principals.unwrap_or_default())?,
            allowed_countries: validate_countries(&self.allowed_countries.unwrap_or_default())?,
        };
        check_window(limits.not_before, limits.not_after)?;
        Ok(limits)
    }
}

/// A member that may be absent (keep), `null` (clear) or a value (set).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The body of `PATCH /api/v1/auth/keys/{id}`: absent members are kept, `null` clears.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Option<Value>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitRequest>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_cidrs: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub not_before: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub not_after: Option<Option<String>>,
    /// Replaces the roles the key holds (`[]` or `null`: none).
    #[serde(default, deserialize_with = "present")]
    pub roles: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_principals: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub allowed_countries: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    pub global_limit: Option<Option<RateLimitRequest>>,
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<QuotaRequest>>,
}

/// Checks an update request; answers the patch to apply.
pub fn validate_update(request: UpdateKeyRequest) -> Result<KeyPatch, ApiError> {
    let name = match request.name {
        None => None,
        Some(None) => return Err(ApiError::BadName),
        Some(Some(name)) => {
            if name.is_empty() || !valid_text(&name, MAX_NAME_CHARS) {
                return Err(ApiError::BadName);
            }
            Some(name)
        }
    };
    let scopes = match request.scopes {
        None => None,
        Some(items) => {
            let scopes = validate_scopes(&items.unwrap_or_default())?;
            Some(scopes.iter().map(|s| Scope::as_str(s).to_owned()).collect())
        }
    };
    let metadata: Option<Map<String, Value>> =
        request.metadata.map(validate_metadata).transpose()?;
    let rate_limit = request
        .rate_limit
        .map(|r| r.map(validate_rate_limit).transpose())
        .transpose()?;
    let allowed_cidrs = request
        .allowed_cidrs
        .map(|c| validate_cidrs(&c.unwrap_or_default()))
        .transpose()?;
    let not_before = request
        .not_before
        .map(|t| {
            t.as_deref()
                .map(|t| parse_time(t, "not_before"))
                .transpose()
        })
        .transpose()?;
    let not_after = request
        .not_after
        .map(|t| t.as_deref().map(|t| parse_time(t, "not_after")).transpose())
        .transpose()?;
    let roles = request
        .roles
        .map(|r| crate::service::roles::validate_key_roles(&r.unwrap_or_default()))
        .transpose()?;
    let allowed_principals = request
        .allowed_principals
        .map(|p| validate_principals(&p.unwrap_or_default()))
        .transpose()?;
    let global_limit = request
        .global_limit
        .map(|r| r.map(validate_global_limit).transpose())
        .transpose()?;
    let allowed_countries = request
        .allowed_countries
        .map(|c| validate_countries(&c.unwrap_or_default()))
        .transpose()?;
    let quota = request
        .quota
        .map(|q| q.map(validate_quota).transpose())
        .transpose()?;
    Ok(KeyPatch {
        name,
        scopes,
        metadata,
        rate_limit,
        allowed_cidrs,
        not_before,
        not_after,
        roles,
        allowed_principals,
        global_limit,
        quota,
        now: 0,
        allowed_countries,
    })
}

/// Changes a key as `request` asks; `fields` gets the names of the fields it changes (for the
/// audit log, never their values).
pub async fn update(
    service: &Service,
    id: &KeyId,
    request: UpdateKeyRequest,
    fields: &mut Vec<&'static str>,
) -> Result<KeyRecord, ApiError> {
    let mut patch = validate_update(request)?;
    patch.now = service.now();
    *fields = patch.changed_fields();
    let changes_scopes = patch.scopes.is_some();
    let changes_roles = patch.roles.as_ref().is_some_and(|roles| !roles.is_empty());
    let check = |record: &KeyRecord| {
        if changes_roles && record.format == FORMAT_JWT {
            return Err(ApiError::JwtRoles);
        }
        if changes_scopes && record.format == FORMAT_JWT {
            // A JWT key carries its scopes in the signed token: changing the record would not
            // change what the token says.
            return Err(ApiError::JwtScopesFixed);
        }
        check_window(record.limits.not_before, record.limits.not_after)
    };
    let record = service
        .store()
        .update_key(id.as_str(), &patch, check)
        .await??;
    service.events().key_updated(&record);
    tracing::info!(key_id = %record.id, fields = ?fields, "key updated");
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_are_checked_and_bad_entries_are_named() {
        let ok = validate_principals(&[
            "spiffe://cluster.local/ns/payments/sa/api".into(),
            "spiffe://cluster.local/ns/ops/sa/*".into(),
            "spiffe://cluster.local/ns/payments/sa/api".into(),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        match validate_principals(&["spiffe://td/a".into(), "spiffe://td/ns/*/sa/x".into()]) {
            Err(ApiError::BadPrincipal { index, reason }) => {
                assert_eq!(index, 1);
                assert!(reason.contains("last path segment"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let many: Vec<String> = (0..65).map(|i| format!("spiffe://td/{i}")).collect();
        assert!(matches!(
            validate_principals(&many),
            Err(ApiError::TooManyPrincipals)
        ));
        let request: UpdateKeyRequest =
            serde_json::from_str(r#"{"allowed_principals": null}"#).unwrap();
        let patch = validate_update(request).unwrap();
        assert_eq!(patch.allowed_principals, Some(Vec::new()));
        let request: UpdateKeyRequest = serde_json::from_str(r#"{"name": "x"}"#).unwrap();
        assert_eq!(validate_update(request).unwrap().allowed_principals, None);
    }

    #[test]
    fn cidrs_are_canonical_and_bad_entries_are_named() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(parse_cidr("127.0.0.1").unwrap(), "127.0.0.1/32");
        assert_eq!(parse_cidr("2001:db8::1/32").unwrap(), "2001:db8::/32");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), "0.0.0.0/0");
        assert_eq!(parse_cidr("::/0").unwrap(), "::/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "::/129",
            "x/1",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "1.2.3.4/1/2",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
        let items = vec!["10.0.0.0/8".to_owned(), "nope".to_owned()];
        match validate_cidrs(&items) {
            Err(ApiError::BadCidr { index, entry }) => {
                assert_eq!((index, entry.as_str()), (1, "nope"));
            }
            other => panic!("{other:?}"),
        }
        let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}/32")).collect();
        assert!(matches!(validate_cidrs(&many), Err(ApiError::TooManyCidrs)));
    }

    #[test]
    fn default_burst_is_one_second_of_rate() {
        assert_eq!(default_burst(10.0), 10);
        assert_eq!(default_burst(0.5), 1);
        assert_eq!(default_burst(2.1), 3);
        let bad = RateLimitRequest {
            requests_per_second: 0.0,
            burst: None,
        };
        assert!(validate_rate_limit(bad).is_err());
    }

    #[test]
    fn update_distinguishes_absent_from_null() {
        let request: UpdateKeyRequest = serde_json::from_value(
            serde_json::json!({"rate_limit": null, "not_after": "2030-01-01T00:00:00Z"}),
        )
        .unwrap();
        let patch = validate_update(request).unwrap();
        assert_eq!(patch.rate_limit, Some(None));
        assert_eq!(patch.allowed_cidrs, None);
        assert_eq!(patch.not_after, Some(Some(1_893_456_000)));
        assert_eq!(patch.quota, None);
    }

    #[test]
    fn quotas_take_named_and_numeric_periods() {
        let quota = |value: Value| serde_json::from_value::<QuotaRequest>(value).unwrap();
        let ok = |value| validate_quota(quota(value)).unwrap();
        assert_eq!(
            ok(serde_json::json!({"limit": 5, "period": "month"})),
            (5, 2_592_000)
        );
        assert_eq!(
            ok(serde_json::json!({"limit": 5, "period": 3600})),
            (5, 3600)
        );
        assert_eq!(
            ok(serde_json::json!({"limit": 5, "period": "12h"})),
            (5, 43_200)
        );
        for bad in [
            serde_json::json!({"limit": 0, "period": "day"}),
            serde_json::json!({"limit": 5, "period": 0}),
            serde_json::json!({"limit": 5, "period": "fortnight"}),
            serde_json::json!({"limit": 5, "period": -1}),
            serde_json::json!({"limit": 5, "period": true}),
            serde_json::json!({"limit": 2_000_000_000_000u64, "period": "day"}),
        ] {
            assert!(validate_quota(quota(bad.clone())).is_err(), "{bad}");
        }
        let limits = CreateLimits {
            quota: Some(quota(serde_json::json!({"limit": 10, "period": "day"}))),
            ..CreateLimits::default()
        }
        .validate(86_400 * 3 + 100)
        .unwrap();
        assert_eq!(limits.quota.unwrap().anchor, 86_400 * 3);
    }
}
