#![allow(clippy::unwrap_used, clippy::panic)]
//! The public/protected boundary of the route table, against the way mainstream servers read
//! a path. One property: no path that a server behind Keygate would route to a protected
//! prefix is ever matched as public by the filter.
//!
//! Paths are generated (a seeded generator, so every run is the same and runs in `make test`)
//! from pieces that servers read in different ways: dot segments, `;` path parameters, percent
//! encoding (once and twice), backslashes, doubled slashes, trailing dots, case. The filter
//! sees each path as the client sent it and as Envoy normalises it; each server model then
//! reads what the filter forwards:
//! - **Envoy** (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action:
//!   REJECT_REQUEST`): refuses encoded `/` and `\`, decodes unreserved characters, removes dot
//!   segments, merges slashes; modelled with and without turning `\` into `/`.
//! - **Servlet containers** (Tomcat, Jetty): cut `;` parameters off every segment, decode,
//!   read `\` as `/`, remove dot segments, merge slashes.
//! - **Go `net/http`**: decode (`URL.Path`), then `path.Clean` (dot segments, slashes).
//! - **Express**: case-insensitive routing; decodes and removes dot segments as a static file
//!   server would.

use keygate_core::route::{has_path_parameter, Policy, RouteSpec, RouteTable};

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

/// Segments servers read in different ways.
const SEGMENTS: &[&str] = &[
    "public",
    "PUBLIC",
    "Public",
    "public.",
    "public;",
    "public;x=1",
    "%70ublic",
    "v1",
    "V1",
    "v1.",
    "v1;",
    "v1;jsessionid=1",
    "%76%31",
    "%2576%2531",
    "hello",
    "a",
    "",
    ".",
    "..",
    "...",
    "..;",
    "..;a=b",
    ";",
    ";x",
    "%2e",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2e%2e;",
    "%2e%2e%3b",
    "..%3b",
    "..%3B",
    "%252e%252e",
    "%252e%252e%253b",
    "..%253b",
    "%2f",
    "..%2f",
    "%2fv1",
    "%5c",
    "..%5cv1",
    "..\\v1",
    "\\..\\v1",
    "..\\",
    "%00",
    "~",
    " ",
    "x?a=..;/",
    "x#..;",
];

const SEPARATORS: &[&str] = &["/", "/", "/", "//", "\\"];

fn generate(rng: &mut XorShift) -> String {
    // Most paths start where the boundary is: under the public prefix.
    let start = rng.pick(&[
        "/public/",
        "/public/",
        "/public",
        "/",
        "//public/",
        "/v1/",
        "//v1/",
        "/V1/",
    ]);
    let mut path = start.to_owned();
    for i in 0..=rng.below(5) {
        if i > 0 {
            path.push_str(rng.pick(SEPARATORS));
        }
        path.push_str(rng.pick(SEGMENTS));
    }
    path
}

// ── what servers do to a path ───────────────────────────────────────────────────────────────

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` once; `only` limits which decoded bytes are decoded (others stay encoded).
fn decode(path: &str, only: impl Fn(u8) -> bool) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let value = h * 16 + l;
                if only(value) {
                    out.push(value);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §5.2.4 dot-segment removal, with empty segments merged (`//` → `/`).
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    let mut cleaned = format!("/{}", out.join("/"));
    if trailing && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Envoy's normalisation of a request path, `None` when Envoy refuses the request.
fn envoy(path: &str, backslash_is_slash: bool) -> Option<String> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return None;
    }
    let (base, rest) = match path.find(['?', '#']) {
        Some(at) => path.split_at(at),
        None => (path, ""),
    };
    let mut base = decode(base, is_unreserved);
    if backslash_is_slash {
        base = base.replace('\\', "/");
    }
    Some(format!("{}{rest}", clean(&base)))
}

fn servlet(path: &str) -> String {
    let without_params: Vec<String> = path_only(path)
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default().to_owned())
        .collect();
    let decoded = decode(&without_params.join("/"), |_| true).replace('\\', "/");
    clean(&decoded)
}

fn go(path: &str) -> String {
    clean(&decode(path_only(path), |_| true))
}

fn express(path: &str) -> String {
    clean(&decode(path_only(path), |_| true).to_ascii_lowercase())
}

fn routes_to_protected(resolved: &str) -> bool {
    let lower = resolved.to_ascii_lowercase();
    lower == "/v1" || lower.starts_with("/v1/")
}

