//! The edge between the client and the upstream, through a real Envoy: headers the upstream
//! trusts (any spelling a framework folds together), method-override headers, credentials on
//! routes that do not check them, the client address behind `X-Forwarded-For` (with and
//! without `use_remote_address`, at every `trusted_hops`), `;` path parameters and other path
//! spellings against the public/protected boundary, and credentials Envoy's codec refuses.

use serde_json::{json, Value};

use keygate_testkit::assert_denied;
use keygate_testkit::{bearer, send_raw, Reply, Stack};

/// A header name as CGI, WSGI, PHP and Rack read it.
fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// `yaml` without the line that is exactly `line` (trimmed) and, if given, the line after it.
fn without_line(yaml: &str, line: &str, and_next: bool) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == line)
        .unwrap_or_else(|| panic!("envoy/envoy.yaml has no line `{line}`"));
    let skip = if and_next { 2 } else { 1 };
    let mut out: Vec<&str> = lines[..at].to_vec();
    out.extend(&lines[at + skip..]);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The rendered reference config without `headers_with_underscores_action`.
fn without_underscore_action(yaml: &str) -> String {
    without_line(yaml, "common_http_protocol_options:", true)
}

/// The rendered reference config without `use_remote_address: true`.
fn without_use_remote_address(yaml: &str) -> String {
    without_line(yaml, "use_remote_address: true", false)
}

/// One raw HTTP/1.1 request on a fresh connection: `headers` are sent exactly as written.
fn raw_get(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: keygate.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    send_raw(stack.listener(), request.as_bytes())
}

/// Asserts that no header the upstream got folds into one of `names` (folded) with a value
/// containing `marker`.
fn assert_no_spoofed(upstream: &serde_json::Map<String, Value>, names: &[&str], marker: &str) {
    for (name, value) in upstream {
        let spoofed = value.as_str().is_some_and(|v| v.contains(marker));
        assert!(
            !(spoofed
                && (names.contains(&folded(name).as_str())
                    || folded(name).starts_with("x-keygate-"))),
            "client-sent `{name}: {value}` reached the upstream: {upstream:#?}"
        );
    }
}

const SPOOFED_IDENTITY: [(&str, &str); 9] = [
    ("X_Keygate_Subject", "evil"),
    ("x_keygate_subject", "evil"),
    ("X-KEYGATE-SUBJECT", "evil"),
    ("x_keygate_key_id", "evil"),
    ("X_KEYGATE_SCOPES", "evil demo:write"),
    ("x-keygate_scopes", "evil"),
    ("x_keygate_anything", "evil"),
    ("Authz_Decision", "evil allow"),
    ("authz-decision", "evil allow"),
];

const METHOD_OVERRIDES: [(&str, &str); 5] = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("x_http_method_override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X_Http_Method", "DELETE"),
    ("x-method-override", "DELETE"),
];

/// The reserved names of a stack whose decision header is renamed to `authz-decision`.
const RESERVED: [&str; 4] = [
    "x-keygate-subject",
    "x-keygate-key-id",
    "x-keygate-scopes",
    "authz-decision",
];

fn renamed_decision_header(cfg: &mut Value) {
    cfg["shadow"] = json!({"decision_header": "authz-decision"});
}

/// Identity, decision and method-override headers in every spelling, on a public and on a
/// protected route: none reaches the upstream, and the identity is Keygate's own.
fn check_spoofed_headers_never_reach_the_upstream(stack: &Stack) {
    let issued = stack.service.create_key("reader", &["demo:read"]);
    let auth = bearer(&issued.key);
    let mut headers: Vec<(&str, &str)> = SPOOFED_IDENTITY.to_vec();
    headers.extend(METHOD_OVERRIDES);

    let reply = raw_get(stack, "/public/hello", &headers);
    assert_eq!(reply.status, 200, "public route: {reply:#?}");
    let upstream = reply.upstream_headers();
    assert_no_spoofed(&upstream, &RESERVED, "evil");
    assert_no_spoofed(
        &upstream,
        &[
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ],
        "DELETE",
    );

    headers.push(("Authorization", auth.as_str()));
    let reply = raw_get(stack, "/v1/hello", &headers);
    assert_eq!(reply.status, 200, "protected route: {reply:#?}");
    let upstream = reply.upstream_headers();
    assert_no_spoofed(&upstream, &RESERVED, "evil");
    assert_no_spoofed(
        &upstream,
        &[
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ],
        "DELETE",
    );
    assert_eq!(
        upstream.get("x-keygate-key-id").and_then(Value::as_str),
        Some(issued.id.as_str()),
        "{upstream:#?}"
    );
    assert_eq!(
        upstream.get("x-keygate-scopes").and_then(Value::as_str),
        Some("demo:read"),
        "{upstream:#?}"
    );
}

