#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the key service's tests (no mocks: a real server).
#
#   scripts/postgres.sh start DIR   initdb a cluster in DIR if there is none, start it on a free
#                                   port of 127.0.0.1 (trust auth, loopback only), create the
#                                   database keygate_test; prints its URL and writes it to
#                                   DIR/url. Idempotent: a running cluster is left as it is, a
#                                   stopped one restarts on the same port.
#   scripts/postgres.sh stop DIR    stop it (fast shutdown). Idempotent.
#   scripts/postgres.sh url DIR     print the URL of a started cluster.
#
# Tests read the URL from KEYGATE_TEST_POSTGRES_URL:
#   export KEYGATE_TEST_POSTGRES_URL=$(scripts/postgres.sh start target/keygate-pg)
#
# Binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin, else initdb on PATH (Debian:
# apt-get install postgresql). initdb refuses to run as root, so as root the cluster runs as
# the `postgres` user (created by Debian's package) or, failing that, a system user
# `keygate-pg` created here. Everything it prints goes to stderr except the URL.
set -euo pipefail

DATABASE="keygate_test"
SUPERUSER="postgres"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}
say() { echo "postgres.sh: $*" >&2; }

usage() { die "usage: $0 start|stop|url DIR"; }

(($# == 2)) || usage
command="$1"
DIR="$2"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
DATA="$DIR/data"
LOG="$DIR/postgres.log"

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    [[ -x "$PG_BINDIR/initdb" ]] || die "PG_BINDIR=$PG_BINDIR has no initdb"
    echo "$PG_BINDIR"
    return
  fi
  local newest=""
  for dir in /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" ]] && newest="$dir"
  done
  if [[ -z "$newest" ]] && command -v initdb >/dev/null 2>&1; then
    newest="$(dirname "$(readlink -f "$(command -v initdb)")")"
  fi
  [[ -n "$newest" ]] || die "PostgreSQL server binaries not found (initdb): install them, e.g. apt-get install -y postgresql, or set PG_BINDIR"
  echo "$newest"
}

BINDIR="$(find_bindir)"

# As root, run the server as an unprivileged user; otherwise as ourselves.
RUN=()
OWNER="$(id -un)"
if [[ "$(id -u)" == 0 ]]; then
  if id -u postgres >/dev/null 2>&1; then
    OWNER="postgres"
  else
    id -u keygate-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin keygate-pg ||
      die "cannot create the system user keygate-pg to run PostgreSQL (initdb refuses root)"
    OWNER="keygate-pg"
  fi
  RUN=(runuser -u "$OWNER" --)
fi

as_owner() { "${RUN[@]}" "$@"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    port_in_use "$port" || {
      echo "$port"
      return
    }
  done
  die "no free TCP port found on 127.0.0.1"
}

is_running() { [[ -d "$DATA" ]] && as_owner "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

url() { echo "postgres://$SUPERUSER@127.0.0.1:$(cat "$DIR/port")/$DATABASE"; }

show_log() {
  [[ -f "$LOG" ]] && { say "last lines of $LOG:"; tail -n 20 "$LOG" >&2; }
  return 0
}

init_cluster() {
  local port
  port="$(free_port)"
  say "initdb $DATA (server binaries: $BINDIR, user: $OWNER, port: $port)"
  mkdir -p "$DATA"
  chown "$OWNER" "$DIR" "$DATA"
  chmod 0700 "$DATA"
  as_owner "$BINDIR/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust --encoding=UTF8 \
    --no-locale >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    die "initdb failed"
  }
  # Loopback TCP only, sockets in DIR (not /var/run/postgresql), no durability: throwaway.
  cat >>"$DATA/postgresql.conf" <<EOF

# scripts/postgres.sh: a throwaway test cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$DIR'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  cat >"$DATA/pg_hba.conf" <<EOF
# scripts/postgres.sh: trust, loopback and the socket in DIR only
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
  echo "$port" >"$DIR/port"
}

start() {
  [[ -f "$DATA/PG_VERSION" ]] || init_cluster
  [[ -f "$DIR/port" ]] || die "$DIR/port is missing: remove $DIR and start again"
  if ! is_running; then
    local port
    port="$(cat "$DIR/port")"
    port_in_use "$port" && die "port $port (of the cluster in $DIR) is taken by another process"
    chown "$OWNER" "$DIR"
    touch "$LOG" && chown "$OWNER" "$LOG"
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null || {
      show_log
      die "the server did not start"
    }
    say "started PostgreSQL on 127.0.0.1:$port ($DIR)"
  fi
  local port exists
  port="$(cat "$DIR/port")"
  exists="$(as_owner "$BINDIR/psql" -h 127.0.0.1 -p "$port" -U "$SUPERUSER" -d postgres -XtAq \
    -c "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" || {
    show_log
    die "cannot connect to the server on 127.0.0.1:$port"
  }
  if [[ "$exists" != 1 ]]; then
    as_owner "$BINDIR/psql" -h 127.0.0.1 -p "$port" -U "$SUPERUSER" -d postgres -Xq \
      -c "CREATE DATABASE $DATABASE" || die "cannot create the database $DATABASE"
  fi
  url >"$DIR/url"
  url
}

stop() {
  if is_running; then
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -w -t 60 -m fast stop >/dev/null || {
      show_log
      die "the server in $DIR did not stop"
    }
    say "stopped PostgreSQL ($DIR)"
  fi
}

case "$command" in
  start) start ;;
  stop) stop ;;
  url)
    [[ -f "$DIR/port" ]] || die "no cluster in $DIR: run $0 start $DIR"
    url
    ;;
  *) usage ;;
esac
