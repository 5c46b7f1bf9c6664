//! The filter's configuration JSON (written by an operator, but often templated from other
//! inputs) and the route table compiled from it.
//!
//! Calls `keygate_core::config::FilterConfig::{parse, load_secrets}`,
//! `keygate_core::route::RouteTable::find` and `keygate_core::geo::StripRole::parse` (the
//! strip role's configuration, tried first by the filter).
#![no_main]

use keygate_core::config::FilterConfig;
use libfuzzer_sys::fuzz_target;

const REQUESTS: [(&str, &str); 6] = [
    ("GET", "/v1/hello"),
    ("POST", "/v1/hello?x=1"),
    ("GET", "/public/hello"),
    ("GET", "/public/../v1/hello"),
    ("DELETE", "/admin/%2e%2e/x"),
    ("OPTIONS", "*"),
];

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(role)) = keygate_core::geo::StripRole::parse(data) {
        assert!(!role.headers.is_empty());
    }
    let Ok(config) = FilterConfig::parse(data) else {
        return;
    };
    assert!(!config.key_prefixes.is_empty());
    for (method, path) in REQUESTS {
        let _ = config.routes.find(method, path, None);
        let _ = config.routes.find(method, path, Some("a-route"));
    }
    let _ = config.load_secrets(|name| match name {
        "KEYGATE_GATEWAY_KEY" => Some("00".repeat(32)),
        _ => Some("t".repeat(40)),
    });
});
