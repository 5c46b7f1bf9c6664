//! Keys bound to their tenant's data: a route template's path parameter bound to an
//! attribute of the key (`"bind": {"tenant": "owner"}`), and what a request on such a route
//! must satisfy ([`Requirement`]: its scopes, path parameters filled in, and its bindings).
//!
//! A bound value is the path segment decoded once (as the upstream reads it), compared
//! exactly with the key's attribute: no case folding, no trimming. A segment still holding a
//! `%` after one decoding (double encoding), a control character or invalid UTF-8 is refused
//! (400) rather than guessed at. Denials name the route's parameter, never the key's value.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scope::{Scope, MAX_SCOPE_LEN};

/// Longest metadata field name or claim name a route may bind.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 64;
/// Longest attribute value kept for binding (owner, metadata field, claim); longer values are
/// not kept, so a route binding them denies.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 256;
/// Most metadata fields or claims kept per key or token.
pub const MAX_ATTRIBUTES: usize = 32;

/// An attribute of a key that a path parameter may be bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// The key's owner (an ownerless key has none: a route binding it denies).
    Owner,
    /// A string field of the key's metadata: `metadata.<field>`.
    Metadata(String),
    /// A string claim of the verified JWT: `claim.<name>`.
    Claim(String),
}

impl Attribute {
    /// `owner`, `metadata.<field>` or `claim.<name>`; names are 1 to 64 characters of
    /// `A-Z a-z 0-9 _ -`.
    pub fn parse(text: &str) -> Option<Self> {
        let name_ok = |name: &str| {
            (1..=MAX_ATTRIBUTE_NAME_LEN).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        };
        if text == "owner" {
            return Some(Self::Owner);
        }
        if let Some(field) = text.strip_prefix("metadata.") {
            return name_ok(field).then(|| Self::Metadata(field.to_owned()));
        }
        if let Some(claim) = text.strip_prefix("claim.") {
            return name_ok(claim).then(|| Self::Claim(claim.to_owned()));
        }
        None
    }
}

/// The attributes of one key or token that routes may bind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    pub owner: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub claims: BTreeMap<String, String>,
}

impl Attributes {
    pub fn get(&self, attribute: &Attribute) -> Option<&str> {
        match attribute {
            Attribute::Owner => self.owner.as_deref(),
            Attribute::Metadata(field) => self.metadata.get(field).map(String::as_str),
            Attribute::Claim(name) => self.claims.get(name).map(String::as_str),
        }
        .filter(|value| !value.is_empty() && value.len() <= MAX_ATTRIBUTE_VALUE_LEN)
    }

    /// Attributes of a key record: its owner (when it has one) and its string metadata fields
    /// (at most [`MAX_ATTRIBUTES`], values up to [`MAX_ATTRIBUTE_VALUE_LEN`] bytes).
    pub fn of_record(owner: Option<&str>, metadata: &BTreeMap<String, String>) -> Self {
        Self {
            owner: owner
                .filter(|o| !o.is_empty() && o.len() <= MAX_ATTRIBUTE_VALUE_LEN)
                .map(str::to_owned),
            metadata: metadata
                .iter()
                .filter(|(k, v)| {
                    k.len() <= MAX_ATTRIBUTE_NAME_LEN && v.len() <= MAX_ATTRIBUTE_VALUE_LEN
                })
                .take(MAX_ATTRIBUTES)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            claims: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.owner.is_none() && self.metadata.is_empty() && self.claims.is_empty()
    }
}

/// One path parameter's value that must equal an attribute of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The parameter's name in the route template (shown in denials).
    pub param: Arc<str>,
    pub attribute: Attribute,
    /// The path segment, decoded once.
    pub value: String,
}

/// Why a bound route refuses a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The key's attribute differs from the path's value (neither is shown).
    #[error("the key is not bound to this {param}")]
    NotBound { param: Arc<str> },
    /// The key has no such attribute (no owner, no such metadata field or claim).
    #[error("the key has no attribute to bind the path's {param} to")]
    NoAttribute { param: Arc<str> },
    /// The path's value cannot be compared safely or cannot be part of a scope: doubly
    /// percent-encoded, a control character, or (for a parameter in a scope) a character
    /// outside `A-Z a-z 0-9 . _ -` such as `:` or `*`.
    #[error("the path's {param} is not a valid value")]
    BadParameter { param: Arc<str> },
}

