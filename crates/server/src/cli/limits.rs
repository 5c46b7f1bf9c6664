//! `keygate keys create` limit flags, `keygate keys update` and `keygate keys usage`.

use serde_json::{json, Map, Value};

use crate::cli::args::{LimitArgs, UpdateArgs, UsageArgs};
use crate::cli::client::{parse_id, query_escape, CliError, Client};
use crate::cli::print::{print_key, text};
use crate::service::validate::parse_duration;

/// Parses `10/s`, `600/m`, `36000/h`, `2.5/s` or a bare number (per second).
pub fn parse_rate(text: &str) -> Option<f64> {
    let (number, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let per = match unit {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return None,
    };
    let number: f64 = number.parse().ok()?;
    let rate = number / per;
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

impl LimitArgs {
    /// Adds the given limits to a create or update body.
    pub fn insert_into(self, body: &mut Map<String, Value>) -> Result<(), CliError> {
        if let Some(text) = self.rate_limit {
            let rps = parse_rate(&text).ok_or_else(|| {
                CliError::Usage(format!(
                    "--rate-limit {text:?} is not a rate such as 10/s, 600/m or 36000/h"
                ))
            })?;
            let burst = self
                .burst
                .unwrap_or_else(|| crate::service::limits::default_burst(rps));
            body.insert(
                "rate_limit".into(),
                json!({"requests_per_second": rps, "burst": burst}),
            );
        }
        if !self.allow_cidrs.is_empty() {
            body.insert("allowed_cidrs".into(), json!(self.allow_cidrs));
        }
        if let Some(at) = self.not_before {
            body.insert("not_before".into(), json!(at));
        }
        if let Some(at) = self.not_after {
            body.insert("not_after".into(), json!(at));
        }
        if !self.allowed_principals.is_empty() {
            body.insert("allowed_principals".into(), json!(self.allowed_principals));
        }
        if !self.allow_countries.is_empty() {
            body.insert("allowed_countries".into(), json!(self.allow_countries));
        }
        if let Some(text) = self.global_rate {
            let rps = parse_rate(&text).ok_or_else(|| {
                CliError::Usage(format!(
                    "--global-rate {text:?} is not a rate such as 10/s, 600/m or 36000/h"
                ))
            })?;
            let burst = self
                .global_burst
                .unwrap_or_else(|| crate::service::limits::default_burst(rps));
            body.insert(
                "global_limit".into(),
                json!({"requests_per_second": rps, "burst": burst}),
            );
        }
        if let (Some(limit), Some(period)) = (self.quota, self.quota_period) {
            body.insert("quota".into(), json!({"limit": limit, "period": period}));
        }
        Ok(())
    }
}

pub(super) fn update(client: &Client, args: UpdateArgs, json_output: bool) -> Result<(), CliError> {
    let id = parse_id(&args.id)?;
    let mut body = Map::new();
    if let Some(name) = args.name {
        body.insert("name".into(), json!(name));
    }
    if !args.scopes.is_empty() {
        body.insert("scopes".into(), json!(args.scopes));
    }
    if args.clear_scopes {
        body.insert("scopes".into(), json!([]));
    }
    if let Some(text) = args.metadata {
        let metadata: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("--metadata is not valid JSON: {e}")))?;
        body.insert("metadata".into(), metadata);
    }
    args.limits.insert_into(&mut body)?;
    for (clear, field) in [
        (args.clear_rate_limit, "rate_limit"),
        (args.clear_cidrs, "allowed_cidrs"),
        (args.clear_not_before, "not_before"),
        (args.clear_not_after, "not_after"),
        (args.clear_principals, "allowed_principals"),
        (args.clear_countries, "allowed_countries"),
        (args.clear_global_rate, "global_limit"),
        (args.clear_quota, "quota"),
    ] {
        if clear {
            body.insert(field.into(), Value::Null);
        }
    }
    if !args.roles.is_empty() {
        body.insert("roles".into(), json!(args.roles));
    }
    if args.clear_roles {
        body.insert("roles".into(), json!([]));
    }
    if body.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give --name, --scope, --metadata, --role, a limit flag or a --clear-* flag"
                .into(),
        ));
    }
    let answer = client.call(
        "PATCH",
        &format!("/api/v1/auth/keys/{id}"),
        Some(Value::Object(body)),
    )?;
    print_key(&answer, json_output);
    Ok(())
}

