//! The audit log: every management action, with time, actor (the admin key's id),
//! source address, target key id and outcome. Never a secret: no key plaintext, no admin key,
//! no token in any field.
//!
//! Operations append with [`record`]. (The HTTP layer appends one entry per audited
//! management request, see `crate::http::audit`.)
//!
//! Refused admin authentications come from anyone and cost nothing to send, so they are
//! aggregated: one row per source address and minute with a count ([`RefusedAdmin`]), the
//! request's method and path cut to a few hundred bytes, and at most [`MAX_REFUSED_SOURCES`]
//! sources a minute (the rest share one row whose source is `other`). The counts live in
//! memory until they are written: when their minute is over (by the next refusal or the
//! periodic flush), before the audit log is read, and when the service stops.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Clock;
use crate::model::{AuditFilter, AuditRow, NewAuditRow};
use crate::service::error::ApiError;
use crate::store::KeyStore;
use crate::timestamp::format_rfc3339;

/// One management action to append to the audit log.
#[derive(Clone, Debug)]
pub struct AuditEntry<'a> {
    /// `create`, `rotate`, `revoke`, `expire`, `update`, `signing_key_rotate`, `import`,
    /// `admin_auth`.
    pub action: &'a str,
    /// The admin key's id (never the key).
    pub actor: Option<String>,
    /// The client's address.
    pub source: Option<String>,
    /// The key id acted on.
    pub target: Option<String>,
    /// `ok`, `denied` or `error: ...`.
    pub outcome: &'a str,
    /// Anything else worth keeping, never secrets.
    pub detail: Option<Value>,
}

