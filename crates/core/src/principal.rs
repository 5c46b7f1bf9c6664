//! Workload identities (mTLS/SPIFFE) as principals.
//!
//! A principal is the first URI SAN of the TLS peer certificate as Envoy verified it (Envoy's
//! `connection.uri_san_peer_certificate` property; Istio's sidecars set the same property for
//! their mTLS peers), for example `spiffe://cluster.local/ns/payments/sa/api`.
//!
//! Two things use principals:
//! - the filter configuration maps principals to scopes ([`PrincipalMap`]), and a route may
//!   accept a principal instead of a key or require one beside a key ([`PrincipalMode`]);
//! - a key may be bound to workloads (`allowed_principals` on its record, [`PrincipalList`]):
//!   it is refused when the request's principal is absent or not in its list.
//!
//! Pattern grammar (strict, checked when the configuration or a key is loaded): a principal is
//! `scheme://authority` followed by zero or more `/segment`s, printable ASCII without spaces,
//! `?`, `#` or `*`, no empty, `.` or `..` segment, at most [`MAX_PRINCIPAL_LEN`] bytes. A
//! pattern is a principal whose *last* path segment is exactly `*`: it matches every principal
//! with the same text before the last `/` and one more non-empty segment there (no `/` in it).
//! `spiffe://cluster.local/ns/payments/sa/*` matches `.../sa/api`, not `.../sa/api/x`, not
//! `.../sa/`, and not `.../sa`. A `*` anywhere else (`sa/api-*`, `*/sa/api`,
//! `spiffe://*/ns/x`) is refused. Comparison is byte for byte (case-sensitive).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::decision::{DenyReason, Identity};
use crate::scope::{missing_scopes, parse_scopes, Scope, ScopeError};

/// The Envoy property holding the peer certificate's first URI SAN.
pub const PRINCIPAL_PROPERTY: [&str; 2] = ["connection", "uri_san_peer_certificate"];
/// Longest principal (a SPIFFE ID is at most 2048 bytes).
pub const MAX_PRINCIPAL_LEN: usize = 2048;
/// Most entries in the filter's principal map.
pub const MAX_MAP_ENTRIES: usize = 10_000;
/// Most entries in a key's `allowed_principals`.
pub const MAX_KEY_PRINCIPALS: usize = 64;
/// What the issuer identity header says for a request allowed by its principal alone.
pub const PRINCIPAL_ISSUER: &str = "mtls";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalError {
    #[error(
        "a principal is scheme://authority[/segment...] in printable ASCII without spaces, \
         '?', '#', empty, '.' or '..' segments, at most 2048 bytes"
    )]
    BadSyntax,
    #[error("'*' is allowed only as the whole last path segment (spiffe://td/ns/x/sa/*)")]
    BadWildcard,
}

/// One entry of a principal list: an exact principal or a `.../*` pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    /// The text before the final `/*`: matches `{parent}/{one segment}`.
    AnyLastSegment(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PrincipalError> {
        match text.strip_suffix("/*") {
            Some(parent) => {
                if parent.contains('*') {
                    return Err(PrincipalError::BadWildcard);
                }
                check_principal(parent)?;
                Ok(Self::AnyLastSegment(parent.to_owned()))
            }
            None if text.contains('*') => Err(PrincipalError::BadWildcard),
            None => {
                check_principal(text)?;
                Ok(Self::Exact(text.to_owned()))
            }
        }
    }

    pub fn matches(&self, principal: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == principal,
            Self::AnyLastSegment(parent) => parent_of(principal) == Some(parent.as_str()),
        }
    }
}

/// The text before the last `/` of a principal whose last segment is non-empty and which has
/// a path (not only `scheme://authority`).
fn parent_of(principal: &str) -> Option<&str> {
    let (_, after) = principal.split_once("://")?;
    if !after.contains('/') {
        return None;
    }
    let (parent, last) = principal.rsplit_once('/')?;
    (!last.is_empty()).then_some(parent)
}