/// Width of the bar chart in characters.
const CHART_WIDTH: usize = 60;

pub(super) fn usage(client: &Client, args: UsageArgs, json_output: bool) -> Result<(), CliError> {
    let mut query = Vec::new();
    if let Some(from) = &args.from {
        query.push(format!("from={}", query_escape(from)));
    }
    if let Some(to) = &args.to {
        query.push(format!("to={}", query_escape(to)));
    }
    if let Some(step) = &args.step {
        let seconds = parse_duration(step)
            .filter(|s| crate::service::usage::STEPS.contains(s))
            .ok_or_else(|| {
                CliError::Usage(format!("--step {step:?} must be one of 1m, 5m, 1h, 1d"))
            })?;
        query.push(format!("step={seconds}"));
    }
    let mut path = format!("/api/v1/auth/keys/{}/usage", query_escape(&args.id));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let answer = client.call("GET", &path, None)?;
    if json_output {
        outln!("{answer}");
    } else {
        out!("{}", render_usage(&answer));
        let key = client.call(
            "GET",
            &format!("/api/v1/auth/keys/{}", query_escape(&args.id)),
            None,
        )?;
        outln!("\nlast used: {}", crate::cli::print::last_used_text(&key));
        if let Some(quota) = key.get("quota").filter(|q| !q.is_null()) {
            outln!("\n{}", crate::cli::print::quota_line(quota));
        }
    }
    Ok(())
}

fn count(value: &Value, field: &str) -> u64 {
    value.get(field).and_then(Value::as_u64).unwrap_or(0)
}

