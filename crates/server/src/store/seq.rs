//! The feed state row: the highest committed sequence number, read by the feed and by the
//! PostgreSQL listener after it reconnects.

use super::error::{u64_of, StoreError};
use super::sql::{Db, Sql, StoredRow};
use crate::model::feed::FeedState;

/// The highest committed sequence number, as read from the database.
pub(super) async fn committed_seq(db: &Db) -> Result<u64, StoreError> {
    let mut conn = db.acquire().await?;
    let row = conn.conn().fetch_optional(&state_query()).await?;
    Ok(feed_state_of(row)?.last_seq)
}

pub(super) fn state_query() -> Sql {
    Sql::new("SELECT last_seq, compacted_through FROM feed_state WHERE id = 1")
}

pub(super) fn feed_state_of(row: Option<StoredRow>) -> Result<FeedState, StoreError> {
    let row = row.ok_or(StoreError::FeedStateMissing)?;
    Ok(FeedState {
        last_seq: u64_of(row.get("last_seq")?, "feed_state.last_seq")?,
        compacted_through: u64_of(
            row.get("compacted_through")?,
            "feed_state.compacted_through",
        )?,
    })
}
