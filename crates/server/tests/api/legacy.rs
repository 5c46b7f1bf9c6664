//! Legacy keys: import from CSV and JSON, idempotent re-import, the filter's lookup
//! by digest, and migration by rotation; through the HTTP API on both backends.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use keygate_core::key::KeyDigest;
use keygate_server::app;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::backends::Backend;
use crate::{harness_on, jwt_settings, rfc3339, Answer, Harness, ADMIN, KEYS, NOW, SERVICE};

const IMPORT: &str = "/api/v1/auth/keys/import";

on_both_backends!(
    csv_and_json_imports_store_legacy_keys_and_report_bad_rows,
    reimport_is_idempotent_and_updates_changed_fields,
    the_digest_lookup_answers_legacy_keys_only,
    rotating_a_legacy_key_mints_an_opaque_successor,
    imports_are_bounded_and_refuse_foreign_digests,
    reimport_never_revives_or_extends_an_ended_key,
);

fn sha(text: &str) -> String {
    KeyDigest::of(text.as_bytes()).to_hex()
}

/// Sends `body` to the import endpoint with `content_type` and `query` (such as `?dry_run=1`).
pub async fn import(h: &Harness, query: &str, content_type: &str, body: &str) -> Answer {
    let request = Request::builder()
        .method("POST")
        .uri(format!("{IMPORT}{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app(h.state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn import_ok(h: &Harness, query: &str, content_type: &str, body: &str) -> Value {
    let answer = import(h, query, content_type, body).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body
}

async fn legacy_lookup(h: &Harness, digest: &str) -> Answer {
    h.send(
        "GET",
        &format!("/v1/legacy-keys/{digest}"),
        Some(SERVICE),
        None,
    )
    .await
}

fn id_of_row(report: &Value, row: u64) -> String {
    report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["row"] == row)
        .unwrap_or_else(|| panic!("no key for row {row}: {report}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn csv_and_json_imports_store_legacy_keys_and_report_bad_rows(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let upper = sha("legacy-two").to_uppercase();
    let csv = format!(
        "name,owner,scopes,expires_at,key,sha256\n\
         billing,team-billing,demo:read demo:write,{},legacy-one,\n\
         reports,,demo:read,,,{upper}\n\
         broken,,bad scope!,,legacy-three,\n\
         \"quoted, name\",x\n",
        rfc3339(NOW + 3600)
    );
    let report = import_ok(&h, "", "text/csv", &csv).await;
    assert_eq!(report["created"], 2, "{report}");
    assert_eq!(report["updated"], 0);
    assert_eq!(report["unchanged"], 0);
    assert_eq!(report["dry_run"], false);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{report}");
    assert_eq!(errors[0]["row"], 3);
    assert!(errors[0]["error"].as_str().unwrap().contains("scopes"));
    assert_eq!(errors[1]["row"], 4);
    assert!(!report.to_string().contains("legacy-three"));
    assert!(report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|key| key["status"] == "created"));

    let one = h.show(&id_of_row(&report, 1)).await;
    assert_eq!(one["format"], "legacy");
    assert_eq!(one["prefix"], "");
    assert_eq!(one["owner"], "team-billing");
    assert_eq!(one["scopes"], json!(["demo:read", "demo:write"]));
    assert_eq!(one["expires_at"], rfc3339(NOW + 3600));
    assert_eq!(one["status"], "active");
    assert!(one.get("key").is_none());
    let two = legacy_lookup(&h, &sha("legacy-two")).await;
    assert_eq!(two.status, StatusCode::OK, "{}", two.body);
    assert_eq!(two.body["id"], id_of_row(&report, 2));

    // JSON: the same fields; scopes as an array or a string; a bad row does not stop the rest.
    let rows = json!([
        {"name": "j1", "owner": "o", "scopes": ["demo:read"], "key": "legacy-json-1"},
        {"name": "j2", "scopes": "demo:read demo:write", "sha256": sha("legacy-json-2")},
        {"name": "j3", "key": "legacy-json-3", "sha256": sha("legacy-json-3")},
        {"name": "j4", "sha256": "not-hex"},
    ]);
    let report = import_ok(&h, "?format=json", "application/json", &rows.to_string()).await;
    assert_eq!(report["created"], 2, "{report}");
    let rows_in_error: Vec<&Value> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|error| &error["row"])
        .collect();
    assert_eq!(rows_in_error, [&json!(3), &json!(4)]);
    let j2 = h.show(&id_of_row(&report, 2)).await;
    assert_eq!(j2["scopes"], json!(["demo:read", "demo:write"]));

    // Legacy keys list like any other.
    let listed = h.admin("GET", KEYS, None).await;
    let formats: Vec<&str> = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|key| key["format"].as_str())
        .collect();
    assert_eq!(formats, ["legacy"; 4]);
}

