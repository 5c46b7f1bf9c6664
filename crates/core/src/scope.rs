//! Scopes: the permissions a key carries and a route requires.

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

/// The scopes in `required` that `granted` lacks.
pub fn missing_scopes<'a>(required: &'a [Scope], granted: &[String]) -> Vec<&'a Scope> {
    required
        .iter()
        .filter(|need| !granted.iter().any(|have| have == need.as_str()))
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
    fn reports_missing_scopes() {
        let required = parse_scopes(&["a", "b"]).unwrap();
        let granted = vec!["b".to_owned(), "c".to_owned()];
        let missing = missing_scopes(&required, &granted);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].as_str(), "a");
    }
}
