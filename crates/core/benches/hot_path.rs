//! Micro-benchmarks of the filter's per-request work, natively (the filter runs the same code
//! compiled to wasm32-wasip1 inside V8, typically 1.5-3x slower than these numbers).
//!
//!   cargo bench -p keygate-core --bench hot_path
//!   (quick: ... -- --warm-up-time 1 --measurement-time 3; scripts/bench.sh does that)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::HashMap;

use keygate_core::cache::{
    find, find_from, store, CacheEntry, CachePolicy, Placement, RecordSlots,
};
use keygate_core::decision::{authorize_record, Identity};
use keygate_core::fingerprint::Fingerprinter;
use keygate_core::jwt::cache::{CachedToken, TokenCache};
use keygate_core::jwt::{verify_jwt, Algorithm, KeySet, SigningKey, Validation};
use keygate_core::key::{mint_opaque_key, parse_opaque_key, GatewayKey, KeyId, KeyPrefix};
use keygate_core::route::{RouteSpec, RouteTable};
use keygate_core::scope::{parse_scopes, Scope};
use keygate_core::wire::{KeyLookup, KeyStatus};
use rand_core::SeedableRng as _;
use serde_json::json;

const NOW_S: u64 = 1_750_000_000;
const PREFIXES: [&str; 2] = ["kg_live_", "kg_test_"];

fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
    rand_chacha::ChaCha20Rng::seed_from_u64(seed)
}

fn demo_read() -> Vec<Scope> {
    parse_scopes(&["demo:read".to_owned()]).unwrap()
}

fn record_for(id: &str, digest_hex: String) -> KeyLookup {
    KeyLookup {
        id: id.to_owned(),
        digest: digest_hex,
        subject: "team-analytics".to_owned(),
        scopes: vec![
            "demo:read".to_owned(),
            "demo:write".to_owned(),
            "models:list".to_owned(),
        ],
        status: KeyStatus::Active,
        expires_at: Some(NOW_S + 86_400),
        rate_limit: None,
        allowed_cidrs: Vec::new(),
        not_before: None,
        not_after: None,
        roles: Vec::new(),
        allowed_principals: Vec::new(),
        global_limit: None,
        quota: None,
        pool: None,
        owner: None,
        metadata: Default::default(),
        signing: None,
        allowed_countries: Vec::new(),
    }
}

/// Opaque key: what the filter does inline for every request carrying one (shape + CRC,
/// HMAC tag, SHA-256 digest), then the decision against the cached record.
fn opaque_key(c: &mut Criterion) {
    let gateway = GatewayKey::from_hex(&"5a".repeat(32)).unwrap();
    let prefix = KeyPrefix::parse("kg_live_").unwrap();
    let minted = mint_opaque_key(&prefix, &gateway, [7; 10], [42; 32]);
    let record = record_for(&minted.id.to_string(), minted.digest.to_hex());
    let required =
        keygate_core::binding::Requirement::from(std::sync::Arc::<[Scope]>::from(demo_read()));
    let key = minted.plaintext.clone();

    let mut group = c.benchmark_group("opaque_key");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse+checksum", |b| {
        b.iter(|| parse_opaque_key(black_box(&key), &PREFIXES).is_ok())
    });
    group.bench_function("parse+tag+digest", |b| {
        b.iter(|| {
            let parsed = parse_opaque_key(black_box(&key), &PREFIXES).unwrap();
            assert!(parsed.tag_is_authentic(&gateway));
            parsed.digest()
        })
    });
    group.bench_function("parse+tag+digest+authorize_record", |b| {
        b.iter(|| {
            let parsed = parse_opaque_key(black_box(&key), &PREFIXES).unwrap();
            assert!(parsed.tag_is_authentic(&gateway));
            let digest = parsed.digest();
            authorize_record(&record, &digest, &required, None, NOW_S).unwrap()
        })
    });
    group.finish();
}

fn token_for(key: &SigningKey, kid: &str, n: usize) -> String {
    key.sign(
        kid,
        "at+jwt",
        &json!({
            "iss": "https://issuer.example",
            "aud": "api",
            "sub": format!("user-{n}"),
            "jti": format!("jti-{n}"),
            "iat": NOW_S - 10,
            "exp": NOW_S + 3600,
            "scope": "openid demo:read demo:write",
        }),
    )
    .unwrap()
}