async fn reimport_is_idempotent_and_updates_changed_fields(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let csv = "name,owner,scopes,key\na,alice,demo:read,legacy-a\nb,bob,,legacy-b\n";
    let first = import_ok(&h, "", "text/csv", csv).await;
    assert_eq!(first["created"], 2);
    let id_a = id_of_row(&first, 1);

    let again = import_ok(&h, "", "text/csv", csv).await;
    assert_eq!(again["created"], 0, "{again}");
    assert_eq!(again["unchanged"], 2);
    assert_eq!(id_of_row(&again, 1), id_a);
    assert_eq!(again["keys"][0]["status"], "unchanged");

    // The same digest given as sha256, with another owner: updated in place.
    let changed = format!(
        "name,owner,scopes,sha256\na,carol,demo:read demo:write,{}\n",
        sha("legacy-a")
    );
    let dry = import_ok(&h, "?dry_run=true", "text/csv", &changed).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["updated"], 1);
    assert_eq!(
        h.show(&id_a).await["owner"],
        "alice",
        "a dry run changes nothing"
    );
    let updated = import_ok(&h, "", "text/csv", &changed).await;
    assert_eq!(updated["updated"], 1, "{updated}");
    assert_eq!(id_of_row(&updated, 1), id_a);
    let shown = h.show(&id_a).await;
    assert_eq!(shown["owner"], "carol");
    assert_eq!(shown["scopes"], json!(["demo:read", "demo:write"]));

    // A dry run of new keys creates nothing.
    let dry = import_ok(&h, "?dry_run=1", "text/csv", "name,key\nc,legacy-c\n").await;
    assert_eq!(dry["created"], 1);
    assert_eq!(
        legacy_lookup(&h, &sha("legacy-c")).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = h.admin("GET", KEYS, None).await;
    assert_eq!(listed.body["keys"].as_array().unwrap().len(), 2);
}

