//! Per-key limits, usage analytics and `/metrics`, through the HTTP API on both backends.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use keygate_server::app;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::backends::Backend;
use crate::{harness_on, jwt_settings, rfc3339, Answer, Harness, ADMIN, KEYS, NOW, SERVICE};

on_both_backends!(
    limits_round_trip_from_create_to_lookup_and_rotation,
    patch_updates_and_clears_limits,
    bad_limits_are_refused_with_the_entry_named,
    a_usage_batch_counts_once_and_aggregates_by_step,
    usage_rows_of_unknown_keys_are_refused_and_the_rest_counts,
    usage_bodies_and_rows_are_bounded,
    only_allowed_requests_move_last_used_at,
    metrics_expose_the_counters,
    metrics_labels_stay_bounded_whatever_clients_send,
    a_usage_post_without_the_service_token_is_refused_before_its_body_is_read,
    usage_breaks_down_by_route_with_latency_percentiles_and_the_last_address,
    the_fleet_lists_the_gateways_that_poll_and_report,
    countries_round_trip_to_the_lookup_and_bad_codes_are_refused,
);

/// A request body that never ends: whoever waits for it waits forever.
struct NeverEnds;

impl hyper::body::Body for NeverEnds {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// Anyone can post to `/v1/usage`: the token is checked before the body (up to the usage
/// body limit) is read, so an anonymous client cannot make the service hold it.
async fn a_usage_post_without_the_service_token_is_refused_before_its_body_is_read(
    backend: Backend,
) {
    let h = harness(backend).await;
    for token in [None, Some(ADMIN)] {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/usage")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::new(NeverEnds)).unwrap();
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            app(h.state.clone()).oneshot(request),
        )
        .await
        .expect("the service waited for the body of an unauthenticated usage post")
        .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

async fn harness(backend: Backend) -> Harness {
    harness_on(backend, jwt_settings()).await
}

impl Harness {
    async fn post_usage(&self, batch: &Value) -> Answer {
        self.send("POST", "/v1/usage", Some(SERVICE), Some(&batch.to_string()))
            .await
    }

    async fn usage(&self, id: &str, query: &str) -> Answer {
        self.admin("GET", &format!("{KEYS}/{id}/usage?{query}"), None)
            .await
    }

    /// `GET /metrics` as text.
    async fn metrics_text(&self) -> (StatusCode, String, String) {
        let request = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let response = app(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }
}

async fn limits_round_trip_from_create_to_lookup_and_rotation(backend: Backend) {
    let h = harness(backend).await;
    let created = h
        .create(json!({
            "name": "limited", "scopes": ["demo:read"],
            "rate_limit": {"requests_per_second": 2.5},
            "allowed_cidrs": ["10.1.2.3/8", "2001:db8::/32", "127.0.0.1/32"],
            "not_before": rfc3339(NOW - 60), "not_after": rfc3339(NOW + 3600),
        }))
        .await;
    assert_eq!(
        created["rate_limit"],
        json!({"requests_per_second": 2.5, "burst": 3})
    );
    assert_eq!(
        created["allowed_cidrs"],
        json!(["10.0.0.0/8", "2001:db8::/32", "127.0.0.1/32"])
    );
    assert_eq!(created["not_before"], rfc3339(NOW - 60));
    assert_eq!(created["not_after"], rfc3339(NOW + 3600));
    let id = created["id"].as_str().unwrap();
    assert_eq!(h.show(id).await["rate_limit"], created["rate_limit"]);

    let lookup = h.lookup(id).await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(lookup.body["rate_limit"], created["rate_limit"]);
    assert_eq!(lookup.body["allowed_cidrs"], created["allowed_cidrs"]);
    assert_eq!(lookup.body["not_before"], NOW - 60);
    assert_eq!(lookup.body["not_after"], NOW + 3600);
    let wire: keygate_core::wire::KeyLookup = serde_json::from_value(lookup.body).unwrap();
    assert_eq!(wire.rate_limit.unwrap().burst, 3);

    let rotated = h
        .admin("POST", &format!("{KEYS}/{id}/rotate"), Some(json!({})))
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.body);
    for field in ["rate_limit", "allowed_cidrs", "not_before", "not_after"] {
        assert_eq!(rotated.body[field], created[field], "{field}");
    }

    // A key without limits shows them empty and the lookup leaves them out.
    let plain = h.create(json!({"name": "plain", "scopes": []})).await;
    assert_eq!(plain["rate_limit"], Value::Null);
    assert_eq!(plain["allowed_cidrs"], json!([]));
    let lookup = h.lookup(plain["id"].as_str().unwrap()).await.body;
    for field in ["rate_limit", "allowed_cidrs", "not_before", "not_after"] {
        assert!(lookup.get(field).is_none(), "{field}: {lookup}");
    }
}

async fn patch_updates_and_clears_limits(backend: Backend) {
    let h = harness(backend).await;
    let created = h
        .create(json!({
            "name": "k", "scopes": ["demo:read"], "metadata": {"team": "a"},
            "rate_limit": {"requests_per_second": 10, "burst": 20},
            "allowed_cidrs": ["10.0.0.0/8"],
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    let path = format!("{KEYS}/{id}");

    let answer = h
        .admin(
            "PATCH",
            &path,
            Some(json!({
                "name": "renamed", "scopes": ["demo:write", "demo:read"],
                "not_after": rfc3339(NOW + 60), "allowed_cidrs": ["192.168.0.0/16"],
            })),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["name"], "renamed");
    assert_eq!(answer.body["scopes"], json!(["demo:read", "demo:write"]));
    assert_eq!(answer.body["allowed_cidrs"], json!(["192.168.0.0/16"]));
    assert_eq!(answer.body["not_after"], rfc3339(NOW + 60));
    // Absent members are kept.
    assert_eq!(answer.body["metadata"], json!({"team": "a"}));
    assert_eq!(answer.body["rate_limit"]["burst"], 20);

    let answer = h
        .admin(
            "PATCH",
            &path,
            Some(json!({"rate_limit": null, "allowed_cidrs": null, "not_after": null})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["rate_limit"], Value::Null);
    assert_eq!(answer.body["allowed_cidrs"], json!([]));
    assert_eq!(answer.body["not_after"], Value::Null);
    let lookup = h.lookup(id).await.body;
    assert!(lookup.get("rate_limit").is_none(), "{lookup}");
    assert_eq!(lookup["scopes"], json!(["demo:read", "demo:write"]));

    // An empty window is refused and nothing changes.
    let answer = h
        .admin(
            "PATCH",
            &path,
            Some(json!({"not_before": rfc3339(NOW + 100), "not_after": rfc3339(NOW + 50)})),
        )
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(h.show(id).await["not_before"], Value::Null);

    let missing = h
        .admin(
            "PATCH",
            &format!("{KEYS}/aaaaaaaaaaaaaaaa"),
            Some(json!({"name": "x"})),
        )
        .await;
    missing.assert_problem(StatusCode::NOT_FOUND);
    let unknown_field = h.admin("PATCH", &path, Some(json!({"owner": "x"}))).await;
    unknown_field.assert_problem(StatusCode::BAD_REQUEST);

    // Each update is in the audit log with the fields it changed, never their values.
    let audit = h.admin("GET", "/api/v1/audit?action=update", None).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.body);
    let entries = audit.body["entries"].as_array().unwrap();
    let ok: Vec<&Value> = entries.iter().filter(|e| e["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 2, "{entries:?}");
    assert!(ok
        .iter()
        .all(|e| e["target"] == id && e["actor"].is_string()));
    assert!(ok
        .iter()
        .any(|e| e["detail"]["fields"] == json!(["rate_limit", "allowed_cidrs", "not_after"])));
    assert!(!audit.body.to_string().contains("192.168.0.0"));
    assert!(entries
        .iter()
        .any(|e| e["outcome"].as_str().unwrap().starts_with("error")));
}

async fn countries_round_trip_to_the_lookup_and_bad_codes_are_refused(backend: Backend) {
    let h = harness(backend).await;
    let created = h
        .create(json!({
            "name": "dach", "scopes": [], "allowed_countries": ["de", " AT", "DE", "ch"],
        }))
        .await;
    // Upper case, trimmed, duplicates removed, order kept.
    assert_eq!(created["allowed_countries"], json!(["DE", "AT", "CH"]));
    let id = created["id"].as_str().unwrap();
    let lookup = h.lookup(id).await.body;
    assert_eq!(lookup["allowed_countries"], created["allowed_countries"]);
    let wire: keygate_core::wire::KeyLookup = serde_json::from_value(lookup).unwrap();
    assert_eq!(wire.allowed_countries, ["DE", "AT", "CH"]);

    let path = format!("{KEYS}/{id}");
    let answer = h
        .admin("PATCH", &path, Some(json!({"allowed_countries": ["us"]})))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["allowed_countries"], json!(["US"]));
    let answer = h
        .admin("PATCH", &path, Some(json!({"allowed_countries": null})))
        .await;
    assert_eq!(answer.body["allowed_countries"], json!([]));
    let lookup = h.lookup(id).await.body;
    assert!(lookup.get("allowed_countries").is_none(), "{lookup}");

    let answer = h
        .admin(
            "POST",
            KEYS,
            Some(json!({"name": "x", "scopes": [], "allowed_countries": ["DE", "Germany"]})),
        )
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        answer.detail().contains("allowed_countries[1]") && answer.detail().contains("Germany"),
        "{}",
        answer.detail()
    );
    let many: Vec<String> = (0..251).map(|_| "DE".to_owned()).collect();
    for bad in [json!(many), json!(["D"]), json!(["D1"]), json!(["DEU"])] {
        let answer = h
            .admin(
                "POST",
                KEYS,
                Some(json!({"name": "x", "scopes": [], "allowed_countries": bad})),
            )
            .await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
    }
    let answer = h
        .admin("PATCH", &path, Some(json!({"allowed_countries": ["XYZ"]})))
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
}

async fn bad_limits_are_refused_with_the_entry_named(backend: Backend) {
    let h = harness(backend).await;
    let answer = h
        .admin(
            "POST",
            KEYS,
            Some(
                json!({"name": "x", "scopes": [], "allowed_cidrs": ["10.0.0.0/8", "10.0.0.0/33"]}),
            ),
        )
        .await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        answer.detail().contains("allowed_cidrs[1]"),
        "{}",
        answer.detail()
    );
    assert!(
        answer.detail().contains("10.0.0.0/33"),
        "{}",
        answer.detail()
    );

    let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let cases = [
        json!({"name": "x", "scopes": [], "allowed_cidrs": many}),
        json!({"name": "x", "scopes": [], "allowed_cidrs": ["example.com"]}),
        json!({"name": "x", "scopes": [], "rate_limit": {"requests_per_second": 0}}),
        json!({"name": "x", "scopes": [], "rate_limit": {"requests_per_second": 1, "burst": 0}}),
        json!({"name": "x", "scopes": [], "rate_limit": {"requests_per_second": -1}}),
        json!({"name": "x", "scopes": [], "not_before": "soon"}),
        json!({"name": "x", "scopes": [], "not_before": rfc3339(NOW + 10), "not_after": rfc3339(NOW)}),
    ];
    for case in cases {
        let answer = h.admin("POST", KEYS, Some(case.clone())).await;
        answer.assert_problem(StatusCode::BAD_REQUEST);
    }
    let listed = h.admin("GET", KEYS, None).await;
    assert_eq!(listed.body["keys"], json!([]));
}

fn row(key: &str, minute: i64, allowed: u64, denied: Value, status: Value, used: i64) -> Value {
    json!({
        "key_id": key, "minute": minute, "allowed": allowed, "denied": denied,
        "status": status, "last_used_at": used,
    })
}

async fn a_usage_batch_counts_once_and_aggregates_by_step(backend: Backend) {
    let h = harness(backend).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hour = NOW - NOW.rem_euclid(3600) - 3 * 3600; // three hours ago, aligned
    let batch = json!({"batch_id": "filter-1:42", "rows": [
        row(&id, hour, 5, json!({"rate_limited": 2}), json!({"2xx": 4, "5xx": 1}), hour + 10),
        row(&id, hour + 60, 1, json!({}), json!({"2xx": 1}), hour + 90),
        row(&id, hour + 7200, 3, json!({"revoked": 1}), json!({"4xx": 3}), hour + 7230),
    ]});
    let answer = h.post_usage(&batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"applied": true, "rows": 3, "refused": 0})
    );
    let again = h.post_usage(&batch).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, json!({"applied": false}));

    assert_eq!(h.show(&id).await["last_used_at"], rfc3339(hour + 7230));
    // An older report does not move last_used_at back.
    let older = json!({"batch_id": "filter-1:43", "rows": [
        row(&id, hour, 1, json!({}), json!({}), hour + 20),
    ]});
    assert_eq!(h.post_usage(&older).await.body["applied"], true);
    assert_eq!(h.show(&id).await["last_used_at"], rfc3339(hour + 7230));

    let query = format!(
        "from={}&to={}&step=3600",
        rfc3339(hour),
        rfc3339(hour + 4 * 3600)
    );
    let report = h.usage(&id, &query).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    let body = report.body;
    assert_eq!(body["key_id"], id.as_str());
    assert_eq!(body["step"], 3600);
    assert_eq!(body["from"], rfc3339(hour));
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{body}");
    assert_eq!(
        points[0],
        json!({"start": rfc3339(hour), "allowed": 7, "denied": {"rate_limited": 2},
               "status": {"2xx": 5, "5xx": 1}})
    );
    assert_eq!(
        points[1],
        json!({"start": rfc3339(hour + 3600), "allowed": 0, "denied": {}, "status": {}})
    );
    assert_eq!(points[2]["allowed"], 3);
    assert_eq!(points[2]["denied"], json!({"revoked": 1}));
    assert_eq!(points[3]["allowed"], 0);
    assert_eq!(
        body["totals"],
        json!({"allowed": 10, "denied": {"rate_limited": 2, "revoked": 1},
               "status": {"2xx": 5, "4xx": 3, "5xx": 1}})
    );

    // Per minute: the two minutes of the first hour are apart.
    let query = format!("from={}&to={}&step=60", rfc3339(hour), rfc3339(hour + 180));
    let minutes = h.usage(&id, &query).await.body;
    let allowed: Vec<u64> = minutes["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["allowed"].as_u64().unwrap())
        .collect();
    assert_eq!(allowed, [6, 1, 0]);

    // Defaults: the last 24 hours by hour.
    let default = h.usage(&id, "").await.body;
    assert_eq!(default["step"], 3600);
    assert_eq!(default["totals"]["allowed"], 10);
    assert!(default["points"].as_array().unwrap().len() >= 24);

    // Too many points, a bad step, a reversed range, an unknown key.
    let too_many = format!("from={}&to={}&step=60", rfc3339(NOW - 86_400), rfc3339(NOW));
    h.usage(&id, &too_many)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    h.usage(&id, "step=120")
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    let reversed = format!("from={}&to={}", rfc3339(NOW), rfc3339(NOW - 60));
    h.usage(&id, &reversed)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
    h.usage("bbbbbbbbbbbbbbbb", "")
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    // Admin only.
    let anonymous = h
        .send("GET", &format!("{KEYS}/{id}/usage"), None, None)
        .await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
}

/// Rows for ids the service never issued (a forged or sprayed key) are refused one by one:
/// nothing is stored under them, and the batch's other rows still count.
async fn usage_rows_of_unknown_keys_are_refused_and_the_rest_counts(backend: Backend) {
    let h = harness(backend).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let minute = NOW - NOW.rem_euclid(60) - 600;
    let batch = json!({"batch_id": "b-unknown", "rows": [
        row("attacker-chosen-1", minute, 9, json!({}), json!({"2xx": 9}), minute + 1),
        row(&id, minute, 4, json!({"rate_limited": 1}), json!({"2xx": 4}), minute + 2),
        row("cccccccccccccccc", minute, 0, json!({"forged_key": 7}), json!({}), 0),
    ]});
    let answer = h.post_usage(&batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"applied": true, "rows": 1, "refused": 2})
    );
    for unknown in ["attacker-chosen-1", "cccccccccccccccc"] {
        h.usage(unknown, "")
            .await
            .assert_problem(StatusCode::NOT_FOUND);
        assert!(!h.state.store().has_usage(unknown).await.unwrap());
    }
    let report = h.usage(&id, "").await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert_eq!(report.body["totals"]["allowed"], 4);
    assert_eq!(report.body["totals"]["denied"], json!({"rate_limited": 1}));
    let (_, _, text) = h.metrics_text().await;
    assert_eq!(sample(&text, "keygate_usage_rows_refused_total"), Some(2.0));
    assert_eq!(sample(&text, "keygate_usage_rows_total"), Some(1.0));

