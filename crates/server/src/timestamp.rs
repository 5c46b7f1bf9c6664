//! Unix seconds ⇄ RFC 3339 text, the two forms time takes in Keygate.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats Unix seconds as RFC 3339 in UTC, e.g. `2030-01-01T00:00:00Z`.
pub fn format_rfc3339(unix_seconds: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Parses an RFC 3339 timestamp into Unix seconds (fractions are dropped).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(format_rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(parse_rfc3339("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(
            parse_rfc3339("2030-01-01T01:00:00.5+01:00"),
            Some(1_893_456_000)
        );
        assert_eq!(parse_rfc3339("tomorrow"), None);
        assert_eq!(
            format_rfc3339(1_893_456_000).as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
    }
}
