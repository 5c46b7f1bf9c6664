//! Live events for the management page (`GET /api/v1/events`): the key operations and the
//! usage ingest publish here, and each subscriber receives them through a bounded buffer.
//!
//! Events: `key.created` `{id, owner, name}`, `key.revoked` `{id, owner}`, `key.rotated`
//! `{id, new_id, owner}`, `key.updated` `{id, owner}`, `key.expired` `{id, owner}`, `usage`
//! `{key_id, owner, minute, allowed, denied}` (one per ingested row). `owner` is `null` for a
//! key without one. Nothing is published while nobody listens. A subscriber that falls more
//! than [`EVENT_BUFFER`] events behind loses the oldest (it is told how many, see
//! `crate::http::events`). At most a configured number of subscribers at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keygate_core::wire::UsageRow;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::model::KeyRecord;

/// Events a subscriber may fall behind by before it loses the oldest.
pub const EVENT_BUFFER: usize = 4096;

/// One live event: its SSE name, the owner of its key (for filtering), and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveEvent {
    pub name: &'static str,
    pub owner: String,
    pub data: Value,
}

/// The publisher, and the count of subscribers.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Arc<LiveEvent>>,
    subscribers: Arc<AtomicUsize>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::Sender::new(EVENT_BUFFER),
            subscribers: Arc::default(),
        }
    }
}

/// A subscriber's receiving end; the subscriber count drops when it is dropped.
#[derive(Debug)]
pub struct Subscription {
    pub receiver: broadcast::Receiver<Arc<LiveEvent>>,
    count: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

fn owner_value(owner: &str) -> Value {
    if owner.is_empty() {
        Value::Null
    } else {
        Value::from(owner)
    }
}

impl Events {
    /// A new subscription, unless `max` subscribers are listening already.
    pub fn subscribe(&self, max: usize) -> Option<Subscription> {
        self.subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Subscription {
            receiver: self.sender.subscribe(),
            count: self.subscribers.clone(),
        })
    }

    /// Subscribers listening now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Whether anyone listens (so that work to build events can be skipped).
    pub fn has_subscribers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn publish(&self, event: LiveEvent) {
        if self.has_subscribers() {
            // An error only means that the last subscriber just left.
            let _ = self.sender.send(Arc::new(event));
        }
    }

    fn key_event(&self, name: &'static str, record: &KeyRecord, mut data: Value) {
        if let Some(object) = data.as_object_mut() {
            object.insert("id".into(), record.id.clone().into());
            object.insert("owner".into(), owner_value(&record.owner));
        }
        self.publish(LiveEvent {
            name,
            owner: record.owner.clone(),
            data,
        });
    }

    pub fn key_created(&self, record: &KeyRecord) {
        self.key_event("key.created", record, json!({ "name": record.name }));
    }

    pub fn key_revoked(&self, record: &KeyRecord) {
        self.key_event("key.revoked", record, json!({}));
    }

    /// `record` is the old key, `new_id` its successor.
    pub fn key_rotated(&self, record: &KeyRecord, new_id: &str) {
        self.key_event("key.rotated", record, json!({ "new_id": new_id }));
    }

    pub fn key_updated(&self, record: &KeyRecord) {
        self.key_event("key.updated", record, json!({}));
    }

    pub fn key_expired(&self, record: &KeyRecord) {
        self.key_event("key.expired", record, json!({}));
    }

    /// One `usage` event per row; `owner_of` answers a row's key's owner (`""` for none).
    pub fn usage<'a>(&self, rows: &[UsageRow], owner_of: impl Fn(&str) -> &'a str) {
        for row in rows {
            let owner = owner_of(&row.key_id);
            let denied = row
                .counts
                .denied
                .values()
                .fold(0u64, |sum, n| sum.saturating_add(*n));
            self.publish(LiveEvent {
                name: "usage",
                owner: owner.to_owned(),
                data: json!({
                    "key_id": row.key_id,
                    "owner": owner_value(owner),
                    "minute": row.minute,
                    "allowed": row.counts.allowed,
                    "denied": denied,
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_are_bounded_and_counted() {
        let events = Events::default();
        let first = events.subscribe(2).unwrap();
        let second = events.subscribe(2).unwrap();
        assert!(events.subscribe(2).is_none());
        drop(first);
        assert_eq!(events.subscribers(), 1);
        assert!(events.subscribe(2).is_some());
        drop(second);
    }

    #[test]
    fn nothing_is_sent_without_subscribers_and_events_carry_the_owner() {
        let events = Events::default();
        events.publish(LiveEvent {
            name: "x",
            owner: String::new(),
            data: Value::Null,
        });
        let mut sub = events.subscribe(1).unwrap();
        assert!(sub.receiver.try_recv().is_err());
        let row: UsageRow = serde_json::from_value(json!({
            "key_id": "k", "minute": 60, "allowed": 3, "denied": {"revoked": 2, "scope": 1},
            "last_used_at": 61
        }))
        .unwrap();
        events.usage(&[row], |_| "alice");
        let event = sub.receiver.try_recv().unwrap();
        assert_eq!(event.name, "usage");
        assert_eq!(event.owner, "alice");
        assert_eq!(
            event.data,
            json!({"key_id": "k", "owner": "alice", "minute": 60, "allowed": 3, "denied": 3})
        );
    }
}
