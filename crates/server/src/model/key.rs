//! Key records: what a key is, as stored; its limits; a change to it.

use keygate_core::wire::{KeyStatus, RateLimit};
use serde_json::{Map, Value};

/// Format of a key record whose plaintext is a JWT signed by the service.
pub const FORMAT_JWT: &str = "jwt";
/// Format of a key record whose plaintext is an opaque key.
pub const FORMAT_OPAQUE: &str = "opaque";
/// Format of a key record imported from an earlier system: only its SHA-256 digest is known.
pub const FORMAT_LEGACY: &str = "legacy";

/// One issued key as stored: the digest, never the key. The default is an empty record, to
/// fill in with `..Default::default()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub prefix: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub metadata: Map<String, Value>,
    /// Hex SHA-256 of the whole key text.
    pub digest: String,
    pub format: String,
    pub created_at: i64,
    /// The key's own expiry.
    pub expires_at: Option<i64>,
    /// End of the rotation grace period, once the key has been rotated.
    pub grace_until: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// JWT keys: the signature algorithm (`ES256`, `EdDSA`, `RS256`). `None` for opaque keys.
    pub algorithm: Option<String>,
    /// JWT keys: the `kid` of the signing key that signed the token. `None` for opaque keys.
    /// Storing a record with a `signing_kid` also extends that signing key's publication
    /// (see [`super::SigningKeyRow::is_published`]) to the record's `expires_at`.
    pub signing_kid: Option<String>,
    /// Rate limit, address allow-list and validity window, for the filter to enforce.
    pub limits: KeyLimits,
    /// Names of the roles the key holds (see [`super::role`]).
    pub roles: Vec<String>,
    /// The client address of the key's last allowed use, as the filter reported it.
    pub last_used_address: Option<String>,
}

impl KeyRecord {
    /// The end of validity: the own expiry or the end of the grace period, whichever is first.
    pub fn effective_expiry(&self) -> Option<i64> {
        match (self.expires_at, self.grace_until) {
            (Some(own), Some(grace)) => Some(own.min(grace)),
            (own, grace) => own.or(grace),
        }
    }

    pub fn status(&self, now: i64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.effective_expiry().is_some_and(|end| end <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// The limits of one key. The default is no limit at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub rate_limit: Option<RateLimit>,
    /// Canonical CIDR texts (`10.0.0.0/8`, `2001:db8::/32`); empty: any address.
    pub allowed_cidrs: Vec<String>,
    /// Unix seconds before which the key is refused.
    pub not_before: Option<i64>,
    /// Unix seconds from which the key is refused.
    pub not_after: Option<i64>,
    /// Workload identities (principals or `.../*` patterns) the request's peer principal
    /// must match; empty: any request.
    pub allowed_principals: Vec<String>,
    /// Fleet-wide rate limit, enforced through leases.
    pub global_limit: Option<RateLimit>,
    /// Quota (credits) per window, enforced through leases.
    pub quota: Option<KeyQuota>,
    /// ISO 3166-1 alpha-2 codes (upper case) of the countries the key may be used from;
    /// empty: anywhere.
    pub allowed_countries: Vec<String>,
}

/// A key's quota: `limit` units per window of `period_s` seconds, windows counted from
/// `anchor` (Unix seconds; see [`keygate_core::fleet::quota_anchor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyQuota {
    pub limit: u64,
    pub period_s: u64,
    pub anchor: i64,
}

impl KeyQuota {
    /// The wire form.
    pub fn wire(&self) -> keygate_core::fleet::Quota {
        keygate_core::fleet::Quota {
            limit: self.limit,
            period_s: self.period_s,
            window_start: u64::try_from(self.anchor).unwrap_or(0),
        }
    }
}

/// An owner's pooled limit: one token bucket for all of the owner's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub owner: String,
    pub limit: RateLimit,
    pub updated_at: i64,
}

/// Where a page of keys starts: after this (created_at, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageAfter {
    pub created_at: i64,
    pub id: String,
}

/// A change to a key: `None` keeps a field; for limits, `Some(None)` clears one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub rate_limit: Option<Option<RateLimit>>,
    pub allowed_cidrs: Option<Vec<String>>,
    pub not_before: Option<Option<i64>>,
    pub not_after: Option<Option<i64>>,
    pub roles: Option<Vec<String>>,
    pub allowed_principals: Option<Vec<String>>,
    pub global_limit: Option<Option<RateLimit>>,
    /// A new quota (limit, period); the anchor is kept when the period is unchanged.
    pub quota: Option<Option<(u64, u64)>>,
    /// The time of the change (Unix seconds), to anchor a new quota's windows.
    pub now: i64,
    pub allowed_countries: Option<Vec<String>>,
}

