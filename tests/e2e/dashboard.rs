//! The dashboard at `/ui/` in a real headless Chromium (Debian's `chromium` + `chromium-driver`
//! over WebDriver), against a real key service and a real Envoy:
//! - an owner logs in with a management key (`keygate:owner:alice`), creates a key on the
//!   page and reads it from the one-time view (gone from the DOM once they leave it), uses it
//!   through Envoy, sees it counted in the usage chart, revokes it on the page, and Envoy
//!   refuses it within a second;
//! - the owner sees none of another owner's keys, on the page or through the API;
//! - a forged cross-site request with the session cookie (no CSRF token, or a foreign Origin)
//!   is refused;
//! - live events add a key minted elsewhere to the open list;
//! - an admin adds and removes a block, a webhook (its secret shown once, its deliveries,
//!   a redelivery) and a key's request-signing material on the page, each seen through the
//!   API; an owner has neither Blocks nor Webhooks, and the API answers them 403;
//! - the pages log no console errors and fit 1280 px and 390 px wide;
//! - each page is photographed (into `target/screenshots/`, or `docs/screenshots/` for the
//!   README with `make screenshots`).

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use keygate_testkit::{
    bearer, project_root, random_hex, send, Browser, Cluster, IssuedKey, KeyService, LogEntry,
    StackBuilder, TempDir, ADMIN_KEY,
};

/// The bound the issue sets for "a revoke on the page is refused at Envoy".
const REVOKE_BOUND: Duration = Duration::from_millis(1000);
const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Where the screenshots go: `target/screenshots/` (a test run leaves the tree as it was), or
/// the folder `KEYGATE_SCREENSHOTS` names (`make screenshots` sets `docs/screenshots`, which the
/// README shows).
fn screenshot_path(name: &str) -> PathBuf {
    let folder = std::env::var_os("KEYGATE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/screenshots"));
    let folder = if folder.is_absolute() {
        folder
    } else {
        project_root().join(folder)
    };
    std::fs::create_dir_all(&folder).unwrap();
    folder.join(format!("{name}.png"))
}

/// The whole page at `width` into the screenshot folder as `<name>.png`, then the viewport
/// back.
fn photograph(browser: &Browser, name: &str, (width, height): (u32, u32)) {
    browser.save_full_page_screenshot(&screenshot_path(name), width);
    browser.set_viewport(width, height);
}

/// Console entries that are errors, except the network errors of `expected` URL parts (the
/// page asks for them knowing they may fail: another owner's key, a fleet view not served).
fn console_errors(log: &[LogEntry], expected: &[String]) -> Vec<LogEntry> {
    log.iter()
        .filter(|e| e.level == "SEVERE")
        .filter(|e| !(e.source == "network" && expected.iter().any(|u| e.message.contains(u))))
        .cloned()
        .collect()
}

/// Asserts the console logged no unexpected error since the last check.
fn assert_clean_console(browser: &Browser, expected: &[String], when: &str) {
    let errors = console_errors(&browser.console_log(), expected);
    assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
}

/// Asserts the page does not scroll sideways at its current width.
fn assert_fits(browser: &Browser, width: u32, what: &str) {
    let scroll = browser
        .eval("return document.documentElement.scrollWidth;", &[])
        .as_u64()
        .unwrap_or(u64::MAX);
    assert!(
        scroll <= u64::from(width),
        "{what} is {scroll} px wide in a {width} px viewport"
    );
}

fn management_key(service: &KeyService, owner: &str) -> IssuedKey {
    service.create_key_from(&json!({
        "name": format!("{owner}-console"),
        "scopes": [format!("keygate:owner:{owner}")],
        "owner": owner,
    }))
}

/// A management request with `key` as the bearer.
fn api_as(service: &KeyService, key: &str, method: &str, path: &str) -> keygate_testkit::Reply {
    send(
        method,
        &service.url(path),
        &[("authorization", bearer(key).as_str())],
        None,
    )
}

fn log_in(browser: &Browser, key: &str) {
    let field = browser.wait_for("#login-key");
    field.clear();
    field.type_text(key);
    browser.click("#login-submit");
    browser.wait_for("#keys-table");
}

