//! Workload identities (mTLS/SPIFFE) end to end: Envoy's listener requires client
//! certificates signed by a test CA; the clients' certificates carry SPIFFE URI SANs; the
//! filter maps them to scopes (`principals.map`), routes accept or require them, and a key
//! bound to a workload (`--allowed-principal`) is refused over another workload's connection.

use keygate_testkit::{
    admin_json, assert_denied, bearer, send_mtls, with_listener_mtls, MtlsPki, Reply, Stack,
    StackBuilder, TempDir,
};
use serde_json::{json, Value};

/// X: mapped to read and write.
const API: &str = "spiffe://cluster.local/ns/payments/sa/api";
/// Mapped to read by the `.../sa/*` pattern.
const BATCH: &str = "spiffe://cluster.local/ns/payments/sa/batch";
/// Y: not in the map.
const FRONTEND: &str = "spiffe://cluster.local/ns/web/sa/frontend";

struct Clients {
    pki: MtlsPki,
    port: u16,
}

impl Clients {
    /// GET `path` as client `client` (an index into the PKI's clients; `None`: no certificate).
    fn get(&self, client: Option<usize>, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_get(client, path, headers)
            .unwrap_or_else(|e| panic!("GET {path} as client {client:?}: {e}"))
    }

    fn try_get(
        &self,
        client: Option<usize>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let files = client.map(|i| &self.pki.clients[i]);
        send_mtls(
            &self.pki.ca,
            files.map(|f| (f.cert.as_path(), f.key.as_path())),
            "GET",
            &format!("https://127.0.0.1:{}{path}", self.port),
            headers,
        )
    }
}

const X: Option<usize> = Some(0);
const B: Option<usize> = Some(1);
const Y: Option<usize> = Some(2);
/// A certificate without a URI SAN: a verified peer, but no principal.
const NO_SAN: Option<usize> = Some(3);

fn start(pki_dir: &TempDir) -> (Stack, Clients) {
    let pki = MtlsPki::generate(
        pki_dir.path(),
        &[Some(API), Some(BATCH), Some(FRONTEND), None],
    );
    let stack = StackBuilder::new("principals")
        .plugin(|cfg| {
            cfg["principals"] = json!({"map": [
                {"principal": API, "scopes": ["payments:read", "payments:write"]},
                {"principal": "spiffe://cluster.local/ns/payments/sa/*", "scopes": ["payments:read"]},
            ]});
            let routes = cfg["routes"].as_array_mut().expect("routes");
            let ours = [
                json!({"prefix": "/svc/read/", "scopes": ["payments:read"], "principal": "accept"}),
                json!({"prefix": "/svc/write/", "scopes": ["payments:write"], "principal": "accept"}),
                json!({"prefix": "/svc/both/", "scopes": ["payments:read"], "principal": "require"}),
                json!({"prefix": "/svc/key/", "scopes": ["payments:read"]}),
                json!({"prefix": "/svc/shadow/", "scopes": ["payments:write"], "principal": "accept", "mode": "shadow"}),
            ];
            for (i, route) in ours.into_iter().enumerate() {
                routes.insert(i, route);
            }
        })
        .yaml(|yaml| with_listener_mtls(yaml, &pki.ca, &pki.server))
        .start_one();
    let port = stack.ports.listener;
    (stack, Clients { pki, port })
}

fn upstream(reply: &Reply) -> serde_json::Map<String, Value> {
    reply.upstream_headers()
}

