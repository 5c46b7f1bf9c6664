//! The countries a usage row reports: the distinct countries (Envoy's geoip filter, see
//! [`crate::geo`]) that a key's allowed requests came from in the row's minute.
//!
//! A small set held inline (no allocation on the request path): at most
//! [`MAX_ROW_COUNTRIES`] codes, in the order they were first seen. A further country is not
//! held; the caller counts it (`keygate.usage.countries_dropped`). Only well-formed ISO
//! 3166-1 alpha-2 codes get in (upper case); anything else read back from shared data is
//! dropped the same way.

use crate::geo::Country;

/// Most countries one usage row carries.
pub const MAX_ROW_COUNTRIES: usize = 4;

/// Up to [`MAX_ROW_COUNTRIES`] distinct countries, in the order first seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountrySet {
    codes: [Option<Country>; MAX_ROW_COUNTRIES],
}

impl CountrySet {
    /// Adds `country`; false when it was not held because the set is full.
    pub fn insert(&mut self, country: Country) -> bool {
        for slot in &mut self.codes {
            match slot {
                Some(held) if *held == country => return true,
                Some(_) => {}
                None => {
                    *slot = Some(country);
                    return true;
                }
            }
        }
        false
    }

    /// Adds every country of `other`; answers how many were not held.
    pub fn merge(&mut self, other: &CountrySet) -> u64 {
        other.iter().filter(|c| !self.insert(*c)).count() as u64
    }

    /// Adds the codes of a row read back (`UsageRow::countries`); answers how many were not
    /// held (malformed or past the bound).
    pub fn merge_codes(&mut self, codes: &[String]) -> u64 {
        codes
            .iter()
            .filter(|code| !Country::parse(code.as_bytes()).is_some_and(|c| self.insert(c)))
            .count() as u64
    }

    pub fn iter(&self) -> impl Iterator<Item = Country> + '_ {
        self.codes.iter().map_while(|slot| *slot)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.codes[0].is_none()
    }

    /// The codes as a row carries them (`["DE", "US"]`).
    pub fn codes(&self) -> Vec<String> {
        self.iter().map(|c| c.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country(code: &str) -> Country {
        Country::parse(code.as_bytes()).unwrap()
    }

    #[test]
    fn holds_distinct_countries_up_to_the_bound_in_first_seen_order() {
        let mut set = CountrySet::default();
        assert!(set.is_empty());
        for code in ["DE", "US", "DE", "fr", "US", "JP"] {
            assert!(set.insert(country(code)), "{code}");
        }
        assert_eq!(set.codes(), ["DE", "US", "FR", "JP"]);
        assert_eq!(set.len(), MAX_ROW_COUNTRIES);
        assert!(!set.insert(country("BR")), "past the bound: not held");
        assert!(set.insert(country("JP")), "one it holds still is");
        assert_eq!(set.codes(), ["DE", "US", "FR", "JP"]);
    }

    #[test]
    fn merging_keeps_the_bound_and_counts_what_it_drops() {
        let mut one = CountrySet::default();
        one.insert(country("DE"));
        one.insert(country("US"));
        let mut two = CountrySet::default();
        for code in ["US", "FR", "JP", "BR"] {
            two.insert(country(code));
        }
        assert_eq!(one.merge(&two), 1, "BR does not fit");
        assert_eq!(one.codes(), ["DE", "US", "FR", "JP"]);

        let mut read = CountrySet::default();
        let codes = ["de", "Germany", "D1", "", "US", "US", "AT", "CH", "NL"].map(String::from);
        // Three malformed, one past the bound; the repeat is held once.
        assert_eq!(read.merge_codes(&codes), 4);
        assert_eq!(read.codes(), ["DE", "US", "AT", "CH"]);
    }
}
