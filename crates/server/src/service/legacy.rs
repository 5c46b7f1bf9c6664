//! Legacy keys: keys issued by an earlier system, imported so they keep working
//! while their owners move to Keygate keys (rotating a legacy key mints an opaque successor).
//!
//! An import is CSV (header `name,owner,scopes,expires_at,key,sha256`, any order, scopes
//! space-separated) or JSON (an array of objects with the same members, `scopes` an array or
//! a space-separated string). Each row gives exactly one of `key` (the plaintext, hashed at
//! once and never kept or logged) and `sha256` (its hex digest). Rows are numbered from 1,
//! the CSV header not counted; a JSON object may carry its own `row` number (the CLI keeps the
//! file's numbering that way).
//!
//! The filter finds a legacy key by the digest of the presented key:
//! `GET /v1/legacy-keys/{sha256 hex}` (service token).

use keygate_core::key::{KeyDigest, KeyId, ID_LEN};
use keygate_core::scope::{parse_grant, parse_grants, MAX_SCOPES};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{LegacyImportRow, LegacyOutcome};
use crate::service::context::Service;
use crate::service::error::ApiError;
use crate::timestamp::parse_rfc3339;

/// Most rows in one import.
pub const MAX_IMPORT_ROWS: usize = 10_000;
/// Largest import body: 5 MiB.
pub const MAX_IMPORT_BYTES: usize = 5 * 1024 * 1024;
/// Longest plaintext key accepted in a `key` column.
const MAX_KEY_CHARS: usize = 4096;
const MAX_NAME_CHARS: usize = 128;
const MAX_OWNER_CHARS: usize = 128;
/// The CSV header columns, in the documented order.
pub const CSV_COLUMNS: [&str; 6] = ["name", "owner", "scopes", "expires_at", "key", "sha256"];

/// The format of an import file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    Csv,
    Json,
}

impl ImportFormat {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }
}

/// `scopes` as JSON gives it: an array, or one space-separated string like the CSV column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScopesField {
    List(Vec<String>),
    Text(String),
}

impl ScopesField {
    fn items(&self) -> Vec<String> {
        match self {
            Self::List(items) => items.clone(),
            Self::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// One row as read from the file, before any check. `Debug` never shows `key`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRow {
    /// The row number to report (JSON only; default: the position, from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<ScopesField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The plaintext key: hashed into `sha256` as soon as possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl std::fmt::Debug for RawRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRow")
            .field("row", &self.row)
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl RawRow {
    /// Replaces a plaintext `key` by its `sha256` (when no digest is given too), so the
    /// plaintext goes no further.
    pub fn hash_plaintext(&mut self) {
        if self.sha256.is_none() {
            if let Some(key) = self.key.take() {
                self.sha256 = Some(KeyDigest::of(key.as_bytes()).to_hex());
            }
        }
    }
}

/// One row of an import file: its number, and the row or why it cannot be read.
pub type ReadRow = (usize, Result<RawRow, String>);

/// Why a whole import file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportFileError {
    #[error("an import holds at most {MAX_IMPORT_ROWS} rows")]
    TooManyRows,
    #[error("the file is not UTF-8 text")]
    NotUtf8,
    #[error("the CSV file has no header line")]
    NoHeader,
    #[error(
        "unknown CSV column {0:?}: the columns are name, owner, scopes, expires_at, key, sha256"
    )]
    UnknownColumn(String),
    #[error("CSV column {0:?} appears twice")]
    DuplicateColumn(String),
    #[error("the CSV header needs a name column and a key or sha256 column")]
    MissingColumns,
    #[error("a quoted CSV field is not closed")]
    UnclosedQuote,
    #[error("the JSON is not an array of objects: {0}")]
    NotJsonArray(String),
}

impl From<ImportFileError> for ApiError {
    fn from(error: ImportFileError) -> Self {
        match error {
            ImportFileError::TooManyRows => Self::ImportTooLarge,
            other => Self::UnreadableImport(other.to_string()),
        }
    }
}

