//! The README's code blocks, run as printed so the docs cannot drift from the code.
//!
//! A block is marked with an HTML comment on the line before its fence:
//! - `<!-- doc-test: sh service -->`: a bash script run (`set -euo pipefail`) against a running
//!   key service, with `KEYGATE_SERVER` and `KEYGATE_ADMIN_KEY` set and `keygate` on `PATH`;
//! - `<!-- doc-test: sh gateway -->`: the same against a whole stack, with `GW` the Envoy
//!   listener; each line with `-w '%{http_code}\n'` and a `# NNN` comment must print NNN;
//! - `<!-- doc-test: serve -->`: a command that starts the key service; it must answer
//!   `/healthz` (run in a fresh directory, `KEYGATE_LISTEN` set to a free port);
//! - `<!-- doc-test: filter-member -->` / `<!-- doc-test: filter-routes -->`: JSON that the
//!   filter's configuration parser must accept, as a member of the configuration or as
//!   entries of `routes`;
//! - `<!-- doc-test: python-checksum -->`, `<!-- doc-test: scanner-pattern -->`: run by the key
//!   service's test suite (`crates/server/tests/api/readme.rs`), against minted keys;
//! - `<!-- doc-test: none (why) -->`: not runnable here (an Envoy fragment, a make target).
//!
//! Every fenced block of the README must carry one of these markers.

use std::process::{Command, Stdio};
use std::time::Duration;

use keygate_core::config::FilterConfig;

use crate::cli::path_with_keygate;
use keygate_testkit::{
    free_port, keygate_bin, project_root, wait_until, KeyService, Stack, TempDir, ADMIN_KEY,
};

pub struct Block {
    /// The marker's words, e.g. `["sh", "service"]`.
    pub kind: Vec<String>,
    pub code: String,
    pub line: usize,
}

/// Every fenced block of README.md with its marker; panics on a block without one.
fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(project_root().join("README.md")).unwrap();
    marked_blocks("README.md", &readme)
}

/// Every fenced block of the page `name` (whose text is `text`) with its marker; panics on a
/// block without one. The guides in `docs/` are read the same way.
pub fn marked_blocks(name: &str, text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    let mut unmarked = Vec::new();
    while index < lines.len() {
        if !lines[index].starts_with("```") {
            index += 1;
            continue;
        }
        let start = index;
        let marker = start
            .checked_sub(1)
            .map(|i| lines[i].trim())
            .and_then(|line| line.strip_prefix("<!-- doc-test:"))
            .and_then(|rest| rest.strip_suffix("-->"));
        let end = (start + 1..lines.len())
            .find(|&i| lines[i].starts_with("```"))
            .unwrap_or_else(|| panic!("{name}:{}: unclosed block", start + 1));
        match marker {
            Some(marker) => blocks.push(Block {
                kind: marker.split_whitespace().map(str::to_owned).collect(),
                code: lines[start + 1..end].join("\n") + "\n",
                line: start + 1,
            }),
            None => unmarked.push(start + 1),
        }
        index = end + 1;
    }
    assert!(
        unmarked.is_empty(),
        "{name}: blocks without a <!-- doc-test: ... --> marker at lines {unmarked:?}"
    );
    blocks
}

fn blocks_of(kind: &[&str]) -> Vec<Block> {
    readme_blocks()
        .into_iter()
        .filter(|b| b.kind.iter().map(String::as_str).eq(kind.iter().copied()))
        .collect()
}

#[test]
fn every_readme_block_is_marked_with_a_known_kind() {
    for block in readme_blocks() {
        let kind: Vec<&str> = block.kind.iter().map(String::as_str).collect();
        let known = matches!(
            kind.as_slice(),
            ["sh", "service" | "gateway"]
                | ["serve"]
                | ["filter-member" | "filter-routes" | "python-checksum" | "scanner-pattern"]
        ) || kind.first() == Some(&"none") && kind.len() > 1;
        assert!(
            known,
            "README.md:{}: unknown doc-test marker {kind:?} (a `none` needs a reason)",
            block.line
        );
    }
}

/// Runs `code` with bash in `dir` with `env`; answers stdout (asserts success).
fn bash(code: &str, dir: &std::path::Path, env: &[(&str, String)], line: usize) -> String {
    let mut command = Command::new("bash");
    command.arg("-c").arg(format!("set -euo pipefail\n{code}"));
    run_block(command, "README.md", line, code, dir, env)
}

