//! `keygate audit`: the management audit log, newest first.

use std::process::ExitCode;

use serde_json::Value;

use crate::cli::args::AuditArgs;
use crate::cli::client::{connect, query_escape, CliError};
use crate::cli::print::{next_page_hint, or_dash, print_columns, report, text};

/// Runs `keygate audit` and reports failures on stderr.
pub fn run_audit(args: AuditArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

fn execute(args: AuditArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let path = audit_path(&args);
    let answer = client.call("GET", &path, None)?;
    if args.client.json {
        outln!("{answer}");
    } else {
        print_entries(&answer, &args);
    }
    Ok(())
}

/// `/api/v1/audit` with the given filters as query parameters.
fn audit_path(args: &AuditArgs) -> String {
    let limit = args.limit.map(|n| n.to_string());
    let pairs = [
        ("action", args.action.as_deref()),
        ("target", args.target.as_deref()),
        ("actor", args.actor.as_deref()),
        ("outcome", args.outcome.as_deref()),
        ("from", args.from.as_deref()),
        ("to", args.to.as_deref()),
        ("limit", limit.as_deref()),
        ("cursor", args.cursor.as_deref()),
    ];
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", query_escape(v))))
        .collect();
    if query.is_empty() {
        "/api/v1/audit".to_owned()
    } else {
        format!("/api/v1/audit?{}", query.join("&"))
    }
}

/// The filters of a page, as flags of `keygate audit`.
fn filters(args: &AuditArgs) -> [(&'static str, Option<String>); 7] {
    [
        ("action", args.action.clone()),
        ("target", args.target.clone()),
        ("actor", args.actor.clone()),
        ("outcome", args.outcome.clone()),
        ("from", args.from.clone()),
        ("to", args.to.clone()),
        ("limit", args.limit.map(|n| n.to_string())),
    ]
}

fn print_entries(page: &Value, args: &AuditArgs) {
    let headers = [
        "AT", "ACTION", "ACTOR", "SOURCE", "TARGET", "OUTCOME", "DETAIL",
    ];
    let rows: Vec<[String; 7]> = page
        .get("entries")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|entry| {
                    [
                        text(entry, "at").to_owned(),
                        text(entry, "action").to_owned(),
                        or_dash(text(entry, "actor")),
                        or_dash(text(entry, "source")),
                        or_dash(text(entry, "target")),
                        text(entry, "outcome").to_owned(),
                        match entry.get("detail") {
                            None | Some(Value::Null) => "-".to_owned(),
                            Some(detail) => detail.to_string(),
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_columns(headers, &rows, "(no entries)");
    if let Some(cursor) = page.get("next_cursor").and_then(Value::as_str) {
        outln!("{}", next_page_hint("audit", &filters(args), cursor));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::{Cli, Command};

    #[test]
    fn filters_become_query_parameters() {
        let cli = Cli::try_parse_from([
            "keygate",
            "audit",
            "--action",
            "create",
            "--target",
            "aaaaaaaaaaaaaaaa",
            "--limit",
            "5",
            "--json",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("not audit")
        };
        assert!(args.client.json);
        assert_eq!(
            audit_path(&args),
            "/api/v1/audit?action=create&target=aaaaaaaaaaaaaaaa&limit=5"
        );
    }
}
