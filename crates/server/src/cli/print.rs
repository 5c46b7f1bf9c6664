//! What the CLI prints: keys, signing keys, tables, and errors. Output to a closed pipe
//! ends the command quietly (see `write_stdout`).

use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use serde_json::Value;

use crate::cli::args::ListArgs;
use crate::cli::client::CliError;

/// Writes to stdout. When the reader is gone (`EPIPE`), there is nobody left to tell: the
/// process exits at once with success, as `head` expects of the commands it cuts short.
pub(crate) fn write_stdout(text: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {error}");
        std::process::exit(1);
    }
}

pub fn report(json_output: bool, result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let (
                true,
                CliError::Api {
                    body: Some(body), ..
                },
            ) = (json_output, &error)
            {
                outln!("{body}");
            }
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}

pub fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value.get(field).and_then(Value::as_str).unwrap_or("")
}

fn scopes_text(key: &Value) -> String {
    key.get("scopes")
        .and_then(Value::as_array)
        .map(|scopes| {
            scopes
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

pub fn print_minted(answer: &Value, json_output: bool) {
    if json_output {
        outln!("{answer}");
        return;
    }
    let key = text(answer, "key");
    let title = "API key (shown once, store it now):";
    if key.len() > 160 {
        // A JWT: too long for a box; print it alone on its line so it copies cleanly.
        outln!("{title}\n\n{key}\n");
        print_fields(answer);
        return;
    }
    let width = key.len().max(title.len()) + 2;
    let rule = format!("+{}+", "-".repeat(width + 2));
    outln!("{rule}");
    outln!("|  {title:<width$}|");
    outln!("|  {:<width$}|", "");
    outln!("|  {key:<width$}|");
    outln!("{rule}");
    print_fields(answer);
}

pub fn print_key(answer: &Value, json_output: bool) {
    if json_output {
        outln!("{answer}");
    } else {
        print_fields(answer);
    }
}

fn print_fields(key: &Value) {
    let or_dash = |field: &str| or_dash(text(key, field));
    outln!("id:           {}", or_dash("id"));
    outln!("name:         {}", or_dash("name"));
    outln!("owner:        {}", or_dash("owner"));
    outln!("status:       {}", or_dash("status"));
    outln!("scopes:       {}", scopes_text(key));
    if let Some(roles) = key
        .get("roles")
        .and_then(Value::as_array)
        .filter(|roles| !roles.is_empty())
    {
        let names: Vec<&str> = roles.iter().filter_map(Value::as_str).collect();
        outln!("roles:        {}", names.join(" "));
    }
    outln!("created_at:   {}", or_dash("created_at"));
    outln!(
        "expires_at:   {}",
        match text(key, "expires_at") {
            "" => "never".to_owned(),
            at => at.to_owned(),
        }
    );
    outln!("revoked_at:   {}", or_dash("revoked_at"));
    outln!("last_used:    {}", last_used_text(key));
    outln!("rotated_from: {}", or_dash("rotated_from"));
    outln!("rotated_to:   {}", or_dash("rotated_to"));
    if key.get("algorithm").is_some() {
        outln!("algorithm:    {}", or_dash("algorithm"));
        outln!("kid:          {}", or_dash("kid"));
    }
    print_limits(key);
    match key
        .get("metadata")
        .filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))
    {
        Some(metadata) => outln!("metadata:     {metadata}"),
        None => outln!("metadata:     -"),
    }
}

/// When and from where a key was last used: `2030-01-01T00:00:00Z from 203.0.113.7`, `-`.
pub fn last_used_text(key: &Value) -> String {
    match (text(key, "last_used_at"), text(key, "last_used_address")) {
        ("", _) => "-".to_owned(),
        (at, "") => at.to_owned(),
        (at, address) => format!("{at} from {address}"),
    }
}

pub fn print_signing_keys(answer: &Value) {
    if answer.get("configured") == Some(&Value::Bool(false)) {
        outln!("JWT signing is not configured on the key service (KEYGATE_SIGNING_KEY_SECRET)");
    }
    let keys = answer
        .get("signing_keys")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if keys.is_empty() {
        outln!("(no signing keys)");
        return;
    }
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|key| {
            let published = key.get("published").and_then(Value::as_bool) == Some(true);
            [
                text(key, "kid").to_owned(),
                text(key, "algorithm").to_owned(),
                text(key, "created_at").to_owned(),
                or_dash(text(key, "signs_from")),
                or_dash(text(key, "retired_at")),
                if published { "yes" } else { "no" }.to_owned(),
            ]
        })
        .collect();
    let headers = [
        "KID",
        "ALGORITHM",
        "CREATED_AT",
        "SIGNS_FROM",
        "RETIRED_AT",
        "PUBLISHED",
    ];
    print_columns(headers, &rows, "(no signing keys)");
}