/// JWT verification per algorithm: everything `verify_jwt` does (decode, header, signature,
/// claims), which is the filter's cost on a verified-token cache miss.
fn jwt_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    group.throughput(Throughput::Elements(1));
    for (seed, alg) in Algorithm::ALL.into_iter().enumerate() {
        let key = SigningKey::generate(alg, &mut rng(seed as u64)).unwrap();
        let kid = format!("k-{alg}");
        let mut keys = KeySet::default();
        keys.insert(key.verifying_key(&kid)).unwrap();
        let mut validation = Validation::new("https://issuer.example");
        validation.audiences = vec!["api".to_owned()];
        validation.algorithms = vec![alg];
        let token = token_for(&key, &kid, 1);
        verify_jwt(&token, &keys, &validation, NOW_S).unwrap();
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| verify_jwt(black_box(&token), &keys, &validation, NOW_S).unwrap())
        });
    }
    group.finish();
}

/// 1,000 routes, half prefixes and half templates (some method-restricted); the request
/// matches the last one, so every other route is tried first.
fn route_match(c: &mut Criterion) {
    let mut specs: Vec<RouteSpec> = (0..999)
        .map(|i| {
            if i % 2 == 0 {
                RouteSpec {
                    prefix: Some(format!("/svc{i}/")),
                    scopes: vec![format!("svc{i}:read")],
                    ..RouteSpec::default()
                }
            } else {
                RouteSpec {
                    path: Some(format!("/api/v{i}/items/{{id}}/parts/*")),
                    methods: (i % 3 == 0).then(|| vec!["GET".to_owned(), "HEAD".to_owned()]),
                    scopes: vec![format!("api{i}:read")],
                    ..RouteSpec::default()
                }
            }
        })
        .collect();
    specs.push(RouteSpec {
        path: Some("/v1/models/{id}/versions/**".to_owned()),
        methods: Some(vec!["GET".to_owned()]),
        scopes: vec!["models:read".to_owned()],
        ..RouteSpec::default()
    });
    let table = RouteTable::compile(&specs).unwrap();
    assert_eq!(table.len(), 1000);
    let path = "/v1/models/gpt-small/versions/3/files?download=1";
    assert!(table.find("GET", path, None).is_some());

    let mut group = c.benchmark_group("route_match_1000");
    group.throughput(Throughput::Elements(1));
    group.bench_function("last_route", |b| {
        b.iter(|| {
            table
                .find(black_box("GET"), black_box(path), None)
                .is_some()
        })
    });
    group.bench_function("no_match", |b| {
        b.iter(|| {
            table
                .find(black_box("GET"), black_box("/nowhere/at/all"), None)
                .is_none()
        })
    });
    group.finish();
}

/// Decoding a cached key record read from shared data (once per key and TTL per worker: the
/// worker keeps a decoded copy while it is fresh), beside the JSON of the same record (as
/// entries were stored before, and as the key service answers).
fn cache_entry_decode(c: &mut Criterion) {
    let gateway = GatewayKey::from_hex(&"5a".repeat(32)).unwrap();
    let prefix = KeyPrefix::parse("kg_live_").unwrap();
    let minted = mint_opaque_key(&prefix, &gateway, [7; 10], [42; 32]);
    let entry = CacheEntry {
        id: minted.id.to_string(),
        fetched_at_ms: NOW_S * 1000,
        record: Some(record_for(&minted.id.to_string(), minted.digest.to_hex())),
    };
    let bytes = entry.encode();
    let json = serde_json::to_vec(&entry.record).unwrap();
    let mut group = c.benchmark_group("cache_entry");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("decode_for", |b| {
        b.iter(|| CacheEntry::decode_for(black_box(&bytes), &minted.id).unwrap())
    });
    group.bench_function("decode_for_another_id", |b| {
        let other = KeyId::from_bytes([8; 10]);
        b.iter(|| CacheEntry::decode_for(black_box(&bytes), &other))
    });
    group.bench_function("record_json_decode", |b| {
        b.iter(|| serde_json::from_slice::<KeyLookup>(black_box(&json)).unwrap())
    });
    group.bench_function("encode", |b| b.iter(|| black_box(&entry).encode()));
    group.finish();
}

/// Record slots in a map; a read copies the value out, as shared data does.
#[derive(Default)]
struct MapSlots(HashMap<u32, (Vec<u8>, u32)>);

impl RecordSlots for MapSlots {
    fn read(&mut self, slot: u32) -> Option<(Vec<u8>, u32)> {
        self.0.get(&slot).cloned()
    }