impl KeyPatch {
    /// Applies the patch to `record`.
    pub fn apply(&self, record: &mut KeyRecord) {
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(metadata) = &self.metadata {
            record.metadata.clone_from(metadata);
        }
        if let Some(rate_limit) = self.rate_limit {
            record.limits.rate_limit = rate_limit;
        }
        if let Some(cidrs) = &self.allowed_cidrs {
            record.limits.allowed_cidrs.clone_from(cidrs);
        }
        if let Some(not_before) = self.not_before {
            record.limits.not_before = not_before;
        }
        if let Some(not_after) = self.not_after {
            record.limits.not_after = not_after;
        }
        if let Some(roles) = &self.roles {
            record.roles.clone_from(roles);
        }
        if let Some(principals) = &self.allowed_principals {
            record.limits.allowed_principals.clone_from(principals);
        }
        if let Some(global_limit) = self.global_limit {
            record.limits.global_limit = global_limit;
        }
        if let Some(countries) = &self.allowed_countries {
            record.limits.allowed_countries.clone_from(countries);
        }
        if let Some(quota) = self.quota {
            record.limits.quota = quota.map(|(limit, period_s)| {
                let anchor = match record.limits.quota {
                    Some(old) if old.period_s == period_s => old.anchor,
                    _ => new_anchor(self.now, period_s),
                };
                KeyQuota {
                    limit,
                    period_s,
                    anchor,
                }
            });
        }
    }

    /// Names of the fields this patch sets or clears, for logs and the audit log.
    pub fn changed_fields(&self) -> Vec<&'static str> {
        let mut fields = Vec::new();
        let mut note = |set: bool, name: &'static str| {
            if set {
                fields.push(name);
            }
        };
        note(self.name.is_some(), "name");
        note(self.scopes.is_some(), "scopes");
        note(self.metadata.is_some(), "metadata");
        note(self.rate_limit.is_some(), "rate_limit");
        note(self.allowed_cidrs.is_some(), "allowed_cidrs");
        note(self.not_before.is_some(), "not_before");
        note(self.not_after.is_some(), "not_after");
        note(self.roles.is_some(), "roles");
        note(self.allowed_principals.is_some(), "allowed_principals");
        note(self.global_limit.is_some(), "global_limit");
        note(self.quota.is_some(), "quota");
        note(self.allowed_countries.is_some(), "allowed_countries");
        fields
    }
}

/// The anchor of a quota set at `now` with windows of `period_s` seconds.
pub fn new_anchor(now: i64, period_s: u64) -> i64 {
    let now = u64::try_from(now).unwrap_or(0);
    i64::try_from(keygate_core::fleet::quota_anchor(now, period_s)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at: Option<i64>, grace_until: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: "aaaaaaaaaaaaaaaa".into(),
            prefix: "kg_test_".into(),
            name: "n".into(),
            digest: "00".repeat(32),
            format: "opaque".into(),
            expires_at,
            grace_until,
            ..KeyRecord::default()
        }
    }

    #[test]
    fn effective_expiry_is_the_earlier_of_own_expiry_and_grace() {
        assert_eq!(record(None, None).effective_expiry(), None);
        assert_eq!(record(Some(10), None).effective_expiry(), Some(10));
        assert_eq!(record(None, Some(20)).effective_expiry(), Some(20));
        assert_eq!(record(Some(10), Some(20)).effective_expiry(), Some(10));
        assert_eq!(record(Some(30), Some(20)).effective_expiry(), Some(20));
    }

    #[test]
    fn status_follows_revocation_then_expiry() {
        let key = record(Some(100), None);
        assert_eq!(key.status(99), KeyStatus::Active);
        assert_eq!(key.status(100), KeyStatus::Expired);
        let revoked = KeyRecord {
            revoked_at: Some(5),
            ..key
        };
        assert_eq!(revoked.status(0), KeyStatus::Revoked);
        assert_eq!(revoked.status(1000), KeyStatus::Revoked);
        assert_eq!(record(None, None).status(i64::MAX), KeyStatus::Active);
    }
}
