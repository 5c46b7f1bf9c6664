//! Checks shared by the operations that take a key's name, scopes and metadata (create,
//! update, import), and the one duration syntax of `expires_in`, `grace` and the CLI.

use keygate_core::scope::{parse_grant, parse_grants, Scope, MAX_SCOPES};
use serde_json::{Map, Value};

use crate::service::error::ApiError;

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest owner, in characters.
pub const MAX_OWNER_CHARS: usize = 128;
const MAX_METADATA_BYTES: usize = 4096;
const MAX_METADATA_KEYS: usize = 32;

/// At most `max_chars` characters, none of them a control character.
pub fn valid_text(text: &str, max_chars: usize) -> bool {
    text.chars().count() <= max_chars && !text.chars().any(char::is_control)
}

/// Parses a duration such as `3600`, `3600s`, `90m`, `12h` or `30d` into seconds: the one
/// syntax of `expires_in` and `grace` in REST and of the CLI's `--expires-in` and `--grace`.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let multiplier = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    number.parse::<i64>().ok()?.checked_mul(multiplier)
}

/// A duration field of a request: whole seconds as a JSON number, or a string that
/// [`parse_duration`] reads.
pub fn duration_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => parse_duration(text),
        _ => None,
    }
}

/// A key's (or role's) granted scopes: plain scopes, or a prefix and a final `:*`
/// (`models:*`); an ambiguous wildcard (`*`, `*:read`, `a:*:b`, `a*`) is refused.
pub fn validate_scopes(items: &[String]) -> Result<Vec<Scope>, ApiError> {
    if items.len() > MAX_SCOPES {
        return Err(ApiError::TooManyScopes);
    }
    for (index, item) in items.iter().enumerate() {
        parse_grant(item).map_err(|reason| ApiError::BadScope { index, reason })?;
    }
    parse_grants(items).map_err(|_| ApiError::TooManyScopes)
}

pub fn validate_metadata(metadata: Option<Value>) -> Result<Map<String, Value>, ApiError> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ApiError::MetadataNotObject),
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(ApiError::MetadataTooManyKeys);
    }
    let size = serde_json::to_vec(&map)
        .map(|bytes| bytes.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge);
    }
    Ok(map)
}
