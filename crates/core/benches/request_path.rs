//! The whole cached path of one request through the worker, natively: headers evaluated, the
//! decision applied, the response seen and the request forgotten, against a host that does no
//! work of its own (so the figure is the core's, without Envoy's side of each host call).
//! - an opaque key whose record is held;
//! - the same with a fleet-wide limit spent from a granted lease, with its `RateLimit`
//!   headers and without (`rate_limit_headers: "refusals"`);
//! - a verified JWT of an outside issuer.
//!
//!   cargo bench -p keygate-core --bench request_path

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lean;

use std::cell::Cell;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn cached(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    for (name, (host, shared, bearer)) in [
        ("cached_opaque_key", lean::cached_opaque()),
        ("cached_jwt", lean::cached_jwt()),
        ("cached_opaque_key_fleet", lean::cached_opaque_fleet(false)),
        (
            "cached_opaque_key_fleet_refusals",
            lean::cached_opaque_fleet(true),
        ),
    ] {
        let headers = lean::request_headers(&bearer);
        let context = Cell::new(2u32);
        group.bench_function(name, |b| {
            b.iter(|| {
                let id = context.get();
                context.set(id.wrapping_add(1).max(2));
                lean::one_request(&host, &shared, &headers, id);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, cached);
criterion_main!(benches);