/// A field's text, or `-` when it is absent, `null` or empty: how every text output shows
/// "none" (an owner, a revocation time, a limit).
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The command that fetches the next page: the same command and filters, with `--cursor`.
pub fn next_page_hint(command: &str, options: &[(&str, Option<String>)], cursor: &str) -> String {
    let mut line = format!("more: keygate {command}");
    for (flag, value) in options {
        if let Some(value) = value {
            line.push_str(&format!(" --{flag} {}", shell_word(value)));
        }
    }
    line.push_str(&format!(" --cursor {}", shell_word(cursor)));
    line
}

/// `text` as one shell word: as is when it is plainly safe, else in single quotes.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/=+@%,".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

pub fn print_table(page: &Value, list: &ListArgs) {
    let headers = ["ID", "NAME", "OWNER", "STATUS", "SCOPES", "EXPIRES_AT"];
    let rows: Vec<[String; 6]> = page
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .map(|key| {
                    [
                        text(key, "id").to_owned(),
                        text(key, "name").to_owned(),
                        or_dash(text(key, "owner")),
                        text(key, "status").to_owned(),
                        scopes_text(key),
                        match text(key, "expires_at") {
                            "" => "never".to_owned(),
                            at => at.to_owned(),
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_columns(headers, &rows, "(no keys)");
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        let options = [
            ("limit", list.limit.map(|n| n.to_string())),
            ("status", list.status.clone()),
        ];
        outln!("{}", next_page_hint("keys list", &options, cursor));
    }
}

/// Prints rows under headers in aligned columns (or `empty` when there are none).
pub fn print_columns<const N: usize>(headers: [&str; N], rows: &[[String; N]], empty: &str) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    outln!("{}", line(&headers.map(str::to_owned)));
    for row in rows {
        outln!("{}", line(row));
    }
    if rows.is_empty() {
        outln!("{empty}");
    }
}

/// The limit lines of a key's human summary.
pub(super) fn print_limits(key: &Value) {
    let rate = key.get("rate_limit").filter(|r| !r.is_null()).map_or_else(
        || "-".to_owned(),
        |r| {
            // A float prints as `10` when whole (JSON's text would be `10.0`).
            let rate = r
                .get("requests_per_second")
                .and_then(Value::as_f64)
                .map_or_else(|| "?".to_owned(), |rps| rps.to_string());
            format!("{rate}/s, burst {}", r.get("burst").unwrap_or(&Value::Null))
        },
    );
    let cidrs = list_or_any(key, "allowed_cidrs");
    let principals = list_or_any(key, "allowed_principals");
    let countries = list_or_any(key, "allowed_countries");
    let or_dash = |field: &str| or_dash(text(key, field));
    outln!("rate_limit:   {rate}");
    outln!("allowed_from: {cidrs}");
    outln!("countries:    {countries}");
    outln!("principals:   {principals}");
    outln!("not_before:   {}", or_dash("not_before"));
    outln!("not_after:    {}", or_dash("not_after"));
    let global = key
        .get("global_limit")
        .filter(|r| !r.is_null())
        .map_or_else(
            || "-".to_owned(),
            |r| {
                let rate = r
                    .get("requests_per_second")
                    .and_then(Value::as_f64)
                    .map_or_else(|| "?".to_owned(), |rps| rps.to_string());
                format!("{rate}/s, burst {}", r.get("burst").unwrap_or(&Value::Null))
            },
        );
    outln!("global_limit: {global}");
    let quota = key
        .get("quota")
        .filter(|q| !q.is_null())
        .map_or_else(|| "-".to_owned(), quota_line);
    outln!("quota:        {quota}");
}

/// A quota in one line: `remaining 950 of 1000 per 86400s (window 2030-01-01T00:00:00Z to ...)`.
pub fn quota_line(quota: &Value) -> String {
    let number = |field: &str| quota.get(field).and_then(Value::as_u64);
    let remaining = number("remaining").map_or_else(|| "?".to_owned(), |n| n.to_string());
    format!(
        "remaining {remaining} of {} per {}s (window {} to {})",
        number("limit").unwrap_or(0),
        number("period_s").unwrap_or(0),
        text(quota, "window_start"),
        text(quota, "window_end"),
    )
}

/// A list member of the key as words, or `any` when it is absent or empty.
fn list_or_any(key: &Value, field: &str) -> String {
    key.get(field)
        .and_then(Value::as_array)
        .filter(|items| !items.is_empty())
        .map_or_else(
            || "any".to_owned(),
            |items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        )
}
