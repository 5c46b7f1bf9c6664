//! `key.new_country`: the countries each key is used from, from the usage rows the filters
//! report (`countries`, with the geoip filter configured: `geo`).
//!
//! On every usage batch, each (key, country) pair not recorded before is recorded
//! (`key_countries`, first seen now) and announced through [`alerts::raise`] as
//! `key.new_country`, with the countries the key was used from before. The key's **first**
//! country is its baseline: recorded, not announced (a new key is always used from somewhere).
//! When a batch brings several countries for a key with none recorded, the first one reported
//! (earliest minute, then first seen in it) is the baseline and the others are announced.
//!
//! Recording holds the key's row (see [`crate::store::KeyStore::record_key_countries`]), so
//! replicas that take batches at once announce each country once. At most
//! [`MAX_KEY_COUNTRIES`] countries are recorded per key; past that, a further country is
//! neither recorded nor announced (logged). This never fails a usage batch: a failure is
//! logged, and the country is seen again with the key's next use from there.

use std::collections::BTreeMap;

use keygate_core::wire::UsageRow;

use crate::model::country::{RecordedCountries, MAX_KEY_COUNTRIES};
use crate::service::alerts;
use crate::service::context::Service;

/// The countries of `rows` per key, each once, earliest minute first (then in the order a
/// row lists them).
pub fn countries_by_key(rows: &[UsageRow]) -> BTreeMap<&str, Vec<&str>> {
    let mut ordered: Vec<&UsageRow> = rows.iter().filter(|r| !r.countries.is_empty()).collect();
    ordered.sort_by_key(|row| row.minute);
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in ordered {
        let countries = by_key.entry(row.key_id.as_str()).or_default();
        for country in &row.countries {
            if !countries.contains(&country.as_str()) {
                countries.push(country.as_str());
            }
        }
    }
    by_key
}

/// The announcements of a recording: each country added, with the countries seen before it;
/// the baseline (added with nothing seen before) is not one.
pub fn announcements(recorded: &RecordedCountries) -> Vec<(&str, Vec<String>)> {
    let mut seen = recorded.before.clone();
    let mut out = Vec::new();
    for country in &recorded.added {
        if !seen.is_empty() {
            out.push((country.as_str(), seen.clone()));
        }
        seen.push(country.clone());
    }
    out
}

/// Records the countries of a usage batch's rows (of known keys) and raises
/// `key.new_country` for each new one but a key's first.
pub async fn note(service: &Service, rows: &[UsageRow]) {
    let by_key = countries_by_key(rows);
    if by_key.is_empty() {
        return;
    }
    let store = service.store();
    let ids: Vec<&str> = by_key.keys().copied().collect();
    // Most batches bring only countries recorded already: one read answers them.
    let known = match store.recorded_countries(&ids).await {
        Ok(known) => known,
        Err(error) => {
            tracing::error!(%error, "usage countries not recorded");
            return;
        }
    };
    for (key_id, countries) in by_key {
        let new: Vec<String> = countries
            .into_iter()
            .filter(|c| !known.contains(&(key_id.to_owned(), (*c).to_owned())))
            .map(str::to_owned)
            .collect();
        if new.is_empty() {
            continue;
        }
        let recorded = match store
            .record_key_countries(key_id, &new, service.now())
            .await
        {
            Ok(Some(recorded)) => recorded,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(key_id, %error, "usage countries not recorded");
                continue;
            }
        };
        if recorded.over_bound > 0 {
            tracing::warn!(
                key_id,
                countries = recorded.over_bound,
                "key used from more than {MAX_KEY_COUNTRIES} countries: not recorded"
            );
        }
        let announce = announcements(&recorded);
        if announce.is_empty() {
            continue;
        }
        let record = match store.get_key(key_id).await {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(error) => {
                tracing::error!(key_id, %error, "key.new_country not raised");
                continue;
            }
        };
        for (country, seen_before) in announce {
            alerts::key_new_country(service, &record, country, &seen_before).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_core::wire::UsageCounts;

    fn row(key: &str, minute: u64, countries: &[&str]) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            minute,
            counts: UsageCounts::default(),
            last_used_at: 0,
            route: None,
            client_address: None,
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn countries_are_gathered_per_key_earliest_first() {
        let rows = [
            row("k", 120, &["US", "DE"]),
            row("j", 60, &[]),
            row("k", 60, &["FR"]),
            row("k", 60, &["DE"]),
            row("i", 60, &["JP"]),
        ];
        let by_key = countries_by_key(&rows);
        assert_eq!(by_key.len(), 2, "{by_key:?}");
        assert_eq!(by_key["k"], ["FR", "DE", "US"]);
        assert_eq!(by_key["i"], ["JP"]);
    }

    #[test]
    fn the_first_country_is_the_baseline_and_each_later_one_is_announced() {
        let strings = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        let first = RecordedCountries {
            before: Vec::new(),
            added: strings(&["DE", "US"]),
            over_bound: 0,
        };
        assert_eq!(announcements(&first), [("US", strings(&["DE"]))]);
        let later = RecordedCountries {
            before: strings(&["DE", "US"]),
            added: strings(&["FR"]),
            over_bound: 0,
        };
        assert_eq!(announcements(&later), [("FR", strings(&["DE", "US"]))]);
        let baseline = RecordedCountries {
            added: strings(&["DE"]),
            ..RecordedCountries::default()
        };
        assert!(announcements(&baseline).is_empty());
    }
}
