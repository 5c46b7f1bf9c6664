//! Scopes: the permissions a key carries and a route requires.
//!
//! Grammar: a scope is 1 to 64 characters of `A-Z a-z 0-9 : . _ - /`; `:` separates its
//! segments (`datasets:x:read`). A route's required scope is always such a plain scope.
//!
//! Wildcards, for granted scopes only (keys, roles, tokens): the last `:`-segment may be `*`
//! (`models:*`), after a prefix of one or more non-empty segments. `*` stands for one or more
//! whole segments after the prefix: `models:*` grants `models:read` and `models:7:read`,
//! never `models` itself nor `modelsx:read`. `*` anywhere else (`*`, `*:read`, `a:*:b`,
//! `a*`, `a:**`, `a::*`) is refused when a key or role is created ([`parse_grant`]), and a
//! grant spelled so (in a token from an outside issuer) matches nothing but itself.

use std::fmt;

/// Longest scope accepted.
pub const MAX_SCOPE_LEN: usize = 64;
/// Most scopes one key or route may name.
pub const MAX_SCOPES: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    #[error("a scope is 1 to 64 characters of A-Z a-z 0-9 and : . _ - /")]
    BadSyntax,
    #[error("at most 32 scopes are allowed")]
    TooMany,
    #[error(
        "`*` may only be a granted scope's whole last segment after a prefix of non-empty \
         segments, as in `models:*`"
    )]
    BadWildcard,
}

/// One scope such as `demo:read`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_SCOPE_LEN
            && text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'/')
            });
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(ScopeError::BadSyntax)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a list of scopes: each valid, at most [`MAX_SCOPES`], duplicates removed, sorted.
pub fn parse_scopes<S: AsRef<str>>(items: &[S]) -> Result<Vec<Scope>, ScopeError> {
    if items.len() > MAX_SCOPES {
        return Err(ScopeError::TooMany);
    }
    let mut scopes = items
        .iter()
        .map(|s| Scope::parse(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// The wildcard segment of a granted scope.
pub const WILDCARD: &str = "*";

/// Parses a scope a key, role or token may be granted: a plain scope, or a prefix and a
/// final `:*` (see the module documentation).
pub fn parse_grant(text: &str) -> Result<Scope, ScopeError> {
    if !text.contains('*') {
        return Scope::parse(text);
    }
    if text.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::BadSyntax);
    }
    match wildcard_prefix(text) {
        Some(_) => Ok(Scope(text.to_owned())),
        None => Err(ScopeError::BadWildcard),
    }
}

/// [`parse_scopes`] for granted scopes: wildcards allowed.
pub fn parse_grants<S: AsRef<str>>(items: &[S]) -> Result<Vec<Scope>, ScopeError> {
    if items.len() > MAX_SCOPES {
        return Err(ScopeError::TooMany);
    }
    let mut scopes = items
        .iter()
        .map(|s| parse_grant(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// For a well-formed wildcard grant `p1:...:pn:*`, the prefix with its final colon
/// (`p1:...:pn:`); `None` for anything else.
fn wildcard_prefix(grant: &str) -> Option<&str> {
    let prefix = grant.strip_suffix(WILDCARD)?;
    let stem = prefix.strip_suffix(':')?;
    let ok = !stem.is_empty()
        && stem.len() < MAX_SCOPE_LEN
        && stem.split(':').all(|segment| !segment.is_empty())
        && Scope::parse(stem).is_ok();
    ok.then_some(prefix)
}

/// Does the granted scope `have` cover the required scope `need`? Equal, or `have` is a
/// well-formed wildcard whose prefix `need` extends by one or more whole segments.
pub fn grants(have: &str, need: &str) -> bool {
    if have == need {
        return true;
    }
    if !have.ends_with(":*") {
        return false;
    }
    wildcard_prefix(have).is_some_and(|prefix| {
        need.len() > prefix.len() && need.starts_with(prefix) && !need.contains('*')
    })
}

/// The scopes in `required` that `granted` lacks (wildcard grants honoured).
pub fn missing_scopes<'a>(required: &'a [Scope], granted: &[String]) -> Vec<&'a Scope> {
    required
        .iter()
        .filter(|need| !granted.iter().any(|have| grants(have, need.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_scopes_sorted_and_deduplicated() {
        let scopes = parse_scopes(&["demo:write", "demo:read", "demo:read"]).unwrap();
        let names: Vec<_> = scopes.iter().map(Scope::as_str).collect();
        assert_eq!(names, ["demo:read", "demo:write"]);
    }

    #[test]
    fn rejects_bad_syntax_and_too_many() {
        for bad in ["", "has space", "semi;colon", "é", &"a".repeat(65)] {
            assert_eq!(Scope::parse(bad), Err(ScopeError::BadSyntax), "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        assert_eq!(parse_scopes(&many), Err(ScopeError::TooMany));
    }

    #[test]
    fn wildcards_are_a_whole_last_segment_after_a_prefix() {
        for good in ["models:*", "datasets:x:*", "a.b:*"] {
            assert_eq!(parse_grant(good).unwrap().as_str(), good);
        }
        for bad in [
            "*", ":*", "*:read", "a:*:b", "a*", "a:**", "a::*", "a:*b", "**", "a:b*",
        ] {
            assert_eq!(parse_grant(bad), Err(ScopeError::BadWildcard), "{bad:?}");
            assert!(Scope::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_grant(&format!("{}:*", "a".repeat(63))),
            Err(ScopeError::BadSyntax)
        );
        assert_eq!(parse_grant("bad scope"), Err(ScopeError::BadSyntax));
        let grants_list = parse_grants(&["b:*", "a", "b:*"]).unwrap();
        assert_eq!(grants_list.len(), 2);
    }

    #[test]
    fn a_wildcard_grants_one_or_more_whole_segments_after_its_prefix() {
        assert!(grants("models:*", "models:read"));
        assert!(grants("models:*", "models:7:read"));
        assert!(grants("datasets:x:*", "datasets:x:read"));
        assert!(grants("demo:read", "demo:read"));
        for need in [
            "models",
            "models:",
            "modelsx:read",
            "model:read",
            "other:models:read",
        ] {
            assert!(!grants("models:*", need), "{need}");
        }
        assert!(!grants("datasets:x:*", "datasets:y:read"));
        assert!(!grants("datasets:x:*", "datasets:xy:read"));
        // Ill-formed wildcards (as an outside token may carry) grant nothing.
        for have in ["*", ":*", "a::*", "*:*"] {
            assert!(!grants(have, "a:b"), "{have}");
            assert!(!grants(have, "a::b"), "{have}");
        }
        assert!(!grants("demo:read", "demo:write"));
    }

    #[test]
    fn reports_missing_scopes() {
        let required = parse_scopes(&["a", "b"]).unwrap();
        let granted = vec!["b".to_owned(), "c".to_owned()];
        let missing = missing_scopes(&required, &granted);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].as_str(), "a");
    }
}
