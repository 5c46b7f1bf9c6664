//! `keygate webhooks add|list|show|remove|deliveries|redeliver`: webhooks on security events
//! and their deliveries.

use std::process::ExitCode;

use serde_json::{json, Value};

use crate::cli::args::{WebhooksArgs, WebhooksCommand};
use crate::cli::client::{connect, query_escape, CliError};
use crate::cli::print::{report, text};

/// Runs a `webhooks` command and reports failures on stderr.
pub fn run_webhooks(args: WebhooksArgs) -> ExitCode {
    let json_output = args.client.json;
    report(json_output, execute(args))
}

fn print_webhook(webhook: &Value) {
    let events: Vec<&str> = webhook
        .get("events")
        .and_then(Value::as_array)
        .map(|events| events.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    outln!(
        "{}  {}  [{}]  {}",
        text(webhook, "id"),
        text(webhook, "url"),
        events.join(", "),
        text(webhook, "description")
    );
}

fn print_delivery(delivery: &Value) {
    let last = match delivery.get("last_status").and_then(Value::as_u64) {
        Some(status) => format!("HTTP {status}"),
        None => text(delivery, "last_error").to_owned(),
    };
    outln!(
        "{}  {}  {}  attempts {}  {}  {}",
        text(delivery, "id"),
        text(delivery, "event"),
        text(delivery, "status"),
        delivery.get("attempts").unwrap_or(&Value::Null),
        text(delivery, "created_at"),
        last
    );
}

fn execute(args: WebhooksArgs) -> Result<(), CliError> {
    let client = connect(&args.client)?;
    let json_output = args.client.json;
    let path = |id: &str| format!("/api/v1/webhooks/{}", query_escape(id));
    match args.command {
        WebhooksCommand::Add {
            url,
            events,
            description,
        } => {
            let mut body = json!({"url": url, "events": events});
            if let Some(description) = description {
                body["description"] = Value::from(description);
            }
            let answer = client.call("POST", "/api/v1/webhooks", Some(body))?;
            if json_output {
                outln!("{answer}");
            } else {
                print_webhook(&answer);
                outln!("signing secret (shown once): {}", text(&answer, "secret"));
            }
        }
        WebhooksCommand::List => {
            let answer = client.call("GET", "/api/v1/webhooks", None)?;
            if json_output {
                outln!("{answer}");
            } else {
                let webhooks = answer.get("webhooks").and_then(Value::as_array);
                match webhooks {
                    Some(list) if !list.is_empty() => list.iter().for_each(print_webhook),
                    _ => outln!("no webhooks"),
                }
            }
        }
        WebhooksCommand::Show { id } => {
            let answer = client.call("GET", &path(&id), None)?;
            if json_output {
                outln!("{answer}");
            } else {
                print_webhook(&answer);
            }
        }
        WebhooksCommand::Remove { id } => {
            client.call("DELETE", &path(&id), None)?;
            if json_output {
                outln!("{}", json!({"removed": id}));
            } else {
                outln!("removed webhook {id}");
            }
        }
        WebhooksCommand::Deliveries { id, limit } => {
            let answer = client.call(
                "GET",
                &format!("{}/deliveries?limit={limit}", path(&id)),
                None,
            )?;
            if json_output {
                outln!("{answer}");
            } else {
                let deliveries = answer.get("deliveries").and_then(Value::as_array);
                match deliveries {
                    Some(list) if !list.is_empty() => list.iter().for_each(print_delivery),
                    _ => outln!("no deliveries"),
                }
            }
        }
        WebhooksCommand::Redeliver { id, delivery } => {
            let answer = client.call(
                "POST",
                &format!(
                    "{}/deliveries/{}/redeliver",
                    path(&id),
                    query_escape(&delivery)
                ),
                None,
            )?;
            if json_output {
                outln!("{answer}");
            } else {
                print_delivery(&answer);
            }
        }
    }
    Ok(())
}
