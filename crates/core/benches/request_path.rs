//! The whole cached path of one request through the worker, natively: headers evaluated, the
//! decision applied, the response seen and the request forgotten, against a host that does no
//! work of its own (so the figure is the core's, without Envoy's side of each host call).
//!
//!   cargo bench -p keygate-core --bench request_path

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod lean;

use std::cell::Cell;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn cached_opaque(c: &mut Criterion) {
    let (host, shared, bearer) = lean::cached_opaque();
    let headers = lean::request_headers(&bearer);
    let context = Cell::new(2u32);

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cached_opaque_key", |b| {
        b.iter(|| {
            let id = context.get();
            context.set(id.wrapping_add(1).max(2));
            lean::one_request(&host, &shared, &headers, id);
        })
    });
    group.finish();
}

criterion_group!(benches, cached_opaque);
criterion_main!(benches);