    fn write(&mut self, slot: u32, bytes: &[u8], _cas: Option<u32>) -> bool {
        self.0.insert(slot, (bytes.to_vec(), 1));
        true
    }
}

/// A shared-data hit in a record cache holding as many keys as its capacity (10,000): all
/// the probing and decoding the filter does, without the host's own cost per read; without
/// a slot hint (a worker's first sight of a key) and with one (its copy expired).
fn record_cache_find(c: &mut Criterion) {
    let policy = CachePolicy {
        ttl_ms: 30_000,
        negative_ttl_ms: 5_000,
        max_stale_ms: 300_000,
        max_entries: 10_000,
    };
    let placement = Placement::of(&policy);
    let mut slots = MapSlots::default();
    let ids: Vec<KeyId> = (0..10_000u32)
        .map(|n| {
            let mut bytes = [0u8; 10];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            KeyId::from_bytes(bytes)
        })
        .collect();
    for id in &ids {
        let entry = CacheEntry {
            id: id.to_string(),
            fetched_at_ms: NOW_S * 1000,
            record: Some(record_for(&id.to_string(), "5a".repeat(32))),
        };
        store(&mut slots, &placement, &policy, &entry, false);
    }
    // (The few keys that found all their candidates taken, and took another's place, are the
    // simulation's misses: left out here.)
    let (ids, hints): (Vec<KeyId>, Vec<u32>) = ids
        .iter()
        .filter_map(|id| Some((*id, find(&mut slots, &placement, id)?.0)))
        .unzip();
    assert!(ids.len() > 9_900, "{} of 10,000 keys found", ids.len());
    let mut group = c.benchmark_group("record_cache");
    group.bench_function("find_10k_of_10k", |b| {
        let mut n = 0;
        b.iter(|| {
            n = (n + 7919) % ids.len();
            find(&mut slots, &placement, black_box(&ids[n])).unwrap()
        })
    });
    group.bench_function("find_from_hint_10k_of_10k", |b| {
        let mut n = 0;
        b.iter(|| {
            n = (n + 7919) % ids.len();
            find_from(&mut slots, &placement, black_box(&ids[n]), Some(hints[n])).unwrap()
        })
    });
    group.finish();
}

/// The verified-token cache, 10,000 entries: a hit, and what the filter does per JWT request
/// on a hit (fingerprint of the token, lookup, clone of the cached identity).
fn token_cache(c: &mut Criterion) {
    let fingerprints = Fingerprinter::new([7; 16]);
    let token_hash = |token: &str| fingerprints.of(token.as_bytes());
    let key = SigningKey::generate(Algorithm::ES256, &mut rng(9)).unwrap();
    let tokens: Vec<String> = (0..100).map(|n| token_for(&key, "k", n)).collect();
    let mut cache = TokenCache::new(10_000);
    for n in 0..10_000 {
        let hash = if n < tokens.len() {
            token_hash(&tokens[n])
        } else {
            token_hash(&format!("filler-{n}"))
        };
        cache.insert(
            hash,
            CachedToken {
                identity: Identity::new(
                    &format!("user-{n}"),
                    &format!("jti-{n}"),
                    vec!["openid".into(), "demo:read".into(), "demo:write".into()],
                    None,
                ),
                issuer: 0,
                kid: "k".into(),
                valid_until_s: NOW_S + 3600,
            },
        );
    }
    let token = tokens[42].clone();
    let hash = token_hash(&token);
    let mut group = c.benchmark_group("token_cache_10k");
    group.throughput(Throughput::Elements(1));
    group.bench_function("get", |b| {
        b.iter(|| cache.get(black_box(&hash), NOW_S).is_some())
    });
    group.bench_function("fingerprint+get+clone", |b| {
        b.iter(|| {
            let hash = token_hash(black_box(&token));
            cache.get(&hash, NOW_S).cloned().unwrap()
        })
    });
    group.bench_function("insert_evict", |b| {
        let mut n = 0u64;
        b.iter_batched(
            || {
                n += 1;
                token_hash(&format!("new-{n}"))
            },
            |hash| {
                cache.insert(
                    hash,
                    CachedToken {
                        identity: Identity::new("s", "k", vec!["demo:read".into()], None),
                        issuer: 0,
                        kid: "k".into(),
                        valid_until_s: NOW_S + 3600,
                    },
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    opaque_key,
    jwt_verify,
    route_match,
    cache_entry_decode,
    record_cache_find,
    token_cache
);
criterion_main!(benches);
