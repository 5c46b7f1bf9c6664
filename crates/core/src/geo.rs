//! Geo-restrictions: a key may carry the countries it may be used from.
//!
//! **Where the country comes from.** Envoy's own `envoy.filters.http.geoip` filter (MaxMind
//! provider) looks up the client address and writes the ISO 3166-1 country code into a
//! request header (`geo.country_header`); Keygate reads it from the header map it reads
//! anyway, so a geo-restricted key costs no host call.
//!
//! **Why the header can be trusted.** The geoip filter overwrites the header only when its
//! lookup finds a country. When it finds none (a private address, an address missing from
//! the database), a copy the client sent would reach Keygate unchanged. So a second, tiny
//! Keygate filter runs *before* the geoip filter in the strip role
//! (`{"role": "strip", "strip_request_headers": ["x-geo-country"]}`, see [`StripRole`]) and
//! removes every client-sent copy; what Keygate then reads was written by Envoy or is absent.
//!
//! **Failure behaviour.** A restricted key is refused (`country_not_allowed`, 403) when the
//! country is unknown: no header (a lookup that found nothing), a malformed value, or a filter
//! configured without `geo`. A restriction that cannot be checked never passes.

use serde::Deserialize;

use crate::config::{ConfigError, ConfigProblem};
use crate::host::Host;

/// The most countries a key may list (there are 249 ISO 3166-1 codes).
pub const MAX_COUNTRIES: usize = 250;

/// The most headers the strip role removes.
pub const MAX_STRIPPED_HEADERS: usize = 16;

/// An ISO 3166-1 alpha-2 country code, upper case (`DE`, `US`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// Two ASCII letters, in either case; anything else is not a country.
    pub fn parse(text: &[u8]) -> Option<Self> {
        match text {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for Country {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Does a record's `allowed_countries` list allow a request from `country`? An empty list
/// allows every request; a restricted one no request whose country is unknown, and an
/// unparsable entry matches nothing.
pub fn countries_allow(countries: &[String], country: Option<Country>) -> bool {
    countries.is_empty()
        || country.is_some_and(|country| {
            countries
                .iter()
                .any(|c| Country::parse(c.trim().as_bytes()) == Some(country))
        })
}

/// The `geo` filter option as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSpec {
    /// The header Envoy's geoip filter writes the country code into
    /// (`geo_field_keys.country` of its MaxMind provider).
    pub country_header: String,
}

/// The compiled `geo` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoSettings {
    pub country_header: String,
}

/// Reads the request's country from the headers the filter already holds: the first
/// `country_header` value, if it is a country code.
pub fn country_of<'a>(
    settings: Option<&GeoSettings>,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Option<Country> {
    let name = settings?.country_header.as_str();
    headers
        .into_iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, value)| Country::parse(value))
}

/// The strip role: a Keygate filter that only removes client-sent copies of headers a later
/// Envoy filter writes (the geoip filter's country header), placed before that filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripRole {
    pub headers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStripRole {
    role: String,
    strip_request_headers: Vec<String>,
}

impl StripRole {
    /// `Ok(None)` when the configuration is not a strip role (no `"role"` member), so the
    /// full filter configuration is parsed instead.
    pub fn parse(json: &[u8]) -> Result<Option<Self>, ConfigError> {
        let probe: serde_json::Value = match serde_json::from_slice(json) {
            Ok(value) => value,
            // Not JSON: the full parser reports where.
            Err(_) => return Ok(None),
        };
        if probe.get("role").is_none() {
            return Ok(None);
        }
        let raw: RawStripRole = serde_json::from_value(probe)
            .map_err(|e| crate::config::config_error("", ConfigProblem::Syntax(e.to_string())))?;
        if raw.role != "strip" {
            return Err(crate::config::config_error(
                "role",
                ConfigProblem::UnknownRole,
            ));
        }
        if raw.strip_request_headers.is_empty() {
            return Err(crate::config::config_error(
                "strip_request_headers",
                ConfigProblem::Empty,
            ));
        }
        if raw.strip_request_headers.len() > MAX_STRIPPED_HEADERS {
            return Err(crate::config::config_error(
                "strip_request_headers",
                ConfigProblem::OutOfRange {
                    min: 1,
                    max: MAX_STRIPPED_HEADERS as u64,
                },
            ));
        }
        for (i, name) in raw.strip_request_headers.iter().enumerate() {
            crate::config::check_header_name(&format!("strip_request_headers[{i}]"), name)?;
        }
        Ok(Some(Self {
            headers: raw.strip_request_headers,
        }))
    }

    /// Removes the headers from the request (Envoy removes every copy of each).
    pub fn strip(&self, host: &impl Host) {
        for name in &self.headers {
            host.remove_request_header(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Effect, FakeHost};

    #[test]
    fn countries_are_two_letters_in_either_case() {
        assert_eq!(
            Country::parse(b"de").map(|c| c.to_string()),
            Some("DE".into())
        );
        assert_eq!(
            Country::parse(b"US").map(|c| c.to_string()),
            Some("US".into())
        );
        for bad in [&b""[..], b"D", b"DEU", b"D1", b"\xc3\xa9", b" D"] {
            assert_eq!(Country::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_list_allows_its_countries_and_refuses_unknown_ones() {
        assert!(countries_allow(&[], None), "an empty list allows anything");
        let list = ["DE".to_owned(), " fr ".to_owned()];
        assert!(countries_allow(&list, Country::parse(b"DE")));
        assert!(countries_allow(&list, Country::parse(b"FR")));
        assert!(!countries_allow(&list, Country::parse(b"US")));
        assert!(
            !countries_allow(&list, None),
            "an unknown country is refused"
        );
        let garbage = ["Germany".to_owned()];
        assert!(!countries_allow(&garbage, Country::parse(b"DE")));
        assert!(!countries_allow(&garbage, None));
    }

    #[test]
    fn the_country_is_read_from_the_configured_header_only() {
        let settings = GeoSettings {
            country_header: "x-geo-country".into(),
        };
        let headers = [("x-country", &b"FR"[..]), ("x-geo-country", b"de")];
        assert_eq!(
            country_of(Some(&settings), headers.iter().copied()),
            Country::parse(b"DE")
        );
        assert_eq!(country_of(None, headers.iter().copied()), None);
        let malformed = [("x-geo-country", &b"Germany"[..])];
        assert_eq!(country_of(Some(&settings), malformed.iter().copied()), None);
    }

    #[test]
    fn the_strip_role_parses_and_removes_its_headers() {
        let role =
            StripRole::parse(br#"{"role": "strip", "strip_request_headers": ["x-geo-country"]}"#)
                .unwrap()
                .unwrap();
        let host = FakeHost::at(0);
        role.strip(&host);
        assert_eq!(
            host.take_effects(),
            vec![Effect::RemoveRequestHeader("x-geo-country".into())]
        );
        // Not a strip role: the full configuration is parsed instead.
        assert_eq!(StripRole::parse(br#"{"routes": []}"#).unwrap(), None);
        for (bad, field) in [
            (
                &br#"{"role": "guard", "strip_request_headers": ["x"]}"#[..],
                "role",
            ),
            (
                br#"{"role": "strip", "strip_request_headers": []}"#,
                "strip_request_headers",
            ),
            (
                br#"{"role": "strip", "strip_request_headers": ["X Geo"]}"#,
                "strip_request_headers[0]",
            ),
            (
                br#"{"role": "strip", "strip_request_headers": ["x"], "routes": []}"#,
                "",
            ),
        ] {
            let err = StripRole::parse(bad).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
