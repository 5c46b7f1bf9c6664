//! Blocked addresses over HTTP (`/api/v1/blocks`, the feed's `blocks` member and the
//! automatic blocks filters report with their feed requests), on both backends.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use keygate_server::app;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::backends::{eventually, Backend};
use crate::{harness_on, jwt_settings, Harness, NOW};

const BLOCKS: &str = "/api/v1/blocks";

on_both_backends!(
    operator_blocks_are_added_listed_removed_and_audited,
    operator_blocks_travel_the_feed_and_end_by_themselves,
    a_long_poll_is_woken_by_a_block,
    reported_automatic_blocks_are_listed_beside_operator_ones,
    removing_an_automatic_block_lifts_it_through_the_feed,
);

impl Harness {
    async fn blocks_feed(&self, query: &str, report: Option<&str>) -> Value {
        let uri = format!("/v1/revocations?{query}");
        let mut headers = vec![("x-keygate-gateway", "edge-1")];
        if let Some(report) = report {
            headers.push(("x-keygate-blocked", report));
        }
        let (status, body) = self.feed_with(&uri, &headers).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn feed_with(&self, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method("GET")
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", crate::SERVICE));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app(self.state.clone())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn block(&self, body: Value) -> Value {
        let answer = self.admin("POST", BLOCKS, Some(body)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        answer.body
    }
}

async fn operator_blocks_are_added_listed_removed_and_audited(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let block = h
        .block(json!({"cidr": "203.0.113.9/24", "expires_in_seconds": 600, "reason": "scanner"}))
        .await;
    assert_eq!(block["cidr"], "203.0.113.0/24");
    assert_eq!(block["source"], "operator");
    assert_eq!(block["expires_at"], crate::rfc3339(NOW + 600));
    for bad in [
        json!({"cidr": "203.0.113.0/33"}),
        json!({"cidr": "10.0.0.1", "expires_in_seconds": 0}),
        json!({"cidr": "10.0.0.1", "until": 5}),
    ] {
        h.admin("POST", BLOCKS, Some(bad))
            .await
            .assert_problem(StatusCode::BAD_REQUEST);
    }
    let list = h.admin("GET", BLOCKS, None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["operator"], 1);
    assert_eq!(list.body["blocks"][0]["reason"], "scanner");
    let id = block["id"].as_str().unwrap();
    let removed = h.admin("DELETE", &format!("{BLOCKS}/{id}"), None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    h.admin("DELETE", &format!("{BLOCKS}/{id}"), None)
        .await
        .assert_problem(StatusCode::NOT_FOUND);
    let list = h.admin("GET", BLOCKS, None).await;
    assert_eq!(list.body["blocks"], json!([]));

    let page = h
        .admin("GET", "/api/v1/audit?target=203.0.113.0/24", None)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let seen: Vec<&str> = page.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["block_remove", "block_add"]);
}

async fn operator_blocks_travel_the_feed_and_end_by_themselves(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    // A filter that does not ask for blocks gets none.
    let old = h.blocks_feed("since=0", None).await;
    assert!(old.get("blocks").is_none(), "{old}");
    let empty = h.blocks_feed("since=0&blocks=0", None).await;
    assert_eq!(empty["blocks"]["list"], json!([]));
    let version = empty["blocks"]["version"].as_u64().unwrap();
    // The same version: nothing to tell.
    let same = h
        .blocks_feed(&format!("since=0&blocks={version}"), None)
        .await;
    assert!(same.get("blocks").is_none(), "{same}");

    h.block(json!({"cidr": "198.51.100.0/24", "expires_in_seconds": 60}))
        .await;
    let answer = h
        .blocks_feed(&format!("since=0&blocks={version}"), None)
        .await;
    assert_eq!(
        answer["blocks"]["list"],
        json!([{"cidr": "198.51.100.0/24", "until": NOW + 60}])
    );
    h.clock.advance(60);
    let answer = h.blocks_feed("since=0&blocks=1", None).await;
    assert_eq!(answer["blocks"]["list"], json!([]), "ended by itself");
    let (status, _) = h.feed_with("/v1/revocations?since=0&blocks=x", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn a_long_poll_is_woken_by_a_block(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    let empty = h.blocks_feed("since=0&blocks=0", None).await;
    let version = empty["blocks"]["version"].as_u64().unwrap();
    let query = format!("since=0&wait=60&blocks={version}");
    let poll = tokio::time::timeout(Duration::from_secs(20), h.blocks_feed(&query, None));
    let (answer, ()) = tokio::join!(poll, async {
        assert!(
            eventually(Duration::from_secs(5), || h.state.feed_counters().waiting()
                == 1)
            .await,
            "the long-poll is held"
        );
        h.block(json!({"cidr": "192.0.2.1"})).await;
    });
    let answer = answer.expect("woken by the block, long before its wait is over");
    assert_eq!(answer["blocks"]["list"][0]["cidr"], "192.0.2.1/32");
}

async fn reported_automatic_blocks_are_listed_beside_operator_ones(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    h.block(json!({"cidr": "203.0.113.0/24"})).await;
    let report = json!([
        {"address": "198.51.100.7", "until": NOW + 300, "failures": 50},
        {"address": "not an address", "until": NOW + 300, "failures": 50},
        {"address": "198.51.100.8", "until": NOW - 1, "failures": 50},
    ])
    .to_string();
    let answer = h.blocks_feed("since=0", Some(&report)).await;
    assert!(answer.get("blocks").is_none());
    assert_eq!(h.state.service().blocks().reported(), 1);
    let list = h.admin("GET", BLOCKS, None).await;
    assert_eq!(list.body["operator"], 1);
    assert_eq!(list.body["automatic"], 1);
    let automatic = &list.body["blocks"][0];
    assert_eq!(automatic["cidr"], "198.51.100.7/32");
    assert_eq!(automatic["source"], "automatic");
    assert_eq!(automatic["created_by"], "edge-1");
    assert_eq!(automatic["failures"], 50);
    assert_eq!(automatic["expires_at"], crate::rfc3339(NOW + 300));
    // Automatic blocks stay out of the feed: each Envoy blocks on its own counts.
    let answer = h.blocks_feed("since=0&blocks=0", None).await;
    assert_eq!(answer["blocks"]["list"].as_array().unwrap().len(), 1);
}

async fn removing_an_automatic_block_lifts_it_through_the_feed(backend: Backend) {
    let h = harness_on(backend, jwt_settings()).await;
    // Two Envoys blocked the same address; another address stays blocked.
    for (gateway, until) in [("edge-1", NOW + 300), ("edge-2", NOW + 400)] {
        let report = json!([{"address": "198.51.100.7", "until": until, "failures": 50}]);
        let (status, _) = h
            .feed_with(
                "/v1/revocations?since=0",
                &[
                    ("x-keygate-gateway", gateway),
                    ("x-keygate-blocked", &report.to_string()),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let report = json!([{"address": "198.51.100.9", "until": NOW + 300, "failures": 50}]);
    h.blocks_feed("since=0", Some(&report.to_string())).await;
    let before = h.blocks_feed("since=0&blocks=0", None).await;
    assert!(before["blocks"].get("lifted").is_none(), "{before}");
    let list = h.admin("GET", BLOCKS, None).await;
    assert_eq!(list.body["automatic"], 3);
    let id = list.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cidr"] == "198.51.100.7/32")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed = h.admin("DELETE", &format!("{BLOCKS}/{id}"), None).await;
    assert_eq!(removed.status, StatusCode::OK, "{}", removed.body);
    assert_eq!(removed.body["cidr"], "198.51.100.7/32");
    // Both blocks of that address are lifted (no longer listed); the other stays.
    let list = h.admin("GET", BLOCKS, None).await;
    assert_eq!(list.body["automatic"], 1, "{}", list.body);
    assert_eq!(list.body["blocks"][0]["cidr"], "198.51.100.9/32");
    let again = h.admin("DELETE", &format!("{BLOCKS}/{id}"), None).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // The feed tells every filter, up to the later of the two ends, under a new version.
    let version = before["blocks"]["version"].as_u64().unwrap();
    let after = h
        .blocks_feed(&format!("since=0&blocks={version}"), None)
        .await;
    assert_eq!(
        after["blocks"]["lifted"],
        json!([{"cidr": "198.51.100.7/32", "until": NOW + 400}]),
        "{after}"
    );
    assert_ne!(after["blocks"]["version"].as_u64().unwrap(), version);
}