fn sum(value: &Value, field: &str) -> u64 {
    value
        .get(field)
        .and_then(Value::as_object)
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn class(point: &Value, name: &str) -> u64 {
    point
        .get("status")
        .and_then(|s| s.get(name))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A horizontal bar of `value` scaled so `max` fills `width` cells, in eighths of a block.
pub fn bar(value: u64, max: u64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if max == 0 || value == 0 {
        return String::new();
    }
    let width = u128::try_from(width).unwrap_or(0);
    let eighths = (u128::from(value) * width * 8).div_ceil(u128::from(max));
    let full = usize::try_from(eighths / 8).unwrap_or(0);
    let rest = usize::try_from(eighths % 8).unwrap_or(0);
    let mut out = "█".repeat(full);
    if rest > 0 {
        out.push(PARTS[rest]);
    }
    out
}

/// The p50, p95 and p99 columns of a usage point: the bucket bound in ms, `>5000` above the
/// last bound, `-` when nothing was measured.
fn latency_columns(point: &Value) -> String {
    let percentiles = point.get("latency_ms").filter(|p| p.is_object());
    let column = |name: &str| match percentiles.and_then(|p| p.get(name)) {
        None => "-".to_owned(),
        Some(Value::Null) => format!(">{}", keygate_core::wire::LATENCY_BOUNDS_MS[11]),
        Some(value) => value.to_string(),
    };
    format!(
        "{:>7}  {:>7}  {:>7}",
        column("p50"),
        column("p95"),
        column("p99")
    )
}

/// The usage answer as a table and a bar chart of requests per step.
pub fn render_usage(answer: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let points = answer
        .get("points")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "usage of {} from {} to {} (step {}s)\n",
        text(answer, "key_id"),
        text(answer, "from"),
        text(answer, "to"),
        answer.get("step").and_then(Value::as_i64).unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "{:<20}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>7}  {:>7}  {:>7}",
        "TIME", "ALLOWED", "DENIED", "2XX", "3XX", "4XX", "5XX", "P50MS", "P95MS", "P99MS"
    );
    for point in &points {
        let _ = writeln!(
            out,
            "{:<20}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {}",
            text(point, "start"),
            count(point, "allowed"),
            sum(point, "denied"),
            class(point, "2xx"),
            class(point, "3xx"),
            class(point, "4xx"),
            class(point, "5xx"),
            latency_columns(point),
        );
    }
    if let Some(totals) = answer.get("totals") {
        let _ = writeln!(
            out,
            "{:<20}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {}",
            "TOTAL",
            count(totals, "allowed"),
            sum(totals, "denied"),
            class(totals, "2xx"),
            class(totals, "3xx"),
            class(totals, "4xx"),
            class(totals, "5xx"),
            latency_columns(totals),
        );
        if let Some(routes) = totals
            .get("routes")
            .and_then(Value::as_object)
            .filter(|r| !r.is_empty())
        {
            let routes: Vec<String> = routes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "allowed by route: {}", routes.join(", "));
        }
        if let Some(denied) = totals
            .get("denied")
            .and_then(Value::as_object)
            .filter(|d| !d.is_empty())
        {
            let reasons: Vec<String> = denied.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "denied by reason: {}", reasons.join(", "));
        }
    }
    if let Some(countries) = answer
        .get("countries")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
    {
        let seen: Vec<String> = countries
            .iter()
            .map(|c| {
                format!(
                    "{} (since {})",
                    text(c, "country"),
                    text(c, "first_seen_at")
                )
            })
            .collect();
        let _ = writeln!(out, "countries seen: {}", seen.join(", "));
    }
    let requests: Vec<u64> = points
        .iter()
        .map(|p| count(p, "allowed") + sum(p, "denied"))
        .collect();
    let max = requests.iter().copied().max().unwrap_or(0);
    let _ = writeln!(out, "\nrequests per step (max {max}):");
    for (point, n) in points.iter().zip(&requests) {
        let _ = writeln!(
            out,
            "{:<20} │{}",
            text(point, "start"),
            bar(*n, max, CHART_WIDTH)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("10/s"), Some(10.0));
        assert_eq!(parse_rate("600/m"), Some(10.0));
        assert_eq!(parse_rate("3600/h"), Some(1.0));
        assert_eq!(parse_rate("2.5"), Some(2.5));
        for bad in ["", "x/s", "10/d", "0/s", "-1/s"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn bars_scale_to_the_width() {
        assert_eq!(bar(0, 10, 60), "");
        assert_eq!(bar(10, 10, 60).chars().count(), 60);
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(1, 16, 2), "▏");
    }

    #[test]
    fn usage_renders_routes_and_latency_percentiles() {
        let answer = json!({
            "key_id": "k", "from": "2030-01-01T00:00:00Z", "to": "2030-01-01T01:00:00Z",
            "step": 3600,
            "points": [
                {"start": "2030-01-01T00:00:00Z", "allowed": 4, "denied": {}, "status": {"2xx": 4},
                 "routes": {"hello": 3, "other": 1}, "latency": {"5": 2, "25": 1, "inf": 1},
                 "latency_ms": {"p50": 5, "p95": null, "p99": null}}
            ],
            "totals": {"allowed": 4, "denied": {}, "status": {"2xx": 4},
                       "routes": {"hello": 3, "other": 1},
                       "latency": {"5": 2, "25": 1, "inf": 1},
                       "latency_ms": {"p50": 5, "p95": null, "p99": null}}
        });
        let text = render_usage(&answer);
        assert!(text.contains("P50MS"), "{text}");
        assert!(
            text.contains("allowed by route: hello=3, other=1"),
            "{text}"
        );
        let total = text.lines().find(|l| l.starts_with("TOTAL")).unwrap();
        assert!(total.ends_with("5    >5000    >5000"), "{total:?}");
        let mut answer = answer;
        answer["countries"] = json!([
            {"country": "DE", "first_seen_at": "2030-01-01T00:00:00Z"},
            {"country": "US", "first_seen_at": "2030-01-01T00:20:00Z"}
        ]);
        assert!(
            render_usage(&answer).contains(
                "countries seen: DE (since 2030-01-01T00:00:00Z), US (since 2030-01-01T00:20:00Z)"
            ),
            "{}",
            render_usage(&answer)
        );
    }

    #[test]
    fn usage_renders_a_row_per_point_and_a_chart() {
        let answer = json!({
            "key_id": "k", "from": "2030-01-01T00:00:00Z", "to": "2030-01-01T02:00:00Z",
            "step": 3600,
            "points": [
                {"start": "2030-01-01T00:00:00Z", "allowed": 4, "denied": {"revoked": 1}, "status": {"2xx": 4}},
                {"start": "2030-01-01T01:00:00Z", "allowed": 0, "denied": {}, "status": {}}
            ],
            "totals": {"allowed": 4, "denied": {"revoked": 1}, "status": {"2xx": 4}}
        });
        let text = render_usage(&answer);
        assert!(text.contains("denied by reason: revoked=1"), "{text}");
        assert!(!text.contains("countries seen"), "{text}");
        assert!(!text.contains("allowed by route"), "{text}");
        assert_eq!(text.matches('│').count(), 2);
        assert!(text.contains(&"█".repeat(60)));
    }
}