/// Reads an import file into rows (each one read or refused on its own).
pub fn read_import(format: ImportFormat, bytes: &[u8]) -> Result<Vec<ReadRow>, ImportFileError> {
    let rows = match format {
        ImportFormat::Csv => {
            let text = std::str::from_utf8(bytes).map_err(|_| ImportFileError::NotUtf8)?;
            read_csv(text)?
        }
        ImportFormat::Json => read_json(bytes)?,
    };
    if rows.len() > MAX_IMPORT_ROWS {
        return Err(ImportFileError::TooManyRows);
    }
    Ok(rows)
}

/// Splits CSV text (RFC 4180: `"` quotes, `""` inside quotes, LF or CRLF line ends) into
/// records. Blank lines are skipped.
fn csv_records(text: &str) -> Result<Vec<Vec<String>>, ImportFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                other => field.push(other),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                let blank = record.len() == 1 && record[0].is_empty() && !was_quoted;
                let done = std::mem::take(&mut record);
                if !blank {
                    records.push(done);
                }
                was_quoted = false;
            }
            other => field.push(other),
        }
    }
    if quoted {
        return Err(ImportFileError::UnclosedQuote);
    }
    if !field.is_empty() || !record.is_empty() || was_quoted {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

fn read_csv(text: &str) -> Result<Vec<ReadRow>, ImportFileError> {
    let mut records = csv_records(text)?.into_iter();
    let header: Vec<String> = records
        .next()
        .ok_or(ImportFileError::NoHeader)?
        .iter()
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for (index, name) in header.iter().enumerate() {
        if !CSV_COLUMNS.contains(&name.as_str()) {
            return Err(ImportFileError::UnknownColumn(name.clone()));
        }
        if header[..index].contains(name) {
            return Err(ImportFileError::DuplicateColumn(name.clone()));
        }
    }
    let has = |name: &str| header.iter().any(|column| column == name);
    if !has("name") || !(has("key") || has("sha256")) {
        return Err(ImportFileError::MissingColumns);
    }
    let rows = records
        .enumerate()
        .map(|(index, fields)| {
            let number = index + 1;
            if fields.len() != header.len() {
                let error = format!(
                    "has {} fields, the header has {}",
                    fields.len(),
                    header.len()
                );
                return (number, Err(error));
            }
            let mut row = RawRow::default();
            for (column, value) in header.iter().zip(fields) {
                let value = (!value.trim().is_empty()).then_some(value);
                match column.as_str() {
                    "name" => row.name = value,
                    "owner" => row.owner = value,
                    "scopes" => row.scopes = value.map(ScopesField::Text),
                    "expires_at" => row.expires_at = value.map(|v| v.trim().to_owned()),
                    "key" => row.key = value,
                    _ => row.sha256 = value.map(|v| v.trim().to_owned()),
                }
            }
            (number, Ok(row))
        })
        .collect();
    Ok(rows)
}

fn read_json(bytes: &[u8]) -> Result<Vec<ReadRow>, ImportFileError> {
    // Only the shape is described: serde's messages may quote values, and a value may be a key.
    let items: Vec<Value> = serde_json::from_slice(bytes).map_err(|error| {
        ImportFileError::NotJsonArray(format!("line {} column {}", error.line(), error.column()))
    })?;
    if items.len() > MAX_IMPORT_ROWS {
        return Err(ImportFileError::TooManyRows);
    }
    let rows = items
        .into_iter()
        .enumerate()
        .map(
            |(index, item)| match serde_json::from_value::<RawRow>(item) {
                Ok(row) => (row.row.unwrap_or(index + 1), Ok(row)),
                Err(_) => (
                    index + 1,
                    Err(
                        "not an object of name, owner, scopes, expires_at, key, sha256 (strings; \
                     scopes an array of strings or a space-separated string)"
                            .to_owned(),
                    ),
                ),
            },
        )
        .collect();
    Ok(rows)
}

/// A row that passed every check, digest computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidRow {
    pub digest: String,
    pub name: String,
    pub owner: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

fn valid_text(text: &str, max_chars: usize) -> bool {
    text.chars().count() <= max_chars && !text.chars().any(char::is_control)
}

/// Checks one row at time `now`. Messages never quote the key.
pub fn validate_row(row: RawRow, now: i64) -> Result<ValidRow, String> {
    let digest = match (row.key, row.sha256) {
        (Some(_), Some(_)) => return Err("give either key or sha256, not both".into()),
        (None, None) => return Err("give key or sha256".into()),
        (Some(key), None) => {
            if key.chars().count() > MAX_KEY_CHARS {
                return Err(format!("key must be at most {MAX_KEY_CHARS} characters"));
            }
            KeyDigest::of(key.as_bytes()).to_hex()
        }
        (None, Some(hex)) => {
            let hex = hex.to_ascii_lowercase();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("sha256 must be 64 hex digits".into());
            }
            hex
        }
    };
    let name = row.name.unwrap_or_default();
    if name.is_empty() || !valid_text(&name, MAX_NAME_CHARS) {
        return Err("name must be 1 to 128 characters with no control characters".into());
    }
    let owner = row.owner.unwrap_or_default();
    if !valid_text(&owner, MAX_OWNER_CHARS) {
        return Err("owner must be at most 128 characters with no control characters".into());
    }
    let items = row
        .scopes
        .as_ref()
        .map(ScopesField::items)
        .unwrap_or_default();
    if items.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} scopes are allowed"));
    }
    for (index, item) in items.iter().enumerate() {
        parse_grant(item).map_err(|reason| format!("scopes[{index}] is invalid: {reason}"))?;
    }
    let scopes = parse_grants(&items)
        .map_err(|reason| format!("scopes are invalid: {reason}"))?
        .iter()
        .map(|scope| scope.as_str().to_owned())
        .collect();
    let expires_at = match row.expires_at {
        None => None,
        Some(text) => {
            let at = parse_rfc3339(&text)
                .ok_or("expires_at must be an RFC 3339 timestamp such as 2030-01-01T00:00:00Z")?;
            if at <= now {
                return Err("expires_at must be in the future".into());
            }
            Some(at)
        }
    };
    Ok(ValidRow {
        digest,
        name,
        owner,
        scopes,
        expires_at,
    })
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Import

