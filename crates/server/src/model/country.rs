//! The countries a key was used from (`key_countries`), as usage rows report them.

use serde::{Deserialize, Serialize};

/// Most countries recorded per key: past that, a further country is neither recorded nor
/// announced (`key.new_country`).
pub const MAX_KEY_COUNTRIES: usize = 64;

/// A country a key was used from, and when it was first seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCountry {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    /// Unix seconds.
    pub first_seen: i64,
}

/// What recording a key's countries came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedCountries {
    /// The countries recorded before, first seen first.
    pub before: Vec<String>,
    /// The countries recorded now, in the order given.
    pub added: Vec<String>,
    /// Countries not recorded because the key has [`MAX_KEY_COUNTRIES`] already.
    pub over_bound: usize,
}

/// An ISO 3166-1 alpha-2 code as recorded: two upper-case ASCII letters.
pub fn valid_country(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}
