//! The guides in `docs/*.md`, run as printed against a real stack (key service + Envoy) so
//! they cannot drift from the code.
//!
//! A block is marked as in the README (an HTML comment on the line before its fence, see
//! `readme.rs`), with these kinds:
//! - `<!-- doc-test: sh gateway -->`: a bash script (`set -euo pipefail`) with `keygate` on
//!   `PATH`; each line with `-w '%{http_code}\n'` and a `# NNN` comment must print NNN;
//! - `<!-- doc-test: python gateway -->`: a program run by the project's virtualenv Python
//!   (`.venv/bin/python`, where `make prereqs` installs `requests`; `KEYGATE_PYTHON` overrides);
//! - `<!-- doc-test: js gateway -->`: an ES module run by `node` (Node 20: `fetch`);
//! - `<!-- doc-test: output -->`: exactly what the runnable block before it prints (trailing
//!   spaces aside);
//! - `<!-- doc-test: filter-member -->`: a member of the filter configuration. It must parse, and
//!   it is merged into the page's gateway configuration: the blocks after it go through an Envoy
//!   started with it (on the same key service, so keys made before it stay);
//! - `<!-- doc-test: none (why) -->`: not runnable here.
//!
//! Every runnable block must succeed (exit 0). The blocks of one page run in order, in one
//! directory (a file one block writes, the next can read), with this environment:
//! `API_URL` and `GW` (the Envoy listener), `API_KEY` (a key with `demo:read` and a rate limit
//! of 100/s), `LIMITED_KEY` (`demo:read`, 1/s, burst 2), `KEYGATE_SERVER`,
//! `KEYGATE_ADMIN_KEY`, and `ENVOY_ADMIN` (Envoy's admin address, for `/stats`).
//!
//! `docs/troubleshooting.md` must list exactly the deny reasons the filter has.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keygate_core::config::FilterConfig;
use keygate_core::decision::DenyReason;
use keygate_core::jwt::JwtError;
use keygate_testkit::{
    default_plugin_config, envoy_bin, free_port, project_root, render_envoy_config, wasm_path,
    Envoy, Ports, Stack, ADMIN_KEY,
};
use serde_json::Value;

use crate::readme::{marked_blocks, promised_codes, run_block, Block};

impl Block {
    fn is(&self, kind: &[&str]) -> bool {
        self.kind
            .iter()
            .map(String::as_str)
            .eq(kind.iter().copied())
    }
}

/// The guides: every `docs/*.md`, sorted.
fn pages() -> Vec<PathBuf> {
    let dir = project_root().join("docs");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "no guides in {}", dir.display());
    pages
}

fn name_of(page: &Path) -> String {
    format!("docs/{}", page.file_name().unwrap().to_string_lossy())
}

/// Every fenced block of `page` with its marker; panics on a block without one.
fn blocks(page: &Path) -> Vec<Block> {
    marked_blocks(&name_of(page), &std::fs::read_to_string(page).unwrap())
}

const RUNNABLE: [&[&str]; 3] = [
    &["sh", "gateway"],
    &["python", "gateway"],
    &["js", "gateway"],
];

#[test]
fn every_guide_block_is_marked_with_a_known_kind() {
    for page in pages() {
        let mut previous_runnable = false;
        for block in blocks(&page) {
            let kind: Vec<&str> = block.kind.iter().map(String::as_str).collect();
            let runnable = RUNNABLE.contains(&kind.as_slice());
            let known = runnable
                || matches!(kind.as_slice(), ["output"] | ["filter-member"])
                || kind.first() == Some(&"none") && kind.len() > 1;
            assert!(
                known,
                "{}:{}: unknown doc-test marker {kind:?} (a `none` needs a reason)",
                name_of(&page),
                block.line
            );
            assert!(
                kind != ["output"] || previous_runnable,
                "{}:{}: an `output` block must follow a runnable block",
                name_of(&page),
                block.line
            );
            previous_runnable = runnable;
        }
    }
}

/// The Python that runs the guides' Python blocks: the project's virtualenv, with `requests`.
fn python() -> PathBuf {
    keygate_testkit::python_with("requests")
}

/// `node`, version 20 or later (for `fetch`).
fn node() -> &'static str {
    let out = Command::new("node")
        .args(["-p", "process.versions.node.split('.')[0]"])
        .stdin(Stdio::null())
        .output();
    let major = out.ok().filter(|out| out.status.success()).and_then(|out| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    });
    assert!(
        major.is_some_and(|m| m >= 20),
        "`node` (>= 20) is needed to run the guides' JavaScript: run `make prereqs` (Debian's \
         nodejs); found major version {major:?}"
    );
    "node"
}

/// The gateway a page's blocks talk to: the stack, and the Envoy started with the page's
/// configuration once a `filter-member` block changed it.
struct Gateway {
    stack: Stack,
    config: Value,
    restarted: Option<(Envoy, Ports)>,
    restarts: usize,
    api_key: String,
    limited_key: String,
}

