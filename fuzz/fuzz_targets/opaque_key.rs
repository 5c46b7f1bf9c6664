//! Opaque API keys: the presented credential is the client's bytes.
//!
//! Calls `keygate_core::key::{parse_opaque_key, key_id_of, looks_like_opaque_key,
//! mint_opaque_key}` and `ParsedKey::{id, tag_is_authentic, digest}`.
//! Input: one byte choosing the prefix list, then the key text; from 43 bytes on, the
//! first 42 also mint a key (id and secret), which one byte then mutates.
#![no_main]

use keygate_core::key::{
    key_id_of, looks_like_opaque_key, mint_opaque_key, parse_opaque_key, GatewayKey, KeyPrefix,
    ID_LEN, SECRET_LEN,
};
use libfuzzer_sys::fuzz_target;

const PREFIX_LISTS: [&[&str]; 3] = [
    &["kg_test_"],
    &["kg_test_", "kg_live_"],
    &["kg_", "kg_test_"],
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let prefixes = PREFIX_LISTS[usize::from(choice) % PREFIX_LISTS.len()];
    // Two gateway keys: the fuzzer may pick up a minted key from the comparisons it watches
    // and present it, so the forgery check uses a key that never mints.
    let (Ok(gateway), Ok(minting)) = (
        GatewayKey::from_bytes(&[7u8; 32]),
        GatewayKey::from_bytes(&[9u8; 32]),
    ) else {
        return;
    };

    let text = String::from_utf8_lossy(rest);
    if let Ok(parsed) = parse_opaque_key(&text, prefixes) {
        assert!(looks_like_opaque_key(&text, prefixes));
        assert_eq!(key_id_of(&text, prefixes), Some(parsed.id()));
        // Only a key minted under this gateway key carries an authentic tag.
        assert!(
            !parsed.tag_is_authentic(&gateway),
            "forged key accepted: {text}"
        );
        let _ = parsed.digest();
    }

    // Minted keys parse, authenticate, and no one-character change of them does.
    if rest.len() > ID_LEN + SECRET_LEN {
        let (id, more) = rest.split_at(ID_LEN);
        let (secret, more) = more.split_at(SECRET_LEN);
        let (Ok(id), Ok(secret)) = (id.try_into(), secret.try_into()) else {
            return;
        };
        let Ok(prefix) = KeyPrefix::parse(prefixes[0]) else {
            return;
        };
        let minted = mint_opaque_key(&prefix, &minting, id, secret);
        let parsed = parse_opaque_key(&minted.plaintext, prefixes);
        assert!(parsed.as_ref().is_ok_and(|p| p.tag_is_authentic(&minting)));
        assert_eq!(parsed.map(|p| p.id()).ok(), Some(minted.id));

        let mut mutated = minted.plaintext.clone().into_bytes();
        let at = usize::from(more[0]) % mutated.len();
        mutated[at] = more.get(1).copied().unwrap_or(b'a');
        if let Ok(mutated) = String::from_utf8(mutated) {
            if mutated != minted.plaintext {
                let accepted = parse_opaque_key(&mutated, prefixes)
                    .is_ok_and(|p| p.tag_is_authentic(&minting));
                assert!(!accepted, "a changed key was accepted: {mutated}");
            }
        }
    }
});