fn log_out(browser: &Browser) {
    browser.click("#logout");
    browser.wait_for("#login-key");
}

#[test]
fn the_page_is_served_with_a_strict_policy_and_loads_clean() {
    let dir = TempDir::new("ui-page");
    let mut service = KeyService::start(dir.path(), &random_hex(32), &random_hex(32));
    service.wait_ready();
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let reply = send("GET", &service.url(path), &[], None);
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        let header = |name: &str| reply.header(name).unwrap_or_default().to_string();
        assert!(
            header("content-type").starts_with(kind),
            "{path}: {reply:?}"
        );
        assert_eq!(header("content-security-policy"), CSP, "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
    }
    let reply = send("GET", &service.url("/ui"), &[], None);
    assert_eq!(reply.status, 308, "/ui redirects to the page: {reply:?}");
    assert_eq!(reply.header("location"), Some("/ui/"), "{reply:?}");
    let reply = send("GET", &service.url("/ui/nope.js"), &[], None);
    assert_eq!(reply.status, 404, "{reply:?}");

    let browser = Browser::start(WIDE.0, WIDE.1);
    for (width, height) in [WIDE, NARROW] {
        browser.set_viewport(width, height);
        browser.goto(&service.url("/ui/"));
        browser.wait_for("#login-key");
        assert_fits(&browser, width, "the login page");
        assert_clean_console(&browser, &[], &format!("loading the page at {width} px"));
    }
    browser.set_viewport(WIDE.0, WIDE.1);
    photograph(&browser, "login", WIDE);

    // The policy is in force: an inline script injected into the page does not run, and the
    // browser says why.
    browser.eval(
        "const s = document.createElement('script'); \
         s.textContent = 'window.injected = true;'; document.body.append(s);",
        &[],
    );
    assert_eq!(
        browser.eval("return window.injected === true;", &[]),
        json!(false),
        "an inline script ran despite the Content-Security-Policy"
    );
    let log = browser.console_log();
    assert!(
        log.iter()
            .any(|e| e.message.contains("Content Security Policy")),
        "no CSP refusal in the console: {log:#?}"
    );
}

