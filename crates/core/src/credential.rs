//! Finding the credential in a request: `Authorization: Bearer`, a header, or (opt-in) a
//! query parameter. Two different credentials in one request is an error, never a choice.

use serde::Deserialize;

/// Where the filter looks for a credential, in this order.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSources {
    /// `Authorization: Bearer <credential>`.
    #[serde(default = "default_true")]
    pub bearer: bool,
    /// A header that carries the bare credential (lower case); `null` disables it.
    #[serde(default = "default_header")]
    pub header: Option<String>,
    /// A query parameter that carries the credential; off unless named (URLs end up in logs).
    #[serde(default)]
    pub query_param: Option<String>,
    /// The header of legacy keys (set from `legacy_keys.header`).
    #[serde(skip)]
    pub legacy_header: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_header() -> Option<String> {
    Some("x-api-key".to_owned())
}

impl Default for CredentialSources {
    fn default() -> Self {
        Self {
            bearer: true,
            header: default_header(),
            query_param: None,
            legacy_header: None,
        }
    }
}

/// Why no usable credential could be taken from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("no credential was presented")]
    Missing,
    #[error("two different credentials were presented")]
    Conflicting,
    #[error("the credential is longer than allowed")]
    TooLong,
    #[error("the credential contains characters that are not printable ASCII")]
    NotPrintableAscii,
    #[error("the Authorization header's bearer token is empty or malformed")]
    MalformedBearer,
}

/// Where a credential was found, so the filter can remove it before forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Bearer,
    Header,
    QueryParam,
    /// The legacy-key header.
    LegacyHeader,
}

/// A credential taken from a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Extracted<'a> {
    pub credential: &'a str,
    /// Every source the credential appeared in (the same value may be sent twice).
    pub sources: Vec<Source>,
}

/// Takes the credential from request headers (lower-case names, raw values) and the path.
///
/// A non-Bearer `Authorization` header (e.g. Basic) is not a credential for Keygate and is
/// left alone. Every candidate must be printable ASCII without spaces and at most `max_len`
/// bytes.
pub fn extract_credential<'a, I>(
    sources: &CredentialSources,
    headers: I,
    path: &'a str,
    max_len: usize,
) -> Result<Extracted<'a>, CredentialError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut found: Option<&'a str> = None;
    let mut from = Vec::new();
    let mut offer = |candidate: &'a [u8], source: Source| -> Result<(), CredentialError> {
        let text = validate(candidate, max_len)?;
        match found {
            Some(previous) if previous != text => return Err(CredentialError::Conflicting),
            _ => found = Some(text),
        }
        if !from.contains(&source) {
            from.push(source);
        }
        Ok(())
    };
    for (name, value) in headers {
        if sources.bearer && name == "authorization" {
            if let Some(token) = bearer_token(value)? {
                offer(token, Source::Bearer)?;
            }
        } else if sources.header.as_deref() == Some(name) {
            offer(value, Source::Header)?;
        } else if sources.legacy_header.as_deref() == Some(name) {
            offer(value, Source::LegacyHeader)?;
        }
    }
    if let Some(param) = &sources.query_param {
        for value in query_values(path, param) {
            offer(value.as_bytes(), Source::QueryParam)?;
        }
    }
    match found {
        Some(credential) => Ok(Extracted {
            credential,
            sources: from,
        }),
        None => Err(CredentialError::Missing),
    }
}

fn validate(candidate: &[u8], max_len: usize) -> Result<&str, CredentialError> {
    if candidate.len() > max_len {
        return Err(CredentialError::TooLong);
    }
    if candidate.is_empty() {
        return Err(CredentialError::MalformedBearer);
    }
    if !is_printable_ascii(candidate) {
        return Err(CredentialError::NotPrintableAscii);
    }
    std::str::from_utf8(candidate).map_err(|_| CredentialError::NotPrintableAscii)
}

/// True when every byte is printable ASCII other than the space (0x21 to 0x7e). Eight bytes
/// at a time, without a branch per byte: every credential of every request passes here, a
/// JWT has hundreds of bytes, and Wasm has no vector unit to do it for us.
fn is_printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    let mut outside = 0u64;
    for word in &mut words {
        let mut lanes = [0u8; 8];
        lanes.copy_from_slice(word);
        let word = u64::from_le_bytes(lanes);
        // A byte below 0x21 sets its high bit in the first term (a borrow reaches only bytes
        // above one that is below, so the answer for the word is exact); a byte above 0x7e
        // sets it in the second (0x7f and up reach 0x80, nothing carries out of a byte).
        outside |= (word.wrapping_sub(ONES * 0x21) & !word) | (word.wrapping_add(ONES) | word);
    }
    outside & HIGHS == 0 && words.remainder().iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The token of an `Authorization: Bearer <token>` value, checked as [`extract_credential`]
/// checks every candidate; `Ok(None)` for another scheme.
pub fn bearer_credential(value: &[u8], max_len: usize) -> Result<Option<&str>, CredentialError> {
    match bearer_token(value)? {
        Some(token) => validate(token, max_len).map(Some),
        None => Ok(None),
    }
}

/// `Some(token)` for `Bearer <token>` (scheme case-insensitive), `None` for another scheme.
fn bearer_token(value: &[u8]) -> Result<Option<&[u8]>, CredentialError> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Ok(None);
    }
    let rest = &value[SCHEME.len()..];
    match rest.first() {
        None => Err(CredentialError::MalformedBearer),
        Some(b' ') => {
            let token = trim_spaces(rest);
            if token.is_empty() {
                Err(CredentialError::MalformedBearer)
            } else {
                Ok(Some(token))
            }
        }
        // "Bearerfoo" is some other scheme.
        Some(_) => Ok(None),
    }
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

