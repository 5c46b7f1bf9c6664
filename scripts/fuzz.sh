#!/usr/bin/env bash
# `make fuzz`: builds every cargo-fuzz target under fuzz/ (one per parser that sees attacker
# bytes) and runs each for FUZZ_SECONDS (default 60; `make fuzz-ci` runs 10). Exits non-zero
# when any target crashed, after running them all, and prints how to reproduce each crash
# (the input is in fuzz/artifacts/<target>/).
#
# Needs a nightly toolchain and cargo-fuzz: scripts/prereqs.sh --fuzz installs both when they
# are missing. Without a nightly toolchain (none installable), the default toolchain builds
# the targets with RUSTC_BOOTSTRAP=1, which lets it take the same -Z flags.
#
# Env: FUZZ_SECONDS (60), FUZZ_TARGETS (space-separated; default all), FUZZ_TIMEOUT (seconds one
#      input may take before it counts as a hang, 30), FUZZ_TOOLCHAIN (default nightly).
# Corpora grow in fuzz/corpus/<target>/ (not committed, except for targets that found a crash);
# dictionaries are in fuzz/dicts/; logs in fuzz/target/logs/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-60}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

say() { echo "fuzz: $*" >&2; }
die() {
  echo "fuzz: ERROR: $*" >&2
  exit 1
}

"$ROOT/scripts/prereqs.sh" --fuzz

if compiler="$(rustup run "$TOOLCHAIN" rustc --version 2>/dev/null)"; then
  CARGO_FUZZ=(cargo "+$TOOLCHAIN" fuzz)
else
  compiler="$(rustc --version), RUSTC_BOOTSTRAP=1"
  say "no $TOOLCHAIN toolchain: building with $compiler"
  export RUSTC_BOOTSTRAP=1
  CARGO_FUZZ=(cargo fuzz)
fi

read -r -a targets <<<"${FUZZ_TARGETS:-$("${CARGO_FUZZ[@]}" list | tr '\n' ' ')}"
((${#targets[@]})) || die "no fuzz targets found in fuzz/Cargo.toml"

started=$SECONDS
say "building ${#targets[@]} targets ($compiler)"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
  for target in "${targets[@]}"; do "${CARGO_FUZZ[@]}" build "$target"; done
else
  "${CARGO_FUZZ[@]}" build
fi
say "built in $((SECONDS - started)) s"

mkdir -p target/logs
crashed=()
for target in "${targets[@]}"; do
  args=(-max_total_time="$SECONDS_EACH" -timeout="${FUZZ_TIMEOUT:-30}" -rss_limit_mb=2048
    -print_final_stats=1)
  [[ -f "dicts/$target.dict" ]] && args+=(-dict="dicts/$target.dict")
  log="target/logs/$target.log"
  mkdir -p "corpus/$target"
  begun=$SECONDS
  if "${CARGO_FUZZ[@]}" run "$target" -- "${args[@]}" >"$log" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    coverage="$(grep -o 'cov: [0-9]*' "$log" | tail -n1)"
    say "$target: ${runs:-?} runs, ${coverage:-cov: ?}, corpus $(find "corpus/$target" -type f | wc -l) inputs, $((SECONDS - begun)) s, no crash"
  else
    crashed+=("$target")
    say "$target: CRASHED after $((SECONDS - begun)) s; last lines of fuzz/$log:"
    tail -n 40 "$log" >&2
  fi
done

say "${#targets[@]} targets x ${SECONDS_EACH} s in $((SECONDS - started)) s (build included)"
if ((${#crashed[@]})); then
  for target in "${crashed[@]}"; do
    for input in artifacts/"$target"/*; do
      [[ -e "$input" ]] && say "reproduce: (cd fuzz && ${CARGO_FUZZ[*]} run $target $input)"
    done
  done
  die "crashed: ${crashed[*]}"
fi
