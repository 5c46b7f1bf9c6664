//! Who may do what on the management API: the admin keys (`admin_keys`), and *management
//! keys*, ordinary opaque Keygate keys whose scopes include `keygate:admin` (full admin) or
//! `keygate:owner:<owner>` (sees and manages only the keys whose owner is `<owner>`).
//!
//! [`authenticate`] turns a presented bearer token into an [`Access`]; the operations of
//! [`crate::service::keys`] take the [`Access`] and answer another owner's key as absent
//! ([`ApiError::KeyNotFound`]), and refuse what only an admin may do ([`ApiError::Forbidden`]).
//!
//! A management key authenticates only while it is active (not revoked, not expired, inside
//! its validity window); only its own scopes count (not those of roles it holds). Its
//! allowed CIDRs, principals and rate limits apply at the gateways, not here.

use keygate_core::key::{parse_opaque_key, KeyDigest};
use keygate_core::wire::KeyStatus;

use crate::model::KeyRecord;
use crate::service::context::Service;
use crate::service::error::ApiError;

/// The scope of a management key with full admin rights.
pub const ADMIN_SCOPE: &str = "keygate:admin";
/// The prefix of an owner management scope: `keygate:owner:<owner>`.
pub const OWNER_SCOPE_PREFIX: &str = "keygate:owner:";
/// Scopes under this prefix are Keygate's own: only an admin may grant them.
pub const RESERVED_SCOPE_PREFIX: &str = "keygate:";

/// The caller of a management request, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// An admin key or a `keygate:admin` management key: everything.
    Admin { actor: String },
    /// A `keygate:owner:<owner>` management key: the keys of `owner` only.
    Owner { actor: String, owner: String },
}

impl Access {
    /// The id of the admin key or management key (for the audit log).
    pub fn actor(&self) -> &str {
        match self {
            Self::Admin { actor } | Self::Owner { actor, .. } => actor,
        }
    }

    /// The owner an owner caller is limited to; `None` for an admin.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Self::Admin { .. } => None,
            Self::Owner { owner, .. } => Some(owner),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::Admin { .. })
    }

    /// `admin` or `owner`.
    pub fn role(&self) -> &'static str {
        match self {
            Self::Admin { .. } => "admin",
            Self::Owner { .. } => "owner",
        }
    }

    /// Whether this caller may see and manage `record`.
    pub fn may_manage(&self, record: &KeyRecord) -> bool {
        self.may_manage_owner(&record.owner)
    }

    /// Whether this caller may see and manage keys whose owner is `owner`.
    pub fn may_manage_owner(&self, owner: &str) -> bool {
        match self {
            Self::Admin { .. } => true,
            Self::Owner { owner: own, .. } => own == owner,
        }
    }

    /// Refuses an admin-only operation to an owner caller.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// `record` if this caller may manage it, else [`ApiError::KeyNotFound`] (another owner's
    /// key answers as if absent).
    pub fn visible(&self, record: KeyRecord) -> Result<KeyRecord, ApiError> {
        if self.may_manage(&record) {
            Ok(record)
        } else {
            Err(ApiError::KeyNotFound)
        }
    }
}

/// The management rights that `scopes` give the key `actor`: `keygate:admin` wins over
/// `keygate:owner:<owner>`; with several owner scopes the first in order counts. An owner
/// scope whose owner is empty or `*` gives nothing.
pub fn access_of_scopes(actor: &str, scopes: &[String]) -> Option<Access> {
    if scopes.iter().any(|scope| scope == ADMIN_SCOPE) {
        return Some(Access::Admin {
            actor: actor.to_owned(),
        });
    }
    scopes
        .iter()
        .filter_map(|scope| scope.strip_prefix(OWNER_SCOPE_PREFIX))
        .find(|owner| !owner.is_empty() && *owner != "*")
        .map(|owner| Access::Owner {
            actor: actor.to_owned(),
            owner: owner.to_owned(),
        })
}

/// Whether `scope` is one only an admin may grant.
pub fn is_reserved_scope(scope: &str) -> bool {
    scope.starts_with(RESERVED_SCOPE_PREFIX)
}

/// Refuses reserved scopes to an owner caller ([`ApiError::Forbidden`]).
pub fn check_grant<S: AsRef<str>>(access: &Access, scopes: &[S]) -> Result<(), ApiError> {
    if !access.is_admin() && scopes.iter().any(|s| is_reserved_scope(s.as_ref())) {
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

/// What kind of credential a session or request authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A key of `admin_keys`.
    AdminKey,
    /// A management key (a Keygate key with a `keygate:` scope).
    ManagementKey,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AdminKey => "admin_key",
            Self::ManagementKey => "key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin_key" => Some(Self::AdminKey),
            "key" => Some(Self::ManagementKey),
            _ => None,
        }
    }
}

