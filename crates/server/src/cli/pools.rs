//! `keygate pools set|show|delete|list`: owners' pooled limits.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::cli::args::{PoolsArgs, PoolsCommand};
use crate::cli::client::{connect, query_escape, CliError};
use crate::cli::limits::parse_rate;
use crate::cli::print::{report, text};

/// Runs a `pools` command and reports failures on stderr.
pub fn run_pools(args: PoolsArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute_pools(args))
}

fn print_pool(pool: &Value) {
    let limit = pool.get("rate_limit").cloned().unwrap_or(Value::Null);
    let rate = limit
        .get("requests_per_second")
        .and_then(Value::as_f64)
        .map_or_else(|| "?".to_owned(), |rps| rps.to_string());
    outln!(
        "{}  {rate}/s, burst {}  (updated {})",
        text(pool, "owner"),
        limit.get("burst").unwrap_or(&Value::Null),
        text(pool, "updated_at")
    );
}

fn execute_pools(args: PoolsArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    let answer = match args.command {
        PoolsCommand::Set { owner, rate, burst } => {
            let rps = parse_rate(&rate).ok_or_else(|| {
                CliError::Usage(format!(
                    "--rate {rate:?} is not a rate such as 10/s, 600/m or 36000/h"
                ))
            })?;
            let burst = burst.unwrap_or_else(|| crate::service::limits::default_burst(rps));
            client.call(
                "PUT",
                &format!("/api/v1/pools/{}", query_escape(&owner)),
                Some(json!({"requests_per_second": rps, "burst": burst})),
            )?
        }
        PoolsCommand::Show { owner } => client.call(
            "GET",
            &format!("/api/v1/pools/{}", query_escape(&owner)),
            None,
        )?,
        PoolsCommand::Delete { owner } => {
            let answer = client.call(
                "DELETE",
                &format!("/api/v1/pools/{}", query_escape(&owner)),
                None,
            )?;
            if json_output {
                outln!("{answer}");
            } else {
                outln!("deleted the pool of {owner}");
            }
            return Ok(());
        }
        PoolsCommand::List => client.call("GET", "/api/v1/pools", None)?,
    };
    if json_output {
        outln!("{answer}");
    } else if let Some(pools) = answer.get("pools").and_then(Value::as_array) {
        if pools.is_empty() {
            outln!("no pools");
        }
        pools.iter().for_each(print_pool);
    } else {
        print_pool(&answer);
    }
    Ok(())
}