    // A batch of unknown ids only is taken (nothing to retry) and stores nothing.
    let spray: Vec<Value> = (0..2000)
        .map(|i| {
            row(
                &format!("spray{i:011}"),
                minute,
                0,
                json!({"forged_key": 1}),
                json!({}),
                0,
            )
        })
        .collect();
    let answer = h
        .post_usage(&json!({"batch_id": "b-spray", "rows": spray}))
        .await;
    assert_eq!(
        answer.body,
        json!({"applied": true, "rows": 0, "refused": 2000})
    );
    assert!(!h.state.store().has_usage("spray00000000007").await.unwrap());

    // The service token is required.
    let anonymous = h
        .send("POST", "/v1/usage", None, Some(&batch.to_string()))
        .await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED);
    let admin = h
        .send("POST", "/v1/usage", Some(ADMIN), Some(&batch.to_string()))
        .await;
    admin.assert_problem(StatusCode::UNAUTHORIZED);
}

/// `last_used_at` is the last allowed request: rows of denials only (an expired or revoked
/// key still knocking) never move it.
async fn only_allowed_requests_move_last_used_at(backend: Backend) {
    let h = harness(backend).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let minute = NOW - NOW.rem_euclid(60) - 600;
    let denied = json!({"batch_id": "denied-only", "rows": [
        row(&id, minute, 0, json!({"insufficient_scope": 3}), json!({"4xx": 3}), minute + 30),
    ]});
    assert_eq!(h.post_usage(&denied).await.body["applied"], true);
    assert_eq!(h.show(&id).await["last_used_at"], Value::Null);
    let allowed = json!({"batch_id": "allowed", "rows": [
        row(&id, minute, 1, json!({}), json!({"2xx": 1}), minute + 10),
    ]});
    assert_eq!(h.post_usage(&allowed).await.body["applied"], true);
    assert_eq!(h.show(&id).await["last_used_at"], rfc3339(minute + 10));
    let later_denials = json!({"batch_id": "denied-later", "rows": [
        row(&id, minute + 60, 0, json!({"revoked": 5}), json!({}), minute + 90),
    ]});
    assert_eq!(h.post_usage(&later_denials).await.body["applied"], true);
    assert_eq!(h.show(&id).await["last_used_at"], rfc3339(minute + 10));
}

