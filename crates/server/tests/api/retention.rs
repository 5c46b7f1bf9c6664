//! Retention: old audit rows and usage counts are pruned by the clock, on both backends.

use std::time::{Duration, Instant};

use keygate_server::model::{AuditFilter, NewAuditRow};
use keygate_server::service::retention::{
    prune_once, prune_periodically, steps, RetentionArgs, RetentionSettings,
};
use serde_json::json;

use crate::backends::Backend;
use crate::{harness_on, jwt_settings, Harness, NOW, SERVICE};

on_both_backends!(
    old_audit_rows_and_usage_counts_are_pruned_by_the_clock,
    the_retention_task_prunes_on_its_own,
);

const DAY: i64 = 86_400;

async fn audit_row(h: &Harness, action: &str, at: i64) {
    let row = NewAuditRow {
        at,
        action,
        actor: None,
        source: Some("192.0.2.1"),
        target: None,
        outcome: if action == "admin_auth" {
            "denied"
        } else {
            "ok"
        },
        detail: None,
    };
    h.state.store().append_audit(&row).await.unwrap();
}

/// The `at` of every audit row, oldest first.
async fn audit_times(h: &Harness) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = h
        .state
        .store()
        .list_audit(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.action, NOW - row.at))
        .collect();
    rows.sort_by_key(|(_, age)| -age);
    rows
}

/// Days ago (from NOW) of the minutes holding usage of `id`.
async fn usage_ages(h: &Harness, id: &str) -> Vec<i64> {
    let cells = h
        .state
        .store()
        .usage_cells(id, NOW - 1000 * DAY, NOW + DAY, DAY)
        .await
        .unwrap();
    let mut ages: Vec<i64> = cells
        .iter()
        .map(|c| (NOW - c.bucket).div_euclid(DAY))
        .collect();
    ages.dedup();
    ages
}

/// A key with audit rows and usage counts of many ages.
async fn seeded(backend: Backend) -> (Harness, String) {
    let h = harness_on(backend, jwt_settings()).await;
    let id = h.create(json!({"name": "k", "scopes": []})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (action, days) in [
        ("create", 400),
        ("revoke", 100),
        ("admin_auth", 40),
        ("admin_auth", 10),
    ] {
        audit_row(&h, action, NOW - days * DAY).await;
    }
    let minute = NOW - NOW.rem_euclid(60);
    let rows: Vec<_> = [100, 10, 0]
        .iter()
        .map(|days| {
            json!({"key_id": id, "minute": minute - days * DAY, "allowed": 1,
                   "last_used_at": minute - days * DAY})
        })
        .collect();
    let answer = h
        .send(
            "POST",
            "/v1/usage",
            Some(SERVICE),
            Some(&json!({"batch_id": "aged", "rows": rows}).to_string()),
        )
        .await;
    assert_eq!(answer.body["rows"], 3, "{}", answer.body);
    (h, id)
}

async fn old_audit_rows_and_usage_counts_are_pruned_by_the_clock(backend: Backend) {
    let (h, id) = seeded(backend).await;
    assert_eq!(usage_ages(&h, &id).await, [100, 10, 0]);
    let settings = RetentionSettings::default();
    let default_steps = steps(&settings);

    let deleted = prune_once(h.state.store(), h.clock.as_ref(), &default_steps).await;
    assert_eq!(
        deleted,
        [Some(1), Some(1), Some(1)],
        "audit, refused, usage"
    );
    assert_eq!(
        audit_times(&h).await,
        [
            ("revoke".to_owned(), 100 * DAY),
            ("admin_auth".to_owned(), 10 * DAY),
            ("create".to_owned(), 0),
        ]
    );
    assert_eq!(usage_ages(&h, &id).await, [10, 0]);
    // Again at the same time: nothing more goes.
    let again = prune_once(h.state.store(), h.clock.as_ref(), &default_steps).await;
    assert_eq!(again, [Some(0), Some(0), Some(0)]);

    // 300 days later: the revoke is 400 days old, the rest of the usage 300 days.
    h.clock.advance(300 * DAY);
    prune_once(h.state.store(), h.clock.as_ref(), &default_steps).await;
    let left: Vec<String> = audit_times(&h).await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(left, ["create"]);
    assert_eq!(usage_ages(&h, &id).await, Vec::<i64>::new());

    // Kept for good when the retention is 0 days.
    let (h, id) = seeded(Backend::Sqlite).await;
    let forever = RetentionSettings::from_args(&RetentionArgs {
        audit_retention_days: 0,
        refused_admin_retention_days: 0,
        usage_retention_days: 0,
        ..RetentionArgs::default()
    })
    .unwrap();
    h.clock.advance(10_000 * DAY);
    prune_once(h.state.store(), h.clock.as_ref(), &steps(&forever)).await;
    assert_eq!(audit_times(&h).await.len(), 5);
    assert_eq!(usage_ages(&h, &id).await.len(), 3);
}

async fn the_retention_task_prunes_on_its_own(backend: Backend) {
    let (h, id) = seeded(backend).await;
    let task = tokio::spawn(prune_periodically(
        h.state.store().clone(),
        h.clock.clone(),
        steps(&RetentionSettings::default()),
        Duration::from_millis(20),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if usage_ages(&h, &id).await == [10, 0] && audit_times(&h).await.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the first prune never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time passes: the next runs see it.
    h.clock.advance(366 * DAY);
    loop {
        if usage_ages(&h, &id).await.is_empty() && audit_times(&h).await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "later prunes never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
