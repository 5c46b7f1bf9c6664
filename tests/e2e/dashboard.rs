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