async fn usage_bodies_and_rows_are_bounded(backend: Backend) {
    let h = harness(backend).await;
    let minute = NOW - NOW.rem_euclid(60);
    let mut ids = Vec::new();
    for i in 0..20 {
        let created = h
            .create(json!({"name": format!("k{i}"), "scopes": []}))
            .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // 10,000 rows are accepted (and far over the 64 KiB of other endpoints).
    let rows: Vec<Value> = (0..10_000)
        .map(|i| {
            row(
                &ids[i % 20],
                minute - 60 * (1 + i64::try_from(i / 20).unwrap()),
                1,
                json!({}),
                json!({}),
                0,
            )
        })
        .collect();
    let batch = json!({"batch_id": "big", "rows": rows});
    assert!(batch.to_string().len() > 64 * 1024);
    let answer = h.post_usage(&batch).await;
    assert_eq!(
        answer.body,
        json!({"applied": true, "rows": 10_000, "refused": 0})
    );
    let report = h.usage(&ids[7], "").await;
    assert_eq!(report.body["totals"]["allowed"], 500);

    let rows: Vec<Value> = (0..10_001)
        .map(|_| json!({"key_id": "k", "minute": 0, "allowed": 1, "last_used_at": 0}))
        .collect();
    h.post_usage(&json!({"batch_id": "too-many", "rows": rows}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);

    let padding = "x".repeat(1024 * 1024);
    let huge = json!({"batch_id": "huge", "rows": [], "padding": padding});
    h.post_usage(&huge)
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE);

    let k = ids[0].as_str();
    let bad_minute =
        json!({"batch_id": "odd", "rows": [row(k, minute + 1, 1, json!({}), json!({}), 0)]});
    let answer = h.post_usage(&bad_minute).await;
    answer.assert_problem(StatusCode::BAD_REQUEST);
    assert!(answer.detail().contains("rows[0]"), "{}", answer.detail());
    // A refused batch is not remembered: fixed, it applies.
    let fixed = json!({"batch_id": "odd", "rows": [row(k, minute, 1, json!({}), json!({}), 0)]});
    assert_eq!(h.post_usage(&fixed).await.body["applied"], true);
    h.post_usage(&json!({"batch_id": "", "rows": []}))
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

/// The value of the sample `name{labels}` (or `name` alone) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

async fn metrics_expose_the_counters(backend: Backend) {
    let h = harness(backend).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.create(json!({"name": "k2", "scopes": []})).await;
    assert_eq!(h.lookup(&id).await.status, StatusCode::OK);
    h.admin("POST", &format!("{KEYS}/{id}/rotate"), Some(json!({})))
        .await;
    assert_eq!(
        h.admin("DELETE", &format!("{KEYS}/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    h.send("GET", KEYS, Some("wrong-admin-key"), None).await;
    let batch = json!({"batch_id": "m1", "rows": [row(&id, NOW - NOW.rem_euclid(60), 1, json!({}), json!({}), NOW)]});
    h.post_usage(&batch).await;
    h.post_usage(&batch).await;

    let (status, content_type, text) = h.metrics_text().await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    for line in text.lines() {
        assert!(
            line.starts_with("# HELP keygate_")
                || line.starts_with("# TYPE keygate_")
                || line.starts_with("keygate_"),
            "{line}"
        );
    }
    let value = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
    assert_eq!(
        value(
            r#"keygate_http_requests_total{route="/api/v1/auth/keys",method="POST",status="2xx"}"#
        ),
        2.0
    );
    assert_eq!(
        value(r#"keygate_http_requests_total{route="/v1/keys/{id}",method="GET",status="2xx"}"#),
        1.0
    );
    assert_eq!(value("keygate_lookups_total"), 1.0);
    assert_eq!(value("keygate_keys_created_total"), 2.0);
    assert_eq!(value("keygate_keys_rotated_total"), 1.0);
    assert_eq!(value("keygate_keys_revoked_total"), 1.0);
    assert_eq!(value("keygate_admin_auth_failures_total"), 1.0);
    assert_eq!(
        value(r#"keygate_usage_batches_total{result="applied"}"#),
        1.0
    );
    assert_eq!(
        value(r#"keygate_usage_batches_total{result="duplicate"}"#),
        1.0
    );
    assert_eq!(value("keygate_feed_requests_total"), 0.0);
    // k2 and the successor are active; the rotated key is revoked.
    assert_eq!(value(r#"keygate_keys{status="active"}"#), 2.0);
    assert_eq!(value(r#"keygate_keys{status="revoked"}"#), 1.0);
    assert_eq!(value(r#"keygate_keys{status="expired"}"#), 0.0);
    // No credential is needed, and unknown paths are counted apart.
    h.send("GET", "/nope", None, None).await;
    let (_, _, text) = h.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            r#"keygate_http_requests_total{route="other",method="GET",status="4xx"}"#
        ),
        Some(1.0)
    );
}

/// A client choosing methods and paths at will adds no series: unknown methods and paths
/// that match no route are both `other`.
async fn metrics_labels_stay_bounded_whatever_clients_send(backend: Backend) {
    let h = harness(backend).await;
    let series = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("keygate_http_requests_total{"))
            .count()
    };
    for i in 0..300 {
        let method = format!("X{i:04}{}", "Y".repeat(i % 50));
        let path = format!("/junk/{i}/{}", "p".repeat(i * 7));
        let answer = h.send(&method, &path, None, None).await;
        assert!(answer.status.is_client_error(), "{method} {path}");
        // A real route with an unknown method.
        h.send(&method, KEYS, None, None).await;
    }
    let (_, _, text) = h.metrics_text().await;
    assert!(series(&text) <= 4, "{text}");
    let other = |route: &str| {
        format!(r#"keygate_http_requests_total{{route="{route}",method="other",status="4xx"}}"#)
    };
    assert_eq!(sample(&text, &other("other")), Some(300.0), "{text}");
    assert!(!text.contains("X0001"), "a method became a label: {text}");
    assert!(!text.contains("/junk/"), "a path became a label: {text}");
}

/// Rows with a route, a latency histogram and a client address: the usage API answers
/// allowed requests per route and p50/p95/p99 per point and in total; the key shows its last
/// use and the address it came from.
async fn usage_breaks_down_by_route_with_latency_percentiles_and_the_last_address(
    backend: Backend,
) {
    let h = harness(backend).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let minute = NOW - NOW.rem_euclid(3600) - 3600;
    let with = |mut row: Value, route: &str, latency: Value, address: Option<&str>| {
        row["route"] = json!(route);
        row["latency"] = latency;
        if let Some(address) = address {
            row["client_address"] = json!(address);
        }
        row
    };
    // 13 buckets: <=1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000 ms, above.
    let batch = json!({"batch_id": "edge-1:1", "gateway": "edge-1", "rows": [
        with(row(&id, minute, 8, json!({}), json!({"2xx": 8}), minute + 10), "hello",
             json!([0, 0, 6, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some("203.0.113.7")),
        with(row(&id, minute, 2, json!({}), json!({"5xx": 2}), minute + 50), "orders",
             json!([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]), Some("2001:db8::5")),
        with(row(&id, minute + 60, 0, json!({"revoked": 1}), json!({}), 0), "orders",
             json!([]), None),
        // An older filter: no route, no latency, no address.
        row(&id, minute + 60, 5, json!({}), json!({"2xx": 5}), minute + 100),
    ]});
    let answer = h.post_usage(&batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["rows"], 4);

    let key = h.show(&id).await;
    assert_eq!(key["last_used_at"], rfc3339(minute + 100));
    assert_eq!(
        key["last_used_address"], "2001:db8::5",
        "the latest use that named an address, within a minute of the last use"
    );
    let listed = h.admin("GET", KEYS, None).await;
    let listed = listed.body["keys"]
        .as_array()
        .or(listed.body.as_array())
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(listed["last_used_address"], "2001:db8::5");

    let query = format!(
        "from={}&to={}&step=60",
        rfc3339(minute),
        rfc3339(minute + 180)
    );
    let report = h.usage(&id, &query).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    let points = report.body["points"].as_array().unwrap();
    assert_eq!(points[0]["routes"], json!({"hello": 8, "orders": 2}));
    assert_eq!(points[0]["latency"], json!({"5": 6, "10": 2, "inf": 2}));
    assert_eq!(
        points[0]["latency_ms"],
        json!({"p50": 5, "p95": null, "p99": null}),
        "2 of 10 above 5 s"
    );
    assert!(
        points[1].get("routes").is_none(),
        "denials and old rows have no route"
    );
    assert_eq!(points[1]["denied"], json!({"revoked": 1}));
    assert_eq!(points[1]["allowed"], 5);
    assert!(points[1].get("latency_ms").is_none(), "nothing measured");
    assert_eq!(
        points[2],
        json!({"start": rfc3339(minute + 120), "allowed": 0, "denied": {}, "status": {}})
    );
    let totals = &report.body["totals"];
    assert_eq!(totals["routes"], json!({"hello": 8, "orders": 2}));
    assert_eq!(
        totals["latency_ms"],
        json!({"p50": 5, "p95": null, "p99": null})
    );

    // A second batch in the same minute merges its histogram: now 90 of 100 at <= 5 ms.
    let more = json!({"batch_id": "edge-1:2", "gateway": "edge-1", "rows": [
        with(row(&id, minute, 80, json!({}), json!({"2xx": 80}), minute + 20), "hello",
             json!([0, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None),
        with(row(&id, minute, 10, json!({}), json!({"2xx": 10}), minute + 20), "hello",
             json!([0, 0, 4, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]), None),
    ]});
    assert_eq!(h.post_usage(&more).await.status, StatusCode::OK);
    let report = h.usage(&id, &query).await;
    let point = &report.body["points"][0];
    assert_eq!(point["routes"], json!({"hello": 98, "orders": 2}));
    assert_eq!(
        point["latency_ms"],
        json!({"p50": 5, "p95": 100, "p99": null}),
        "{point}"
    );
    assert_eq!(
        h.show(&id).await["last_used_address"],
        "2001:db8::5",
        "a batch without addresses leaves it"
    );

    // Bad latency (more than 13 buckets) is refused with the row named.
    let bad = json!({"batch_id": "edge-1:3", "rows": [
        with(row(&id, minute, 1, json!({}), json!({}), minute), "hello", json!(vec![0; 14]), None),
    ]});
    h.post_usage(&bad)
        .await
        .assert_problem(StatusCode::BAD_REQUEST);
}

/// Gateways name themselves in feed requests (`x-keygate-gateway`) and usage batches
/// (`gateway`); `GET /api/v1/fleet` (admin) lists what each did last; unseen ones age out.
async fn the_fleet_lists_the_gateways_that_poll_and_report(backend: Backend) {
    let h = harness(backend).await;
    let poll = |gateway: &'static str, since: u64| {
        let request = Request::builder()
            .uri(format!("/v1/revocations?since={since}&wait=0"))
            .header(header::AUTHORIZATION, format!("Bearer {SERVICE}"))
            .header(keygate_core::wire::GATEWAY_HEADER, gateway)
            .body(Body::empty())
            .unwrap();
        app(h.state.clone()).oneshot(request)
    };
    assert_eq!(poll("edge-1", 0).await.unwrap().status(), StatusCode::OK);
    h.clock.advance(5);
    assert_eq!(poll("edge-1", 7).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        poll("bad gateway name", 0).await.unwrap().status(),
        StatusCode::OK,
        "an unusable name is not recorded, the poll is answered"
    );
    let batch = json!({"batch_id": "edge-2:1", "gateway": "edge-2", "rows": []});
    assert_eq!(h.post_usage(&batch).await.status, StatusCode::OK);
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let minute = NOW - NOW.rem_euclid(60);
    h.clock.advance(5);
    let batch = json!({"batch_id": "edge-1:1", "gateway": "edge-1", "rows": [
        row(&id, minute, 1, json!({}), json!({}), minute + 1),
        row("unknown-key-id-1", minute, 1, json!({}), json!({}), minute + 1),
    ]});
    assert_eq!(h.post_usage(&batch).await.status, StatusCode::OK);

    let fleet = h.admin("GET", "/api/v1/fleet", None).await;
    assert_eq!(fleet.status, StatusCode::OK, "{}", fleet.body);
    assert_eq!(
        fleet.body,
        json!([
            {"gateway": "edge-1", "last_feed_sequence": 7, "last_feed_at": rfc3339(NOW + 5),
             "last_usage_batch_at": rfc3339(NOW + 10), "last_usage_rows": 2,
             "last_seen_at": rfc3339(NOW + 10)},
            {"gateway": "edge-2", "last_feed_sequence": null, "last_feed_at": null,
             "last_usage_batch_at": rfc3339(NOW + 5), "last_usage_rows": 0,
             "last_seen_at": rfc3339(NOW + 5)},
        ])
    );
    // Admin only.
    h.send("GET", "/api/v1/fleet", None, None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);
    h.send("GET", "/api/v1/fleet", Some(SERVICE), None)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED);

    // Seven days unseen: forgotten (once another gateway is noted).
    h.clock.advance(7 * 86_400 + 1);
    assert_eq!(poll("edge-3", 1).await.unwrap().status(), StatusCode::OK);
    let fleet = h.admin("GET", "/api/v1/fleet", None).await;
    let names: Vec<&str> = fleet
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gateway"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["edge-3"]);

    // Bounded: past 1000 gateways, the least recently seen go.
    let store = h.state.store();
    for n in 0..1_001 {
        let now = NOW + 7 * 86_400 + 11 + n;
        store
            .gateway_reported(&format!("gw-{n:04}"), 1, now)
            .await
            .unwrap();
    }
    let all = store.gateways(NOW + 7 * 86_400 + 1_012).await.unwrap();
    assert_eq!(all.len(), 1_000);
    assert!(all
        .iter()
        .all(|g| g.gateway != "gw-0000" && g.gateway != "edge-3"));
}
