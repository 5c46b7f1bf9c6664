#![allow(clippy::unwrap_used)]
//! Every parser meets random and mutated input and must answer, never panic: attacker bytes
//! reach these functions on the request path, where a panic takes down an Envoy worker.
//! (A small deterministic generator stands in for a fuzzer so this runs in every `make test`.)

use keygate_core::base32;
use keygate_core::cache::{CacheEntry, Lease};
use keygate_core::config::FilterConfig;
use keygate_core::credential::{extract_credential, strip_query_param, CredentialSources};
use keygate_core::key::{mint_opaque_key, parse_opaque_key, GatewayKey, KeyId, KeyPrefix};
use keygate_core::route::{policy_from_metadata, RouteSpec, RouteTable};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Bytes biased towards the characters the parsers care about.
    fn interesting(&mut self, max_len: usize) -> Vec<u8> {
        const ALPHABET: &[u8] = b"kg_livetsabcxyz234567/{}*?&=.%2Fe\\ \t\r\n\"\xff\x00";
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

const ROUNDS: usize = 20_000;

#[test]
fn key_parser_survives_random_and_mutated_input() {
    let gateway = GatewayKey::from_bytes(&[5u8; 32]).unwrap();
    let prefix = KeyPrefix::parse("kg_test_").unwrap();
    let valid = mint_opaque_key(&prefix, &gateway, [1; 10], [2; 32]).plaintext;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut accepted_mutants = 0;
    for round in 0..ROUNDS {
        let candidate = if round % 2 == 0 {
            String::from_utf8_lossy(&rng.interesting(140)).into_owned()
        } else {
            let mut bytes = valid.clone().into_bytes();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = b"abcdefghijklmnopqrstuvwxyz234567_"[rng.below(33)];
            }
            String::from_utf8_lossy(&bytes).into_owned()
        };
        if let Ok(parsed) = parse_opaque_key(&candidate, &["kg_test_", "kg_live_"]) {
            if candidate != valid && parsed.tag_is_authentic(&gateway) {
                accepted_mutants += 1;
            }
        }
    }
    assert_eq!(
        accepted_mutants, 0,
        "a mutated key passed the checksum and the tag"
    );
}

#[test]
fn base32_decoder_survives_random_input() {
    let mut rng = XorShift(42);
    for _ in 0..ROUNDS {
        let text = rng.interesting(40);
        let mut out = vec![0u8; rng.below(30)];
        if base32::decode_into(&text, &mut out).is_some() {
            assert_eq!(base32::encode(&out).as_bytes(), text.as_slice());
        }
    }
}

#[test]
fn credential_extraction_survives_random_headers_and_paths() {
    let sources = CredentialSources {
        query_param: Some("api_key".into()),
        ..Default::default()
    };
    let names = ["authorization", "x-api-key", "other"];
    let mut rng = XorShift(7);
    for _ in 0..ROUNDS {
        let values: Vec<(String, Vec<u8>)> = (0..rng.below(4))
            .map(|_| {
                let mut value = if rng.below(2) == 0 {
                    b"Bearer ".to_vec()
                } else {
                    Vec::new()
                };
                value.extend(rng.interesting(30));
                (names[rng.below(3)].to_owned(), value)
            })
            .collect();
        let path = String::from_utf8_lossy(&rng.interesting(40)).into_owned();
        let headers = values.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        if let Ok(found) = extract_credential(&sources, headers, &path, 64) {
            assert!(!found.credential.is_empty() && found.credential.len() <= 64);
            assert!(found.credential.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
        let _ = strip_query_param(&path, "api_key");
    }
}

#[test]
fn route_compiler_and_matcher_survive_random_patterns() {
    let mut rng = XorShift(1234);
    for _ in 0..2_000 {
        let specs: Vec<RouteSpec> = (0..rng.below(5))
            .map(|_| {
                let pattern = format!("/{}", String::from_utf8_lossy(&rng.interesting(20)));
                let mut spec = RouteSpec {
                    scopes: vec!["a".into()],
                    ..Default::default()
                };
                if rng.below(2) == 0 {
                    spec.prefix = Some(pattern);
                } else {
                    spec.path = Some(pattern);
                }
                spec
            })
            .collect();
        if let Ok(table) = RouteTable::compile(&specs) {
            for _ in 0..10 {
                let path = String::from_utf8_lossy(&rng.interesting(30)).into_owned();
                let _ = table.find("GET", &path, Some("r"));
            }
        }
    }
}

#[test]
fn config_cache_and_lease_decoders_survive_random_input() {
    let mut rng = XorShift(99);
    let id = KeyId::from_bytes([3; 10]);
    for _ in 0..ROUNDS {
        let bytes = if rng.below(2) == 0 {
            rng.bytes(64)
        } else {
            rng.interesting(64)
        };
        assert!(FilterConfig::parse(&bytes).is_err());
        let _ = CacheEntry::decode_for(&bytes, &id);
        let _ = Lease::decode(&bytes);
    }
}

#[test]
fn route_metadata_reader_survives_random_bytes() {
    let mut rng = XorShift(555);
    for _ in 0..ROUNDS {
        let scopes = if rng.below(2) == 0 {
            rng.bytes(48)
        } else {
            rng.interesting(48)
        };
        let public = rng.bytes(2);
        let mode = rng.interesting(8);
        let _ = policy_from_metadata(Some(&scopes), Some(&public), Some(&mode));
        // A well-formed pairs header with lying sizes must not read out of bounds.
        let mut lying = vec![1, 0, 0, 0, 200, 0, 0, 0, 200, 0, 0, 0];
        lying.extend(rng.bytes(20));
        let _ = policy_from_metadata(Some(&lying), None, None);
    }
}