fn query_values<'a>(path: &'a str, param: &str) -> Vec<&'a str> {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == param).then_some(value)
        })
        .collect()
}

/// The path with every occurrence of query parameter `param` removed.
pub fn strip_query_param(path: &str, param: &str) -> String {
    let Some((base, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(n, _)| n) != param)
        .collect();
    if kept.is_empty() || kept == [""] {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<'a>(
        sources: &CredentialSources,
        headers: &'a [(&'a str, &'a [u8])],
        path: &'a str,
    ) -> Result<Extracted<'a>, CredentialError> {
        extract_credential(sources, headers.iter().copied(), path, 64)
    }

    #[test]
    fn takes_bearer_header_or_query_param() {
        let s = CredentialSources {
            query_param: Some("api_key".into()),
            ..Default::default()
        };
        let got = run(&s, &[("authorization", b"Bearer abc")], "/").unwrap();
        assert_eq!((got.credential, got.sources), ("abc", vec![Source::Bearer]));
        let got = run(&s, &[("authorization", b"bearer   abc  ")], "/").unwrap();
        assert_eq!(got.credential, "abc");
        let got = run(&s, &[("x-api-key", b"abc")], "/").unwrap();
        assert_eq!(got.sources, vec![Source::Header]);
        let got = run(&s, &[], "/x?a=1&api_key=abc").unwrap();
        assert_eq!(
            (got.credential, got.sources),
            ("abc", vec![Source::QueryParam])
        );
    }

    #[test]
    fn same_value_twice_is_fine_two_values_conflict() {
        let s = CredentialSources::default();
        let same = run(
            &s,
            &[("authorization", b"Bearer abc"), ("x-api-key", b"abc")],
            "/",
        )
        .unwrap();
        assert_eq!(same.sources, vec![Source::Bearer, Source::Header]);
        let err = run(
            &s,
            &[("authorization", b"Bearer abc"), ("x-api-key", b"xyz")],
            "/",
        );
        assert_eq!(err, Err(CredentialError::Conflicting));
        let err = run(&s, &[("x-api-key", b"abc"), ("x-api-key", b"xyz")], "/");
        assert_eq!(err, Err(CredentialError::Conflicting));
    }

    #[test]
    fn legacy_header_is_a_source_of_its_own() {
        let s = CredentialSources {
            legacy_header: Some("x-legacy-key".into()),
            ..Default::default()
        };
        let got = run(&s, &[("x-legacy-key", b"old-secret")], "/").unwrap();
        assert_eq!(got.sources, vec![Source::LegacyHeader]);
        let err = run(&s, &[("x-legacy-key", b"old"), ("x-api-key", b"new")], "/");
        assert_eq!(err, Err(CredentialError::Conflicting));
    }

    #[test]
    fn query_param_is_ignored_unless_opted_in() {
        let s = CredentialSources::default();
        assert_eq!(
            run(&s, &[], "/x?api_key=abc"),
            Err(CredentialError::Missing)
        );
    }

    #[test]
    fn other_schemes_are_not_credentials() {
        let s = CredentialSources::default();
        assert_eq!(
            run(&s, &[("authorization", b"Basic dXNlcg==")], "/"),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            run(&s, &[("authorization", b"Bearerabc")], "/"),
            Err(CredentialError::Missing)
        );
        assert_eq!(
            run(&s, &[("authorization", b"Bearer")], "/"),
            Err(CredentialError::MalformedBearer)
        );
        assert_eq!(
            run(&s, &[("authorization", b"Bearer   ")], "/"),
            Err(CredentialError::MalformedBearer)
        );
    }

    #[test]
    fn refuses_long_and_non_ascii_values() {
        let s = CredentialSources::default();
        let long = [b'a'; 65];
        assert_eq!(
            run(&s, &[("x-api-key", &long)], "/"),
            Err(CredentialError::TooLong)
        );
        assert_eq!(
            run(&s, &[("x-api-key", "kg_é".as_bytes())], "/"),
            Err(CredentialError::NotPrintableAscii)
        );
        assert_eq!(
            run(&s, &[("x-api-key", b"a b")], "/"),
            Err(CredentialError::NotPrintableAscii)
        );
        assert_eq!(
            run(&s, &[("x-api-key", &[0xff, 0xfe])], "/"),
            Err(CredentialError::NotPrintableAscii)
        );
    }

    #[test]
    fn printable_ascii_agrees_with_the_byte_by_byte_rule() {
        let naive = |bytes: &[u8]| bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        // Every byte value at every position of words and their remainders, in a printable
        // run, and the edges of the range side by side.
        for len in 0..=19 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut text = vec![b'A'; len];
                    text[at] = byte;
                    assert_eq!(
                        is_printable_ascii(&text),
                        naive(&text),
                        "byte {byte:#x} at {at} of {len}"
                    );
                }
            }
        }
        let edges: Vec<u8> = (0..64).map(|i| [0x21, 0x7e, 0x20, 0x7f][i % 4]).collect();
        for start in 0..edges.len() {
            for end in start..=edges.len() {
                let text = &edges[start..end];
                assert_eq!(is_printable_ascii(text), naive(text), "{text:x?}");
            }
        }
        assert!(is_printable_ascii(
            b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln~!"
        ));
    }

    #[test]
    fn strips_the_query_param() {
        assert_eq!(strip_query_param("/x?api_key=k", "api_key"), "/x");
        assert_eq!(
            strip_query_param("/x?a=1&api_key=k&b=2", "api_key"),
            "/x?a=1&b=2"
        );
        assert_eq!(strip_query_param("/x?a=1", "api_key"), "/x?a=1");
        assert_eq!(strip_query_param("/x", "api_key"), "/x");
    }
}