impl Gateway {
    fn start(label: &str) -> Self {
        let stack = Stack::start(label);
        let mint = |body: Value| stack.service.create_key_from(&body).key;
        let api_key = mint(serde_json::json!({
            "name": "guide", "scopes": ["demo:read"], "owner": "guide-reader",
            "rate_limit": {"requests_per_second": 100, "burst": 100},
        }));
        let limited_key = mint(serde_json::json!({
            "name": "guide-limited", "scopes": ["demo:read"], "owner": "guide-reader",
            "rate_limit": {"requests_per_second": 1, "burst": 2},
        }));
        Gateway {
            stack,
            config: default_plugin_config(),
            restarted: None,
            restarts: 0,
            api_key,
            limited_key,
        }
    }

    fn ports(&self) -> Ports {
        self.restarted
            .as_ref()
            .map_or(self.stack.ports, |(_, ports)| *ports)
    }

    /// Merges a configuration member into the page's configuration and starts an Envoy with
    /// it (the previous one, if it was started here, is stopped).
    fn configure(&mut self, members: &Value) {
        let Value::Object(members) = members else {
            panic!("not an object: {members}")
        };
        for (name, value) in members {
            self.config[name] = value.clone();
        }
        self.restarted = None;
        self.restarts += 1;
        let ports = Ports {
            listener: free_port(),
            admin: free_port(),
            ..self.stack.ports
        };
        let yaml = render_envoy_config(ports, &wasm_path(), &self.config);
        let dir = self
            .stack
            .dir
            .path()
            .join(format!("envoy-{}", self.restarts));
        std::fs::create_dir_all(&dir).unwrap();
        let token = std::fs::read_to_string(self.stack.dir.path().join("service.token")).unwrap();
        let _ = envoy_bin();
        let mut envoy = Envoy::start(
            &dir,
            &yaml,
            ports,
            2,
            [&self.stack.gateway_key(), token.trim()],
        );
        envoy.wait_ready();
        self.restarted = Some((envoy, ports));
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let ports = self.ports();
        let gw = format!("http://127.0.0.1:{}", ports.listener);
        vec![
            ("API_URL", gw.clone()),
            ("GW", gw),
            ("API_KEY", self.api_key.clone()),
            ("LIMITED_KEY", self.limited_key.clone()),
            ("KEYGATE_SERVER", self.stack.service.url("")),
            ("KEYGATE_ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("ENVOY_ADMIN", format!("http://127.0.0.1:{}", ports.admin)),
        ]
    }
}

/// Runs one block; answers its stdout (asserts success).
fn run(block: &Block, page: &str, dir: &Path, env: &[(&'static str, String)]) -> String {
    let kind: Vec<&str> = block.kind.iter().map(String::as_str).collect();
    let command = match kind.as_slice() {
        ["sh", "gateway"] => {
            let mut command = Command::new("bash");
            command
                .arg("-c")
                .arg(format!("set -euo pipefail\n{}", block.code));
            command
        }
        ["python", "gateway"] => {
            let file = dir.join(format!("block-{}.py", block.line));
            std::fs::write(&file, &block.code).unwrap();
            let mut command = Command::new(python());
            command.arg(file);
            command
        }
        ["js", "gateway"] => {
            let file = dir.join(format!("block-{}.mjs", block.line));
            std::fs::write(&file, &block.code).unwrap();
            let mut command = Command::new(node());
            command.arg(file);
            command
        }
        other => panic!("{page}:{}: not runnable: {other:?}", block.line),
    };
    run_block(command, page, block.line, &block.code, dir, env)
}

fn trimmed_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    while lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

/// Runs every block of one page, in order, against a fresh stack.
fn run_page(file: &str) {
    let page = project_root().join("docs").join(file);
    let name = name_of(&page);
    let blocks = blocks(&page);
    assert!(
        blocks.iter().any(|b| RUNNABLE.iter().any(|k| b.is(k))),
        "{name}: no runnable block"
    );
    let label = format!("docs-{}", file.trim_end_matches(".md"));
    let mut gateway = Gateway::start(&label);
    let dir = gateway.stack.dir.path().join("page");
    std::fs::create_dir_all(&dir).unwrap();
    let mut last: Option<(usize, String)> = None;
    for block in &blocks {
        if block.is(&["filter-member"]) {
            let json = format!("{{{}}}", block.code.trim());
            let members: Value = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("{name}:{}: not JSON ({e}):\n{json}", block.line));
            gateway.configure(&members);
            let config = serde_json::to_vec(&gateway.config).unwrap();
            if let Err(error) = FilterConfig::parse(&config) {
                panic!("{name}:{}: refused: {error}\n{}", block.line, block.code);
            }
            last = None;
        } else if block.is(&["output"]) {
            let (line, stdout) = last
                .take()
                .unwrap_or_else(|| panic!("{name}:{}: `output` after no block", block.line));
            assert_eq!(
                trimmed_lines(&stdout),
                trimmed_lines(&block.code),
                "{name}:{line}: the block printed something else than the output shown at line {}",
                block.line
            );
        } else if RUNNABLE.iter().any(|k| block.is(k)) {
            let stdout = run(block, &name, &dir, &gateway.env());
            if block.is(&["sh", "gateway"]) {
                let printed: Vec<String> = stdout
                    .lines()
                    .filter(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
                    .map(str::to_owned)
                    .collect();
                assert_eq!(
                    printed,
                    promised_codes(&block.code),
                    "{name}:{}: status codes differ from the comments:\n{}",
                    block.line,
                    block.code
                );
            }
            last = Some((block.line, stdout));
        } else {
            last = None;
        }
    }
}

#[test]
fn calling_guide_runs_through_envoy() {
    run_page("calling.md");
}

#[test]
fn troubleshooting_guide_runs_through_envoy() {
    run_page("troubleshooting.md");
}

#[test]
fn migrating_guide_runs_through_envoy() {
    run_page("migrating.md");
}

#[test]
fn every_guide_is_run() {
    let run: BTreeSet<&str> = ["calling.md", "troubleshooting.md", "migrating.md"].into();
    for page in pages() {
        let file = page.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            run.contains(file.as_str()),
            "docs/{file} has no test that runs it: add one to tests/e2e/docs.rs"
        );
    }
}

// ── troubleshooting: every deny reason ───────────────────────────────────────────────────────

/// The problem types (`urn:keygate:problem:<code>`) the filter's deny answers can carry: the
/// codes in `DenyReason::problem` (crates/core/src/decision.rs), each the string that opens
/// the tuple of an arm `... => ("code", ...`.
fn problem_types_in_code() -> BTreeSet<String> {
    let path = project_root().join("crates/core/src/decision.rs");
    let source = std::fs::read_to_string(&path).unwrap();
    let start = source
        .find("fn problem(&self)")
        .unwrap_or_else(|| panic!("{}: no `fn problem(&self)`", path.display()));
    let body = &source[start..];
    let end = body
        .find("\n    }\n")
        .unwrap_or_else(|| panic!("{}: `fn problem` has no end", path.display()));
    let codes: BTreeSet<String> = body[..end]
        .split("=> (")
        .skip(1)
        .filter_map(|after| {
            let rest = after.trim_start().strip_prefix('"')?;
            rest.split_once('"').map(|(code, _)| code.to_owned())
        })
        .collect();
    assert!(
        codes.len() >= 20 && codes.contains("revoked-key"),
        "could not read the problem types of {}: {codes:?}",
        path.display()
    );
    codes
}

/// The reasons the page documents: the first cell of each row of its reason tables (a row
/// that starts with `` | `name` ``).
fn reasons_in_page(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|name| {
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        })
        .collect()
}

#[test]
fn troubleshooting_lists_exactly_the_deny_reasons_of_the_filter() {
    let path = project_root().join("docs/troubleshooting.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let listed = reasons_in_page(&text);
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "docs/troubleshooting.md lists a reason twice: {listed:?}"
    );
    let in_code: BTreeSet<String> = DenyReason::METRIC_NAMES
        .iter()
        .chain(JwtError::METRIC_NAMES.iter())
        .map(|s| (*s).to_owned())
        .collect();
    let missing: Vec<&String> = in_code.difference(&unique).collect();
    let unknown: Vec<&String> = unique.difference(&in_code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/troubleshooting.md must list exactly the filter's deny reasons (a table row \
         starting with | `reason` |).\nMissing (document them): {missing:?}\nNot reasons of the \
         filter (remove them): {unknown:?}"
    );

    let problem_types: BTreeSet<String> = text
        .match_indices("urn:keygate:problem:")
        .map(|(at, prefix)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect::<String>()
        })
        .collect();
    let in_code = problem_types_in_code();
    let missing: Vec<&String> = in_code.difference(&problem_types).collect();
    let unknown: Vec<&String> = problem_types.difference(&in_code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/troubleshooting.md must name exactly the problem types of the filter's answers \
         (urn:keygate:problem:...).\nMissing: {missing:?}\nUnknown: {unknown:?}"
    );
}

// ── links ────────────────────────────────────────────────────────────────────────────────────

/// GitHub's anchor of a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(path: &Path) -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn guide_links_resolve() {
    for page in pages() {
        let name = name_of(&page);
        let text = std::fs::read_to_string(&page).unwrap();
        for (at, _) in text.match_indices("](") {
            let target = &text[at + 2..];
            let Some(end) = target.find(')') else {
                continue;
            };
            let target = &target[..end];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            assert!(file.is_file(), "{name}: the link ({target}) names no file");
            if !fragment.is_empty() {
                let known = anchors(&file);
                assert!(
                    known.contains(fragment),
                    "{name}: the link ({target}) names no heading; headings there: {known:?}"
                );
            }
        }
    }
}
