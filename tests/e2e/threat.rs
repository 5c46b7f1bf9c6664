//! Threat detection through a real Envoy (2 workers), with one trusted proxy hop so that the
//! test's clients have addresses of their own (`X-Forwarded-For`): a key spray and a flood of
//! JWTs with bad signatures from one address each are blocked within the threshold while a
//! good client from another address keeps getting 200s; operator blocks reach Envoy through
//! the revocation feed and end when removed or expired; automatic blocks are reported to the
//! key service (raising signed `address.blocked` and `auth.failure_spike` webhooks), and an
//! operator lifts one at every worker. Also a short measurement (printed, not asserted) of
//! Envoy's CPU for a flood answered with and without blocking.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_core::key::{mint_opaque_key, GatewayKey, KeyPrefix, ID_LEN, SECRET_LEN};
use serde_json::{json, Value};

use keygate_testkit::{admin_json, Reply, Stack, WebhookReceiver};

const THRESHOLD: u64 = 20;

fn from(stack: &Stack, address: &str, authorization: &str) -> Reply {
    stack.get(
        "/v1/threat",
        &[
            ("authorization", authorization),
            ("x-forwarded-for", address),
        ],
    )
}

/// A well-formed key of the right prefix whose tag no gateway key here made.
fn sprayed_key(n: u64) -> String {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_be_bytes());
    seed[8] = 0x5a;
    let attacker = GatewayKey::from_bytes(&seed).expect("a 32-byte key");
    let mut id = [0u8; ID_LEN];
    id[..8].copy_from_slice(&n.to_be_bytes());
    let secret = [(n % 251) as u8; SECRET_LEN];
    mint_opaque_key(
        &KeyPrefix::parse("kg_live_").unwrap(),
        &attacker,
        id,
        secret,
    )
    .plaintext
}

fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Sends `count` bad requests from `address` (with a good request from another address after
/// every fifth); answers how many were refused 401 before the block, and checks that every
/// later one got 429 with `Retry-After`.
fn flood(
    stack: &Stack,
    address: &str,
    count: u64,
    bad: impl Fn(u64) -> String,
    good: &str,
    kind: &str,
) -> u64 {
    let mut before_block = 0;
    let mut blocked = 0;
    for n in 0..count {
        let reply = from(stack, address, &bad(n));
        match reply.status {
            // The other worker may answer a few more after the first 429, before it takes
            // the block (from the counting table on its next failure, or its next tick).
            401 if blocked <= 3 => before_block += 1,
            429 => {
                blocked += 1;
                assert_eq!(
                    reply.json()["type"],
                    "urn:keygate:problem:address-blocked",
                    "{kind}: {reply:?}"
                );
                let retry: u64 = reply
                    .header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{kind}: no Retry-After: {reply:?}"));
                assert!((1..=60).contains(&retry), "{kind}: Retry-After {retry}");
            }
            _ => panic!("{kind}: request {n} from {address}: {reply:?}"),
        }
        if n % 5 == 0 {
            let reply = from(stack, "198.51.100.10", good);
            assert_eq!(
                reply.status, 200,
                "{kind}: the good client was refused: {reply:?}"
            );
        }
    }
    // The first worker to count the threshold blocks the address; the other worker may let
    // a few more failures through before it takes the block; the loop above refuses any 401
    // after the fourth 429.
    assert!(
        (THRESHOLD..=THRESHOLD + 3).contains(&before_block),
        "{kind}: {before_block} failures answered before the block (threshold {THRESHOLD})"
    );
    assert_eq!(before_block + blocked, count);
    before_block
}

/// Envoy's CPU time so far (user + system), in clock ticks.
fn envoy_cpu_ticks(stack: &Stack) -> u64 {
    let pid = stack.envoy.proc.pid().expect("Envoy runs");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/<pid>/stat");
    // Fields after the command name (which is in parentheses): utime and stime are the 14th
    // and 15th fields of the line, the 12th and 13th after ")".
    let rest = stat.rsplit_once(')').expect("a stat line").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn blocks_listed(stack: &Stack) -> Value {
    let reply = admin_json(&stack.service, "GET", "/api/v1/blocks", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

fn has_block(list: &Value, cidr: &str, source: &str) -> bool {
    list["blocks"]
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b["cidr"] == cidr && b["source"] == source))
}

#[test]
fn sprays_and_bad_signature_floods_are_blocked_and_operator_blocks_travel_the_feed() {
    let stack = Stack::start_with("threat", |cfg| {
        cfg["client_address"] = json!({"trusted_hops": 1});
        cfg["threat"] = json!({
            "enabled": true, "threshold": THRESHOLD, "window_seconds": 60, "block_seconds": 60,
        });
        cfg["revocation_feed"]["wait_seconds"] = json!(2);
    });
    // A webhook for the blocks' alerts.
    let hooks = WebhookReceiver::start();
    let registered = admin_json(
        &stack.service,
        "POST",
        "/api/v1/webhooks",
        Some(&json!({"url": hooks.url(), "events": ["address.blocked", "auth.failure_spike"]})),
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let good = stack.service.create_key_from(&json!({
        "name": "good", "scopes": ["demo:read"], "owner": "threat-owner",
    }));
    let good = format!("Bearer {}", good.key);
    assert_eq!(from(&stack, "198.51.100.10", &good).status, 200);

    // 1. A key spray: well-formed keys, forged, from one address.
    let spray = flood(
        &stack,
        "203.0.113.66",
        THRESHOLD + 15,
        |n| format!("Bearer {}", sprayed_key(n)),
        &good,
        "key spray",
    );

    // 2. A flood of the service's JWT with its signature altered, from another address.
    let jwt = stack
        .service
        .create_jwt_key("threat-jwt", &["demo:read"], "ES256", 3600);
    assert!(
        wait_until(Duration::from_secs(10), || {
            from(&stack, "198.51.100.11", &format!("Bearer {}", jwt.key)).status == 200
        }),
        "the JWT key never worked"
    );
    let (head, signature) = jwt.key.rsplit_once('.').unwrap();
    let bad_jwt = |n: u64| {
        // Another valid base64url character at a fixed place: a signature that does not verify.
        let mut sig: Vec<char> = signature.chars().collect();
        let at = 5 + (n as usize % 20);
        sig[at] = if sig[at] == 'A' { 'B' } else { 'A' };
        format!("Bearer {head}.{}", sig.into_iter().collect::<String>())
    };
    let jwt_before = stack.envoy.keygate_counter("denied.jwt_bad_signature");
    let flood_before = flood(
        &stack,
        "203.0.113.77",
        THRESHOLD + 15,
        bad_jwt,
        &good,
        "bad JWT signatures",
    );
    assert_eq!(
        stack.envoy.keygate_counter("denied.jwt_bad_signature") - jwt_before,
        flood_before,
        "a blocked request was verified"
    );
    assert!(stack.envoy.keygate_counter("threat.blocked") >= 2);
    assert!(stack.envoy.keygate_counter("denied.blocked") >= 2 * 15 - 2);
    println!(
        "threat: key spray refused 401 × {spray} then 429; JWT flood 401 × {flood_before} then 429"
    );

    // 3. The automatic blocks reach the key service with the feed's next request.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let list = blocks_listed(&stack);
            has_block(&list, "203.0.113.66/32", "automatic")
                && has_block(&list, "203.0.113.77/32", "automatic")
        }),
        "automatic blocks not reported: {}",
        blocks_listed(&stack)
    );
    // Each reported block raised `address.blocked` and `auth.failure_spike`, signed.
    assert!(
        wait_until(Duration::from_secs(20), || {
            ["address.blocked", "auth.failure_spike"]
                .iter()
                .all(|event| {
                    let cidrs: Vec<Value> = hooks
                        .of(event)
                        .iter()
                        .map(|d| d.body["data"]["cidr"].clone())
                        .collect();
                    cidrs.contains(&json!("203.0.113.66/32"))
                        && cidrs.contains(&json!("203.0.113.77/32"))
                })
        }),
        "block alerts not delivered: {:#?}",
        hooks.deliveries()
    );
    let spike = hooks.of("auth.failure_spike");
    assert_eq!(spike[0].body["data"]["source"], "automatic");
    assert_eq!(spike[0].body["data"]["failures"], THRESHOLD);
    assert!(spike[0].header("keygate-signature").is_some());

    // 4. An operator block of a network reaches Envoy through the feed, and is lifted.
    let added = stack.service.cli(&[
        "blocks",
        "add",
        "192.0.2.0/24",
        "--expires-in",
        "1h",
        "--reason",
        "e2e",
        "--json",
    ]);
    let added: Value = serde_json::from_str(added.trim()).expect("blocks add --json");
    let id = added["id"].as_str().expect("an id").to_owned();
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || from(&stack, "192.0.2.55", &good)
            .status
            == 429),
        "the operator block never reached Envoy"
    );
    println!(
        "threat: operator block in force at Envoy {} ms after it was added",
        start.elapsed().as_millis()
    );
    assert_eq!(
        from(&stack, "192.0.2.200", &good).status,
        429,
        "the whole network"
    );
    assert_eq!(
        from(&stack, "192.0.3.1", &good).status,
        200,
        "not its neighbour"
    );
    stack.service.cli(&["blocks", "remove", &id]);
    assert!(
        wait_until(Duration::from_secs(5), || from(&stack, "192.0.2.55", &good)
            .status
            == 200),
        "the removed block still refuses"
    );
    // One that ends by itself.
    stack
        .service
        .cli(&["blocks", "add", "192.0.2.55", "--expires-in", "3s"]);
    assert!(wait_until(Duration::from_secs(5), || from(
        &stack,
        "192.0.2.55",
        &good
    )
    .status
        == 429));
    assert!(
        wait_until(Duration::from_secs(8), || from(&stack, "192.0.2.55", &good)
            .status
            == 200),
        "the expired block still refuses"
    );
    let audit = admin_json(
        &stack.service,
        "GET",
        "/api/v1/audit?target=192.0.2.0/24",
        None,
    );
    let actions: Vec<String> = audit.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(actions, ["block_remove", "block_add"]);

    // 5. Envoy's CPU for a flood of bad JWT signatures: verified (each from a new address,
    // under the threshold) against refused as blocked (from the blocked address).
    const N: u64 = 600;
    let ticks = envoy_cpu_ticks(&stack);
    let t = Instant::now();
    for n in 0..N {
        let address = format!("10.1.{}.{}", n / 10 / 250, (n / 10) % 250 + 1);
        assert_eq!(from(&stack, &address, &bad_jwt(n)).status, 401);
    }
    let verified = (envoy_cpu_ticks(&stack) - ticks, t.elapsed());
    let ticks = envoy_cpu_ticks(&stack);
    let t = Instant::now();
    for n in 0..N {
        assert_eq!(from(&stack, "203.0.113.77", &bad_jwt(n)).status, 429);
    }
    let blocked = (envoy_cpu_ticks(&stack) - ticks, t.elapsed());
    println!(
        "threat: Envoy CPU for {N} bad-signature requests: verified {} ticks ({:?} wall), \
         blocked {} ticks ({:?} wall); ticks are 1/{} s",
        verified.0, verified.1, blocked.0, blocked.1, 100
    );

    // 6. An operator lifts the automatic block of the spraying address: every worker lets it
    // through again (the good key from it gets 200), and it is no longer listed.
    assert_eq!(from(&stack, "203.0.113.66", &good).status, 429);
    let list = blocks_listed(&stack);
    let id = list["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cidr"] == "203.0.113.66/32" && b["source"] == "automatic")
        .and_then(|b| b["id"].as_str().map(str::to_owned))
        .expect("the automatic block is listed");
    stack.service.cli(&["blocks", "remove", &id]);
    let lifted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || (0..4).all(|_| from(
            &stack,
            "203.0.113.66",
            &good
        )
        .status
            == 200)),
        "the lifted block still refuses"
    );
    println!(
        "threat: an automatic block lifted at Envoy {:?} after `blocks remove`",
        lifted.elapsed()
    );
    assert!(!has_block(
        &blocks_listed(&stack),
        "203.0.113.66/32",
        "automatic"
    ));
    // Its count starts anew: one more failure is a 401, not a block.
    assert_eq!(
        from(
            &stack,
            "203.0.113.66",
            &format!("Bearer {}", sprayed_key(999))
        )
        .status,
        401
    );
}
