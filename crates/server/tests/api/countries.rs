//! `key.new_country`, on both backends: usage rows carry the countries a key was used from;
//! the key's first country is its baseline (no alert), each later new one raises exactly one
//! signed `key.new_country` delivery, a repeat (or a resent batch) none; the usage report
//! lists the countries seen; batches taken at once announce a country once.

use keygate_server::service::alerts::deliver_once;

use super::alerts::{deliveries, receiver, register, verify};
use super::*;

on_both_backends!(a_second_country_raises_one_new_country_alert);

fn row(key: &str, minute: i64, countries: &[&str]) -> Value {
    json!({
        "key_id": key, "minute": minute, "allowed": 1, "last_used_at": minute + 1,
        "countries": countries,
    })
}

async fn a_second_country_raises_one_new_country_alert(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let (url, received) = receiver(200).await;
    let (webhook, secret) = register(&h, &url, json!(["key.new_country"])).await;
    let key = h
        .create(json!({"name": "ci", "scopes": [], "owner": "team-a"}))
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let other = h.create(json!({"name": "other", "scopes": []})).await;
    let other = other["id"].as_str().unwrap().to_owned();
    let post = |batch_id: &str, rows: Vec<Value>| {
        let body = json!({"batch_id": batch_id, "rows": rows}).to_string();
        let h = &h;
        async move {
            let answer = h
                .send("POST", "/v1/usage", Some(SERVICE), Some(&body))
                .await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
            answer.body
        }
    };
    let minute = NOW - NOW.rem_euclid(60);

    // The first country is the baseline; a repeat, and rows without countries, raise nothing.
    post(
        "b1",
        vec![row(&id, minute, &["DE"]), row(&other, minute, &[])],
    )
    .await;
    post("b2", vec![row(&id, minute + 60, &["DE"])]).await;
    assert!(deliveries(&h, &webhook).await.is_empty());

    // A second country: one delivery, with the countries seen before.
    h.clock.advance(120);
    let batch = vec![row(&id, minute + 120, &["US", "DE"])];
    post("b3", batch.clone()).await;
    post("b3", batch).await; // resent: no second alert
    post("b4", vec![row(&id, minute + 180, &["US"])]).await;
    let queued = deliveries(&h, &webhook).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(deliver_once(h.state.service()).await, 1);
    let got = received.all();
    assert_eq!(got.len(), 1);
    let (body, _) = verify(&secret, &got[0].0, &got[0].1);
    assert_eq!(body["type"], "key.new_country");
    assert_eq!(body["subject"], id.as_str());
    assert_eq!(
        body["data"],
        json!({"id": id, "name": "ci", "owner": "team-a", "country": "US", "seen_before": ["DE"]})
    );

    // Two batches at once with the same new country (as two replicas would take them): one
    // delivery.
    h.clock.advance(60);
    let (one, two) = tokio::join!(
        post("b6", vec![row(&id, minute + 240, &["JP"])]),
        post("b7", vec![row(&id, minute + 240, &["JP", "US"])]),
    );
    assert_eq!(
        (one["applied"].clone(), two["applied"].clone()),
        (json!(true), json!(true))
    );
    let queued = deliveries(&h, &webhook).await;
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!(deliver_once(h.state.service()).await, 1);
    let got = received.all();
    let (body, _) = verify(&secret, &got[1].0, &got[1].1);
    assert_eq!(body["data"]["country"], "JP");
    assert_eq!(body["data"]["seen_before"], json!(["DE", "US"]));

    // Another key's first countries: both in one batch, the earlier minute is the baseline.
    post(
        "b5",
        vec![
            row(&other, minute + 240, &["FR"]),
            row(&other, minute + 180, &["AT"]),
        ],
    )
    .await;
    let queued = deliveries(&h, &webhook).await;
    assert_eq!(queued.len(), 3, "{queued:?}");
    assert_eq!(deliver_once(h.state.service()).await, 1);
    let got = received.all();
    let (body, _) = verify(&secret, &got[2].0, &got[2].1);
    assert_eq!(body["data"]["country"], "FR");
    assert_eq!(body["data"]["seen_before"], json!(["AT"]));
    assert_eq!(body["data"]["owner"], Value::Null);

    // The usage report lists the countries, first seen first.
    let report = h.admin("GET", &format!("{KEYS}/{id}/usage"), None).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert_eq!(
        report.body["countries"],
        json!([
            {"country": "DE", "first_seen_at": rfc3339(NOW)},
            {"country": "US", "first_seen_at": rfc3339(NOW + 120)},
            {"country": "JP", "first_seen_at": rfc3339(NOW + 180)},
        ])
    );

    // Malformed countries are refused with 400 (the filter sends upper-case codes only).
    for bad in [json!(["de"]), json!(["DEU"]), json!([1])] {
        let body = json!({"batch_id": "bad", "rows": [
            {"key_id": id, "minute": minute, "allowed": 1, "last_used_at": 0, "countries": bad}
        ]});
        h.send("POST", "/v1/usage", Some(SERVICE), Some(&body.to_string()))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    assert_eq!(deliveries(&h, &webhook).await.len(), 3);
}