/// Appends `entry` to the audit log at `now`. A failed write is logged, never raised:
/// auditing must not fail (or panic) the request it describes.
pub async fn record(store: &KeyStore, now: i64, entry: AuditEntry<'_>) {
    let detail = entry.detail.as_ref().map(Value::to_string);
    let row = NewAuditRow {
        at: now,
        action: entry.action,
        actor: entry.actor.as_deref(),
        source: entry.source.as_deref(),
        target: entry.target.as_deref(),
        outcome: entry.outcome,
        detail: detail.as_deref(),
    };
    if let Err(error) = store.append_audit(&row).await {
        tracing::error!(
            action = entry.action,
            target = entry.target.as_deref().unwrap_or(""),
            outcome = entry.outcome,
            error = %error,
            "cannot append to the audit log"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Refused admin authentications, aggregated

/// Longest request path kept in a refused-admin row (bytes; longer ones are cut and end `…`).
pub const MAX_REFUSED_PATH_BYTES: usize = 256;
/// Longest method kept in a refused-admin row.
const MAX_REFUSED_METHOD_BYTES: usize = 16;
/// Sources with a row of their own per minute; refusals from further sources share one row
/// whose source is [`OTHER_SOURCE`].
pub const MAX_REFUSED_SOURCES: usize = 256;
/// The source of the row that gathers refusals past [`MAX_REFUSED_SOURCES`], and of those
/// whose peer is not known.
pub const OTHER_SOURCE: &str = "other";
/// Rows waiting in memory at most (several minutes' worth while the database cannot be
/// written); past it, further refusals join the `other` row of their minute.
const MAX_WAITING_ROWS: usize = 4 * (MAX_REFUSED_SOURCES + 1);
/// How often the periodic flush writes the counts of minutes that are over.
pub const REFUSED_FLUSH_PERIOD: Duration = Duration::from_secs(30);

/// The refusals from one source in one minute.
#[derive(Clone, Debug, Default)]
struct Refusals {
    /// The audit row once written.
    row_id: Option<i64>,
    count: u64,
    /// `count` as last written.
    written: u64,
    /// Refusals by reason (`missing`, `invalid`).
    reasons: BTreeMap<&'static str, u64>,
    /// The first request's method and path, cut short.
    method: String,
    path: String,
    first_at: i64,
    last_at: i64,
}

impl Refusals {
    fn detail(&self) -> String {
        serde_json::json!({
            "count": self.count,
            "reasons": self.reasons,
            "method": self.method,
            "path": self.path,
            "first_at": format_rfc3339(self.first_at),
            "last_at": format_rfc3339(self.last_at),
        })
        .to_string()
    }
}

/// Refused admin authentications waiting to be written, by (minute, source).
#[derive(Debug, Default)]
pub struct RefusedAdmin {
    rows: Mutex<BTreeMap<(i64, String), Refusals>>,
    /// One flush at a time, so a row is inserted once and then only updated.
    flushing: tokio::sync::Mutex<()>,
}

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl RefusedAdmin {
    /// Counts one refusal at `now` from `source` (an IP address); answers whether a minute is
    /// over with counts still unwritten.
    fn note(&self, now: i64, source: &str, reason: &'static str, method: &str, path: &str) -> bool {
        let minute = now - now.rem_euclid(60);
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let own = (minute, source.to_owned());
        let sources_this_minute = rows.range((minute, String::new())..).count();
        let slot = if rows.contains_key(&own)
            || (sources_this_minute < MAX_REFUSED_SOURCES && rows.len() < MAX_WAITING_ROWS)
        {
            own
        } else {
            (minute, OTHER_SOURCE.to_owned())
        };
        let entry = rows.entry(slot).or_insert_with(|| Refusals {
            method: cut(method, MAX_REFUSED_METHOD_BYTES),
            path: cut(path, MAX_REFUSED_PATH_BYTES),
            first_at: now,
            ..Refusals::default()
        });
        entry.count += 1;
        *entry.reasons.entry(reason).or_default() += 1;
        entry.last_at = entry.last_at.max(now);
        rows.range(..(minute, String::new()))
            .any(|(_, r)| r.count > r.written)
    }

    /// Writes the counts not written yet: every row when `all`, else those of minutes before
    /// `now`'s. Rows of past minutes are forgotten once written.
    pub async fn flush(&self, store: &KeyStore, clock: &dyn Clock, all: bool) {
        let _one_at_a_time = self.flushing.lock().await;
        let now = clock.now();
        let minute = now - now.rem_euclid(60);
        let due: Vec<((i64, String), Refusals)> = {
            let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            rows.iter()
                .filter(|((at, _), r)| (all || *at < minute) && r.count > r.written)
                .map(|(key, r)| (key.clone(), r.clone()))
                .collect()
        };
        for ((row_minute, source), refusals) in due {
            let detail = refusals.detail();
            let written = match refusals.row_id {
                Some(id) => store.update_audit_detail(id, &detail).await.map(|()| id),
                None => {
                    let row = NewAuditRow {
                        at: refusals.first_at,
                        action: "admin_auth",
                        actor: None,
                        source: Some(source.as_str()),
                        target: None,
                        outcome: "denied",
                        detail: Some(&detail),
                    };
                    store.append_audit(&row).await
                }
            };
            let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            match written {
                Ok(id) => {
                    let key = (row_minute, source);
                    if let Some(entry) = rows.get_mut(&key) {
                        entry.row_id = Some(id);
                        entry.written = refusals.count;
                    }
                    let done = rows
                        .get(&key)
                        .is_some_and(|r| r.count == r.written && row_minute < minute);
                    if done {
                        rows.remove(&key);
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot write refused admin requests to the audit log");
                }
            }
        }
        // Written rows of past minutes that nothing changed since.
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.retain(|(at, _), r| *at >= minute || r.count > r.written);
    }

    /// Counts a refused admin authentication at `now` (`reason`: `missing` or `invalid`) in
    /// `source`'s row of the minute (no actor, no target); writes the rows of minutes that
    /// are over.
    pub async fn refuse(
        &self,
        store: &KeyStore,
        clock: &dyn Clock,
        source: &str,
        reason: &'static str,
        method: &str,
        path: &str,
    ) {
        if self.note(clock.now(), source, reason, method, path) {
            self.flush(store, clock, false).await;
        }
    }
}

/// Writes the refusal counts of past minutes every `period` (the rows of the current minute
/// are written once it is over, or when the audit log is read). Runs until dropped.
pub async fn flush_refused_periodically(
    refused: &RefusedAdmin,
    store: &KeyStore,
    clock: &dyn Clock,
    period: Duration,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        refused.flush(store, clock, false).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the audit log

/// One audit entry as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub id: i64,
    /// RFC 3339.
    pub at: Option<String>,
    pub action: String,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<Value>,
}

impl AuditView {
    pub fn of(row: AuditRow) -> Self {
        Self {
            id: row.id,
            at: format_rfc3339(row.at),
            action: row.action,
            actor: row.actor,
            source: row.source,
            target: row.target,
            outcome: row.outcome,
            detail: row
                .detail
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))),
        }
    }
}

/// A page of `GET /api/v1/audit`, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Every action the audit log records (the values `action` filters on).
pub const ACTIONS: [&str; 25] = [
    "create",
    "update",
    "rotate",
    "revoke",
    "expire",
    "import",
    "signing_key_rotate",
    "admin_auth",
    "role_create",
    "role_update",
    "role_delete",
    "pool_set",
    "pool_delete",
    "session.login",
    "session.login_failed",
    "session.login_limited",
    "session.logout",
    "signing_material_set",
    "signing_material_remove",
    "webhook_create",
    "webhook_delete",
    "webhook_redeliver",
    "key_leaked",
    "block_add",
    "block_remove",
];

/// One page of the audit log, newest first, for `filter` (whose `limit` is the page size).
/// Every refusal counted so far is written first, so the reader sees it.
pub async fn list(
    store: &KeyStore,
    clock: &dyn Clock,
    refused: &RefusedAdmin,
    mut filter: AuditFilter,
) -> Result<AuditPage, ApiError> {
    refused.flush(store, clock, true).await;
    let limit = filter.limit as usize;
    filter.limit += 1;
    let mut rows = store.list_audit(&filter).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|row| row.id.to_string())
    } else {
        None
    };
    Ok(AuditPage {
        entries: rows.into_iter().map(AuditView::of).collect(),
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 16), "short");
        let long = "é".repeat(40_000);
        let kept = cut(&long, MAX_REFUSED_PATH_BYTES);
        assert!(kept.len() <= MAX_REFUSED_PATH_BYTES, "{}", kept.len());
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn refusals_fold_per_source_and_minute_and_stay_bounded() {
        let refused = RefusedAdmin::default();
        let path = format!("/api/v1/auth/keys/{}", "x".repeat(60_000));
        for i in 0..1000 {
            refused.note(120 + i % 60, "10.0.0.1", "missing", "GET", &path);
        }
        for i in 0..10_000u32 {
            let source = std::net::Ipv4Addr::from(0x0a01_0000 + i).to_string();
            refused.note(150, &source, "invalid", "GET", "/api/v1/auth/keys");
        }
        let rows = refused.rows.lock().unwrap();
        assert_eq!(rows.len(), MAX_REFUSED_SOURCES + 1, "sources plus `other`");
        let one = &rows[&(120, "10.0.0.1".to_owned())];
        assert_eq!(one.count, 1000);
        assert!(one.detail().len() < 1024, "{}", one.detail().len());
        let other = &rows[&(120, OTHER_SOURCE.to_owned())];
        assert_eq!(other.count, 10_000 - (MAX_REFUSED_SOURCES as u64 - 1));
        drop(rows);
        assert!(
            !refused.note(179, "10.0.0.1", "missing", "GET", "/"),
            "same minute"
        );
        assert!(
            refused.note(180, "10.0.0.1", "missing", "GET", "/"),
            "a new minute"
        );
    }
}