fn demo_table() -> RouteTable {
    let spec = |json: &str| -> RouteSpec { serde_json::from_str(json).unwrap() };
    RouteTable::compile(&[
        spec(r#"{"prefix": "/public/", "public": true}"#),
        spec(r#"{"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]}"#),
        spec(r#"{"prefix": "/v1/", "scopes": ["demo:write"]}"#),
    ])
    .unwrap()
}

/// The filter lets `path` through as public: no path parameter and a public route matches.
fn filter_says_public(table: &RouteTable, path: &str) -> bool {
    !has_path_parameter(path)
        && table
            .find("GET", path, None)
            .is_some_and(|route| route.policy == Policy::Public)
}

/// The protected prefix first, then a catch-all public route: every path that does not match
/// `/v1/` exactly as written falls through to public, so every other spelling of `/v1/` must
/// match nothing.
fn catch_all_table() -> RouteTable {
    let spec = |json: &str| -> RouteSpec { serde_json::from_str(json).unwrap() };
    RouteTable::compile(&[
        spec(r#"{"prefix": "/v1/", "scopes": ["demo:read"]}"#),
        spec(r#"{"prefix": "/", "public": true}"#),
    ])
    .unwrap()
}

#[test]
fn no_path_a_server_routes_to_a_protected_prefix_passes_as_public() {
    check_boundary(&demo_table(), routes_to_protected, 3_000);
}

#[test]
fn behind_a_catch_all_public_route_too() {
    // `/v1` itself is no path under the prefix `/v1/`: the table makes it public.
    let under_v1 = |resolved: &str| resolved.to_ascii_lowercase().starts_with("/v1/");
    check_boundary(&catch_all_table(), under_v1, 3_000);
}

fn check_boundary(table: &RouteTable, routes_to_protected: fn(&str) -> bool, at_least: usize) {
    let mut rng = XorShift(0x5eed_0fb0_da4e);
    let mut public = 0;
    let mut protected_by_some_server = 0;
    for _ in 0..30_000 {
        let raw = generate(&mut rng);
        // What the filter sees: the raw path (a config without Envoy's normalisation) or the
        // path as Envoy normalised it (then also what the upstream receives).
        let mut seen = vec![raw.clone()];
        seen.extend(envoy(&raw, false));
        seen.extend(envoy(&raw, true));
        for path in seen {
            let servers = [
                ("servlet", servlet(&path)),
                ("go", go(&path)),
                ("express", express(&path)),
            ];
            let protected: Vec<_> = servers
                .iter()
                .filter(|(_, resolved)| routes_to_protected(resolved))
                .collect();
            if !protected.is_empty() {
                protected_by_some_server += 1;
            }
            if filter_says_public(table, &path) {
                public += 1;
                assert!(
                    protected.is_empty(),
                    "{path:?} (sent as {raw:?}) passes as public, but {protected:?} routes it \
                     to a protected prefix"
                );
            }
        }
    }
    // The generator must really reach both sides of the boundary.
    assert!(public > at_least, "only {public} public paths generated");
    assert!(
        protected_by_some_server > at_least,
        "only {protected_by_some_server} paths some server routes to /v1"
    );
}

#[test]
fn known_boundary_crossings_are_refused_or_never_public() {
    let table = demo_table();
    for path in [
        "/public/..;/v1/hello",
        "/public/..;x=1/v1/hello",
        "/public/%2e%2e;/v1/hello",
        "/public/..%3b/v1/hello",
        "/public/..%253b/v1/hello",
        "/public/%252e%252e/v1/hello",
        "/public/../v1/hello",
        "/public/%2e%2e/v1/hello",
        "/public/..%2fv1/hello",
        "/public/..%5cv1/hello",
        "/public/..\\v1/hello",
        "/public\\..\\v1/hello",
        "/public/./../v1/hello",
        "/public//../v1/hello",
        "/public/x/..;/..;/v1/hello",
    ] {
        assert!(!filter_says_public(&table, path), "{path}");
        // The models agree that these reach the protected prefix somewhere.
        let reached = [servlet(path), go(path), express(path)]
            .iter()
            .any(|resolved| routes_to_protected(resolved))
            || envoy(path, true).is_some_and(|p| routes_to_protected(&p));
        // An encoded `;` or percent sign crosses only for servers that decode before they cut
        // parameters or decode twice (not modelled): refused all the same.
        let encoded = path.contains("%25") || path.to_ascii_lowercase().contains("%3b");
        assert!(
            reached || encoded,
            "{path} does not cross the boundary in any model"
        );
    }
    let catch_all = catch_all_table();
    for path in [
        "//v1/hello",
        "/v1//hello",
        "/V1/hello",
        "/v1/../v1/hello",
        "/%76%31/hello",
        "/%2576%2531/hello",
        "/public/..;/v1/hello",
    ] {
        assert!(!filter_says_public(&catch_all, path), "{path}");
    }
    for path in [
        "/public/x",
        "/public/a/b.txt",
        "/public/v1/hello",
        "/public/...",
    ] {
        assert!(filter_says_public(&table, path), "{path}");
    }
}

#[test]
fn path_checks_survive_random_bytes() {
    let table = demo_table();
    let mut rng = XorShift(0x0dd_ba11);
    const ALPHABET: &[u8] = b"/.;%25abcef3B2F5C\\?#\xff\xc3\x00 ";
    for _ in 0..20_000 {
        let len = rng.below(40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
        let path = String::from_utf8_lossy(&bytes);
        let refused = has_path_parameter(&path);
        let route = table.find("GET", &path, None);
        // A path the filter refuses never matches a route either (the second lock).
        assert!(!(refused && route.is_some()), "{path:?}");
    }
}