/// Checks the syntax of a principal (not a pattern).
pub fn check_principal(text: &str) -> Result<(), PrincipalError> {
    if text.is_empty()
        || text.len() > MAX_PRINCIPAL_LEN
        || !text
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'?' | b'#' | b'*'))
    {
        return Err(PrincipalError::BadSyntax);
    }
    let (scheme, rest) = text.split_once("://").ok_or(PrincipalError::BadSyntax)?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(PrincipalError::BadSyntax);
    }
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or_default();
    if authority.is_empty() {
        return Err(PrincipalError::BadSyntax);
    }
    if parts.any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(PrincipalError::BadSyntax);
    }
    Ok(())
}

/// The request's principal from the raw property value: `None` when absent, or when it is not
/// a well-formed principal (then nothing that needs a principal passes).
pub fn read_principal(raw: Option<&[u8]>) -> Option<String> {
    let text = std::str::from_utf8(raw?).ok()?;
    check_principal(text).ok()?;
    Some(text.to_owned())
}

/// A key's `allowed_principals`, parsed once per record. An entry that does not parse matches
/// nothing (the key service checks entries before storing them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalList {
    restricted: bool,
    patterns: Vec<Pattern>,
}

impl PrincipalList {
    pub fn parse(entries: &[String]) -> Self {
        Self {
            restricted: !entries.is_empty(),
            patterns: entries
                .iter()
                .filter_map(|e| Pattern::parse(e).ok())
                .collect(),
        }
    }

    /// Does the key restrict principals (so the request's must be read)?
    pub fn is_restricted(&self) -> bool {
        self.restricted
    }

    /// Is a request with this principal allowed? An empty list allows any (or none); a
    /// non-empty one only a present principal that one of its entries matches.
    pub fn allows(&self, principal: Option<&str>) -> bool {
        if !self.restricted {
            return true;
        }
        principal.is_some_and(|p| self.patterns.iter().any(|pattern| pattern.matches(p)))
    }
}

/// Checks a key's `allowed_principals` as the key service stores them: at most
/// [`MAX_KEY_PRINCIPALS`], each a principal or pattern, duplicates removed, order kept.
/// The error names the index of the first bad entry.
pub fn validate_key_principals(
    entries: &[String],
) -> Result<Vec<String>, (Option<usize>, PrincipalError)> {
    if entries.len() > MAX_KEY_PRINCIPALS {
        return Err((None, PrincipalError::BadSyntax));
    }
    let mut out: Vec<String> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        Pattern::parse(entry).map_err(|e| (Some(i), e))?;
        if !out.contains(entry) {
            out.push(entry.clone());
        }
    }
    Ok(out)
}

/// Whether a route takes principals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalMode {
    /// Key only (the default): the principal plays no part in the route's decision (a key
    /// bound to principals is still checked against it).
    #[default]
    None,
    /// A principal mapped to the route's scopes passes without a key; a request that carries
    /// a credential is decided by its credential.
    Accept,
    /// A principal mapped to the route's scopes *and* a key with them.
    Require,
}

/// One entry of the filter's principal map, as written in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntrySpec {
    pub principal: String,
    pub scopes: Vec<String>,
}

/// The `principals` section of the filter configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalsSpec {
    #[serde(default)]
    pub map: Vec<PrincipalEntrySpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrincipalMapError {
    #[error("principals.map[{0}].principal: {1}")]
    Principal(usize, PrincipalError),
    #[error("principals.map[{0}].scopes: {1}")]
    Scopes(usize, ScopeError),
    #[error("principals.map[{0}].scopes must not be empty")]
    NoScopes(usize),
    #[error("principals.map[{0}].principal appears twice")]
    Duplicate(usize),
    #[error("principals.map has more than 10000 entries")]
    TooMany,
}

/// The compiled principal map: principal → scopes. An exact entry wins over a pattern; at
/// most one pattern can match a principal (patterns are keyed by their parent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalMap {
    exact: HashMap<String, Arc<[String]>>,
    parents: HashMap<String, Arc<[String]>>,
}

