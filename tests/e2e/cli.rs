//! The `keygate` CLI, run as a binary against a real key service: `--json` on every client
//! command, text output, paging hints, filters, durations, a closed stdout, the admin key file.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use keygate_testkit::{keygate_bin, random_hex, send, wait_until, KeyService, TempDir, ADMIN_KEY};

/// A key service of its own (no Envoy: the CLI only talks to the key service).
struct Service {
    service: KeyService,
    dir: TempDir,
}

fn service(label: &str) -> Service {
    let dir = TempDir::new(label);
    let mut service = KeyService::start(
        &dir.path().join("service"),
        &random_hex(32),
        &random_hex(24),
    );
    service.wait_ready();
    Service { service, dir }
}

impl Service {
    /// `keygate ARGS` against this service; answers the whole output (any exit status).
    fn run(&self, args: &[&str]) -> Output {
        Command::new(keygate_bin())
            .args(args)
            .env("KEYGATE_SERVER", self.service.url(""))
            .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running keygate {args:?}: {e}"))
    }

    /// `keygate ARGS`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.service.cli(args)
    }

    /// `keygate ARGS --json`, which must succeed and print one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("keygate {args:?} --json printed no JSON ({e}): {out}"))
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn id_of(answer: &Value) -> String {
    answer["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {answer}"))
        .to_owned()
}

#[test]
fn every_client_command_takes_json_and_serve_does_not() {
    let s = service("cli-json");
    let created = s.json(&["keys", "create", "--name", "j", "--scope", "demo:read"]);
    let id = id_of(&created);
    assert!(created["key"].is_string(), "{created}");
    assert!(s.json(&["keys", "list"])["keys"].is_array());
    assert_eq!(s.json(&["keys", "show", &id])["id"], id.as_str());
    assert_eq!(
        s.json(&["keys", "update", &id, "--name", "j2"])["name"],
        "j2"
    );
    assert!(s.json(&["keys", "usage", &id])["points"].is_array());
    let successor = s.json(&["keys", "rotate", &id, "--grace", "0"]);
    let next = id_of(&successor);
    assert_eq!(s.json(&["keys", "expire", &next])["status"], "expired");
    assert_eq!(s.json(&["keys", "revoke", &id])["status"], "revoked");
    let csv = s.dir.path().join("legacy.csv");
    std::fs::write(
        &csv,
        "name,owner,scopes,expires_at,key,sha256\nold,team,demo:read,,legacy-secret-json-1,\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    assert_eq!(
        s.json(&["keys", "import", csv, "--dry-run"])["dry_run"],
        true
    );
    assert_eq!(s.json(&["keys", "import", csv])["created"], 1);
    assert!(s.json(&["signing-keys", "list"])["signing_keys"].is_array());
    assert!(s.json(&["signing-keys", "rotate", "--algorithm", "EdDSA"])["kid"].is_string());
    assert!(s.json(&["audit"])["entries"].is_array());
    // In text, a rotated signing key says from when it signs.
    let rotated = s.ok(&["signing-keys", "rotate", "--algorithm", "RS256"]);
    assert!(rotated.contains("signs new tokens from 20"), "{rotated}");
    let listed = s.ok(&["signing-keys", "list"]);
    assert!(
        listed.starts_with("KID") && listed.contains("SIGNS_FROM"),
        "{listed}"
    );
    // --json also before the subcommand.
    assert!(s.json(&["keys", "--json", "list"])["keys"].is_array());
    // A refused command prints the service's problem as JSON on stdout too.
    let refused = s.run(&["keys", "show", "aaaaaaaaaaaaaaaa", "--json"]);
    assert_eq!(refused.status.code(), Some(1));
    let problem: Value = serde_json::from_str(stdout(&refused).trim()).unwrap();
    assert_eq!(problem["status"], 404);
    // serve has no --json (its logs are JSON lines always): a usage error, not a server.
    let serve = Command::new(keygate_bin())
        .args(["serve", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(2), "{}", stderr(&serve));
}

#[test]
fn show_and_create_print_limits_metadata_and_owner_one_way() {
    let s = service("cli-text");
    let args = [
        "keys",
        "create",
        "--name",
        "limited",
        "--scope",
        "demo:read",
        "--rate-limit",
        "600/m",
        "--burst",
        "20",
        "--allow-cidr",
        "10.0.0.0/8",
        "--allow-cidr",
        "2001:db8::/32",
        "--not-before",
        "2030-01-01T00:00:00Z",
        "--not-after",
        "2031-01-01T00:00:00Z",
        "--metadata",
        r#"{"team":"payments"}"#,
    ];
    let created = s.ok(&args);
    let id = created
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no id line: {created}"))
        .to_owned();
    let shown = s.ok(&["keys", "show", &id]);
    for text in [&created, &shown] {
        for line in [
            "rate_limit:   10/s, burst 20",
            "allowed_from: 10.0.0.0/8 2001:db8::/32",
            "not_before:   2030-01-01T00:00:00Z",
            "not_after:    2031-01-01T00:00:00Z",
            r#"metadata:     {"team":"payments"}"#,
            "owner:        -",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
    // No owner: `null` in JSON, `-` in every text output.
    assert_eq!(s.json(&["keys", "show", &id])["owner"], Value::Null);
    let list = s.ok(&["keys", "list"]);
    let row = list.lines().find(|l| l.starts_with(&id)).unwrap();
    assert_eq!(row.split_whitespace().nth(2), Some("-"), "{list}");
    let owned = s.json(&["keys", "create", "--name", "o", "--owner", "team-a"]);
    assert_eq!(owned["owner"], "team-a");
    let plain = s.ok(&["keys", "show", &id_of(&owned)]);
    for line in [
        "rate_limit:   -",
        "allowed_from: any",
        "metadata:     -",
        "owner:        team-a",
    ] {
        assert!(plain.lines().any(|l| l == line), "no {line:?} in:\n{plain}");
    }
}

/// Runs `keygate ARGS` with its stdout already closed by the reader, as `| head` does.
fn run_into_closed_pipe(s: &Service, args: &[&str]) -> Output {
    let mut child: Child = Command::new(keygate_bin())
        .args(args)
        .env("KEYGATE_SERVER", s.service.url(""))
        .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let s = service("cli-epipe");
    for n in 0..3 {
        s.ok(&["keys", "create", "--name", &format!("k{n}")]);
    }
    for args in [
        &["audit", "--json"][..],
        &["audit"],
        &["keys", "list"],
        &["keys", "list", "--json"],
        &["keys", "create", "--name", "piped"],
        &["signing-keys", "list"],
    ] {
        let output = run_into_closed_pipe(&s, args);
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "keygate {args:?} into a closed pipe: {} stderr: {}",
            output.status,
            stderr(&output)
        );
    }
    // And through a real `| head`.
    let shell = Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; keygate audit --json | head -c 10 >/dev/null; keygate keys list | head -n 1",
        ])
        .env("PATH", path_with_keygate())
        .env("KEYGATE_SERVER", s.service.url(""))
        .env("KEYGATE_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(shell.status.success(), "{}", stderr(&shell));
    assert!(!stderr(&shell).contains("panicked"), "{}", stderr(&shell));
}

/// `PATH` with the directory of the `keygate` binary under test first.
pub fn path_with_keygate() -> String {
    let bin = keygate_bin();
    let dir = bin.parent().unwrap_or(Path::new("."));
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn unknown_filter_values_are_errors_that_list_the_valid_ones() {
    let s = service("cli-filters");
    let audit = s.run(&["audit", "--action", "bogus"]);
    assert_eq!(audit.status.code(), Some(2), "{}", stdout(&audit));
    let text = stderr(&audit);
    for action in [
        "create",
        "update",
        "rotate",
        "revoke",
        "expire",
        "import",
        "signing_key_rotate",
        "admin_auth",
    ] {
        assert!(text.contains(action), "{action} not listed: {text}");
    }
    let list = s.run(&["keys", "list", "--status", "bogus"]);
    assert!(!list.status.success());
    assert!(
        stderr(&list).contains("active, revoked, expired"),
        "{}",
        stderr(&list)
    );
    // A known action with no entries is not an error.
    assert!(s
        .ok(&["audit", "--action", "expire"])
        .contains("(no entries)"));
}

/// The `more:` hint of a text page, as arguments.
fn next_page(text: &str) -> Option<Vec<String>> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("more: keygate "))?;
    Some(line.split_whitespace().map(str::to_owned).collect())
}

