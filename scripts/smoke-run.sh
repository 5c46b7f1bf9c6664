#!/usr/bin/env bash
# `make smoke`: `make run` as a newcomer uses it, checked. CI runs it.
#
#   1. starts `make run` in a process group of its own and waits until it says it is up;
#   2. runs every curl line it printed, as printed, and checks each gets the status printed
#      beside it (`# → 200`); a curl line without one is a failure too;
#   3. stops it as Ctrl-C does (SIGINT to the process group), then checks that every process
#      it started (make, scripts/run.sh, the echo upstream, the key service, Envoy) has exited
#      and that its ports are free again.
# Any failure prints the tails of make run's output and of .keygate/{envoy,keygate,echo}.log.
#
# Env: the KEYGATE_*_PORT variables of scripts/run.sh (defaults 10000, 9901, 8080, 8090);
#      SMOKE_READY_SECONDS (how long the build and start may take, 1800);
#      SMOKE_STOP_SECONDS (how long the stop may take, 30).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORTS=("${KEYGATE_ENVOY_PORT:-10000}" "${KEYGATE_ENVOY_ADMIN_PORT:-9901}"
  "${KEYGATE_SERVICE_PORT:-8080}" "${KEYGATE_ECHO_PORT:-8090}")
READY_SECONDS="${SMOKE_READY_SECONDS:-1800}"
STOP_SECONDS="${SMOKE_STOP_SECONDS:-30}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/keygate-smoke.XXXXXX")"
OUT="$WORK/make-run.log"
GROUP=""

say() { echo "smoke: $*" >&2; }

show_logs() {
  local file
  for file in "$OUT" .keygate/envoy.log .keygate/keygate.log .keygate/echo.log; do
    [[ -f "$file" ]] || continue
    echo "──── last lines of $file" >&2
    tail -n 30 "$file" >&2
  done
}

fail() {
  echo "smoke: FAILED: $*" >&2
  show_logs
  exit 1
}

# True while process $1 runs (a zombie has exited: only its parent has not reaped it yet).
running() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# The running processes of process group $1 (pid and command line), from /proc.
group_members() {
  local stat fields pid state pgrp
  for stat in /proc/[0-9]*/stat; do
    read -r fields 2>/dev/null <"$stat" || continue
    pid="${fields%% *}"
    fields="${fields##*) }" # after "pid (comm) ": state ppid pgrp ...
    read -r state _ pgrp _ <<<"$fields"
    [[ "$pgrp" == "$1" && "$state" != Z ]] &&
      echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-100)"
  done
  return 0
}

port_free() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

cleanup() {
  if [[ -n "$GROUP" ]] && [[ -n "$(group_members "$GROUP")" ]]; then
    kill -TERM -- "-$GROUP" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$GROUP" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for port in "${PORTS[@]}"; do
  port_free "$port" || fail "port $port is taken before the start (another make run?)"
done

# ── 1. start, in a process group of its own (job control puts a background job in one) ───────
set -m
make --no-print-directory run >"$OUT" 2>&1 </dev/null &
GROUP=$!
set +m
say "make run started (process group $GROUP); waiting until it is up (up to $READY_SECONDS s)"
started=$SECONDS
until grep -q '^Press Ctrl-C to stop' "$OUT"; do
  kill -0 "$GROUP" 2>/dev/null || fail "make run exited before it was up"
  ((SECONDS - started < READY_SECONDS)) || fail "make run was not up after $READY_SECONDS s"
  sleep 1
done
say "up after $((SECONDS - started)) s"

# ── 2. every curl line it printed ─────────────────────────────────────────────────────────────
mapfile -t lines < <(grep -E '^[[:space:]]*curl ' "$OUT" || true)
((${#lines[@]})) || fail "make run printed no curl line"
mismatches=0
for line in "${lines[@]}"; do
  line="${line#"${line%%[![:space:]]*}"}"
  if [[ ! "$line" =~ \#\ →\ ([0-9]{3})[[:space:]]*$ ]]; then
    say "no expected status printed with: $line"
    mismatches=$((mismatches + 1))
    continue
  fi
  expected="${BASH_REMATCH[1]}"
  command="${line%%#*}"
  # As printed, with a time limit; -i makes curl print the status line first.
  got="$(bash -c "curl() { command curl --silent --show-error --max-time 15 \"\$@\"; }; $command" \
    2>>"$WORK/curl.err" | head -n1 | sed -n 's#^HTTP/[0-9.]* \([0-9][0-9][0-9]\).*#\1#p')" || true
  if [[ "$got" == "$expected" ]]; then
    say "$got as printed: $command"
  else
    say "MISMATCH: expected $expected, got ${got:-no HTTP status}: $command"
    mismatches=$((mismatches + 1))
  fi
done
if ((mismatches)); then
  [[ -s "$WORK/curl.err" ]] && cat "$WORK/curl.err" >&2
  fail "$mismatches of ${#lines[@]} curl lines did not get the status make run printed"
fi

# ── 3. Ctrl-C, then nothing left ──────────────────────────────────────────────────────────────
members="$(group_members "$GROUP")"
say "stopping with SIGINT to process group $GROUP ($(wc -l <<<"$members") processes)"
kill -INT -- "-$GROUP"
stopped=$SECONDS
stop_began="${EPOCHREALTIME/[.,]/}"
while [[ -n "$(group_members "$GROUP")" ]] && ((SECONDS - stopped < STOP_SECONDS)); do
  sleep 0.1
done
stop_ms=$(((${EPOCHREALTIME/[.,]/} - stop_began) / 1000))
status=0
wait "$GROUP" 2>/dev/null || status=$?
left=""
while read -r pid rest; do
  [[ -n "$pid" ]] && running "$pid" && left+="  $pid $rest"$'\n'
done <<<"$members"
left+="$(group_members "$GROUP")"
[[ -z "${left//[[:space:]]/}" ]] ||
  fail "still running $((SECONDS - stopped)) s after SIGINT:"$'\n'"$left"
for port in "${PORTS[@]}"; do
  port_free "$port" || fail "port $port is still taken after the stop"
done
say "stopped within $stop_ms ms (make exited with $status); nothing left running, ports free"
say "${#lines[@]} curl lines checked"
