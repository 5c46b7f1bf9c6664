#!/usr/bin/env bash
# `make bench-v8`: the filter's own code in V8 without Envoy. Builds keygate.wasm and the floor
# filter (unless BENCH_SKIP_BUILD=1), then runs bench/v8-host/run.mjs: Keygate's cached JWT
# request (C) beside the floor filter's H1 and K8 in Node's V8, through a proxy-wasm host
# written in JavaScript, hot (requests back to back) and cold (a buffer walked before each
# request), and C's requests under V8's sampling profiler by Wasm function.
# Writes bench/results/v8-<timestamp>.md (also printed). About a minute.
#
# Env: BENCH_BASELINE_WASM (an earlier keygate.wasm: adds C0, C with that build, timed in
#      the same alternating rounds), BENCH_V8_ROUNDS (41), BENCH_V8_EVICT_MIB (4: the buffer
#      walked before each request of the cold rounds; 0 skips them), BENCH_SKIP_BUILD=1,
#      BENCH_LABEL (a line for the report's header), CARGO_TARGET_DIR (target/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET"
WASM="$TARGET/wasm32-wasip1/release/keygate.wasm"
FLOOR="$TARGET/wasm32-wasip1/release/keygate_bench_floor_filter.wasm"

log() { printf '\033[1mbench-v8:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mbench-v8: ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || die "node is not installed (make prereqs installs it)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[[ "$node_major" -ge 20 ]] || die "node $(node --version) is too old; Node >= 20 is needed"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
  log "building the filter and the floor filter (release)"
  cargo build --release --target wasm32-wasip1 -p keygate
  cargo build --release --target wasm32-wasip1 --manifest-path bench/floor-filter/Cargo.toml
fi
for f in "$WASM" "$FLOOR"; do
  [[ -f "$f" ]] || die "$f is missing (run without BENCH_SKIP_BUILD=1)"
done
args=(--keygate "$WASM" --floor "$FLOOR" --rounds "${BENCH_V8_ROUNDS:-41}" --evict "${BENCH_V8_EVICT_MIB:-4}" --profile)
if [[ -n "${BENCH_BASELINE_WASM:-}" ]]; then
  [[ -f "$BENCH_BASELINE_WASM" ]] || die "BENCH_BASELINE_WASM=$BENCH_BASELINE_WASM is not a file"
  args+=(--baseline "$BENCH_BASELINE_WASM")
fi

stamp="$(date -u +%Y%m%d-%H%M%S)"
out="bench/results/v8-$stamp.md"
mkdir -p bench/results
sha() { sha256sum "$1" | cut -c1-12; }
{
  echo "# Keygate in V8 without Envoy $stamp"
  echo
  [[ -n "${BENCH_LABEL:-}" ]] && { echo "> $BENCH_LABEL"; echo; }
  echo "- Keygate $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), keygate.wasm sha256 $(sha "$WASM"); floor filter sha256 $(sha "$FLOOR")"
  [[ -n "${BENCH_BASELINE_WASM:-}" ]] && echo "- C0: $BENCH_BASELINE_WASM, sha256 $(sha "$BENCH_BASELINE_WASM")"
  echo "- Node $(node --version) (V8 $(node -p process.versions.v8)), $(nproc) CPUs, load average at start $(cut -d' ' -f1 /proc/loadavg)"
  echo "- C: envoy/envoy.yaml's plugin JSON with one inline ES256 issuer (as \`make bench\` configures C), one token, GET /v1/bench; H1 and K8: the floor filter as \`make bench\` configures them"
  echo
  node --no-warnings --max-semi-space-size=128 bench/v8-host/run.mjs "${args[@]}"
} | tee "$out"
log "wrote $out"
