//! Route policy from Envoy route metadata (`filter_metadata.keygate`), as the host hands its
//! leaves over: strings as bytes, booleans as one byte, lists in the proxy-wasm pairs format.
//!
//! Calls `keygate_core::route::policy_from_metadata`.
//! Input: one byte saying which of `scopes`, `public`, `mode` are present, then a length byte
//! for each present one but the last, then their bytes.
#![no_main]

use keygate_core::route::policy_from_metadata;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&present, mut rest)) = data.split_first() else {
        return;
    };
    let mut parts: [Option<&[u8]>; 3] = [None; 3];
    let wanted: Vec<usize> = (0..3).filter(|i| present & (1 << i) != 0).collect();
    for (n, &i) in wanted.iter().enumerate() {
        let part = if n + 1 == wanted.len() {
            std::mem::take(&mut rest)
        } else {
            let Some((&len, more)) = rest.split_first() else {
                return;
            };
            let (part, more) = more.split_at(usize::from(len).min(more.len()));
            rest = more;
            part
        };
        parts[i] = Some(part);
    }
    let [scopes, public, mode] = parts;
    let _ = policy_from_metadata(scopes, public, mode);
});