#[test]
fn an_owner_manages_their_keys_on_the_dashboard() {
    let cluster: Cluster = StackBuilder::new("dashboard")
        .plugin(|cfg| cfg["usage"] = json!({"enabled": true, "flush_seconds": 1}))
        .start();
    let service = &cluster.services[0];
    let alice = management_key(service, "alice");
    let bob = management_key(service, "bob");
    let bobs_key = service.create_key_from(&json!({
        "name": "bob-private-billing",
        "scopes": ["demo:read"],
        "owner": "bob",
    }));
    // Network errors the page may log on purpose: the detail of bob's key (404 for alice) and
    // the fleet view of a key service without it.
    let expected = vec![
        format!("/api/v1/auth/keys/{}", bobs_key.id),
        "/api/v1/fleet".to_string(),
    ];

    let browser = Browser::start(WIDE.0, WIDE.1);
    browser.goto(&service.url("/ui/"));
    browser.wait_for("#login-key");
    assert_clean_console(&browser, &expected, "on the login page");

    // ── log in as alice ──────────────────────────────────────────────────────────────────
    log_in(&browser, &alice.key);
    assert!(
        !browser.url().contains(&alice.key),
        "the key went into the URL: {}",
        browser.url()
    );
    let cookie = browser
        .cookie("keygate_session")
        .unwrap_or_else(|| panic!("no session cookie after logging in"));
    assert_eq!(cookie["httpOnly"], json!(true), "{cookie}");
    assert_eq!(cookie["sameSite"], json!("Strict"), "{cookie}");

    // ── create a key on the page; read it from the one-time view ─────────────────────────
    browser.goto(&service.url("/ui/#/create"));
    browser.wait_for("#create-name").type_text("alice-ci");
    browser.wait_for("#create-scopes").type_text("demo:read");
    browser.wait_for("#create-expires").type_text("30d");
    photograph(&browser, "create", WIDE);
    browser.click("#create-submit");
    let key = browser.wait_for("#one-time-key").text().trim().to_string();
    let id = browser.wait_for("#one-time-id").text().trim().to_string();
    assert!(
        key.starts_with(keygate_testkit::KEY_PREFIX),
        "one-time view shows {key:?}"
    );
    browser.click("#copy-key");
    photograph(&browser, "key-created", WIDE);
    let shown = api_as(
        service,
        &alice.key,
        "GET",
        &format!("/api/v1/auth/keys/{id}"),
    );
    assert_eq!(shown.status, 200, "{shown:?}");
    assert_eq!(
        shown.json()["owner"],
        json!("alice"),
        "created for alice: {}",
        shown.body
    );
    assert_eq!(shown.json()["name"], json!("alice-ci"));

    browser.click("#one-time-done");
    browser.wait_for("#key-fields");
    assert!(
        !browser.source().contains(&key),
        "the key is still in the page after leaving the one-time view"
    );
    assert!(!browser.url().contains(&key));

    // ── use it through Envoy; see it counted in the chart ────────────────────────────────
    for _ in 0..3 {
        let reply = cluster.get_with_key("/v1/dashboard", &key);
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let denied = send(
        "POST",
        &cluster.url("/v1/dashboard"),
        &[("authorization", bearer(&key).as_str())],
        Some("{}"),
    );
    assert_eq!(denied.status, 403, "a read-only key writing: {denied:?}");
    let counted = wait_counted(&browser, 3, Duration::from_secs(40));
    assert!(counted >= 3, "the chart counts {counted} allowed");
    browser.wait_text("#usage-denied", Duration::from_secs(20), |t| {
        t.trim().parse::<u64>().is_ok_and(|n| n >= 1)
    });
    assert!(
        browser.find("#chart-decisions rect").is_some(),
        "no bars drawn"
    );
    photograph(&browser, "key-detail", WIDE);
    assert_clean_console(&browser, &expected, "on the key's page");

    // ── the owner sees none of bob's keys (page and API) ─────────────────────────────────
    browser.goto(&service.url("/ui/#/keys"));
    browser.wait_for(&format!("tr[data-key-id=\"{id}\"]"));
    let page = browser.source();
    assert!(
        !page.contains(&bobs_key.id) && !page.contains("bob-private-billing"),
        "alice's list shows bob's key"
    );
    assert!(
        !page.contains(&bob.id),
        "alice's list shows bob's management key"
    );
    browser.wait_for("#key-search").type_text("bob");
    browser.wait_text("#key-rows", Duration::from_secs(5), |t| {
        t.contains("No key matches")
    });
    browser.goto(&service.url(&format!("/ui/#/key/{}", bobs_key.id)));
    browser.wait_text("h1", Duration::from_secs(10), |t| t.contains("not found"));
    let reply = api_as(
        service,
        &alice.key,
        "GET",
        &format!("/api/v1/auth/keys/{}", bobs_key.id),
    );
    assert_eq!(reply.status, 404, "alice reads bob's key: {reply:?}");
    let reply = api_as(service, &alice.key, "GET", "/api/v1/auth/keys?limit=500");
    assert_eq!(reply.status, 200, "{reply:?}");
    let ids: Vec<String> = reply.json()["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(ids.contains(&id), "alice's list lacks her key: {ids:?}");
    assert!(
        !ids.contains(&bobs_key.id),
        "alice's list has bob's key: {ids:?}"
    );
    let reply = api_as(
        service,
        &alice.key,
        "DELETE",
        &format!("/api/v1/auth/keys/{}", bobs_key.id),
    );
    assert_eq!(reply.status, 404, "alice revokes bob's key: {reply:?}");
    let bobs = api_as(
        service,
        &bob.key,
        "GET",
        &format!("/api/v1/auth/keys/{}", bobs_key.id),
    );
    assert_eq!(bobs.json()["status"], json!("active"), "{}", bobs.body);

    // ── live: a key minted elsewhere for alice shows up in the open list ─────────────────
    browser.goto(&service.url("/ui/#/keys"));
    // The search (kept across pages) back to empty, as a user deleting it would.
    browser.wait_for("#key-search");
    browser.eval(
        "const s = document.getElementById('key-search'); s.value = ''; \
         s.dispatchEvent(new Event('input'));",
        &[],
    );
    browser.wait_text("#live", Duration::from_secs(10), |t| t == "live");
    let elsewhere = service.create_key_from(&json!({
        "name": "alice-minted-elsewhere",
        "scopes": ["demo:read"],
        "owner": "alice",
    }));
    browser.wait_for_within(
        &format!("tr[data-key-id=\"{}\"]", elsewhere.id),
        Duration::from_secs(10),
    );
    photograph(&browser, "keys", WIDE);

    // ── a forged cross-site request with the session cookie is refused ───────────────────
    let session_id = cookie["value"].as_str().unwrap_or_default().to_string();
    forged_requests_are_refused(service, &session_id);

    // ── revoke on the page; Envoy refuses the key within a second ────────────────────────
    browser.goto(&service.url(&format!("/ui/#/key/{id}")));
    browser.click("#revoke");
    let yes = browser.wait_for("#confirm-yes");
    let revoked_at = Instant::now();
    yes.click();
    let (first, before) = cluster.until_refused(&key, revoked_at, REVOKE_BOUND);
    println!("refused {first:?} after the click ({before} requests answered before)");
    browser.wait_text("dd[data-field=\"status\"]", Duration::from_secs(10), |t| {
        t.contains("revoked")
    });
    assert_clean_console(&browser, &expected, "after revoking");

    // ── audit, at 390 px too ─────────────────────────────────────────────────────────────
    browser.goto(&service.url("/ui/#/audit"));
    browser.wait_text("#audit-rows", Duration::from_secs(10), |t| {
        t.contains("revoke")
    });
    photograph(&browser, "audit", WIDE);
    browser.set_viewport(NARROW.0, NARROW.1);
    for (hash, ready, name) in [
        ("#/keys", "#keys-table", "keys-390"),
        (&format!("#/key/{id}")[..], "#key-fields", "key-detail-390"),
        ("#/create", "#create-form", "create-390"),
        ("#/audit", "#audit-rows tr", "audit-390"),
    ] {
        browser.goto(&service.url(&format!("/ui/{hash}")));
        browser.wait_for(ready);
        sleep(Duration::from_millis(300));
        assert_fits(&browser, NARROW.0, hash);
        photograph(&browser, name, NARROW);
    }
    browser.set_viewport(WIDE.0, WIDE.1);
    for hash in ["#/keys", "#/create", "#/audit"] {
        browser.goto(&service.url(&format!("/ui/{hash}")));
        sleep(Duration::from_millis(300));
        assert_fits(&browser, WIDE.0, hash);
    }
    assert_clean_console(&browser, &expected, "at 390 px");

    // ── logged out: the page is back to the login and the cookie is dead ─────────────────
    log_out(&browser);
    let reply = send(
        "GET",
        &service.url("/ui/api/session"),
        &[("cookie", &format!("keygate_session={session_id}"))],
        None,
    );
    assert_eq!(
        reply.status, 401,
        "the session outlived the logout: {reply:?}"
    );

    // ── admin pages: signing keys and the fleet ──────────────────────────────────────────
    service.create_jwt_key("partner-jwt", &["demo:read"], "ES256", 3600);
    log_in(&browser, ADMIN_KEY);
    browser.goto(&service.url("/ui/#/signing-keys"));
    browser.wait_for("#signing-keys-table");
    photograph(&browser, "signing-keys", WIDE);
    browser.goto(&service.url("/ui/#/fleet"));
    browser.wait_for("#fleet-table, #fleet-unavailable");
    photograph(&browser, "fleet", WIDE);
    browser.goto(&service.url("/ui/#/keys"));
    browser.wait_for(&format!("tr[data-key-id=\"{}\"]", bobs_key.id));
    assert_clean_console(&browser, &expected, "on the admin pages");
}

/// Waits until the usage chart of the open key page counts at least `at_least` allowed
/// requests (live usage events redraw it; the refresh button is pressed now and then in case
/// an event was missed); answers the count.
fn wait_counted(browser: &Browser, at_least: u64, timeout: Duration) -> u64 {
    let started = Instant::now();
    let mut last_refresh = Instant::now();
    loop {
        let count = browser
            .find("#usage-allowed")
            .and_then(|e| e.try_text())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if count >= at_least || started.elapsed() > timeout {
            return count;
        }
        if last_refresh.elapsed() > Duration::from_secs(5) {
            if browser.find("#usage-refresh").is_some() {
                browser.click("#usage-refresh");
            }
            last_refresh = Instant::now();
        }
        sleep(Duration::from_millis(200));
    }
}

/// Requests with alice's session cookie as another site would send them: no CSRF token, a
/// wrong one, a foreign Origin. All refused, and no key is made; the same request as the
/// page makes it (token, same origin) is accepted.
fn forged_requests_are_refused(service: &KeyService, session_id: &str) {
    let cookie = format!("keygate_session={session_id}");
    let session = send(
        "GET",
        &service.url("/ui/api/session"),
        &[("cookie", cookie.as_str())],
        None,
    );
    assert_eq!(session.status, 200, "{session:?}");
    let csrf = session.json()["csrf"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!csrf.is_empty(), "no csrf token: {}", session.body);
    let origin = format!("http://127.0.0.1:{}", service.port);
    let body = json!({"name": "forged", "scopes": ["demo:read"]}).to_string();
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![
            ("cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ];
        all.extend_from_slice(headers);
        send("POST", &service.url("/api/v1/auth/keys"), &all, Some(&body))
    };
    for (what, headers) in [
        ("no CSRF token", vec![("origin", "http://evil.example")]),
        ("no CSRF token, no Origin", vec![]),
        ("a wrong CSRF token", vec![("x-csrf-token", "forged-token")]),
        (
            "a foreign Origin",
            vec![
                ("x-csrf-token", csrf.as_str()),
                ("origin", "http://evil.example"),
            ],
        ),
    ] {
        let reply = post(&headers);
        assert_eq!(
            reply.status, 403,
            "a cross-site POST with {what}: {reply:?}"
        );
        let problem: Value = reply.json();
        assert!(
            problem["type"]
                .as_str()
                .unwrap_or_default()
                .contains("csrf"),
            "{what}: {problem}"
        );
    }
    let listed = send(
        "GET",
        &service.url("/api/v1/auth/keys?limit=500"),
        &[("authorization", bearer(ADMIN_KEY).as_str())],
        None,
    );
    assert!(
        !listed.body.contains("\"forged\""),
        "a forged request made a key: {}",
        listed.body
    );
    let reply = post(&[("x-csrf-token", csrf.as_str()), ("origin", origin.as_str())]);
    assert_eq!(reply.status, 201, "the page's own request: {reply:?}");
}

/// The RFC 8032 test vector 1 public key (a valid Ed25519 point), as base64url of its bytes.
const ED25519_PUBLIC: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

/// The page's fingerprint of a raw public key given as base64url: `SHA256:` and the standard
/// base64 (unpadded) of its SHA-256.
fn fingerprint_of(raw: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .unwrap();
    let digest = sha2::Sha256::digest(&bytes);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Clicks `selector` and confirms the dialog it opens.
fn click_and_confirm(browser: &Browser, selector: &str) {
    browser.click(selector);
    browser.click("#confirm-yes");
}

/// An admin manages issue 15's operator objects on the page, each checked through the API:
/// - a webhook added on the page (its secret shown once, never in the URL or a later view),
///   its deliveries (a block's `address.blocked`, failing against a closed port) with the
///   last error, a redelivery, and its removal behind a confirmation;
/// - an operator block added on the page and listed by the API, then removed;
/// - on a key: hmac-sha256 signing material (the secret shown once, and the right one), then
///   an Ed25519 public key with its fingerprint, then removed;
/// - an owner sees neither Blocks nor Webhooks and the API answers them 403; no console
///   errors; the new pages fit 390 px.
#[test]
fn an_admin_manages_blocks_webhooks_and_signing_material_on_the_dashboard() {
    let dir = TempDir::new("ui-operator");
    let gateway_hex = random_hex(32);
    let mut service = KeyService::start(dir.path(), &gateway_hex, &random_hex(32));
    service.wait_ready();
    let alice = management_key(&service, "alice");
    let signer = service.create_key_from(&json!({
        "name": "alice-signer",
        "scopes": ["demo:read"],
        "owner": "alice",
    }));
    let admin = |method: &str, path: &str, body: Option<&Value>| {
        let body = body.map(Value::to_string);
        send(
            method,
            &service.url(path),
            &[
                ("authorization", bearer(ADMIN_KEY).as_str()),
                ("content-type", "application/json"),
            ],
            body.as_deref(),
        )
    };
    // Nothing listens on a fresh free port: every delivery attempt fails with an error.
    let hook_url = format!(
        "http://127.0.0.1:{}/keygate-hook",
        keygate_testkit::free_port()
    );

    let browser = Browser::start(WIDE.0, WIDE.1);
    browser.goto(&service.url("/ui/"));
    log_in(&browser, ADMIN_KEY);
    for route in ["blocks", "webhooks"] {
        assert!(
            browser
                .find(&format!("#nav a[data-route=\"{route}\"]"))
                .is_some_and(|a| a.displayed()),
            "an admin has no {route} entry in the nav"
        );
    }

    // ── a webhook: added on the page, its secret shown once ──────────────────────────────
    browser.click("#nav a[data-route=\"webhooks\"]");
    browser.wait_for("#webhook-url").type_text(&hook_url);
    browser.wait_for("#webhook-description").type_text("SIEM");
    browser.click("#webhook-submit");
    let secret = browser
        .wait_for("#webhook-secret")
        .text()
        .trim()
        .to_string();
    let hook_id = browser
        .wait_for("#webhook-once-id")
        .text()
        .trim()
        .to_string();
    assert!(
        secret.starts_with("whsec_"),
        "one-time view shows {secret:?}"
    );
    browser.click("#copy-webhook-secret");
    assert!(
        !browser.url().contains(&secret),
        "the secret went into the URL"
    );
    let listed = admin("GET", "/api/v1/webhooks", None);
    assert_eq!(listed.status, 200, "{listed:?}");
    let hooks = listed.json()["webhooks"].clone();
    let hook = hooks
        .as_array()
        .and_then(|all| all.iter().find(|h| h["id"] == json!(hook_id)))
        .unwrap_or_else(|| panic!("the page's webhook is not listed: {hooks}"));
    assert_eq!(hook["url"], json!(hook_url), "{hook}");
    assert_eq!(hook["description"], json!("SIEM"), "{hook}");
    assert!(
        hook["events"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("address.blocked"))),
        "all events by default: {hook}"
    );
    assert!(!listed.body.contains(&secret), "the list shows the secret");
    browser.click("#webhook-once-done");
    browser.wait_for("#webhook-fields");
    assert!(
        !browser.source().contains(&secret),
        "the secret is still in the page after leaving the one-time view"
    );

    // ── a block: added on the page, listed by the API ────────────────────────────────────
    browser.click("#nav a[data-route=\"blocks\"]");
    browser.wait_for("#block-cidr").type_text("203.0.113.0/24");
    let expires = browser.wait_for("#block-expires");
    expires.clear();
    expires.type_text("2h");
    browser
        .wait_for("#block-reason")
        .type_text("credential stuffing");
    browser.click("#block-submit");
    browser.wait_text("#block-rows", Duration::from_secs(10), |t| {
        t.contains("203.0.113.0/24") && t.contains("credential stuffing")
    });
    let blocks = admin("GET", "/api/v1/blocks", None);
    assert_eq!(blocks.status, 200, "{blocks:?}");
    let block = blocks.json()["blocks"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|b| b["cidr"] == json!("203.0.113.0/24"))
                .cloned()
        })
        .unwrap_or_else(|| panic!("the page's block is not listed: {}", blocks.body));
    assert_eq!(block["source"], json!("operator"), "{block}");
    assert_eq!(block["reason"], json!("credential stuffing"), "{block}");
    // Its length, by the browser's own date parser.
    let lasts = |b: &Value| {
        browser
            .eval(
                "return (Date.parse(arguments[0]) - Date.parse(arguments[1])) / 1000;",
                &[b["expires_at"].clone(), b["created_at"].clone()],
            )
            .as_f64()
    };
    assert_eq!(lasts(&block), Some(7200.0), "a 2h block: {block}");
    let block_id = block["id"].as_str().unwrap_or_default().to_string();
    photograph(&browser, "blocks", WIDE);

    // ── the webhook's deliveries: the block's alert, failing; redeliver it ──────────────
    browser.goto(&service.url(&format!("/ui/#/webhook/{hook_id}")));
    browser.wait_text("#delivery-rows", Duration::from_secs(10), |t| {
        t.contains("address.blocked")
    });
    // The failed attempt's error shows (the view refreshes every 5 s).
    browser.wait_text("#delivery-rows .last-error", Duration::from_secs(30), |t| {
        !t.trim().is_empty() && t.trim() != "—"
    });
    photograph(&browser, "webhook", WIDE);
    click_and_confirm(&browser, "#delivery-rows .redeliver");
    browser.wait_text("#toasts", Duration::from_secs(10), |t| {
        t.contains("Redelivery queued")
    });
    let audit = admin("GET", "/api/v1/audit?action=webhook_redeliver", None);
    assert_eq!(audit.status, 200, "{audit:?}");
    assert!(
        audit.json()["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["target"] == json!(hook_id))),
        "no redelivery audited: {}",
        audit.body
    );

    // ── the list; remove the webhook behind a confirmation ───────────────────────────────
    browser.goto(&service.url("/ui/#/webhooks"));
    browser.wait_for(&format!("tr[data-webhook-id=\"{hook_id}\"]"));
    photograph(&browser, "webhooks", WIDE);
    browser.click(&format!("tr[data-webhook-id=\"{hook_id}\"] a"));
    browser.wait_for("#webhook-fields");
    click_and_confirm(&browser, "#webhook-remove");
    browser.wait_for("#webhooks-table");
    let gone = admin("GET", &format!("/api/v1/webhooks/{hook_id}"), None);
    assert_eq!(gone.status, 404, "the removed webhook: {gone:?}");

    // ── remove the block behind a confirmation ───────────────────────────────────────────
    browser.goto(&service.url("/ui/#/blocks"));
    let row = format!("tr[data-block-id=\"{block_id}\"]");
    // Cancelling keeps it.
    browser.click(&format!("{row} .remove-block"));
    browser.click("#confirm-no");
    assert!(
        admin("GET", "/api/v1/blocks", None)
            .body
            .contains("203.0.113.0/24"),
        "a cancelled removal removed the block"
    );
    click_and_confirm(&browser, &format!("{row} .remove-block"));
    browser.wait_text("#block-rows", Duration::from_secs(10), |t| {
        !t.contains("203.0.113.0/24")
    });
    let blocks = admin("GET", "/api/v1/blocks", None);
    assert!(
        !blocks.body.contains("203.0.113.0/24"),
        "the block outlived its removal: {}",
        blocks.body
    );

    // ── signing material on a key: hmac-sha256, shown once ───────────────────────────────
    let key_path = format!("/api/v1/auth/keys/{}", signer.id);
    browser.goto(&service.url(&format!("/ui/#/key/{}", signer.id)));
    browser.wait_for("#signing-none");
    browser.wait_for("#signing-alg").select("hmac-sha256");
    browser.click("#signing-submit");
    let hmac_secret = browser
        .wait_for("#signing-secret")
        .text()
        .trim()
        .to_string();
    browser.wait_text("#signing-alg-shown", Duration::from_secs(10), |t| {
        t == "hmac-sha256"
    });
    let shown = admin("GET", &key_path, None);
    let material = shown.json()["signing_material"].clone();
    assert_eq!(material["alg"], json!("hmac-sha256"), "{}", shown.body);
    assert!(material.get("secret").is_none(), "{}", shown.body);
    assert!(
        !shown.body.contains(&hmac_secret),
        "the key shows the secret"
    );
    let generation = material["generation"].as_u64().unwrap_or_default();
    let gateway = keygate_core::key::GatewayKey::from_hex(&gateway_hex).unwrap();
    let expected = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(
            keygate_core::signature::derive_hmac_secret(
                &gateway,
                &signer.id,
                u32::try_from(generation).unwrap(),
            )
            .as_slice(),
        )
    };
    assert_eq!(hmac_secret, expected, "the page shows another secret");
    browser.click("#copy-signing-secret");
    photograph(&browser, "key-signing", WIDE);
    browser.click("#signing-once-done");
    assert!(
        browser.find("#signing-secret").is_none() && !browser.source().contains(&hmac_secret),
        "the HMAC secret is still in the page after 'I have stored it'"
    );

    // ── replace it with an Ed25519 public key (a confirmation), see its fingerprint ──────
    browser.wait_for("#signing-alg").select("ed25519");
    browser
        .wait_for("#signing-public-key")
        .type_text(ED25519_PUBLIC);
    click_and_confirm(&browser, "#signing-submit");
    let print = fingerprint_of(ED25519_PUBLIC);
    browser.wait_text("#signing-fingerprint", Duration::from_secs(10), |t| {
        t == print
    });
    let material = admin("GET", &key_path, None).json()["signing_material"].clone();
    assert_eq!(material["alg"], json!("ed25519"), "{material}");
    assert_eq!(material["public_key"], json!(ED25519_PUBLIC), "{material}");
    assert!(
        browser.find("#signing-secret").is_none(),
        "a public key shows a secret"
    );

    // ── remove it behind a confirmation ──────────────────────────────────────────────────
    click_and_confirm(&browser, "#signing-remove");
    browser.wait_for("#signing-none");
    let shown = admin("GET", &key_path, None);
    assert!(
        shown.json().get("signing_material").is_none(),
        "the material outlived its removal: {}",
        shown.body
    );
    let audit = admin("GET", &format!("/api/v1/audit?target={}", signer.id), None);
    for action in ["signing_material_set", "signing_material_remove"] {
        assert!(
            audit.body.contains(action),
            "{action} not audited: {}",
            audit.body
        );
    }
    // The deliveries view may have been polling the webhook as it was removed.
    let expected_errors = vec![format!("/api/v1/webhooks/{hook_id}")];
    assert_clean_console(&browser, &expected_errors, "on the admin's pages");

    // ── the new pages at 390 px ──────────────────────────────────────────────────────────
    browser.set_viewport(NARROW.0, NARROW.1);
    for (hash, ready) in [("#/blocks", "#block-form"), ("#/webhooks", "#webhook-form")] {
        browser.goto(&service.url(&format!("/ui/{hash}")));
        browser.wait_for(ready);
        sleep(Duration::from_millis(300));
        assert_fits(&browser, NARROW.0, hash);
    }
    browser.set_viewport(WIDE.0, WIDE.1);

    // ── an owner: no Blocks or Webhooks, and the API refuses them ────────────────────────
    log_out(&browser);
    log_in(&browser, &alice.key);
    for route in ["blocks", "webhooks"] {
        assert!(
            !browser
                .find(&format!("#nav a[data-route=\"{route}\"]"))
                .is_some_and(|a| a.displayed()),
            "an owner sees the {route} entry in the nav"
        );
    }
    browser.goto(&service.url("/ui/#/blocks"));
    browser.wait_for("#keys-table");
    assert!(
        browser.find("#block-form").is_none(),
        "an owner got the blocks page"
    );
    for (method, path) in [
        ("GET", "/api/v1/blocks"),
        ("GET", "/api/v1/webhooks"),
        ("POST", "/api/v1/blocks"),
        ("POST", "/api/v1/webhooks"),
    ] {
        let reply = api_as(&service, &alice.key, method, path);
        assert_eq!(reply.status, 403, "an owner's {method} {path}: {reply:?}");
    }
    // The owner has the signing panel on their own key.
    browser.goto(&service.url(&format!("/ui/#/key/{}", signer.id)));
    browser.wait_for("#signing-none");
    assert_clean_console(&browser, &expected_errors, "as an owner");
}