impl PrincipalMap {
    pub fn compile(spec: &PrincipalsSpec) -> Result<Self, PrincipalMapError> {
        if spec.map.len() > MAX_MAP_ENTRIES {
            return Err(PrincipalMapError::TooMany);
        }
        let mut map = Self::default();
        for (i, entry) in spec.map.iter().enumerate() {
            let pattern =
                Pattern::parse(&entry.principal).map_err(|e| PrincipalMapError::Principal(i, e))?;
            if entry.scopes.is_empty() {
                return Err(PrincipalMapError::NoScopes(i));
            }
            let scopes: Arc<[String]> = parse_scopes(&entry.scopes)
                .map_err(|e| PrincipalMapError::Scopes(i, e))?
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect();
            let previous = match pattern {
                Pattern::Exact(name) => map.exact.insert(name, scopes),
                Pattern::AnyLastSegment(parent) => map.parents.insert(parent, scopes),
            };
            if previous.is_some() {
                return Err(PrincipalMapError::Duplicate(i));
            }
        }
        Ok(map)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.parents.is_empty()
    }

    /// The scopes the map grants `principal`, if any entry matches it.
    pub fn scopes_of(&self, principal: &str) -> Option<&Arc<[String]>> {
        self.exact
            .get(principal)
            .or_else(|| self.parents.get(parent_of(principal)?))
    }
}

/// What a route's principal mode makes of a request before its credential is looked at.
#[derive(Debug, PartialEq)]
pub enum PrincipalStep {
    /// Go on: the credential decides (as on any route).
    Credential,
    /// Allowed by the principal alone (an `accept` route, no credential).
    Allow(Identity),
    Deny(DenyReason),
}

/// Decides the principal part of a protected route.
///
/// - `none`: [`PrincipalStep::Credential`].
/// - `accept`: a request with a credential is decided by it; without one, a principal the
///   map grants the route's scopes is allowed ([`PRINCIPAL_ISSUER`] as issuer, the principal
///   as subject), one it does not grant them is refused (`principal_insufficient_scope`, 403),
///   and no principal at all is `missing_credential` (401).
/// - `require`: no principal is `principal_required` (403), a principal without the route's
///   scopes `principal_insufficient_scope` (403); otherwise the credential decides.
pub fn route_step(
    mode: PrincipalMode,
    map: &PrincipalMap,
    principal: Option<&str>,
    required: &[Scope],
    has_credential: bool,
) -> PrincipalStep {
    match mode {
        PrincipalMode::None => PrincipalStep::Credential,
        PrincipalMode::Accept if has_credential => PrincipalStep::Credential,
        PrincipalMode::Accept => match principal {
            None => PrincipalStep::Deny(DenyReason::MissingCredential),
            Some(principal) => match granted(map, principal, required) {
                Ok(scopes) => PrincipalStep::Allow(
                    Identity::new(
                        &crate::decision::header_safe(principal),
                        "",
                        scopes.to_vec(),
                        None,
                    )
                    .issued_by(PRINCIPAL_ISSUER),
                ),
                Err(reason) => PrincipalStep::Deny(reason),
            },
        },
        PrincipalMode::Require => match principal {
            None => PrincipalStep::Deny(DenyReason::PrincipalRequired),
            Some(principal) => match granted(map, principal, required) {
                Ok(_) => PrincipalStep::Credential,
                Err(reason) => PrincipalStep::Deny(reason),
            },
        },
    }
}

