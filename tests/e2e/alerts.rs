//! Leaked keys through a real Envoy: a report signed like GitHub's secret scanning (a P-256
//! key made here with `openssl`) revokes the key, and Envoy refuses it within seconds.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use keygate_testkit::{poll_status, send, Stack, TempDir};
use serde_json::{json, Value};

const HELLO: &str = "/v1/hello";

fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("openssl is needed to make the test's P-256 key");
    assert!(status.success(), "openssl {args:?} failed");
}

#[test]
fn a_leaked_key_report_gets_the_key_refused_at_envoy() {
    let dir = TempDir::new("alerts-github-key");
    let private = dir.path().join("github.pem");
    let public = dir.path().join("github.pub.pem");
    let private_s = private.to_str().unwrap();
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        private_s,
    ]);
    openssl(&[
        "ec",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(&public).unwrap();
    let key_set = dir.path().join("github-keys.json");
    let set =
        json!({"public_keys": [{"key_identifier": "e2e-key", "key": pem, "is_current": true}]});
    std::fs::write(&key_set, set.to_string()).unwrap();

    let stack = Stack::start_with_service_env(
        "alerts-leaked",
        |_| {},
        &[("KEYGATE_SECRET_SCANNING_KEYS", key_set.to_str().unwrap())],
        |_| {},
    );
    let key = stack.service.create_key("leaky", &["demo:read"]);
    poll_status(&stack, HELLO, &key.key, 200, Duration::from_secs(15));

    let body = json!([{
        "token": key.key,
        "type": "keygate_api_key",
        "url": "https://github.com/octo/demo/blob/main/.env",
        "source": "content"
    }])
    .to_string();
    let body_file = dir.path().join("report.json");
    std::fs::write(&body_file, &body).unwrap();
    let signature_file = dir.path().join("report.sig");
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        private_s,
        "-out",
        signature_file.to_str().unwrap(),
        body_file.to_str().unwrap(),
    ]);
    let signature =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&signature_file).unwrap());

    let url = stack.service.url("/api/v1/secret-scanning");
    let forged = send(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("github-public-key-identifier", "e2e-key"),
            (
                "github-public-key-signature",
                "MEUCIQDforgedforgedforgedforgedforgedforgedforgedforgedfo",
            ),
        ],
        Some(&body),
    );
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert_eq!(stack.get_with_key(HELLO, &key.key).status, 200);

    let reply = send(
        "POST",
        &url,
        &[
            ("content-type", "application/json"),
            ("github-public-key-identifier", "e2e-key"),
            ("github-public-key-signature", signature.as_str()),
        ],
        Some(&body),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let labels: Value = reply.json();
    assert_eq!(labels[0]["label"], "true_positive", "{labels}");
    assert_eq!(labels[0]["token_raw"], key.key.as_str());

    // The revocation feed takes it to Envoy.
    poll_status(&stack, HELLO, &key.key, 401, Duration::from_secs(10));
}
