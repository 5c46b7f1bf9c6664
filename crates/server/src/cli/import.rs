//! `keygate keys import FILE`: imports legacy keys. Plaintext keys are hashed here, so only
//! their SHA-256 digests are sent to the key service.

use std::path::Path;

use serde_json::Value;

use crate::cli::args::ImportArgs;
use crate::cli::client::{CliError, Client};
use crate::service::legacy::{read_import, ImportFormat, ImportReport, RowError, MAX_IMPORT_BYTES};

fn format_of(args: &ImportArgs) -> Result<ImportFormat, CliError> {
    match args.format.as_deref() {
        Some(text) => ImportFormat::parse(text)
            .ok_or_else(|| CliError::Usage(format!("--format {text:?} must be csv or json"))),
        None => Ok(match args.file.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => ImportFormat::Csv,
            _ => ImportFormat::Json,
        }),
    }
}

/// The JSON rows to send (plaintext keys replaced by their digests, each with its row
/// number) and the rows that could not be read at all.
pub fn prepare(format: ImportFormat, bytes: &[u8]) -> Result<(Value, Vec<RowError>), CliError> {
    let rows = read_import(format, bytes)
        .map_err(|error| CliError::Usage(format!("cannot import: {error}")))?;
    let mut send = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (number, row) in rows {
        match row {
            Ok(mut row) => {
                row.hash_plaintext();
                row.row = Some(number);
                send.push(row);
            }
            Err(error) => errors.push(RowError { row: number, error }),
        }
    }
    let body = serde_json::to_value(send)
        .map_err(|error| CliError::Usage(format!("cannot encode the import: {error}")))?;
    Ok((body, errors))
}

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(CliError::Usage(format!(
            "{} is larger than 5 MiB; split it",
            path.display()
        )));
    }
    Ok(bytes)
}

pub fn import(client: &Client, args: ImportArgs, json_output: bool) -> Result<(), CliError> {
    let format = format_of(&args)?;
    let bytes = read_file(&args.file)?;
    let (body, local_errors) = prepare(format, &bytes)?;
    drop(bytes);
    let path = if args.dry_run {
        "/api/v1/auth/keys/import?format=json&dry_run=true"
    } else {
        "/api/v1/auth/keys/import?format=json"
    };
    let answer = client.call("POST", path, Some(body))?;
    let mut report: ImportReport = serde_json::from_value(answer).map_err(|error| {
        CliError::Transport(format!(
            "the key service sent an unreadable answer: {error}"
        ))
    })?;
    report.errors.extend(local_errors);
    report.errors.sort_by_key(|error| error.row);
    if json_output {
        outln!("{}", serde_json::to_value(&report).unwrap_or_default());
    } else {
        print_report(&report);
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{} row(s) were not imported",
            report.errors.len()
        )))
    }
}

fn print_report(report: &ImportReport) {
    let verb = if report.dry_run { "would be " } else { "" };
    outln!(
        "{} {verb}created, {} {verb}updated, {} unchanged, {} error(s){}",
        report.created,
        report.updated,
        report.unchanged,
        report.errors.len(),
        if report.dry_run { " (dry run)" } else { "" }
    );
    for key in &report.keys {
        // A dry run stores nothing, so a key it would create has no id yet: the service
        // answers a placeholder, which is not shown as if it were the id to come.
        if report.dry_run && key.status == "created" {
            outln!("row {:>5}  (new id on import)  would be created", key.row);
        } else {
            outln!("row {:>5}  {}  {}", key.row, key.id, key.status);
        }
    }
    for error in &report.errors {
        outln!("row {:>5}  error: {}", error.row, error.error);
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::key::KeyDigest;

    use super::*;

    #[test]
    fn plaintext_never_leaves_the_cli() {
        let csv = "name,owner,scopes,expires_at,key,sha256\n\
                   a,alice,read:x,,legacy-secret-1,\n\
                   broken\n\
                   b,,,,,ABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABABAB\n";
        let (body, errors) = prepare(ImportFormat::Csv, csv.as_bytes()).unwrap();
        let text = body.to_string();
        assert!(!text.contains("legacy-secret-1"), "{text}");
        assert!(text.contains(&KeyDigest::of(b"legacy-secret-1").to_hex()));
        assert_eq!(body[0]["row"], 1);
        assert_eq!(body[1]["row"], 3);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].row, 2);
    }
}
