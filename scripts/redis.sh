#!/usr/bin/env bash
# A throwaway Redis server for the tests of fleet-wide limits (no mocks: a real server).
#
#   scripts/redis.sh start DIR    start redis-server on a free port of 127.0.0.1 (no
#                                 persistence, loopback only); prints its URL and writes it to
#                                 DIR/url, its pid to DIR/pid. Idempotent: a running server is
#                                 left as it is.
#   scripts/redis.sh stop DIR     stop it. Idempotent.
#   scripts/redis.sh url DIR      print the URL of a started server.
#   scripts/redis.sh run CMD...   run CMD with KEYGATE_TEST_REDIS_URL set to a fresh server,
#                                 stopped and removed afterwards even when CMD fails or the run
#                                 is interrupted; exits with CMD's status (`make test` uses it).
#
# Tests read the URL from KEYGATE_TEST_REDIS_URL:
#   export KEYGATE_TEST_REDIS_URL=$(scripts/redis.sh start /tmp/redis-mine)
#
# Binary: $REDIS_SERVER, else redis-server on PATH (Debian: apt-get install redis-server;
# scripts/prereqs.sh installs it). Everything this script prints goes to stderr except the URL.
set -euo pipefail

die() {
  echo "redis.sh: $*" >&2
  exit 1
}

usage() { die "usage: $0 start|stop|url DIR, or $0 run CMD [ARGS...]"; }

(($# >= 2)) || usage
command="$1"
shift

SERVER="${REDIS_SERVER:-$(command -v redis-server || true)}"
[[ -n "$SERVER" && -x "$SERVER" ]] ||
  die "redis-server not found: install it (apt-get install -y redis-server, or scripts/prereqs.sh) or set REDIS_SERVER"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

running() { [[ -s "$1/pid" ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

start() {
  local dir="$1"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if running "$dir"; then
    cat "$dir/url"
    return
  fi
  local port
  port="$(free_port)"
  "$SERVER" --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null ||
    die "redis-server did not start (see $dir/redis.log)"
  for _ in $(seq 1 100); do
    if [[ -s "$dir/redis.pid" ]] && (echo PING >/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
      cp "$dir/redis.pid" "$dir/pid"
      echo "redis://127.0.0.1:$port/0" >"$dir/url"
      cat "$dir/url"
      return
    fi
    sleep 0.05
  done
  die "redis-server did not answer on port $port (see $dir/redis.log)"
}

stop() {
  local dir="$1"
  [[ -d "$dir" ]] || return 0
  if running "$dir"; then
    local pid
    pid="$(cat "$dir/pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  fi
  rm -f "$dir/pid"
}

case "$command" in
  start) start "$1" ;;
  stop) stop "$1" ;;
  url) [[ -s "$1/url" ]] || die "no server started in $1"; cat "$1/url" ;;
  run)
    dir="$(mktemp -d "${TMPDIR:-/tmp}/keygate-redis.XXXXXX")"
    cleanup() {
      stop "$dir"
      rm -rf "$dir"
    }
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    KEYGATE_TEST_REDIS_URL="$(start "$dir")"
    export KEYGATE_TEST_REDIS_URL
    status=0
    "$@" || status=$?
    exit "$status"
    ;;
  *) usage ;;
esac
