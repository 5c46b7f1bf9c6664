//! Credential extraction: the request's headers and path are the client's bytes.
//!
//! Calls `keygate_core::credential::extract_credential` and `strip_query_param`.
//! Input: one flag byte (which sources are on, and the length cap), then lines: the path,
//! then `name:value` headers.
#![no_main]
// Sources are set field by field, so that a field added to them later keeps its default.
#![allow(clippy::field_reassign_with_default)]

use keygate_core::credential::{extract_credential, strip_query_param, CredentialSources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut sources = CredentialSources::default();
    sources.bearer = flags & 1 != 0;
    sources.header = (flags & 2 != 0).then(|| "x-api-key".to_owned());
    sources.query_param = (flags & 4 != 0).then(|| "api_key".to_owned());
    sources.legacy_header = (flags & 8 != 0).then(|| "x-legacy-key".to_owned());
    let max_len = usize::from(flags >> 4) * 16;

    let mut lines = rest.split(|b| *b == b'\n');
    let path = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let headers: Vec<(String, Vec<u8>)> = lines
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            Some((name, line[colon + 1..].to_vec()))
        })
        .collect();
    let pairs = || headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));

    if let Ok(found) = extract_credential(&sources, pairs(), &path, max_len) {
        assert!(!found.credential.is_empty() && found.credential.len() <= max_len);
        assert!(found.credential.bytes().all(|b| b.is_ascii_graphic()));
        assert!(!found.sources.is_empty());
    }

    // What the filter forwards must no longer carry the credential in the query.
    if let Some(param) = sources.query_param.clone() {
        let stripped = strip_query_param(&path, &param);
        assert!(stripped.len() <= path.len());
        let mut query_only = CredentialSources::default();
        query_only.bearer = false;
        query_only.header = None;
        query_only.query_param = Some(param);
        query_only.legacy_header = None;
        let empty = std::iter::empty::<(&str, &[u8])>();
        let left = extract_credential(&query_only, empty, &stripped, usize::MAX);
        assert!(
            left.is_err(),
            "{path:?} stripped to {stripped:?} still carries a credential"
        );
    }
});