/// One row's error in an import answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    pub row: usize,
    pub error: String,
}

/// One imported key in an import answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedKey {
    pub row: usize,
    pub id: String,
    /// `created`, `updated` or `unchanged`.
    pub status: String,
}

/// The answer of an import.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub errors: Vec<RowError>,
    pub keys: Vec<ImportedKey>,
}

fn random_key_id() -> Result<String, ApiError> {
    let mut id = [0u8; ID_LEN];
    getrandom::getrandom(&mut id)
        .map_err(|error| ApiError::Internal(format!("OS random number generator: {error}")))?;
    Ok(KeyId::from_bytes(id).to_string())
}

/// Validates every row, then applies the valid ones in one transaction.
pub async fn import_rows(
    service: &Service,
    rows: Vec<ReadRow>,
    dry_run: bool,
) -> Result<ImportReport, ApiError> {
    let now = service.now();
    let mut report = ImportReport {
        dry_run,
        ..ImportReport::default()
    };
    let mut valid = Vec::new();
    let mut numbers = Vec::new();
    for (number, row) in rows {
        match row.and_then(|row| validate_row(row, now)) {
            Ok(row) => {
                valid.push(LegacyImportRow {
                    digest: row.digest,
                    name: row.name,
                    owner: row.owner,
                    scopes: row.scopes,
                    expires_at: row.expires_at,
                    new_id: random_key_id()?,
                });
                numbers.push(number);
            }
            Err(error) => report.errors.push(RowError { row: number, error }),
        }
    }
    let outcomes = service
        .store()
        .import_legacy_keys(&valid, now, dry_run)
        .await?;
    for (number, outcome) in numbers.into_iter().zip(outcomes) {
        let (id, status) = match outcome {
            LegacyOutcome::Created(id) => {
                report.created += 1;
                (id, "created")
            }
            LegacyOutcome::Updated(id) => {
                report.updated += 1;
                (id, "updated")
            }
            LegacyOutcome::Unchanged(id) => {
                report.unchanged += 1;
                (id, "unchanged")
            }
            LegacyOutcome::Ended(id) => {
                let error = format!(
                    "key {id} with this digest has ended (revoked, expired or rotated); \
                     an import never revives it or moves its expiry"
                );
                report.errors.push(RowError { row: number, error });
                continue;
            }
            _ => {
                let error = "this digest belongs to a key that is not a legacy key".to_owned();
                report.errors.push(RowError { row: number, error });
                continue;
            }
        };
        report.keys.push(ImportedKey {
            row: number,
            id,
            status: status.to_owned(),
        });
    }
    report.errors.sort_by_key(|error| error.row);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn csv_handles_quotes_crlf_and_blank_lines() {
        let text = "\u{feff}name,scopes\r\n\"a, \"\"b\"\"\",read:x write:y\r\n\r\n\"\",\n";
        let records = csv_records(text).unwrap();
        assert_eq!(
            records,
            vec![
                vec!["name".to_owned(), "scopes".to_owned()],
                vec!["a, \"b\"".to_owned(), "read:x write:y".to_owned()],
                vec![String::new(), String::new()],
            ]
        );
        assert_eq!(csv_records("a,\"b\n"), Err(ImportFileError::UnclosedQuote));
        assert_eq!(csv_records("a,b").unwrap(), vec![vec!["a", "b"]]);
    }

    #[test]
    fn csv_rows_are_read_by_header() {
        let text = "sha256,name,scopes\n\
                    ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB,n,read:x write:y\n\
                    only-one-field\n";
        let rows = read_import(ImportFormat::Csv, text.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        let (number, row) = &rows[0];
        assert_eq!(*number, 1);
        let row = validate_row(row.clone().unwrap(), NOW).unwrap();
        assert_eq!(row.digest, "ab".repeat(32));
        assert_eq!(row.scopes, vec!["read:x", "write:y"]);
        assert_eq!(rows[1].0, 2);
        assert!(rows[1].1.is_err());
        assert_eq!(
            read_import(ImportFormat::Csv, b"name,token\n"),
            Err(ImportFileError::UnknownColumn("token".into()))
        );
        assert_eq!(
            read_import(ImportFormat::Csv, b"name,owner\n"),
            Err(ImportFileError::MissingColumns)
        );
    }

    #[test]
    fn json_rows_keep_their_numbers_and_never_echo_keys() {
        let body = br#"[{"name":"a","key":"secret-1"},{"name":"b","key":12345678},{"row":7,"name":"c","sha256":"00"}]"#;
        let rows = read_import(ImportFormat::Json, body).unwrap();
        assert_eq!(rows[0].0, 1);
        let error = rows[1].1.clone().unwrap_err();
        assert!(!error.contains("12345678"));
        assert_eq!(rows[2].0, 7);
        assert!(read_import(ImportFormat::Json, b"{}").is_err());
    }

    #[test]
    fn rows_are_validated() {
        let row = |key: Option<&str>, sha: Option<&str>| RawRow {
            name: Some("n".into()),
            key: key.map(str::to_owned),
            sha256: sha.map(str::to_owned),
            ..RawRow::default()
        };
        let valid = validate_row(row(Some("legacy-secret"), None), NOW).unwrap();
        assert_eq!(valid.digest, KeyDigest::of(b"legacy-secret").to_hex());
        assert!(validate_row(row(Some("k"), Some(&"0".repeat(64))), NOW).is_err());
        assert!(validate_row(row(None, None), NOW).is_err());
        assert!(validate_row(row(None, Some("xyz")), NOW).is_err());
        let mut expired = row(None, Some(&"0".repeat(64)));
        expired.expires_at = Some("2020-01-01T00:00:00Z".into());
        assert!(validate_row(expired, NOW).is_err());
        let mut bad_scope = row(None, Some(&"0".repeat(64)));
        bad_scope.scopes = Some(ScopesField::List(vec!["bad scope!".into()]));
        assert!(validate_row(bad_scope, NOW).is_err());
    }

    #[test]
    fn hashing_drops_the_plaintext() {
        let mut row = RawRow {
            key: Some("legacy-secret".into()),
            ..RawRow::default()
        };
        row.hash_plaintext();
        assert_eq!(row.key, None);
        assert_eq!(row.sha256, Some(KeyDigest::of(b"legacy-secret").to_hex()));
        assert!(!format!("{row:?}").contains("legacy-secret"));
    }
}
