//! The README's own code, run as printed: the Python checksum recipe and the secret-scanner
//! pattern of "Opaque key format", against keys this key service mints and against every
//! one-character change of them. The Rust parser must agree with the recipe on each.

use std::io::Write;
use std::process::{Command, Stdio};

use keygate_core::key::parse_opaque_key;
use serde_json::{json, Value};

use crate::harness;

/// The fenced block that follows `<!-- doc-test: NAME -->` in README.md.
pub fn readme_block(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let marker = format!("<!-- doc-test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let fence = after.trim_start();
    assert!(fence.starts_with("```"), "no fenced block after {marker}");
    let body = fence.split_once('\n').unwrap().1;
    let end = body
        .find("\n```")
        .unwrap_or_else(|| panic!("unclosed block after {marker}"));
    body[..end + 1].to_owned()
}

/// Runs `script` with python3, `input` on stdin; answers stdout parsed as JSON.
fn python(script: &str, input: &Value) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (the README's recipes need it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python3 failed:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every one-character change of `text`: each position, each printable ASCII character.
fn one_character_changes(text: &str) -> Vec<String> {
    let mut changes = Vec::new();
    for index in 0..text.len() {
        for replacement in b' '..=b'~' {
            if text.as_bytes()[index] != replacement {
                let mut changed = text.as_bytes().to_vec();
                changed[index] = replacement;
                changes.push(String::from_utf8(changed).unwrap());
            }
        }
    }
    changes
}

#[tokio::test]
async fn the_python_checksum_recipe_works_as_printed_and_agrees_with_the_parser() {
    let recipe = readme_block("python-checksum");
    let driver = format!(
        "{recipe}\nimport json, sys\n\
         print(json.dumps([is_keygate_key(p, b) for p, b in json.load(sys.stdin)]))\n"
    );
    let h = harness().await;
    for _ in 0..3 {
        let key = h.create(json!({"name": "scan me", "scopes": []})).await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let (prefix, body) = key.split_at("kg_test_".len());
        let mut cases = vec![(prefix.to_owned(), body.to_owned())];
        cases.extend(
            one_character_changes(body)
                .into_iter()
                .map(|changed| (prefix.to_owned(), changed)),
        );
        cases.extend(
            one_character_changes(prefix)
                .into_iter()
                .map(|changed| (changed, body.to_owned())),
        );
        let verdicts = python(&driver, &json!(cases));
        let verdicts = verdicts.as_array().unwrap();
        assert_eq!(verdicts.len(), cases.len());
        assert_eq!(verdicts[0], true, "the recipe refuses a minted key: {key}");
        for ((prefix, body), verdict) in cases.iter().zip(verdicts).skip(1) {
            assert_eq!(
                verdict, false,
                "the recipe accepts a one-character change: {prefix}{body}"
            );
            let text = format!("{prefix}{body}");
            assert!(
                parse_opaque_key(&text, &[prefix.as_str()]).is_err(),
                "the parser accepts a one-character change the recipe refuses: {text}"
            );
        }
        assert!(parse_opaque_key(&key, &["kg_test_"]).is_ok());
    }
}

#[tokio::test]
async fn the_secret_scanner_pattern_finds_minted_keys() {
    let pattern = readme_block("scanner-pattern");
    let h = harness().await;
    let key = h.create(json!({"name": "scan me", "scopes": []})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let live = key.replacen("kg_test_", "kg_live_", 1);
    let script = "import json, re, sys\n\
                  pattern, texts = json.load(sys.stdin)\n\
                  print(json.dumps([[m.group(0) for m in re.finditer(pattern.strip(), t)] for t in texts]))\n";
    let texts = [
        format!("API_KEY={key}\n"),
        format!("\"{live}\","),
        format!("x{key}"),
        key[..key.len() - 1].to_owned(),
        format!("{key}a"),
    ];
    let found = python(script, &json!([pattern, texts]));
    assert_eq!(
        found,
        json!([[key], [live], [], [], []]),
        "pattern {pattern:?}"
    );
}