fn header<'a>(upstream: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    upstream
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn problem_type(reply: &Reply) -> String {
    reply.json()["type"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn workload_identities_stand_in_for_keys_and_bind_keys() {
    let pki_dir = TempDir::new("principals-pki");
    let (stack, clients) = start(&pki_dir);

    // A mapped principal with enough scope passes without a key, and is who the upstream
    // sees; a forged principal header from the client does not survive.
    let reply = clients.get(X, "/svc/write/pay", &[("x-keygate-principal", FRONTEND)]);
    let up = upstream(&reply);
    assert_eq!(header(&up, "x-keygate-principal"), API, "{up:#?}");
    assert_eq!(header(&up, "x-keygate-subject"), API, "{up:#?}");
    assert_eq!(header(&up, "x-keygate-issuer"), "mtls", "{up:#?}");
    assert_eq!(
        header(&up, "x-keygate-scopes"),
        "payments:read payments:write"
    );
    assert!(!up.contains_key("x-keygate-key-id"), "{up:#?}");
    // The pattern grants read only.
    let up = upstream(&clients.get(B, "/svc/read/x", &[]));
    assert_eq!(header(&up, "x-keygate-principal"), BATCH);
    let reply = clients.get(B, "/svc/write/x", &[]);
    assert_denied(&reply, 403, None, None);
    assert_eq!(
        problem_type(&reply),
        "urn:keygate:problem:principal-insufficient-scope"
    );
    // A principal the map does not know: 403.
    let reply = clients.get(Y, "/svc/read/x", &[]);
    assert_denied(&reply, 403, None, None);
    assert_eq!(
        problem_type(&reply),
        "urn:keygate:problem:principal-insufficient-scope"
    );
    // No certificate: the listener refuses the handshake.
    assert!(
        clients.try_get(None, "/svc/read/x", &[]).is_err(),
        "a connection without a client certificate was accepted"
    );
    // A verified certificate without a URI SAN: no principal, so a key is needed (401), and a
    // route that requires a principal refuses (403).
    let reply = clients.get(NO_SAN, "/svc/read/x", &[]);
    assert_denied(&reply, 401, Some("Bearer"), None);

    // An ambiguous pattern is refused by the API, naming the entry.
    let refused = admin_json(
        &stack.service,
        "POST",
        "/api/v1/auth/keys",
        Some(&json!({"name": "bad", "scopes": ["payments:read"],
                     "allowed_principals": [API, "spiffe://cluster.local/ns/*/sa/api"]})),
    );
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("allowed_principals[1]"),
        "{refused:?}"
    );

    // A key bound to workload X, by the CLI.
    let created: Value = serde_json::from_str(
        stack
            .service
            .cli(&[
                "keys",
                "create",
                "--name",
                "bound",
                "--scope",
                "payments:read",
                "--allowed-principal",
                API,
                "--json",
            ])
            .trim(),
    )
    .expect("keys create --json");
    assert_eq!(created["allowed_principals"], json!([API]));
    let bound_id = created["id"].as_str().expect("id").to_owned();
    let bound = created["key"].as_str().expect("key").to_owned();
    let shown = stack.service.cli(&["keys", "show", &bound_id]);
    assert!(
        shown.lines().any(|l| l == format!("principals:   {API}")),
        "{shown}"
    );
    let bound_auth = bearer(&bound);
    // Twice each: the first is a cache miss, the second decided from the worker's copy.
    for _ in 0..2 {
        let reply = clients.get(Y, "/svc/key/x", &[("authorization", &bound_auth)]);
        assert_denied(&reply, 403, None, Some(&bound));
        assert_eq!(
            problem_type(&reply),
            "urn:keygate:problem:principal-not-allowed"
        );
        let reply = clients.get(NO_SAN, "/svc/key/x", &[("authorization", &bound_auth)]);
        assert_denied(&reply, 403, None, Some(&bound));
        let up = upstream(&clients.get(X, "/svc/key/x", &[("authorization", &bound_auth)]));
        assert_eq!(header(&up, "x-keygate-key-id"), bound_id);
        assert_eq!(header(&up, "x-keygate-principal"), API);
        // No owner: the subject is the key id.
        assert_eq!(header(&up, "x-keygate-subject"), bound_id);
    }
    assert!(
        stack.envoy.keygate_counter("denied.principal_not_allowed") >= 2,
        "{}",
        stack.envoy.keygate_stats()
    );

    // Unbound again (update), it works from any workload.
    stack
        .service
        .cli(&["keys", "update", &bound_id, "--clear-principals"]);
    let unbound = stack.service.cli(&["keys", "show", &bound_id]);
    assert!(
        unbound.lines().any(|l| l == "principals:   any"),
        "{unbound}"
    );

    // A route that requires a principal and a key: both must pass.
    let plain: Value = serde_json::from_str(
        stack
            .service
            .cli(&[
                "keys",
                "create",
                "--name",
                "plain",
                "--scope",
                "payments:read",
                "--json",
            ])
            .trim(),
    )
    .expect("keys create --json");
    let plain_auth = bearer(plain["key"].as_str().expect("key"));
    let up = upstream(&clients.get(B, "/svc/both/x", &[("authorization", &plain_auth)]));
    assert_eq!(header(&up, "x-keygate-principal"), BATCH);
    assert_eq!(
        header(&up, "x-keygate-key-id"),
        plain["id"].as_str().unwrap()
    );
    let reply = clients.get(Y, "/svc/both/x", &[("authorization", &plain_auth)]);
    assert_denied(&reply, 403, None, None);
    let reply = clients.get(NO_SAN, "/svc/both/x", &[("authorization", &plain_auth)]);
    assert_denied(&reply, 403, None, None);
    assert_eq!(
        problem_type(&reply),
        "urn:keygate:problem:principal-required"
    );
    let reply = clients.get(X, "/svc/both/x", &[]);
    assert_denied(&reply, 401, Some("Bearer"), None);
    assert!(stack.envoy.keygate_counter("denied.principal_required") >= 1);

    // Shadow mode: a principal denial is reported upstream and counted, not enforced.
    let up = upstream(&clients.get(B, "/svc/shadow/x", &[]));
    assert_eq!(
        header(&up, "x-keygate-decision"),
        "deny; status=403; reason=principal_insufficient_scope",
        "{up:#?}"
    );
    let up = upstream(&clients.get(X, "/svc/shadow/x", &[]));
    assert_eq!(header(&up, "x-keygate-decision"), "allow", "{up:#?}");
    assert_eq!(header(&up, "x-keygate-principal"), API);
    assert_eq!(
        stack
            .envoy
            .keygate_counter("shadow.denied.principal_insufficient_scope"),
        1,
        "{}",
        stack.envoy.keygate_stats()
    );
    assert!(
        stack
            .envoy
            .keygate_counter("denied.principal_insufficient_scope")
            >= 3
    );
}
