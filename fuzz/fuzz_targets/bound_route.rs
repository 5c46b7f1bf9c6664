//! Routes bound to the key's tenant: for an arbitrary path, a key of tenant `acme` is never
//! allowed where a server behind Keygate reads another tenant's path (`/v1/tenants/<other>/`),
//! nor another dataset's path with the scope of one dataset; and no path panics.
//!
//! Calls `keygate_core::route::RouteTable::find`, `Route::requirement` and
//! `keygate_core::decision::authorize_record`. Input: the request path's bytes.
//! Server models read the allowed path: decoded once, `\` as `/` or not, `;` parameters cut
//! or not, dot segments removed, slashes merged, literals in any case.
#![no_main]

use std::sync::OnceLock;

use keygate_core::decision::authorize_record;
use keygate_core::key::KeyDigest;
use keygate_core::route::{has_path_parameter, RouteSpec, RouteTable};
use keygate_core::wire::{KeyLookup, KeyStatus};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    table: RouteTable,
    record: KeyLookup,
    digest: KeyDigest,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let specs: Vec<RouteSpec> = [
            r#"{"path": "/v1/tenants/{tenant}/**", "scopes": ["datasets:read"], "bind": {"tenant": "owner"}}"#,
            r#"{"path": "/v1/datasets/{dataset}", "scopes": ["datasets:{dataset}:read"]}"#,
            r#"{"prefix": "/v1/", "scopes": ["other"]}"#,
            r#"{"prefix": "/", "public": true}"#,
        ]
        .iter()
        .map(|json| serde_json::from_str(json).expect("route spec"))
        .collect();
        let digest = KeyDigest::of(b"kg_fuzz_acme");
        Fixture {
            table: RouteTable::compile(&specs).expect("route table"),
            record: KeyLookup {
                id: "aaaaaaaaaaaaaaaa".into(),
                digest: digest.to_hex(),
                subject: "acme".into(),
                scopes: vec!["datasets:read".into(), "datasets:x:*".into()],
                status: KeyStatus::Active,
                expires_at: None,
                rate_limit: None,
                allowed_cidrs: Vec::new(),
                not_before: None,
                not_after: None,
                roles: Vec::new(),
                allowed_principals: Vec::new(),
                owner: Some("acme".into()),
                metadata: Default::default(),
                signing: None,
                allowed_countries: Vec::new(),
                global_limit: None,
                quota: None,
                pool: None,
            },
            digest,
        }
    })
}

fn decode_once(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let hex = |b: u8| char::from(b).to_digit(16);
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
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

fuzz_target!(|data: &[u8]| {
    if data.len() > 1024 {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{}", text.trim_start_matches('/'));
    let f = fixture();
    if has_path_parameter(&path) {
        return;
    }
    let Some(route) = f.table.find("GET", &path, None) else {
        return;
    };
    let allowed = match route.requirement(&path) {
        Ok(None) => true,
        Ok(Some(required)) => authorize_record(&f.record, &f.digest, &required, None, 0).is_ok(),
        Err(_) => false,
    };
    if !allowed {
        return;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    for backslash in [false, true] {
        for cut in [false, true] {
            let read = server_reads(path, backslash, cut);
            let literal =
                |i: usize, text: &str| read.get(i).is_some_and(|s| s.eq_ignore_ascii_case(text));
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
});
