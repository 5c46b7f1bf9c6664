//! JWKS documents: fetched from an issuer's endpoint, so whoever controls (or spoofs) that
//! endpoint writes these bytes.
//!
//! Calls `keygate_core::jwt::KeySet::{from_jwks_json, to_jwks, len, iter}` and
//! `VerifyingKey::{kid, algorithm, spki_der}`.
#![no_main]

use keygate_core::jwt::{KeySet, MAX_KEYS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((set, _skipped)) = KeySet::from_jwks_json(data) else {
        return;
    };
    assert!(set.len() <= MAX_KEYS);
    for key in set.iter() {
        let _ = (key.kid(), key.algorithm(), key.spki_der());
    }
    // What the filter accepted, published again, reads back as the same keys.
    let Ok(published) = serde_json::to_vec(&set.to_jwks()) else {
        return;
    };
    let again = KeySet::from_jwks_json(&published);
    let Ok((again, skipped)) = again else {
        panic!("a published key set does not parse");
    };
    assert!(
        skipped.is_empty(),
        "published keys were skipped: {skipped:?}"
    );
    assert_eq!(again.len(), set.len());
    for key in set.iter() {
        let back = again.get(key.kid());
        assert!(back
            .is_some_and(|b| b.algorithm() == key.algorithm() && b.spki_der() == key.spki_der()));
    }
});
