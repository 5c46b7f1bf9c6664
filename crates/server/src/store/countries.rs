//! The countries each key was used from (`key_countries`): recorded from usage rows, at most
//! [`MAX_KEY_COUNTRIES`] per key.

use std::collections::BTreeSet;

use super::error::StoreError;
use super::handle::KeyStore;
use super::sql::Sql;
use crate::model::country::{RecordedCountries, SeenCountry, MAX_KEY_COUNTRIES};

/// Keys per lookup statement (well under both backends' bind-parameter limits).
const CHUNK: usize = 1000;

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl KeyStore {
    /// The (key id, country) pairs recorded for the keys `key_ids`.
    pub async fn recorded_countries(
        &self,
        key_ids: &[&str],
    ) -> Result<BTreeSet<(String, String)>, StoreError> {
        let mut pairs = BTreeSet::new();
        for chunk in key_ids.chunks(CHUNK) {
            let mut sql = Sql::new("SELECT key_id, country FROM key_countries WHERE key_id IN ");
            sql.push_tuple(chunk.iter().map(|id| (*id).into()));
            for row in self.db.fetch_all(&sql).await? {
                pairs.insert((row.get("key_id")?, row.get("country")?));
            }
        }
        Ok(pairs)
    }

    /// Records `countries` for key `key_id` at `now`, holding the key's row so that
    /// concurrent batches (other replicas) see each other's countries: answers what was
    /// recorded before and what is new, or `None` when there is no such key. At most
    /// [`MAX_KEY_COUNTRIES`] are kept per key.
    pub async fn record_key_countries(
        &self,
        key_id: &str,
        countries: &[String],
        now: i64,
    ) -> Result<Option<RecordedCountries>, StoreError> {
        let Some(mut tx) = self.db.begin_holding("keys", key_id).await? else {
            return Ok(None);
        };
        let sql = Sql::new(
            "SELECT country FROM key_countries WHERE key_id = $1 \
             ORDER BY first_seen, country LIMIT $2",
        )
        .arg(key_id)
        .arg(limit(MAX_KEY_COUNTRIES));
        let mut recorded = RecordedCountries::default();
        for row in tx.fetch_all(&sql).await? {
            recorded.before.push(row.get("country")?);
        }
        for country in countries {
            if recorded.before.contains(country) || recorded.added.contains(country) {
                continue;
            }
            if recorded.before.len() + recorded.added.len() >= MAX_KEY_COUNTRIES {
                recorded.over_bound += 1;
                continue;
            }
            let insert = Sql::new(
                "INSERT INTO key_countries (key_id, country, first_seen) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id, country) DO NOTHING",
            )
            .arg(key_id)
            .arg(country)
            .arg(now);
            if tx.execute(&insert).await? == 1 {
                recorded.added.push(country.clone());
            }
        }
        tx.commit().await?;
        Ok(Some(recorded))
    }

    /// The countries key `key_id` was used from, first seen first.
    pub async fn key_countries(&self, key_id: &str) -> Result<Vec<SeenCountry>, StoreError> {
        let sql = Sql::new(
            "SELECT country, first_seen FROM key_countries WHERE key_id = $1 \
             ORDER BY first_seen, country LIMIT $2",
        )
        .arg(key_id)
        .arg(limit(MAX_KEY_COUNTRIES));
        let rows = self.db.fetch_all(&sql).await?;
        rows.iter()
            .map(|row| {
                Ok(SeenCountry {
                    country: row.get("country")?,
                    first_seen: row.get("first_seen")?,
                })
            })
            .collect()
    }
}
