//! `keygate signing-keys list|rotate`.

use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::cli::args::{SigningKeysArgs, SigningKeysCommand};
use crate::cli::client::{connect, CliError};
use crate::cli::print::{or_dash, print_signing_keys, report, text};

/// Runs a `signing-keys` command and reports failures on stderr.
pub fn run_signing_keys(args: SigningKeysArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute_signing_keys(args))
}

fn execute_signing_keys(args: SigningKeysArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    match args.command {
        SigningKeysCommand::List => {
            let answer = client.call("GET", "/api/v1/signing-keys", None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_signing_keys(&answer);
            }
        }
        SigningKeysCommand::Rotate { algorithm } => {
            let mut body = Map::new();
            if let Some(algorithm) = algorithm {
                body.insert("algorithm".into(), json!(algorithm));
            }
            let answer = client.call(
                "POST",
                "/api/v1/signing-keys/rotate",
                Some(Value::Object(body)),
            )?;
            if json_output {
                outln!("{answer}");
            } else {
                outln!(
                    "new signing key: {} ({})",
                    text(&answer, "kid"),
                    text(&answer, "algorithm")
                );
                outln!(
                    "published now; signs new tokens from {} (until then the previous key does)",
                    or_dash(text(&answer, "signs_from"))
                );
                match text(&answer, "retired_kid") {
                    "" => outln!("retired:         - (it is the first key of its algorithm)"),
                    kid => {
                        outln!("retired:         {kid} (published until its last token expires)")
                    }
                }
            }
        }
    }
    Ok(())
}
