//! `keygate roles create|list|show|update|delete`.

use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::cli::args::{RolesArgs, RolesCommand};
use crate::cli::client::{connect, query_escape, CliError};
use crate::cli::print::{or_dash, report, text};

/// Runs a `roles` command and reports failures on stderr.
pub fn run_roles(args: RolesArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

fn path_of(name: &str) -> String {
    format!("/api/v1/roles/{}", query_escape(name))
}

fn execute(args: RolesArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    let answer = match args.command {
        RolesCommand::Create(create) => {
            let mut body = Map::new();
            body.insert("name".into(), json!(create.name));
            body.insert("scopes".into(), json!(create.scopes));
            if let Some(description) = create.description {
                body.insert("description".into(), json!(description));
            }
            client.call("POST", "/api/v1/roles", Some(Value::Object(body)))?
        }
        RolesCommand::List => {
            let answer = client.call("GET", "/api/v1/roles", None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_roles(&answer);
            }
            return Ok(());
        }
        RolesCommand::Show { name } => client.call("GET", &path_of(&name), None)?,
        RolesCommand::Update(update) => {
            let mut body = Map::new();
            if !update.scopes.is_empty() {
                body.insert("scopes".into(), json!(update.scopes));
            }
            if update.clear_scopes {
                body.insert("scopes".into(), json!([]));
            }
            if let Some(description) = update.description {
                body.insert("description".into(), json!(description));
            }
            if body.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --scope, --clear-scopes or --description".into(),
                ));
            }
            client.call("PATCH", &path_of(&update.name), Some(Value::Object(body)))?
        }
        RolesCommand::Delete { name } => client.call("DELETE", &path_of(&name), None)?,
    };
    if json_output {
        outln!("{answer}");
    } else {
        print_role(&answer);
    }
    Ok(())
}

fn scopes_of(role: &Value) -> String {
    let scopes: Vec<&str> = role
        .get("scopes")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if scopes.is_empty() {
        "-".to_owned()
    } else {
        scopes.join(" ")
    }
}

fn print_role(role: &Value) {
    outln!("name:         {}", or_dash(text(role, "name")));
    outln!("scopes:       {}", scopes_of(role));
    outln!("description:  {}", or_dash(text(role, "description")));
    outln!(
        "version:      {}",
        role.get("version").and_then(Value::as_u64).unwrap_or(0)
    );
    outln!("created_at:   {}", or_dash(text(role, "created_at")));
    outln!("updated_at:   {}", or_dash(text(role, "updated_at")));
}

fn print_roles(answer: &Value) {
    let roles = answer
        .get("roles")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if roles.is_empty() {
        outln!("no roles");
        return;
    }
    let width = roles
        .iter()
        .map(|role| text(role, "name").len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!("{:width$}  {:>7}  SCOPES", "NAME", "VERSION");
    for role in &roles {
        outln!(
            "{:width$}  {:>7}  {}",
            text(role, "name"),
            role.get("version").and_then(Value::as_u64).unwrap_or(0),
            scopes_of(role)
        );
    }
}
