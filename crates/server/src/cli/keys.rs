//! `keygate keys create|list|show|revoke|expire|rotate` (update, usage and import have files
//! of their own).

use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::cli::args::{CreateArgs, KeysArgs, KeysCommand, SigningMaterialCommand};
use crate::cli::client::{connect, parse_id, query_escape, CliError, Client};
use crate::cli::print::{print_key, print_minted, print_table, report};
use crate::cli::{import, limits};
use crate::service::validate::parse_duration;

/// Runs a `keys` command and reports failures on stderr.
pub fn run_keys(args: KeysArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

fn execute(args: KeysArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    match args.command {
        KeysCommand::Create(create) => {
            let body = create_body(create)?;
            let answer = client.call("POST", "/api/v1/auth/keys", Some(body))?;
            print_minted(&answer, json_output);
        }
        KeysCommand::List(list) => {
            let mut query = Vec::new();
            if let Some(limit) = list.limit {
                query.push(format!("limit={limit}"));
            }
            if let Some(status) = &list.status {
                query.push(format!("status={}", query_escape(status)));
            }
            if let Some(cursor) = &list.cursor {
                query.push(format!("cursor={}", query_escape(cursor)));
            }
            let path = if query.is_empty() {
                "/api/v1/auth/keys".to_owned()
            } else {
                format!("/api/v1/auth/keys?{}", query.join("&"))
            };
            let answer = client.call("GET", &path, None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_table(&answer, &list);
            }
        }
        KeysCommand::Show { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("GET", &format!("/api/v1/auth/keys/{id}"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Revoke { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("DELETE", &format!("/api/v1/auth/keys/{id}"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Expire { id } => {
            let id = parse_id(&id)?;
            let answer = client.call("POST", &format!("/api/v1/auth/keys/{id}/expire"), None)?;
            print_key(&answer, json_output);
        }
        KeysCommand::Rotate(rotate) => {
            let id = parse_id(&rotate.id)?;
            let mut body = Map::new();
            if let Some(grace) = rotate.grace {
                let seconds = parse_duration(&grace).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--grace {grace:?} is not a duration such as 0, 3600s, 90m, 24h or 7d"
                    ))
                })?;
                body.insert("grace".into(), json!(seconds));
            }
            let answer = client.call(
                "POST",
                &format!("/api/v1/auth/keys/{id}/rotate"),
                Some(Value::Object(body)),
            )?;
            print_minted(&answer, json_output);
        }
        KeysCommand::Update(update) => limits::update(&client, update, json_output)?,
        KeysCommand::Usage(usage) => limits::usage(&client, usage, json_output)?,
        KeysCommand::Import(args) => import::import(&client, args, json_output)?,
        KeysCommand::SigningMaterial(command) => signing_material(&client, command, json_output)?,
    }
    Ok(())
}

/// `keys signing-material set|remove`: the answer of a set is printed as JSON (with an HMAC
/// secret, the only time it is shown).
fn signing_material(
    client: &Client,
    command: SigningMaterialCommand,
    json_output: bool,
) -> Result<(), CliError> {
    match command {
        SigningMaterialCommand::Set(args) => {
            let id = parse_id(&args.id)?;
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path).map_err(|error| {
                    CliError::Usage(format!("cannot read {}: {error}", path.display()))
                })
            };
            let body = match (&args.ed25519_public_key, &args.p256_public_key, args.hmac) {
                (Some(path), None, false) => json!({"alg": "ed25519", "public_key": read(path)?}),
                (None, Some(path), false) => {
                    json!({"alg": "ecdsa-p256-sha256", "public_key": read(path)?})
                }
                (None, None, true) => json!({"alg": "hmac-sha256"}),
                _ => {
                    return Err(CliError::Usage(
                        "give one of --ed25519-public-key FILE, --p256-public-key FILE, --hmac"
                            .into(),
                    ))
                }
            };
            let answer = client.call(
                "PUT",
                &format!("/api/v1/auth/keys/{id}/signing-material"),
                Some(body),
            )?;
            if json_output {
                println!("{answer}");
            } else {
                println!("alg: {}", answer["alg"].as_str().unwrap_or("-"));
                if let Some(key) = answer["public_key"].as_str() {
                    println!("public_key: {key}");
                }
                if let Some(secret) = answer["secret"].as_str() {
                    println!("generation: {}", answer["generation"]);
                    println!("secret: {secret}");
                    eprintln!("The secret (base64) is shown only now: keep it for `keygate sign --secret-file`.");
                }
            }
        }
        SigningMaterialCommand::Remove { id } => {
            let id = parse_id(&id)?;
            client.call(
                "DELETE",
                &format!("/api/v1/auth/keys/{id}/signing-material"),
                None,
            )?;
            if !json_output {
                println!("signing material removed from {id}");
            }
        }
    }
    Ok(())
}

pub fn create_body(create: CreateArgs) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("name".into(), json!(create.name));
    body.insert("scopes".into(), json!(create.scopes));
    if let Some(owner) = create.owner {
        body.insert("owner".into(), json!(owner));
    }
    if let Some(text) = create.expires_in {
        let seconds = parse_duration(&text).ok_or_else(|| {
            CliError::Usage(format!(
                "--expires-in {text:?} is not a duration such as 3600s, 90m, 12h or 30d"
            ))
        })?;
        body.insert("expires_in".into(), json!(seconds));
    }
    if let Some(at) = create.expires_at {
        body.insert("expires_at".into(), json!(at));
    }
    if let Some(text) = create.metadata {
        let metadata: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("--metadata is not valid JSON: {e}")))?;
        body.insert("metadata".into(), metadata);
    }
    if let Some(format) = create.format {
        body.insert("format".into(), json!(format));
    }
    if let Some(algorithm) = create.algorithm {
        body.insert("algorithm".into(), json!(algorithm));
    }
    create.limits.insert_into(&mut body)?;
    if !create.roles.is_empty() {
        body.insert("roles".into(), json!(create.roles));
    }
    Ok(Value::Object(body))
}