impl BindError {
    pub fn status(&self) -> u32 {
        match self {
            Self::NotBound { .. } | Self::NoAttribute { .. } => 403,
            Self::BadParameter { .. } => 400,
        }
    }
}

/// What a request on a protected route must satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Every scope, all of them (parameters filled in).
    pub scopes: Arc<[Scope]>,
    /// Every binding, all of them (empty on most routes: no allocation).
    pub bindings: Vec<Binding>,
}

impl From<Arc<[Scope]>> for Requirement {
    fn from(scopes: Arc<[Scope]>) -> Self {
        Self {
            scopes,
            bindings: Vec::new(),
        }
    }
}

impl Requirement {
    /// Checks every binding against `attributes`, in order; the first failure is reported.
    pub fn check_bindings(&self, attributes: &Attributes) -> Result<(), BindError> {
        for binding in self.bindings.iter() {
            let Some(have) = attributes.get(&binding.attribute) else {
                return Err(BindError::NoAttribute {
                    param: Arc::clone(&binding.param),
                });
            };
            if !same(have.as_bytes(), binding.value.as_bytes()) {
                return Err(BindError::NotBound {
                    param: Arc::clone(&binding.param),
                });
            }
        }
        Ok(())
    }
}

/// Equal bytes, compared without an early exit (the length may show).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A path segment decoded once, for binding: `None` when it is empty, still holds a `%`
/// after decoding (encoded more than once), is not UTF-8 or has a control character.
pub fn decode_bound_value(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| char::from(b).to_digit(16);
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let high = bytes.get(i + 1).copied().and_then(hex)?;
            let low = bytes.get(i + 2).copied().and_then(hex)?;
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    let ok = !text.is_empty()
        && text.len() <= MAX_ATTRIBUTE_VALUE_LEN
        && !text.contains('%')
        && !text.chars().any(char::is_control);
    ok.then_some(text)
}

/// A decoded path value usable inside a scope: `A-Z a-z 0-9 . _ -` only, so it can never
/// add a segment (`:`), a wildcard (`*`) or anything else to the scope's syntax.
pub fn is_scope_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() < MAX_SCOPE_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_by_name() {
        assert_eq!(Attribute::parse("owner"), Some(Attribute::Owner));
        assert_eq!(
            Attribute::parse("metadata.tenant"),
            Some(Attribute::Metadata("tenant".into()))
        );
        assert_eq!(
            Attribute::parse("claim.org_id"),
            Some(Attribute::Claim("org_id".into()))
        );
        for bad in [
            "",
            "Owner",
            "subject",
            "metadata.",
            "claim.",
            "metadata.a.b",
            "claim.a b",
        ] {
            assert_eq!(Attribute::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn values_decode_once_and_refuse_double_encoding() {
        assert_eq!(decode_bound_value("acme").as_deref(), Some("acme"));
        assert_eq!(decode_bound_value("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_bound_value("%41").as_deref(), Some("A"));
        for bad in ["", "a%2541", "a%", "a%4", "a%zz", "%00", "%ff", "%0a"] {
            assert_eq!(decode_bound_value(bad), None, "{bad:?}");
        }
        assert!(is_scope_value("x-1.v_2"));
        for bad in ["", "a:b", "*", "a*", "a b", "a/b"] {
            assert!(!is_scope_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn bindings_compare_exactly_and_never_echo_the_key() {
        let requirement = Requirement {
            scopes: Arc::new([]),
            bindings: vec![Binding {
                param: "tenant".into(),
                attribute: Attribute::Owner,
                value: "acme".into(),
            }],
        };
        let key = |owner: Option<&str>| Attributes::of_record(owner, &BTreeMap::new());
        assert_eq!(requirement.check_bindings(&key(Some("acme"))), Ok(()));
        for other in ["ACME", "acme ", "acm", "acmee"] {
            let err = requirement.check_bindings(&key(Some(other))).unwrap_err();
            assert_eq!(
                err,
                BindError::NotBound {
                    param: "tenant".into()
                }
            );
            assert!(!err.to_string().contains(other), "{err}");
            assert_eq!(err.status(), 403);
        }
        assert_eq!(
            requirement.check_bindings(&key(None)),
            Err(BindError::NoAttribute {
                param: "tenant".into()
            })
        );
        assert_eq!(
            requirement.check_bindings(&key(Some(""))),
            Err(BindError::NoAttribute {
                param: "tenant".into()
            })
        );
    }
}