#[test]
fn paging_hints_keep_the_limit_and_filters() {
    let s = service("cli-paging");
    for n in 0..5 {
        s.ok(&["keys", "create", "--name", &format!("k{n}")]);
    }
    let mut pages = 1;
    let mut seen = 0;
    let mut text = s.ok(&["keys", "list", "--limit", "2"]);
    loop {
        seen += text
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("more:"))
            .count();
        let Some(args) = next_page(&text) else { break };
        assert!(
            args.windows(2).any(|w| w == ["--limit", "2"]),
            "the hint dropped --limit: {args:?}"
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        text = s.ok(&args);
        pages += 1;
        assert!(pages <= 3, "more pages than 5 keys need:\n{text}");
    }
    assert_eq!((pages, seen), (3, 5));
    let audit = s.ok(&["audit", "--action", "create", "--limit", "4"]);
    let args = next_page(&audit).unwrap_or_else(|| panic!("no hint:\n{audit}"));
    let joined = args.join(" ");
    assert!(
        joined.starts_with("audit --action create --limit 4 --cursor "),
        "{joined}"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rest = s.ok(&args);
    assert_eq!(
        rest.lines().filter(|l| l.contains(" create ")).count(),
        1,
        "{rest}"
    );
}

#[test]
fn a_dry_run_import_marks_the_ids_it_cannot_know() {
    let s = service("cli-import");
    let csv = s.dir.path().join("legacy.csv");
    std::fs::write(
        &csv,
        "name,owner,scopes,expires_at,key,sha256\nold,team,demo:read,,legacy-secret-dry-1,\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    let dry = s.ok(&["keys", "import", csv, "--dry-run"]);
    assert!(dry.contains("(new id on import)"), "{dry}");
    let real = s.ok(&["keys", "import", csv]);
    let id = real
        .lines()
        .find_map(|l| l.strip_prefix("row     1  "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no row line:\n{real}"));
    assert_eq!(s.json(&["keys", "show", id])["name"], "old");
    // Once imported, a dry run knows the id (the row is unchanged).
    let again = s.ok(&["keys", "import", csv, "--dry-run"]);
    assert!(again.contains(id), "{again}");
}

#[test]
fn durations_have_one_syntax_in_rest_and_cli() {
    let s = service("cli-durations");
    let auth = format!("Bearer {ADMIN_KEY}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    for (expires_in, seconds) in [
        (json!("30d"), 2_592_000),
        (json!(3600), 3600),
        (json!("90m"), 5400),
    ] {
        let body = json!({"name": "d", "scopes": [], "expires_in": expires_in}).to_string();
        let reply = send(
            "POST",
            &s.service.url("/api/v1/auth/keys"),
            &headers,
            Some(&body),
        );
        assert_eq!(reply.status, 201, "{expires_in}: {reply:?}");
        assert_eq!(lifetime(&reply.json()), seconds, "{expires_in}");
    }
    for text in ["3600", "90m", "30d"] {
        let created = s.json(&["keys", "create", "--name", "c", "--expires-in", text]);
        let expected = keygate_server_duration(text);
        assert_eq!(lifetime(&created), expected, "--expires-in {text}");
    }
    let body = json!({"name": "d", "scopes": [], "expires_in": "soon"}).to_string();
    let reply = send(
        "POST",
        &s.service.url("/api/v1/auth/keys"),
        &headers,
        Some(&body),
    );
    assert_eq!(reply.status, 400);
    assert!(reply.json()["detail"]
        .as_str()
        .unwrap_or("")
        .contains("30d"));
    // grace too.
    let id = id_of(&s.json(&["keys", "create", "--name", "g"]));
    let body = json!({"grace": "1h"}).to_string();
    let reply = send(
        "POST",
        &s.service.url(&format!("/api/v1/auth/keys/{id}/rotate")),
        &headers,
        Some(&body),
    );
    assert_eq!(reply.status, 201, "{reply:?}");
}

fn keygate_server_duration(text: &str) -> i64 {
    match text.as_bytes().last() {
        Some(b'm') => text[..text.len() - 1].parse::<i64>().unwrap() * 60,
        Some(b'd') => text[..text.len() - 1].parse::<i64>().unwrap() * 86_400,
        _ => text.parse().unwrap(),
    }
}

/// `expires_at - created_at` of a key answer, in seconds.
fn lifetime(key: &Value) -> i64 {
    let at = |field: &str| {
        let text = key[field]
            .as_str()
            .unwrap_or_else(|| panic!("no {field}: {key}"));
        let output = Command::new("date")
            .args(["-u", "-d", text, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    at("expires_at") - at("created_at")
}

#[test]
fn the_revoked_counter_counts_each_key_once() {
    let s = service("cli-revoked");
    let id = id_of(&s.json(&["keys", "create", "--name", "r"]));
    for _ in 0..3 {
        assert_eq!(s.json(&["keys", "revoke", &id])["status"], "revoked");
    }
    let metrics = send("GET", &s.service.url("/metrics"), &[], None);
    let body = metrics.body.clone();
    assert!(
        body.lines().any(|l| l == "keygate_keys_revoked_total 1"),
        "{body}"
    );
}

/// Whether `GET {server}/healthz` answers 200 (false while nothing listens).
fn healthy(server: &str) -> bool {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build()
        .get(&format!("{server}/healthz"))
        .call()
        .is_ok()
}

#[test]
fn serve_saves_the_admin_key_where_the_cli_reads_it() {
    let dir = TempDir::new("cli-admin-file");
    let saved = dir.path().join("admin.key");
    let port = keygate_testkit::free_port();
    let mut serve = Command::new(keygate_bin())
        .current_dir(dir.path())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--save-admin-key",
        ])
        .arg(&saved)
        .env("KEYGATE_GATEWAY_KEY", random_hex(32))
        .env("KEYGATE_SERVICE_TOKEN", random_hex(24))
        .env_remove("KEYGATE_ADMIN_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(30), || {
        saved.exists() && healthy(&server)
    });
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(up, "the key service did not save {}", saved.display());
    // Restart it (same database) and read the key back with the CLI's --admin-key-file.
    let mut serve = Command::new(keygate_bin())
        .current_dir(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("KEYGATE_GATEWAY_KEY", random_hex(32))
        .env("KEYGATE_SERVICE_TOKEN", random_hex(24))
        .env_remove("KEYGATE_ADMIN_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(30), || healthy(&server));
    let listed = Command::new(keygate_bin())
        .args(["keys", "list", "--json", "--admin-key-file"])
        .arg(&saved)
        .env("KEYGATE_SERVER", &server)
        .env_remove("KEYGATE_ADMIN_KEY")
        .env_remove("KEYGATE_ADMIN_KEY_FILE")
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(up);
    assert!(listed.status.success(), "{}", stderr(&listed));
}
