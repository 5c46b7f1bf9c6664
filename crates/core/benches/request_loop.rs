//! The cached paths of `request_path.rs` (an opaque key, a JWT) timed in a plain loop,
//! without criterion, so that they also run on wasm32-wasip1 under Node's V8 (the engine
//! Envoy embeds): the figures side by side tell how much slower V8 runs the core's own code
//! than native code.
//!
//!   cargo bench -p keygate-core --bench request_loop
//!   CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings scripts/wasi-run.mjs" \
//!     cargo bench -p keygate-core --bench request_loop --target wasm32-wasip1
//!
//! Prints the median over rounds of the time per request (ns); no assertion on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lean;

use std::time::Instant;

fn main() {
    // REQUEST_LOOP_SCALE=0.01 shortens the run (e.g. under valgrind).
    let scale: f64 = std::env::var("REQUEST_LOOP_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    const ROUNDS: usize = 15;
    let per_round = ((20_000.0 * scale) as u32).max(1);
    for (name, (host, shared, bearer)) in [
        ("cached_opaque_key", lean::cached_opaque()),
        ("cached_jwt", lean::cached_jwt()),
    ] {
        let headers = lean::request_headers(&bearer);
        let mut id = 2u32;
        // Warm-up: lets V8 tier the module up, as a long-running Envoy has.
        for _ in 0..per_round * 5 {
            id = id.wrapping_add(1).max(2);
            lean::one_request(&host, &shared, &headers, id);
        }
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            for _ in 0..per_round {
                id = id.wrapping_add(1).max(2);
                lean::one_request(&host, &shared, &headers, id);
            }
            rounds.push(started.elapsed().as_nanos() as f64 / f64::from(per_round));
        }
        rounds.sort_by(f64::total_cmp);
        println!(
            "request_loop {name}: median {:.0} ns/request (min {:.0}, max {:.0}, {} rounds of {})",
            rounds[ROUNDS / 2],
            rounds[0],
            rounds[ROUNDS - 1],
            ROUNDS,
            per_round
        );
    }
}