fn granted<'m>(
    map: &'m PrincipalMap,
    principal: &str,
    required: &[Scope],
) -> Result<&'m Arc<[String]>, DenyReason> {
    static NONE: [String; 0] = [];
    let scopes = map.scopes_of(principal);
    let missing = missing_scopes(required, scopes.map_or(&NONE[..], |s| &s[..]));
    match scopes {
        Some(scopes) if missing.is_empty() => Ok(scopes),
        _ => Err(DenyReason::PrincipalInsufficientScope(
            missing.iter().map(|s| s.as_str().to_owned()).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "spiffe://cluster.local/ns/payments/sa/api";

    #[test]
    fn patterns_are_exact_or_one_final_segment() {
        let any = Pattern::parse("spiffe://cluster.local/ns/payments/sa/*").unwrap();
        assert!(any.matches(API));
        assert!(!any.matches("spiffe://cluster.local/ns/payments/sa/api/x"));
        assert!(!any.matches("spiffe://cluster.local/ns/payments/sa/"));
        assert!(!any.matches("spiffe://cluster.local/ns/payments/sa"));
        assert!(!any.matches("spiffe://cluster.local/ns/payments/sax/api"));
        assert!(!any.matches("spiffe://cluster.local/ns/other/sa/api"));
        let exact = Pattern::parse(API).unwrap();
        assert!(exact.matches(API));
        assert!(!exact.matches("spiffe://cluster.local/ns/payments/sa/API"));
        assert!(!exact.matches("spiffe://cluster.local/ns/payments/sa/api2"));
        let domain = Pattern::parse("spiffe://td/*").unwrap();
        assert!(domain.matches("spiffe://td/x"));
        assert!(!domain.matches("spiffe://td/x/y"));
    }

    #[test]
    fn ambiguous_or_malformed_patterns_are_refused() {
        for bad in [
            "spiffe://cluster.local/ns/payments/sa/api-*",
            "spiffe://cluster.local/ns/*/sa/api",
            "spiffe://*/ns/x",
            "spiffe://cluster.local/ns/x/**",
            "spiffe://cluster.local/ns/x/*/*",
            "*",
        ] {
            assert_eq!(
                Pattern::parse(bad),
                Err(PrincipalError::BadWildcard),
                "{bad}"
            );
        }
        assert!(Pattern::parse("spiffe://*").is_err());
        for bad in [
            "",
            "payments",
            "://x/y",
            "spiffe://",
            "spiffe:///ns/x",
            "spiffe://td/ns//x",
            "spiffe://td/ns/x/",
            "spiffe://td/ns/../x",
            "spiffe://td/./x",
            "spiffe://td/ns x",
            "spiffe://td/x?y",
            "spiffe://td/x#y",
            "spiffe://td/\u{e9}",
            "1abc://td/x",
        ] {
            assert_eq!(
                Pattern::parse(bad),
                Err(PrincipalError::BadSyntax),
                "{bad:?}"
            );
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_PRINCIPAL_LEN));
        assert_eq!(Pattern::parse(&long), Err(PrincipalError::BadSyntax));
    }

    #[test]
    fn property_values_that_are_not_principals_count_as_absent() {
        assert_eq!(read_principal(Some(API.as_bytes())).as_deref(), Some(API));
        assert_eq!(read_principal(None), None);
        assert_eq!(read_principal(Some(b"")), None);
        assert_eq!(read_principal(Some(b"spiffe://td/a\r\nx-evil: 1")), None);
        assert_eq!(read_principal(Some(&[0xff, 0xfe])), None);
        assert_eq!(read_principal(Some(b"spiffe://td/*")), None);
    }

    #[test]
    fn key_lists_bind_to_present_matching_principals() {
        let open = PrincipalList::parse(&[]);
        assert!(!open.is_restricted());
        assert!(open.allows(None));
        assert!(open.allows(Some(API)));
        let bound = PrincipalList::parse(&[API.to_owned(), "spiffe://td/ns/ops/sa/*".to_owned()]);
        assert!(bound.is_restricted());
        assert!(bound.allows(Some(API)));
        assert!(bound.allows(Some("spiffe://td/ns/ops/sa/cron")));
        assert!(!bound.allows(Some("spiffe://td/ns/ops/sa/cron/x")));
        assert!(!bound.allows(Some("spiffe://cluster.local/ns/payments/sa/web")));
        assert!(!bound.allows(None));
        // An entry that does not parse matches nothing, and still restricts.
        let garbage = PrincipalList::parse(&["not a principal".to_owned()]);
        assert!(garbage.is_restricted());
        assert!(!garbage.allows(Some("not a principal")));
        assert!(!garbage.allows(None));
    }

    #[test]
    fn key_principals_are_validated_and_deduplicated() {
        let ok = validate_key_principals(&[API.to_owned(), API.to_owned()]).unwrap();
        assert_eq!(ok, [API]);
        assert_eq!(
            validate_key_principals(&[API.to_owned(), "spiffe://td/a*".to_owned()]),
            Err((Some(1), PrincipalError::BadWildcard))
        );
        let many: Vec<String> = (0..=MAX_KEY_PRINCIPALS)
            .map(|i| format!("spiffe://td/{i}"))
            .collect();
        assert_eq!(
            validate_key_principals(&many),
            Err((None, PrincipalError::BadSyntax))
        );
    }

    fn map() -> PrincipalMap {
        let spec: PrincipalsSpec = serde_json::from_str(&format!(
            r#"{{"map": [
                {{"principal": "{API}", "scopes": ["payments:write", "payments:read"]}},
                {{"principal": "spiffe://cluster.local/ns/payments/sa/*", "scopes": ["payments:read"]}}
            ]}}"#
        ))
        .unwrap();
        PrincipalMap::compile(&spec).unwrap()
    }

    #[test]
    fn the_map_prefers_exact_entries_and_refuses_duplicates() {
        let map = map();
        assert_eq!(
            map.scopes_of(API).map(|s| s.to_vec()),
            Some(vec![
                "payments:read".to_owned(),
                "payments:write".to_owned()
            ])
        );
        assert_eq!(
            map.scopes_of("spiffe://cluster.local/ns/payments/sa/web")
                .map(|s| s.to_vec()),
            Some(vec!["payments:read".to_owned()])
        );
        assert_eq!(
            map.scopes_of("spiffe://cluster.local/ns/other/sa/web"),
            None
        );
        let dup: PrincipalsSpec = serde_json::from_str(
            r#"{"map": [{"principal": "spiffe://td/a/*", "scopes": ["x"]},
                        {"principal": "spiffe://td/a/*", "scopes": ["y"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            PrincipalMap::compile(&dup),
            Err(PrincipalMapError::Duplicate(1))
        );
        let empty: PrincipalsSpec =
            serde_json::from_str(r#"{"map": [{"principal": "spiffe://td/a", "scopes": []}]}"#)
                .unwrap();
        assert_eq!(
            PrincipalMap::compile(&empty),
            Err(PrincipalMapError::NoScopes(0))
        );
        let bad: PrincipalsSpec =
            serde_json::from_str(r#"{"map": [{"principal": "spiffe://td/a-*", "scopes": ["x"]}]}"#)
                .unwrap();
        assert_eq!(
            PrincipalMap::compile(&bad),
            Err(PrincipalMapError::Principal(0, PrincipalError::BadWildcard))
        );
    }

    #[test]
    fn route_modes_decide_principal_requests() {
        let map = map();
        let read = parse_scopes(&["payments:read"]).unwrap();
        let write = parse_scopes(&["payments:write"]).unwrap();
        let web = "spiffe://cluster.local/ns/payments/sa/web";
        let stranger = "spiffe://cluster.local/ns/other/sa/web";
        // Key only: the principal plays no part.
        for principal in [None, Some(API), Some(stranger)] {
            assert_eq!(
                route_step(PrincipalMode::None, &map, principal, &write, false),
                PrincipalStep::Credential
            );
        }
        // Accept: a credential decides; otherwise the principal's scopes.
        assert_eq!(
            route_step(PrincipalMode::Accept, &map, Some(stranger), &read, true),
            PrincipalStep::Credential
        );
        match route_step(PrincipalMode::Accept, &map, Some(API), &write, false) {
            PrincipalStep::Allow(identity) => {
                assert_eq!(&*identity.subject, API);
                assert_eq!(&*identity.scopes_header, "payments:read payments:write");
                assert_eq!(identity.issuer_name(), PRINCIPAL_ISSUER);
                assert!(identity.key_id.is_empty());
                assert_eq!(identity.usage_key(), None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route_step(PrincipalMode::Accept, &map, Some(web), &write, false),
            PrincipalStep::Deny(DenyReason::PrincipalInsufficientScope(vec![
                "payments:write".into()
            ]))
        );
        assert_eq!(
            route_step(PrincipalMode::Accept, &map, Some(stranger), &read, false),
            PrincipalStep::Deny(DenyReason::PrincipalInsufficientScope(vec![
                "payments:read".into()
            ]))
        );
        assert_eq!(
            route_step(PrincipalMode::Accept, &map, None, &read, false),
            PrincipalStep::Deny(DenyReason::MissingCredential)
        );
        // Require: the principal must have the scopes, then the credential decides.
        assert_eq!(
            route_step(PrincipalMode::Require, &map, Some(web), &read, false),
            PrincipalStep::Credential
        );
        assert_eq!(
            route_step(PrincipalMode::Require, &map, None, &read, true),
            PrincipalStep::Deny(DenyReason::PrincipalRequired)
        );
        assert_eq!(
            route_step(PrincipalMode::Require, &map, Some(web), &write, true),
            PrincipalStep::Deny(DenyReason::PrincipalInsufficientScope(vec![
                "payments:write".into()
            ]))
        );
    }
}
