//! The key service over HTTPS, end to end: a CA and a server certificate made by the test,
//! `keygate serve --tls-cert --tls-key`, Envoy's `keygate_service` cluster speaking TLS with
//! the commented block of `envoy/envoy.yaml` switched on (SNI, CA, SAN match), and the CLI
//! verifying the service's certificate with `--ca-cert`.

use std::thread::spawn;
use std::time::{Duration, Instant};

use keygate_testkit::{bearer, poll_reply, random_hex, IssuedKey, KeyService, Stack, TempDir};
use keygate_testkit::{send_tls, start_tls_stack, Pki, SERVICE_NAME};

const PATH: &str = "/v1/over-tls";

/// GETs `PATH` with `key` until the answer is `status` (up to `timeout`); the last answer's
/// status.
fn until_status(stack: &Stack, key: &IssuedKey, status: u16, timeout: Duration) -> u16 {
    poll_reply(timeout, Duration::from_millis(100), status, || {
        stack.get_with_key(PATH, &key.key)
    })
    .status
}

fn revoke(service: &KeyService, pki: &Pki, id: &str) {
    let shown = service.cli_tls(&pki.ca, &["keys", "revoke", id, "--json"]);
    assert!(shown.contains("revoked"), "keygate keys revoke: {shown}");
}

#[test]
fn filter_looks_keys_up_and_follows_the_feed_over_tls() {
    let mut jwt = None;
    let (stack, pki) = start_tls_stack("tls", str::to_owned, |service, pki| {
        // A revoked throwaway key, so the feed's follower long-polls (sequence > 0).
        let primer = service.create_key_tls(&pki.ca, "tls-primer", &["--scope", "demo:read"]);
        revoke(service, pki, &primer.id);
        // Minted before Envoy starts, so its first JWKS fetch (over TLS) has the key.
        jwt = Some(service.create_key_tls(
            &pki.ca,
            "tls-jwt",
            &[
                "--scope",
                "demo:read",
                "--format",
                "jwt",
                "--expires-in",
                "1h",
            ],
        ));
    });
    let jwt = jwt.expect("the JWT key");

    // The CLI verifies the service's certificate: without the test CA it refuses to talk.
    let untrusted = stack.service.cli_tls_output(&["keys", "list"], &[]);
    assert!(
        !untrusted.status.success(),
        "the CLI accepted a certificate from an unknown CA"
    );
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        said.contains("certificate") || said.contains("CA"),
        "the refusal does not say why: {said}"
    );

    // A key is looked up over TLS and allowed.
    let opaque = stack
        .service
        .create_key_tls(&pki.ca, "tls-reader", &["--scope", "demo:read"]);
    assert_eq!(
        until_status(&stack, &opaque, 200, Duration::from_secs(15)),
        200,
        "a key looked up over TLS was not allowed:\n{}",
        stack.envoy.keygate_stats()
    );
    // The JWT key is verified against the JWKS fetched over TLS.
    assert_eq!(
        until_status(&stack, &jwt, 200, Duration::from_secs(15)),
        200,
        "a JWT key was not allowed (JWKS over TLS):\n{}",
        stack.envoy.keygate_stats()
    );

    // Revoked through the CLI over HTTPS; refused long before the record TTL (30 s) through
    // the revocation feed, itself a long-poll over TLS.
    let events_before = stack.envoy.keygate_counter("feed.events");
    revoke(&stack.service, &pki, &opaque.id);
    let revoked_at = Instant::now();
    assert_eq!(
        until_status(&stack, &opaque, 401, Duration::from_secs(10)),
        401,
        "the revoked key was not refused within 10 s:\n{}",
        stack.envoy.keygate_stats()
    );
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "refusal took {took:?}: the feed did not carry the revocation"
    );
    assert!(
        stack.envoy.keygate_counter("feed.events") > events_before,
        "the refusal did not come from the feed:\n{}",
        stack.envoy.keygate_stats()
    );
    assert_eq!(stack.envoy.keygate_counter("feed.live"), 1, "feed.live");

    // And it was TLS: Envoy completed handshakes to the cluster, and none failed.
    let handshakes = stack
        .envoy
        .counter("cluster.keygate_service.ssl.handshake")
        .unwrap_or(0);
    assert!(
        handshakes > 0,
        "no TLS handshake to keygate_service:\n{}",
        stack.envoy.stats()
    );
    assert_eq!(
        stack
            .envoy
            .counter("cluster.keygate_service.ssl.connection_error")
            .unwrap_or(0),
        0,
        "TLS errors towards keygate_service"
    );
}

#[test]
fn envoy_refuses_a_key_service_certificate_for_another_name() {
    // The same CA, but the cluster expects a name the certificate does not carry: Envoy must
    // refuse the connection (SAN matching), so unknown keys fail closed with 503.
    let other_name = "not-the-key-service.internal";
    let (stack, pki) = start_tls_stack(
        "tls-san",
        |yaml| yaml.replace(SERVICE_NAME, other_name),
        |_, _| {},
    );
    let key = stack
        .service
        .create_key_tls(&pki.ca, "tls-wrong-name", &["--scope", "demo:read"]);
    let reply = stack.get_with_key(PATH, &key.key);
    assert_eq!(
        reply.status, 503,
        "a key was decided although the key service's certificate names another host: {reply:?}"
    );
    assert!(
        stack
            .envoy
            .counter("cluster.keygate_service.ssl.fail_verify_san")
            .unwrap_or(0)
            > 0,
        "no SAN verification failure counted:\n{}",
        stack.envoy.stats()
    );
}

#[test]
fn sigterm_answers_held_long_polls_over_tls() {
    let dir = TempDir::new("tls-sigterm");
    let pki = Pki::generate(&dir.path().join("pki"));
    let token = random_hex(32);
    let mut service =
        KeyService::start_tls(&dir.path().join("service"), &random_hex(32), &token, &pki);
    let primer = service.create_key_tls(&pki.ca, "sigterm-primer", &[]);
    revoke(&service, &pki, &primer.id);
    let url = service.https_url("/v1/revocations?since=1&wait=30");
    let ca = pki.ca.clone();
    let auth = bearer(&token);
    let poll = {
        let auth = auth.clone();
        spawn(move || {
            let reply = send_tls(&ca, "GET", &url, &[("authorization", auth.as_str())]);
            (reply, Instant::now())
        })
    };
    let stats_url = service.https_url("/v1/stats");
    let held = keygate_testkit::wait_until(Duration::from_secs(20), || {
        send_tls(
            &pki.ca,
            "GET",
            &stats_url,
            &[("authorization", auth.as_str())],
        )
        .is_ok_and(|r| r.status == 200 && r.json()["feed_waiting"] == 1)
    });
    assert!(held, "the long-poll was never held");
    service.terminate();
    let signalled_at = Instant::now();
    let (reply, answered_at) = poll.join().expect("the long-poll thread");
    let reply = reply.expect("the held long-poll got no answer");
    assert_eq!(reply.status, 200, "{reply:?}");
    let waited = answered_at.duration_since(signalled_at);
    assert!(
        waited < Duration::from_secs(5),
        "the held long-poll was answered {waited:?} after SIGTERM"
    );
    let status = service
        .wait_exit(Duration::from_secs(15))
        .expect("the key service did not exit within 15 s of SIGTERM");
    assert!(status.success(), "the key service exited with {status}");
}