/// The access `token` gives, `None` if it is neither an active admin key nor an active
/// management key. Digests are compared in constant time (every admin digest is compared, so
/// the time taken does not depend on which matched).
pub async fn authenticate(
    service: &Service,
    token: &str,
) -> Result<Option<(Access, CredentialKind)>, ApiError> {
    let presented = KeyDigest::of(token.as_bytes());
    let admins = service.store().active_admin_keys().await?;
    let matched = admins.iter().fold(None, |found, (id, digest)| {
        if digest.ct_eq(&presented) {
            Some(id)
        } else {
            found
        }
    });
    if let Some(id) = matched {
        let access = Access::Admin { actor: id.clone() };
        return Ok(Some((access, CredentialKind::AdminKey)));
    }
    let prefix = service.prefix().as_str();
    let Ok(parsed) = parse_opaque_key(token, &[prefix]) else {
        return Ok(None);
    };
    if !parsed.tag_is_authentic(service.gateway_key()) {
        return Ok(None);
    }
    let id = parsed.id();
    let Some(record) = service.store().get_key(id.as_str()).await? else {
        return Ok(None);
    };
    let stored = KeyDigest::from_hex(&record.digest);
    if !stored.is_some_and(|stored| stored.ct_eq(&presented)) {
        return Ok(None);
    }
    Ok(management_access(&record, service.now()).map(|a| (a, CredentialKind::ManagementKey)))
}

/// The access the management key `record` gives at `now`: `None` unless it is active,
/// inside its validity window and holds a management scope.
pub fn management_access(record: &KeyRecord, now: i64) -> Option<Access> {
    if record.status(now) != KeyStatus::Active {
        return None;
    }
    if record.limits.not_before.is_some_and(|t| now < t)
        || record.limits.not_after.is_some_and(|t| now >= t)
    {
        return None;
    }
    access_of_scopes(&record.id, &record.scopes)
}

/// The access the credential `actor` of `kind` gives now (a session checks it on each use):
/// `None` once it is revoked, expired or no longer a management key.
pub async fn current_access(
    service: &Service,
    kind: CredentialKind,
    actor: &str,
) -> Result<Option<Access>, ApiError> {
    match kind {
        CredentialKind::AdminKey => {
            let admins = service.store().active_admin_keys().await?;
            Ok(admins
                .iter()
                .any(|(id, _)| id == actor)
                .then(|| Access::Admin {
                    actor: actor.to_owned(),
                }))
        }
        CredentialKind::ManagementKey => {
            let record = service.store().get_key(actor).await?;
            Ok(record.and_then(|record| management_access(&record, service.now())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scopes_give_admin_owner_or_nothing() {
        assert_eq!(
            access_of_scopes("k", &scopes(&["demo:read", "keygate:admin"])),
            Some(Access::Admin { actor: "k".into() })
        );
        assert_eq!(
            access_of_scopes("k", &scopes(&["keygate:owner:alice"])),
            Some(Access::Owner {
                actor: "k".into(),
                owner: "alice".into()
            })
        );
        for none in [
            &["demo:read"][..],
            &["keygate:owner:"],
            &["keygate:owner:*"],
            &["keygate:admins"],
            &["keygate:*"],
        ] {
            assert_eq!(access_of_scopes("k", &scopes(none)), None, "{none:?}");
        }
    }

    #[test]
    fn owners_see_their_own_keys_and_grant_no_reserved_scope() {
        let owner = Access::Owner {
            actor: "k".into(),
            owner: "alice".into(),
        };
        assert!(owner.may_manage_owner("alice"));
        assert!(!owner.may_manage_owner("bob"));
        assert!(!owner.may_manage_owner(""));
        assert!(matches!(owner.require_admin(), Err(ApiError::Forbidden)));
        assert!(check_grant(&owner, &["demo:read"]).is_ok());
        assert!(matches!(
            check_grant(&owner, &["keygate:owner:alice"]),
            Err(ApiError::Forbidden)
        ));
        let admin = Access::Admin { actor: "a".into() };
        assert!(check_grant(&admin, &["keygate:admin"]).is_ok());
        assert!(admin.may_manage_owner("bob"));
    }
}