async fn the_digest_lookup_answers_legacy_keys_only(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let report = import_ok(
        &h,
        "",
        "text/csv",
        "name,owner,scopes,key\nlegacy,acme,demo:read,legacy-lookup-key\n",
    )
    .await;
    let id = id_of_row(&report, 1);
    let digest = sha("legacy-lookup-key");
    let before = h.state.lookups_served();

    let found = legacy_lookup(&h, &digest).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert_eq!(found.body["id"], id.as_str());
    assert_eq!(found.body["digest"], digest.as_str());
    assert_eq!(found.body["subject"], "acme");
    assert_eq!(found.body["scopes"], json!(["demo:read"]));
    assert_eq!(found.body["status"], "active");
    // The same record as the lookup by id.
    assert_eq!(found.body, h.lookup(&id).await.body);
    // Upper-case hex is the same digest.
    let upper = legacy_lookup(&h, &digest.to_uppercase()).await;
    assert_eq!(upper.status, StatusCode::OK);

    // An opaque key's digest is never accepted through this path.
    let opaque = h.create(json!({"name": "o", "scopes": []})).await;
    let opaque_digest = sha(opaque["key"].as_str().unwrap());
    assert_eq!(
        h.lookup(opaque["id"].as_str().unwrap()).await.body["digest"],
        opaque_digest.as_str()
    );
    for missing in [opaque_digest.as_str(), &sha("unknown"), "abc", "zz"] {
        let answer = legacy_lookup(&h, missing).await;
        answer.assert_problem(StatusCode::NOT_FOUND);
    }
    // The service token is required.
    let refused = h
        .send(
            "GET",
            &format!("/v1/legacy-keys/{digest}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let refused = h
        .send("GET", &format!("/v1/legacy-keys/{digest}"), None, None)
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // Every legacy lookup counts once (plus the two lookups by id above).
    assert_eq!(h.state.lookups_served() - before, 2 + 4 + 2 + 2);
}

async fn rotating_a_legacy_key_mints_an_opaque_successor(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let report = import_ok(
        &h,
        "",
        "application/json",
        &json!([{"name": "old", "owner": "acme", "scopes": ["demo:read"], "key": "legacy-rot"}])
            .to_string(),
    )
    .await;
    let id = id_of_row(&report, 1);
    let rotated = h
        .admin(
            "POST",
            &format!("{KEYS}/{id}/rotate"),
            Some(json!({"grace": 600})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    let successor = &rotated.body;
    assert_eq!(successor["format"], "opaque");
    assert_eq!(successor["prefix"], "kg_test_");
    assert!(successor["key"].as_str().unwrap().starts_with("kg_test_"));
    assert_eq!(successor["name"], "old");
    assert_eq!(successor["owner"], "acme");
    assert_eq!(successor["scopes"], json!(["demo:read"]));
    assert_eq!(successor["rotated_from"], id.as_str());

    let old = h.show(&id).await;
    assert_eq!(old["rotated_to"], successor["id"]);
    assert_eq!(old["expires_at"], rfc3339(NOW + 600));
    // The legacy key keeps working during the grace, then ends.
    let during = legacy_lookup(&h, &sha("legacy-rot")).await;
    assert_eq!(during.body["status"], "active");
    assert_eq!(during.body["expires_at"], NOW + 600);
    h.clock.advance(601);
    let after = legacy_lookup(&h, &sha("legacy-rot")).await;
    assert_eq!(after.body["status"], "expired");

    // Revoking a legacy key works like any other.
    let report = import_ok(&h, "", "text/csv", "name,key\nrev,legacy-rev\n").await;
    let rev = id_of_row(&report, 1);
    let revoked = h.admin("DELETE", &format!("{KEYS}/{rev}"), None).await;
    assert_eq!(revoked.status, StatusCode::OK);
    let looked = legacy_lookup(&h, &sha("legacy-rev")).await;
    assert_eq!(looked.body["status"], "revoked");
}

async fn imports_are_bounded_and_refuse_foreign_digests(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    // A digest owned by an opaque key is refused (never turned into a legacy key).
    let opaque = h.create(json!({"name": "o", "scopes": []})).await;
    let csv = format!(
        "name,sha256\nclash,{}\n",
        sha(opaque["key"].as_str().unwrap())
    );
    let report = import_ok(&h, "", "text/csv", &csv).await;
    assert_eq!(report["created"], 0);
    assert!(report["errors"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not a legacy key"));
    // A revoked legacy key is not edited by a re-import.
    let report = import_ok(&h, "", "text/csv", "name,key\nr,legacy-r\n").await;
    let id = id_of_row(&report, 1);
    h.admin("DELETE", &format!("{KEYS}/{id}"), None).await;
    let report = import_ok(&h, "", "text/csv", "name,key\nrenamed,legacy-r\n").await;
    assert_eq!(report["updated"], 0);
    assert_eq!(report["errors"].as_array().unwrap().len(), 1, "{report}");

    // Whole-file problems.
    let too_many = format!(
        "name,sha256\n{}",
        format!("n,{}\n", "0".repeat(64)).repeat(10_001)
    );
    let answer = import(&h, "", "text/csv", &too_many).await;
    answer.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    let answer = import(&h, "", "text/csv", &"x".repeat(5 * 1024 * 1024 + 1)).await;
    answer.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    let answer = import(&h, "?format=xml", "text/csv", "name,key\n").await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    let answer = import(&h, "", "text/csv", "name,token\nn,t\n").await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    let answer = import(&h, "", "application/json", "{\"name\": \"n\"}").await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    // A large but valid body (over the 64 KiB default) is accepted.
    let many = format!(
        "name,sha256\n{}",
        (0..2_000)
            .map(|n| format!("n{n},{}\n", sha(&format!("bulk-{n}"))))
            .collect::<String>()
    );
    assert!(many.len() > 64 * 1024);
    let report = import_ok(&h, "", "text/csv", &many).await;
    assert_eq!(report["created"], 2_000);
    // The import needs an admin key.
    let refused = h.send("POST", IMPORT, None, Some("[]")).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

/// Re-running an import must not bring back a key that expired, was expired by an admin, was
/// revoked or rotated: its status and `expires_at` stay as they were, and the row is reported.
async fn reimport_never_revives_or_extends_an_ended_key(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let soon = rfc3339(NOW + 60);
    let csv = format!(
        "name,owner,scopes,key,expires_at\n\
         lapsing,o,demo:read,legacy-lapsing,{soon}\n\
         expired,o,demo:read,legacy-expired,\n\
         revoked,o,demo:read,legacy-revoked,\n\
         rotated,o,demo:read,legacy-rotated,\n\
         live,o,demo:read,legacy-live,\n"
    );
    let first = import_ok(&h, "", "text/csv", &csv).await;
    assert_eq!(first["created"], 5, "{first}");
    let ids: Vec<String> = (1..=5).map(|row| id_of_row(&first, row)).collect();
    let (lapsing, expired, revoked, rotated, live) = (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4]);
    let ok = |answer: Answer| assert!(answer.status.is_success(), "{}", answer.body);
    ok(h.admin("POST", &format!("{KEYS}/{expired}/expire"), None)
        .await);
    ok(h.admin("DELETE", &format!("{KEYS}/{revoked}"), None).await);
    ok(h.admin(
        "POST",
        &format!("{KEYS}/{rotated}/rotate"),
        Some(json!({"grace": 0})),
    )
    .await);
    // `lapsing` reaches its own expiry.
    h.clock.advance(120);
    let before: Vec<Value> = {
        let mut shown = Vec::new();
        for id in &ids {
            shown.push(h.show(id).await);
        }
        shown
    };
    assert_eq!(before[0]["status"], "expired");
    assert_eq!(before[1]["status"], "expired");
    assert_eq!(before[2]["status"], "revoked");
    assert_eq!(before[4]["status"], "active");

    // The same keys again, with a later expiry and new scopes: nothing ended comes back.
    let later = rfc3339(NOW + 86_400);
    let again = format!(
        "name,owner,scopes,key,expires_at\n\
         lapsing,o,demo:write,legacy-lapsing,{later}\n\
         expired,o,demo:write,legacy-expired,{later}\n\
         revoked,o,demo:write,legacy-revoked,{later}\n\
         rotated,o,demo:write,legacy-rotated,{later}\n\
         live,o,demo:write,legacy-live,{later}\n"
    );
    for query in ["?dry_run=1", ""] {
        let report = import_ok(&h, query, "text/csv", &again).await;
        assert_eq!(report["updated"], 1, "only the live key changes: {report}");
        assert_eq!(report["created"], 0, "{report}");
        let refused: Vec<u64> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["row"].as_u64().unwrap())
            .collect();
        assert_eq!(refused, [1, 2, 3, 4], "{report}");
        assert!(
            report["errors"][0]["error"]
                .as_str()
                .unwrap()
                .contains("ended"),
            "{report}"
        );
    }
    for (id, was) in ids.iter().zip(&before).take(4) {
        let now = h.show(id).await;
        assert_eq!(now["status"], was["status"], "{id}: {now}");
        assert_eq!(now["expires_at"], was["expires_at"], "{id}: {now}");
        assert_eq!(now["scopes"], json!(["demo:read"]), "{id}: {now}");
    }
    // The filter's lookup still refuses every one of them.
    for (text, id) in [
        ("legacy-lapsing", lapsing),
        ("legacy-expired", expired),
        ("legacy-revoked", revoked),
        ("legacy-rotated", rotated),
    ] {
        let found = legacy_lookup(&h, &sha(text)).await;
        assert_eq!(found.status, StatusCode::OK, "{id}");
        assert_ne!(found.body["status"], "active", "{id}: {}", found.body);
    }
    // A live key is still updated.
    let shown = h.show(live).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["expires_at"], later.as_str());
    assert_eq!(shown["scopes"], json!(["demo:write"]));
}
