//! `keygate blocks add|list|remove`.

use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::cli::args::{BlocksArgs, BlocksCommand};
use crate::cli::client::{connect, query_escape, CliError};
use crate::cli::print::{or_dash, report, text};
use crate::service::validate::parse_duration;

/// Runs a `blocks` command and reports failures on stderr.
pub fn run_blocks(args: BlocksArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

/// The body of `POST /api/v1/blocks` for `blocks add`.
pub fn add_body(
    cidr: &str,
    expires_in: Option<&str>,
    reason: Option<&str>,
) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("cidr".into(), json!(cidr));
    if let Some(text) = expires_in {
        let seconds = parse_duration(text).ok_or_else(|| {
            CliError::Usage(format!(
                "--expires-in {text:?} is not a duration such as 3600s, 90m, 12h or 7d"
            ))
        })?;
        body.insert("expires_in_seconds".into(), json!(seconds));
    }
    if let Some(reason) = reason {
        body.insert("reason".into(), json!(reason));
    }
    Ok(Value::Object(body))
}

fn execute(args: BlocksArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    let answer = match args.command {
        BlocksCommand::Add {
            cidr,
            expires_in,
            reason,
        } => {
            let body = add_body(&cidr, expires_in.as_deref(), reason.as_deref())?;
            client.call("POST", "/api/v1/blocks", Some(body))?
        }
        BlocksCommand::List => {
            let answer = client.call("GET", "/api/v1/blocks", None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_blocks(&answer);
            }
            return Ok(());
        }
        BlocksCommand::Remove { id } => client.call(
            "DELETE",
            &format!("/api/v1/blocks/{}", query_escape(&id)),
            None,
        )?,
    };
    if json_output {
        outln!("{answer}");
    } else {
        print_block(&answer);
    }
    Ok(())
}

fn print_block(block: &Value) {
    outln!("id:          {}", or_dash(text(block, "id")));
    outln!("cidr:        {}", or_dash(text(block, "cidr")));
    outln!("source:      {}", or_dash(text(block, "source")));
    outln!("reason:      {}", or_dash(text(block, "reason")));
    outln!("created_by:  {}", or_dash(text(block, "created_by")));
    outln!("created_at:  {}", or_dash(text(block, "created_at")));
    outln!("expires_at:  {}", or_dash(text(block, "expires_at")));
}

fn print_blocks(answer: &Value) {
    let blocks = answer
        .get("blocks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if blocks.is_empty() {
        outln!("no blocks");
        return;
    }
    outln!(
        "{:>6}  {:43}  {:9}  {:20}  REASON",
        "ID",
        "CIDR",
        "SOURCE",
        "EXPIRES_AT"
    );
    for block in &blocks {
        outln!(
            "{:>6}  {:43}  {:9}  {:20}  {}",
            text(block, "id"),
            text(block, "cidr"),
            text(block, "source"),
            text(block, "expires_at"),
            or_dash(text(block, "reason"))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_takes_a_duration() {
        let body = add_body("203.0.113.0/24", Some("90m"), Some("scanner")).unwrap();
        assert_eq!(
            body,
            json!({"cidr": "203.0.113.0/24", "expires_in_seconds": 5400, "reason": "scanner"})
        );
        assert_eq!(
            add_body("10.0.0.1", None, None).unwrap(),
            json!({"cidr": "10.0.0.1"})
        );
        assert!(matches!(
            add_body("10.0.0.1", Some("soon"), None),
            Err(CliError::Usage(_))
        ));
    }
}
