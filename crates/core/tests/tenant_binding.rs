#![allow(clippy::unwrap_used, clippy::panic)]
//! Keys bound to their tenant's data. One property: however a path is spelled, a key of
//! tenant `acme` is never allowed on a path that a server behind Keygate reads as another
//! tenant's (`/v1/tenants/<other>/...`), nor on another dataset's path with a scope for one
//! dataset.
//!
//! Paths are generated (a seeded generator: every run is the same) from pieces that servers
//! read in different ways: dot segments, `;` parameters, percent-encoding (once and twice),
//! doubled slashes, backslashes, case. Each server model reads the path the filter allowed:
//! decode once, `\` as `/` or not, `;` parameters cut or not, dot segments removed, slashes
//! merged, literals compared in any case (Express).

use std::collections::BTreeMap;

use keygate_core::decision::authorize_record;
use keygate_core::key::KeyDigest;
use keygate_core::route::{has_path_parameter, RouteSpec, RouteTable};
use keygate_core::wire::{KeyLookup, KeyStatus};

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

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEGMENTS: &[&str] = &[
    "v1",
    "V1",
    "%76%31",
    "tenants",
    "Tenants",
    "TENANTS",
    "datasets",
    "acme",
    "ACME",
    "Acme",
    "%61cme",
    "acm%65",
    "acme%20",
    "acme%2520",
    "a%63me",
    "globex",
    "glob%65x",
    "acme;",
    "acme%3b",
    "x",
    "y",
    "x:y",
    "x%3Ay",
    "%2A",
    "*",
    ".",
    "..",
    "%2e",
    "%2e%2e",
    "%252e%252e",
    "",
    "acme%2fx",
    "acme%2Fglobex",
    "acme\\..\\globex",
    "%5c",
    "data",
];

fn table() -> RouteTable {
    let specs: Vec<RouteSpec> = [
        r#"{"path": "/v1/tenants/{tenant}/**", "scopes": ["datasets:read"], "bind": {"tenant": "owner"}}"#,
        r#"{"path": "/v1/datasets/{dataset}", "scopes": ["datasets:{dataset}:read"]}"#,
        r#"{"prefix": "/v1/", "scopes": ["other"]}"#,
        r#"{"prefix": "/", "public": true}"#,
    ]
    .iter()
    .map(|json| serde_json::from_str(json).unwrap())
    .collect();
    RouteTable::compile(&specs).unwrap()
}

fn key(scopes: &[&str]) -> (KeyLookup, KeyDigest) {
    let digest = KeyDigest::of(b"kg_test_acme");
    let record = KeyLookup {
        id: "aaaaaaaaaaaaaaaa".into(),
        digest: digest.to_hex(),
        subject: "acme".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        status: KeyStatus::Active,
        expires_at: None,
        rate_limit: None,
        allowed_cidrs: Vec::new(),
        not_before: None,
        not_after: None,
        roles: Vec::new(),
        allowed_principals: Vec::new(),
        owner: Some("acme".into()),
        metadata: BTreeMap::new(),
        global_limit: None,
        quota: None,
        pool: None,
        signing: None,
        allowed_countries: Vec::new(),
    };
    (record, digest)
}

/// What the filter decides: allowed or not.
fn filter_allows(table: &RouteTable, key: &(KeyLookup, KeyDigest), path: &str) -> bool {
    if has_path_parameter(path) {
        return false;
    }
    let Some(route) = table.find("GET", path, None) else {
        return false;
    };
    match route.requirement(path) {
        Ok(None) => true,
        Ok(Some(required)) => authorize_record(&key.0, &key.1, &required, None, 0).is_ok(),
        // A parameter that cannot be compared or put in a scope: 400.
        Err(_) => false,
    }
}

fn decode_once(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let hex = |b: u8| char::from(b).to_digit(16);
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap() * 16 + hex(l).unwrap()) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The segments a server reads: decoded once, dot segments removed, slashes merged.
fn server_reads(path: &str, backslash_is_slash: bool, cut_parameters: bool) -> Vec<String> {
    let mut text = decode_once(path);
    if backslash_is_slash {
        text = text.replace('\\', "/");
    }
    let mut out: Vec<String> = Vec::new();
    for segment in text.split('/') {
        let segment = if cut_parameters {
            segment.split(';').next().unwrap_or_default()
        } else {
            segment
        };
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

#[test]
fn no_key_reaches_another_tenants_path_however_it_is_spelled() {
    let table = table();
    let acme = key(&["datasets:read", "datasets:x:read"]);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut allowed = 0;
    for _ in 0..100_000 {
        let n = 1 + rng.below(6);
        let mut path = String::new();
        for _ in 0..n {
            path.push('/');
            path.push_str(rng.pick(SEGMENTS));
        }
        if rng.below(4) == 0 {
            path = format!("/v1/tenants{path}");
        }
        if !filter_allows(&table, &acme, &path) {
            continue;
        }
        allowed += 1;
        for backslash in [false, true] {
            for cut in [false, true] {
                let read = server_reads(&path, backslash, cut);
                let literal = |i: usize, text: &str| {
                    read.get(i).is_some_and(|s| s.eq_ignore_ascii_case(text))
                };
                if literal(0, "v1") && literal(1, "tenants") {
                    if let Some(tenant) = read.get(2) {
                        assert_eq!(tenant, "acme", "{path} read as {read:?}");
                    }
                }
                if literal(0, "v1") && literal(1, "datasets") && read.len() == 3 {
                    assert_eq!(read[2], "x", "{path} read as {read:?}");
                }
            }
        }
    }
    // The generator does reach allowed paths, bound ones included.
    assert!(allowed > 100, "{allowed}");
    assert!(filter_allows(&table, &acme, "/v1/tenants/acme/data"));
    assert!(filter_allows(&table, &acme, "/v1/datasets/x"));
}

#[test]
fn tenant_paths_by_hand() {
    let table = table();
    let acme = key(&["datasets:read"]);
    for path in [
        "/v1/tenants/acme/x",
        "/v1/tenants/acme/",
        "/V1/TENANTS/acme/x",
    ] {
        assert!(filter_allows(&table, &acme, path), "{path}");
    }
    for path in [
        "/v1/tenants/globex/x",
        "/v1/tenants/ACME/x",
        "/v1/tenants/%61cme/x",
        "/v1/tenants/acme%20/x",
        "/v1/tenants/acme%2fx",
        "/v1/tenants/acme/../globex/x",
        "/v1//tenants/globex/x",
        "/v1/tenants//globex/x",
        "/v1/tenants/acme;/x",
        "/v1/tenants/acme%2520/x",
    ] {
        assert!(!filter_allows(&table, &acme, path), "{path}");
    }
    let wildcard = key(&["datasets:*"]);
    let one = key(&["datasets:x:read"]);
    for (path, with_one) in [("/v1/datasets/x", true), ("/v1/datasets/y", false)] {
        assert!(filter_allows(&table, &wildcard, path), "{path}");
        assert_eq!(filter_allows(&table, &one, path), with_one, "{path}");
    }
    for path in [
        "/v1/datasets/x%3Aread",
        "/v1/datasets/%2A",
        "/v1/datasets/*",
    ] {
        assert!(!filter_allows(&table, &wildcard, path), "{path}");
    }
}