/// Runs a doc block's `command` in `dir` with `env` and `keygate` on `PATH`; answers stdout
/// (asserts success, naming `page:line` and the block's `code`). The guides run theirs so too.
pub fn run_block(
    mut command: Command,
    page: &str,
    line: usize,
    code: &str,
    dir: &std::path::Path,
    env: &[(&str, String)],
) -> String {
    command
        .current_dir(dir)
        .env("PATH", path_with_keygate())
        .env_remove("KEYGATE_ADMIN_KEY_FILE")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{page}:{line}: the block failed ({}):\n{code}\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn readme_service_blocks_run_against_a_key_service() {
    let blocks = blocks_of(&["sh", "service"]);
    assert!(!blocks.is_empty(), "no `sh service` block in the README");
    let dir = TempDir::new("readme-service");
    let mut service = KeyService::start(
        &dir.path().join("service"),
        &keygate_testkit::random_hex(32),
        &keygate_testkit::random_hex(24),
    );
    service.wait_ready();
    for block in blocks {
        let env = [
            ("KEYGATE_SERVER", service.url("")),
            ("KEYGATE_ADMIN_KEY", ADMIN_KEY.to_owned()),
        ];
        bash(&block.code, dir.path(), &env, block.line);
    }
}

/// The status codes a gateway block promises: the `# NNN` comment of each line that prints
/// `%{http_code}`.
pub fn promised_codes(code: &str) -> Vec<String> {
    code.lines()
        .filter(|line| line.contains("%{http_code}"))
        .map(|line| {
            let comment = line
                .rsplit_once('#')
                .map(|(_, comment)| comment.trim())
                .unwrap_or_else(|| panic!("no `# NNN` comment on {line:?}"));
            comment.chars().take(3).collect()
        })
        .collect()
}

#[test]
fn readme_gateway_blocks_run_through_envoy() {
    let blocks = blocks_of(&["sh", "gateway"]);
    assert!(!blocks.is_empty(), "no `sh gateway` block in the README");
    let stack = Stack::start("readme-gateway");
    for block in blocks {
        let env = [
            ("KEYGATE_SERVER", stack.service.url("")),
            ("KEYGATE_ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("GW", stack.url("")),
        ];
        let stdout = bash(&block.code, stack.dir.path(), &env, block.line);
        let printed: Vec<String> = stdout
            .lines()
            .filter(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            printed,
            promised_codes(&block.code),
            "README.md:{}: status codes differ from the comments:\n{}",
            block.line,
            block.code
        );
    }
}

#[test]
fn readme_serve_blocks_start_a_key_service() {
    let blocks = blocks_of(&["serve"]);
    assert!(!blocks.is_empty(), "no `serve` block in the README");
    for block in blocks {
        let dir = TempDir::new("readme-serve");
        let port = free_port();
        let mut child = std::os::unix::process::CommandExt::process_group(
            Command::new("bash")
                .arg("-c")
                .arg(format!("set -euo pipefail\n{}", block.code))
                .current_dir(dir.path())
                .env("PATH", path_with_keygate())
                .env("KEYGATE_LISTEN", format!("127.0.0.1:{port}"))
                .env_remove("KEYGATE_ADMIN_KEY")
                .env_remove("KEYGATE_DATABASE_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
            0,
        )
        .spawn()
        .unwrap();
        let url = format!("http://127.0.0.1:{port}/healthz");
        let up = wait_until(Duration::from_secs(45), || {
            matches!(child.try_wait(), Ok(None))
                && ureq::get(&url)
                    .timeout(Duration::from_secs(2))
                    .call()
                    .is_ok()
        });
        // The whole process group: bash and the key service it started (bash may have become
        // the key service itself, by exec).
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        assert!(
            up,
            "README.md:{}: the block did not start a key service:\n{}\n--- stderr ---\n{}",
            block.line,
            block.code,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            dir.path().join(".keygate/keygate.db").exists(),
            "README.md:{}: the default database is not .keygate/keygate.db",
            block.line
        );
    }
    let _ = keygate_bin();
}

#[test]
fn readme_filter_configuration_fragments_parse() {
    let minimal_routes = r#""routes": [{"prefix": "/", "scopes": ["a"]}]"#;
    let mut checked = 0;
    for block in blocks_of(&["filter-member"]) {
        let json = format!("{{{},\n{minimal_routes}}}", block.code.trim());
        if let Err(error) = FilterConfig::parse(json.as_bytes()) {
            panic!("README.md:{}: refused: {error}\n{}", block.line, block.code);
        }
        checked += 1;
    }
    for block in blocks_of(&["filter-routes"]) {
        let json = format!("{{\"routes\": [{}]}}", block.code.trim());
        if let Err(error) = FilterConfig::parse(json.as_bytes()) {
            panic!("README.md:{}: refused: {error}\n{}", block.line, block.code);
        }
        checked += 1;
    }
    assert!(checked >= 2, "{checked} filter configuration blocks found");
}
