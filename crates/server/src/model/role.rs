//! Roles: named scope sets that keys hold. A key's effective scopes are its own scopes and
//! those of every role it holds; changing a role changes every key that holds it, and the
//! change reaches the filters through the revocation feed (a `role_changed` event whose
//! sequence number is the role's new version).

/// Most roles the key service keeps.
pub const MAX_ROLES: usize = 1000;
/// Most scopes in one role (as in one key).
pub const MAX_ROLE_SCOPES: usize = keygate_core::scope::MAX_SCOPES;
/// Most roles one key holds.
pub const MAX_ROLES_PER_KEY: usize = 8;
/// Longest role name, in bytes.
pub const MAX_ROLE_NAME_LEN: usize = 64;
/// Longest role description, in characters.
pub const MAX_ROLE_DESCRIPTION_CHARS: usize = 256;

/// One role as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleRecord {
    pub name: String,
    /// Sorted and deduplicated scope texts.
    pub scopes: Vec<String>,
    pub description: String,
    /// The feed sequence number of the role's latest change: it only grows.
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A change to a role: `None` keeps a field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolePatch {
    pub scopes: Option<Vec<String>>,
    pub description: Option<String>,
}

/// Whether `name` is a valid role name: 1 to [`MAX_ROLE_NAME_LEN`] of `a-z`, `0-9`, `-`,
/// `_`, `.`, starting with a letter or digit.
pub fn is_valid_role_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_ROLE_NAME_LEN
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(b))
}

/// The sorted union of a key's own scopes and its roles' scopes.
pub fn effective_scopes<'a>(
    own: &[String],
    roles: impl IntoIterator<Item = &'a RoleRecord>,
) -> Vec<String> {
    let mut all: Vec<String> = own.to_vec();
    for role in roles {
        all.extend(role.scopes.iter().cloned());
    }
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_short_lowercase_words() {
        for good in ["analyst", "a", "team-a.read_only", "0ps"] {
            assert!(is_valid_role_name(good), "{good}");
        }
        let long = "a".repeat(MAX_ROLE_NAME_LEN + 1);
        for bad in [
            "",
            "Analyst",
            "-x",
            "has space",
            "a/b",
            "ü",
            "%",
            long.as_str(),
        ] {
            assert!(!is_valid_role_name(bad), "{bad}");
        }
    }

    #[test]
    fn effective_scopes_are_the_sorted_union() {
        let role = |scopes: &[&str]| RoleRecord {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..RoleRecord::default()
        };
        let roles = [role(&["models:read", "b"]), role(&["b", "c"])];
        let own = vec!["z".to_string(), "b".to_string()];
        assert_eq!(
            effective_scopes(&own, &roles),
            ["b", "c", "models:read", "z"]
        );
        assert!(effective_scopes(&[], &[]).is_empty());
    }
}
