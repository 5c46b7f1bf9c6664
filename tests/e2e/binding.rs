//! Keys bound to their tenant's data, through a real Envoy: a route template's `{tenant}`
//! bound to the key's owner (however the path is spelled, a key of one tenant never reaches
//! another's), asset-level scopes (`datasets:{dataset}:read`) with wildcard grants, and a JWT
//! of an outside issuer bound by one of its claims.

use std::time::{SystemTime, UNIX_EPOCH};

use keygate_core::jwt::{Algorithm, SigningKey};
use serde_json::{json, Value};

use keygate_testkit::{assert_denied, random_hex, send_raw, Reply, Stack};

const IDP_ISSUER: &str = "https://idp.binding.example/";
const IDP_KID: &str = "binding-idp-1";

fn routes() -> Value {
    json!([
        {"path": "/v1/tenants/{tenant}/**", "scopes": ["datasets:read"], "bind": {"tenant": "owner"}},
        {"path": "/v1/orgs/{org}/**", "scopes": ["datasets:read"], "bind": {"org": "claim.org"}},
        {"path": "/v1/datasets/{dataset}", "scopes": ["datasets:{dataset}:read"]},
        {"prefix": "/", "public": true}
    ])
}

/// GET `path` exactly as written (no client-side normalisation) with the key.
fn get_raw(stack: &Stack, path: &str, key: &str) -> Reply {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: keygate.test\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    );
    send_raw(stack.listener(), request.as_bytes())
}

fn problem_type(reply: &Reply) -> String {
    reply.json()["type"].as_str().unwrap_or_default().to_owned()
}

fn assert_not_bound(reply: &Reply, key: &str, path: &str) {
    assert_denied(reply, 403, None, Some(key));
    assert_eq!(
        problem_type(reply),
        "urn:keygate:problem:not-bound",
        "{path}: {reply:#?}"
    );
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not bound to this"),
        "{path}: {reply:#?}"
    );
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn keys_reach_only_their_tenants_paths_and_datasets() {
    let idp = SigningKey::generate(Algorithm::ES256, &mut rand_core::OsRng).expect("ES256 key");
    let jwk = serde_json::to_value(idp.public_jwk(IDP_KID)).expect("JWK JSON");
    let stack = Stack::start_with("binding", |cfg| {
        cfg["routes"] = routes();
        cfg["jwt"]["issuers"]
            .as_array_mut()
            .expect("envoy/envoy.yaml has jwt.issuers")
            .push(json!({
                "issuer": IDP_ISSUER,
                "algorithms": ["ES256"],
                "jwks": {"inline": {"keys": [jwk]}},
                "revocation": "none"
            }));
    });
    let service = &stack.service;
    let acme = service.create_key_from(&json!({
        "name": "acme", "owner": "acme", "scopes": ["datasets:read"]
    }));
    let globex = service.create_key_from(&json!({
        "name": "globex", "owner": "globex", "scopes": ["datasets:read"]
    }));

    // Tenant A on A's path: forwarded; on B's path: refused, without naming A.
    for path in ["/v1/tenants/acme/reports", "/v1/tenants/acme/a/b"] {
        let reply = get_raw(&stack, path, &acme.key);
        assert_eq!(reply.status, 200, "{path}: {reply:#?}");
    }
    assert_eq!(
        get_raw(&stack, "/v1/tenants/globex/reports", &globex.key).status,
        200
    );
    let reply = get_raw(&stack, "/v1/tenants/globex/reports", &acme.key);
    assert_not_bound(&reply, &acme.key, "globex");
    assert!(!reply.body.contains("acme"), "{reply:#?}");

    // B's path however spelled: never forwarded for A. Envoy normalises some spellings
    // (`..`, `//`) back to B's path, the filter refuses the others; all are refused.
    for path in [
        "/v1/tenants/GLOBEX/reports",
        "/v1/tenants/Globex/reports",
        "/V1/TENANTS/globex/reports",
        "/v1/tenants/%67lobex/reports",
        "/v1/tenants/glob%65x/reports",
        "/v1/tenants/%2567lobex/reports",
        "/v1//tenants/globex/reports",
        "/v1/tenants//globex/reports",
        "/v1/tenants/acme/../globex/reports",
        "/v1/tenants/acme/%2e%2e/globex/reports",
        "/v1/tenants/acme%2f..%2fglobex/reports",
        "/v1/tenants/globex;/reports",
        "/v1/tenants/acme/..;/globex/reports",
    ] {
        let reply = get_raw(&stack, path, &acme.key);
        assert!(
            reply.status == 403 || reply.status == 400,
            "{path} was not refused: {reply:#?}"
        );
        assert!(!reply.body.contains("acme"), "{path}: {reply:#?}");
    }

    // Asset-level scopes: a key for dataset x reaches x only; a wildcard grant reaches both.
    let one = service.create_key_from(&json!({"name": "x", "scopes": ["datasets:x:read"]}));
    let all = service.create_key_from(&json!({"name": "all", "scopes": ["datasets:*"]}));
    assert_eq!(get_raw(&stack, "/v1/datasets/x", &one.key).status, 200);
    let reply = get_raw(&stack, "/v1/datasets/y", &one.key);
    assert_denied(
        &reply,
        403,
        Some("scope=\"datasets:y:read\""),
        Some(&one.key),
    );
    for path in ["/v1/datasets/x", "/v1/datasets/y"] {
        let reply = get_raw(&stack, path, &all.key);
        assert_eq!(reply.status, 200, "{path}: {reply:#?}");
    }
    // A value that would forge scope syntax is refused, whatever the key holds.
    for path in [
        "/v1/datasets/x%3Aread",
        "/v1/datasets/%2A",
        "/v1/datasets/x*",
    ] {
        let reply = get_raw(&stack, path, &all.key);
        assert_denied(&reply, 400, None, Some(&all.key));
        assert_eq!(problem_type(&reply), "urn:keygate:problem:bad-path-value");
    }

    // A JWT of an outside issuer, bound by its `org` claim.
    let token = |org: Option<&str>| {
        let now = now_s();
        let mut claims = json!({
            "iss": IDP_ISSUER,
            "sub": "svc@idp",
            "scope": "datasets:read",
            "iat": now,
            "exp": now + 600,
            "jti": format!("idp-{}", random_hex(8)),
        });
        if let Some(org) = org {
            claims["org"] = json!(org);
        }
        idp.sign(IDP_KID, "JWT", &claims).expect("signing")
    };
    let acme_token = token(Some("acme"));
    let reply = get_raw(&stack, "/v1/orgs/acme/x", &acme_token);
    assert_eq!(reply.status, 200, "{reply:#?}");
    let reply = get_raw(&stack, "/v1/orgs/globex/x", &acme_token);
    assert_not_bound(&reply, &acme_token, "org globex");
    let reply = get_raw(&stack, "/v1/orgs/acme/x", &token(None));
    assert_denied(&reply, 403, None, None);
    assert_eq!(problem_type(&reply), "urn:keygate:problem:not-bound");
    // An opaque key has no claims to bind.
    let reply = get_raw(&stack, "/v1/orgs/acme/x", &acme.key);
    assert_denied(&reply, 403, None, Some(&acme.key));

    // The denials are counted by reason.
    assert!(stack.envoy.keygate_counter("denied.not_bound") >= 2);
    assert!(stack.envoy.keygate_counter("denied.bad_path_value") >= 3);
}