#[test]
fn reference_config_keeps_every_spelling_of_trusted_headers_from_the_upstream() {
    let stack = Stack::start_with("edge-headers", renamed_decision_header);
    check_spoofed_headers_never_reach_the_upstream(&stack);
}

#[test]
fn filter_alone_keeps_every_spelling_of_trusted_headers_from_the_upstream() {
    // Envoy passes headers with underscores on (its default, ALLOW): the filter must remove
    // them by itself.
    let stack = Stack::start_with_yaml(
        "edge-underscores",
        renamed_decision_header,
        without_underscore_action,
    );
    // Envoy really lets an underscored header through in this config.
    let reply = raw_get(&stack, "/public/hello", &[("x_other_header", "kept")]);
    assert_eq!(
        reply
            .upstream_headers()
            .get("x_other_header")
            .and_then(Value::as_str),
        Some("kept"),
        "{reply:#?}"
    );
    check_spoofed_headers_never_reach_the_upstream(&stack);
}

#[test]
fn credentials_never_reach_the_upstream_unless_the_route_forwards_them() {
    let stack = Stack::start_with_yaml(
        "edge-credentials",
        |cfg| {
            cfg["credential_sources"]["query_param"] = json!("api_key");
            cfg["routes"] = json!([
                {"prefix": "/public/", "public": true},
                {"prefix": "/forward/", "public": true, "forward_credential": true},
                {"prefix": "/v2/", "scopes": ["demo:read"], "forward_credential": true},
                {"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]},
                {"prefix": "/v1/", "scopes": ["demo:write"]}
            ]);
        },
        without_underscore_action,
    );
    let issued = stack.service.create_key("reader", &["demo:read"]);
    let auth = bearer(&issued.key);
    let credentials = [
        ("Authorization", auth.as_str()),
        ("x-api-key", issued.key.as_str()),
        ("X_Api_Key", issued.key.as_str()),
    ];

    // A public route checks no credential, and removes every one it knows.
    let path = format!("/public/hello?a=1&api_key={}", issued.key);
    let reply = raw_get(&stack, &path, &credentials);
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(
        !reply.body.contains(&issued.key),
        "the key reached the upstream on a public route: {reply:#?}"
    );
    assert_eq!(reply.upstream_path(), "/public/hello?a=1");
    // A query without the parameter goes on as sent.
    let reply = raw_get(&stack, "/public/hello?a=1&api_keys=2&b", &[]);
    assert_eq!(reply.upstream_path(), "/public/hello?a=1&api_keys=2&b");
    // Other Authorization schemes are the upstream's own business.
    let reply = raw_get(
        &stack,
        "/public/hello",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
    );
    assert_eq!(
        reply
            .upstream_headers()
            .get("authorization")
            .and_then(Value::as_str),
        Some("Basic dXNlcjpwYXNz")
    );

    // A protected route removes the credential it checked, and a look-alike that Keygate does
    // not read as a credential but a framework would (`X_Api_Key` as `X-Api-Key`).
    let reply = raw_get(&stack, "/v1/hello", &credentials);
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(!reply.body.contains(&issued.key), "{reply:#?}");
    let reply = raw_get(
        &stack,
        "/v1/hello",
        &[
            ("Authorization", auth.as_str()),
            ("X_Api_Key", "another-key"),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(!reply.body.contains("another-key"), "{reply:#?}");

    // Routes that forward the credential, public and protected.
    let reply = raw_get(&stack, "/forward/x", &credentials[..2]);
    let upstream = reply.upstream_headers();
    assert_eq!(
        upstream.get("authorization").and_then(Value::as_str),
        Some(auth.as_str())
    );
    assert_eq!(
        upstream.get("x-api-key").and_then(Value::as_str),
        Some(issued.key.as_str())
    );
    // A look-alike is not the credential the route forwards: removed there too.
    let reply = raw_get(
        &stack,
        "/v2/x",
        &[
            ("Authorization", auth.as_str()),
            ("X_Api_Key", "another-key"),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:#?}");
    assert!(!reply.body.contains("another-key"), "{reply:#?}");
    let upstream = reply.upstream_headers();
    assert_eq!(
        upstream.get("authorization").and_then(Value::as_str),
        Some(auth.as_str())
    );
    assert_eq!(
        upstream.get("x-keygate-key-id").and_then(Value::as_str),
        Some(issued.id.as_str())
    );
}

#[test]
fn method_override_headers_pass_only_when_configured() {
    let stack = Stack::start_with_yaml(
        "edge-override",
        |cfg| cfg["strip_method_override"] = json!(false),
        without_underscore_action,
    );
    let issued = stack.service.create_key("reader", &["demo:read"]);
    let auth = bearer(&issued.key);
    let reply = raw_get(
        &stack,
        "/v1/hello",
        &[
            ("Authorization", auth.as_str()),
            ("X-HTTP-Method-Override", "DELETE"),
        ],
    );
    assert_eq!(
        reply
            .upstream_headers()
            .get("x-http-method-override")
            .and_then(Value::as_str),
        Some("DELETE"),
        "{reply:#?}"
    );
    // Identity headers are removed whatever that option says.
    let reply = raw_get(&stack, "/public/x", &[("x_keygate_subject", "evil")]);
    assert_no_spoofed(&reply.upstream_headers(), &RESERVED, "evil");
}

#[test]
fn conflicting_credentials_have_their_own_title() {
    let stack = Stack::start("edge-conflict");
    let reply = stack.get(
        "/v1/hello",
        &[
            ("authorization", "Bearer first-credential-value"),
            ("x-api-key", "second-credential-value"),
        ],
    );
    assert_denied(
        &reply,
        400,
        Some("invalid_request"),
        Some("second-credential-value"),
    );
    assert!(!reply.body.contains("first-credential-value"), "{reply:#?}");
    let problem = reply.json();
    assert_eq!(problem["title"], "Conflicting credentials", "{problem}");
    assert_eq!(
        problem["type"], "urn:keygate:problem:conflicting-credentials",
        "{problem}"
    );
    assert!(
        stack
            .envoy
            .keygate_counter("denied.conflicting_credentials")
            >= 1,
        "{}",
        stack.envoy.keygate_stats()
    );
}

// ── paths ────────────────────────────────────────────────────────────────────────────────────

/// Path spellings that try to reach `/v1/hello` through the public prefix. None may be
/// served as public (200 without a key); the ones with a `;` parameter are refused with 400.
const BOUNDARY_PATHS: [(&str, bool); 18] = [
    ("/public/..;/v1/hello", true),
    ("/public/..;x=1/v1/hello", true),
    ("/public/..%3b/v1/hello", true),
    ("/public/..%3B/v1/hello", true),
    ("/public/%2e%2e;/v1/hello", true),
    ("/public/%2e%2e%3b/v1/hello", true),
    ("/public/..%253b/v1/hello", true),
    ("/public/x;jsessionid=1", true),
    ("/public;/v1/hello", true),
    ("/public/%252e%252e/v1/hello", false),
    ("/public/../v1/hello", false),
    ("/public/%2e%2e/v1/hello", false),
    ("/public/..%2fv1/hello", false),
    ("/public/..%5cv1/hello", false),
    ("/public/..\\v1/hello", false),
    ("//public/..//v1/hello", false),
    ("/public/./../v1/hello", false),
    ("/PUBLIC/../V1/hello", false),
];

/// `envoy_normalises`: Envoy's `normalize_path` is on, and reads a raw `..;` segment as `..`
/// (so `/public/..;/v1/hello` reaches the filter as the protected `/v1/hello`: 401).
fn check_path_boundary(stack: &Stack, envoy_normalises: bool) {
    let before = stack.envoy.keygate_counter("denied.path_parameter");
    let mut refused = 0;
    for (path, has_parameter) in BOUNDARY_PATHS {
        let reply = raw_get(stack, path, &[]);
        assert_ne!(
            reply.status, 200,
            "{path} was served without a key: {reply:#?}"
        );
        if has_parameter && envoy_normalises && path.contains("/..;") {
            assert_denied(&reply, 401, Some("Bearer"), None);
        } else if has_parameter {
            assert_denied(&reply, 400, None, None);
            assert_eq!(
                reply.json()["type"],
                "urn:keygate:problem:path-parameter",
                "{path}: {reply:#?}"
            );
            refused += 1;
        }
    }
    // With a valid key, a path parameter on a protected path is refused too.
    let issued = stack.service.create_key("reader", &["demo:read"]);
    let auth = bearer(&issued.key);
    let reply = raw_get(stack, "/v1/hello;x=1", &[("Authorization", auth.as_str())]);
    assert_denied(&reply, 400, None, Some(&issued.key));
    refused += 1;
    let reply = raw_get(
        stack,
        "/v1/hello?q=a;b",
        &[("Authorization", auth.as_str())],
    );
    assert_eq!(reply.status, 200, "a ';' in the query is fine: {reply:#?}");
    assert!(
        stack.envoy.keygate_counter("denied.path_parameter") >= before + refused,
        "denied.path_parameter did not count the refusals\n{}",
        stack.envoy.keygate_stats()
    );
}

#[test]
fn path_spellings_never_cross_the_public_boundary() {
    let stack = Stack::start("edge-paths");
    check_path_boundary(&stack, true);
}

#[test]
fn path_spellings_never_cross_the_public_boundary_without_envoys_normalisation() {
    let stack = Stack::start_with_yaml(
        "edge-paths-raw",
        |_| {},
        |yaml| {
            let yaml = without_line(yaml, "normalize_path: true", false);
            let yaml = without_line(&yaml, "merge_slashes: true", false);
            without_line(
                &yaml,
                "path_with_escaped_slashes_action: REJECT_REQUEST",
                false,
            )
        },
    );
    check_path_boundary(&stack, false);
}

/// Behind a catch-all public route, every spelling of a protected prefix that a server
/// behind Envoy would read as that prefix (another case, encoded letters, doubled slashes)
/// needs the key, or matches no route: never public. Without Envoy's normalisation, so the
/// filter sees the paths as sent.
#[test]
fn spellings_of_a_protected_prefix_never_fall_through_to_a_catch_all_public_route() {
    let stack = Stack::start_with_yaml(
        "edge-catch-all",
        |cfg| {
            cfg["routes"] = json!([
                {"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]},
                {"prefix": "/", "public": true}
            ]);
        },
        |yaml| {
            let yaml = without_line(yaml, "normalize_path: true", false);
            without_line(&yaml, "merge_slashes: true", false)
        },
    );
    assert_eq!(raw_get(&stack, "/other", &[]).status, 200);
    assert_denied(
        &raw_get(&stack, "/v1/hello", &[]),
        401,
        Some("Bearer"),
        None,
    );
    // Express routes case-insensitively: the protected route decides.
    assert_denied(
        &raw_get(&stack, "/V1/hello", &[]),
        401,
        Some("Bearer"),
        None,
    );
    // Go and servlet containers decode letters and merge slashes: no route, denied.
    for path in [
        "/%76%31/hello",
        "/%2576%2531/hello",
        "//v1/hello",
        "/v1//hello",
    ] {
        let reply = raw_get(&stack, path, &[]);
        assert_denied(&reply, 403, None, None);
        assert_eq!(
            reply.json()["type"],
            "urn:keygate:problem:no-route",
            "{path}"
        );
    }
}

// ── client address ───────────────────────────────────────────────────────────────────────────

/// For one Envoy config (with or without `use_remote_address`): at `trusted_hops` 0, 1 and 2, a
/// key allow-listed for 10.0.0.0/8 is accepted only when the trusted part of the chain says
/// so, never on a client's own `X-Forwarded-For` claim. The test client connects from
/// 127.0.0.1 and plays the trusted proxies.
fn check_client_address(use_remote_address: bool) {
    for hops in 0..=2u32 {
        let label = format!("edge-xff-{use_remote_address}-{hops}");
        let stack = Stack::start_with_yaml(
            &label,
            |cfg| cfg["client_address"] = json!({"trusted_hops": hops}),
            |yaml| {
                if use_remote_address {
                    yaml.to_owned()
                } else {
                    without_use_remote_address(yaml)
                }
            },
        );
        let ten = stack.service.create_key_from(&json!({
            "name": "ten", "scopes": ["demo:read"], "owner": "ten-owner",
            "allowed_cidrs": ["10.0.0.0/8"],
        }));
        let local = stack.service.create_key_from(&json!({
            "name": "local", "scopes": ["demo:read"], "owner": "local-owner",
            "allowed_cidrs": ["127.0.0.0/8"],
        }));
        let ten_auth = bearer(&ten.key);
        let local_auth = bearer(&local.key);
        let get = |auth: &str, xff: Option<&str>| {
            let mut headers = vec![("authorization", auth)];
            if let Some(xff) = xff {
                headers.push(("x-forwarded-for", xff));
            }
            stack.get("/v1/xff", &headers)
        };
        let context = format!("use_remote_address {use_remote_address}, trusted_hops {hops}");
        let refused = |reply: &Reply, what: &str| {
            assert_eq!(reply.status, 403, "{context}: {what}: {reply:#?}");
            assert_eq!(
                reply.json()["type"],
                "urn:keygate:problem:address-not-allowed",
                "{context}: {what}"
            );
        };
        // Spoofed: the client claims 10.9.9.9 in every position it controls.
        let spoofs: &[&str] = match hops {
            0 => &["10.9.9.9", "6.6.6.6, 10.9.9.9", "10.9.9.9, 10.9.9.9"],
            1 => &["10.9.9.9, 6.6.6.6", "10.9.9.9, 10.9.9.9, 6.6.6.6"],
            _ => &[
                "10.9.9.9, 6.6.6.6, 203.0.113.7",
                "10.9.9.9, 10.9.9.9, 6.6.6.6, 203.0.113.7",
            ],
        };
        for spoof in spoofs {
            refused(&get(&ten_auth, Some(spoof)), &format!("XFF {spoof}"));
        }
        match hops {
            0 => {
                // The TCP peer is 127.0.0.1.
                refused(&get(&ten_auth, None), "no XFF");
                assert_eq!(get(&local_auth, None).status, 200, "{context}: peer");
                if use_remote_address {
                    assert_eq!(
                        get(&local_auth, Some("6.6.6.6")).status,
                        200,
                        "{context}: the peer decides, not XFF"
                    );
                } else {
                    // Envoy reports the XFF entry as the address: unknown, so refused.
                    refused(&get(&local_auth, Some("127.0.0.1")), "XFF 127.0.0.1");
                }
            }
            1 => {
                // The trusted proxy appended the client it saw.
                assert_eq!(get(&ten_auth, Some("10.9.9.9")).status, 200, "{context}");
                assert_eq!(
                    get(&ten_auth, Some("6.6.6.6, 10.9.9.9")).status,
                    200,
                    "{context}"
                );
                refused(&get(&ten_auth, None), "no XFF");
                refused(&get(&local_auth, None), "no XFF (the peer is the proxy)");
            }
            _ => {
                assert_eq!(
                    get(&ten_auth, Some("10.9.9.9, 203.0.113.7")).status,
                    200,
                    "{context}"
                );
                refused(&get(&ten_auth, Some("10.9.9.9")), "one entry for two hops");
                refused(&get(&ten_auth, None), "no XFF");
            }
        }
    }
}

#[test]
fn client_address_is_never_taken_from_the_client_with_use_remote_address() {
    check_client_address(true);
}

#[test]
fn client_address_is_never_taken_from_the_client_without_use_remote_address() {
    check_client_address(false);
}

// ── credentials with control characters ─────────────────────────────────────────────────────

#[test]
fn credentials_with_control_characters_are_refused_by_envoy_or_as_problem_json() {
    let stack = Stack::start("edge-ctl");
    // Envoy's HTTP/1 codec refuses these header values itself, before any filter runs: a
    // plain-text 400 from Envoy (the README says so).
    for value in ["kg\x00x", "kg\x01x", "kg\x1fx", "kg\x7fx"] {
        let request = format!(
            "GET /v1/hello HTTP/1.1\r\nHost: keygate.test\r\nConnection: close\r\nx-api-key: {value}\r\n\r\n"
        );
        let reply = send_raw(stack.listener(), request.as_bytes());
        assert_eq!(reply.status, 400, "{value:?}: {reply:#?}");
        assert!(
            !reply
                .header("content-type")
                .unwrap_or_default()
                .starts_with("application/problem+json"),
            "{value:?} reached the filter: {reply:#?}"
        );
    }
    // A tab inside a value is valid HTTP: the filter decides, with problem+json.
    let reply = raw_get(&stack, "/v1/hello", &[("x-api-key", "kg\tx")]);
    assert_denied(&reply, 400, Some("invalid_request"), None);
    let reply = raw_get(&stack, "/v1/hello", &[("x-api-key", "kg\u{e9}x")]);
    assert_denied(&reply, 400, Some("invalid_request"), None);
}
