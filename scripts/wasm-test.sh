#!/usr/bin/env bash
# Runs keygate-core's tests compiled to wasm32-wasip1 under Node's WASI, to prove the pure
# logic (and its crypto) on the filter's target. Extra arguments go to `cargo test`, e.g.
#
#   scripts/wasm-test.sh                # every core test
#   scripts/wasm-test.sh --release jwt  # release build, tests whose name contains "jwt"
#
# Needs: rustup target wasm32-wasip1, Node >= 20 (node:wasi). On wasm32-wasip1 a panic
# aborts, so the first failing test ends the run (with a non-zero exit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v node >/dev/null 2>&1; then
  echo "wasm-test: node is not installed; Node >= 20 is needed to run wasm32-wasip1 tests" >&2
  exit 1
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "wasm-test: node $(node --version) is too old; Node >= 20 is needed (node:wasi)" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1 \
  && ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "wasm-test: run 'rustup target add wasm32-wasip1' first" >&2
  exit 1
fi

export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $ROOT/scripts/wasi-run.mjs"
exec cargo test -p keygate-core --target wasm32-wasip1 "$@"
