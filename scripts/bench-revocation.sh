#!/usr/bin/env bash
# `make bench-revocation`: how fast a revocation reaches Envoy through the revocation feed.
#
# Builds the filter and the key service (unless BENCH_SKIP_BUILD=1), then runs
# bench/revocation.py: key service (SQLite, defaults) + echo upstream + Envoy (2 workers) on
# envoy/envoy.yaml as shipped; N keys (default 200) warmed, then revoked one by one, each timed
# from the revoke call returning to the first 401 through Envoy. Prints p50/p99/max and writes
# bench/results/revocation-<timestamp>.md (+ .json with every delay).
#
# Env: BENCH_REVOCATION_KEYS (200), BENCH_REVOCATION_STRICT=1 (exit 1 when p99 >= 100 ms),
#      BENCH_SKIP_BUILD=1, BENCH_KEEP=1 (keep configs and logs), CARGO_TARGET_DIR (target/),
#      ENVOY_BIN (.venv/bin/envoy).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET"
ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
WASM="$TARGET/wasm32-wasip1/release/keygate.wasm"
KEYGATE_BIN="$TARGET/release/keygate"

log() { printf '\033[1mbench-revocation:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mbench-revocation: ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

if [[ ! -x "$ENVOY_BIN" ]]; then
  [[ "$ENVOY_BIN" == "$ROOT/.venv/bin/envoy" ]] || die "ENVOY_BIN=$ENVOY_BIN is not executable"
  "$ROOT/scripts/install-envoy.sh"
fi
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
  log "building the filter and the key service (release)"
  cargo build --release --target wasm32-wasip1 -p keygate
  cargo build --release -p keygate-server
fi
for f in "$WASM" "$KEYGATE_BIN"; do
  [[ -f "$f" ]] || die "$f is missing (run without BENCH_SKIP_BUILD=1)"
done
load="$(cut -d' ' -f1 /proc/loadavg)"
log "load average now: $load (run on an idle machine: other load skews the delays)"

args=(--wasm "$WASM" --keygate-bin "$KEYGATE_BIN" --envoy "$ENVOY_BIN"
  --keys "${BENCH_REVOCATION_KEYS:-200}" --load "$load")
[[ "${BENCH_REVOCATION_STRICT:-0}" == 1 ]] && args+=(--strict)
[[ "${BENCH_KEEP:-0}" == 1 ]] && args+=(--keep)
exec python3 "$ROOT/bench/revocation.py" "${args[@]}"
