#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the key service's tests (no mocks: a real server).
#
#   scripts/postgres.sh start DIR   initdb a cluster for DIR if there is none, start it on a free
#                                   port of 127.0.0.1 (trust auth, loopback only), create the
#                                   database keygate_test; prints its URL and writes it to
#                                   DIR/url. Idempotent: a running cluster is left as it is, a
#                                   stopped one restarts on the same port.
#   scripts/postgres.sh stop DIR    stop it (fast shutdown). Idempotent.
#   scripts/postgres.sh url DIR     print the URL of a started cluster.
#   scripts/postgres.sh destroy DIR stop it and remove the cluster and what start wrote in DIR.
#   scripts/postgres.sh run CMD...  run CMD with KEYGATE_TEST_POSTGRES_URL set to a fresh
#                                   cluster, destroyed afterwards even when CMD fails or the run
#                                   is interrupted; exits with CMD's status (`make test` uses it).
#
# Tests read the URL from KEYGATE_TEST_POSTGRES_URL:
#   export KEYGATE_TEST_POSTGRES_URL=$(scripts/postgres.sh start /tmp/pg-mine)
#
# Binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/*/bin, else initdb on PATH (Debian:
# apt-get install postgresql). initdb refuses to run as root, so as root the cluster runs as
# the `postgres` user (created by Debian's package) or, failing that, a system user
# `keygate-pg` created here, from / (so never needing to enter the caller's directory). DIR is
# given to that user; when it still cannot enter DIR (a checkout in a home directory or in a
# `mktemp -d` folder is closed to other users), the cluster itself (data, socket, log) lives in
# a directory of its own under ${KEYGATE_PG_TMPDIR:-/tmp}, owned by that user and named in
# DIR/cluster, and `destroy` removes it. Otherwise the cluster lives in DIR. Everything this
# script prints goes to stderr except the URL.
set -euo pipefail

DATABASE="keygate_test"
SUPERUSER="postgres"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}
say() { echo "postgres.sh: $*" >&2; }

usage() { die "usage: $0 start|stop|url|destroy DIR, or $0 run CMD [ARGS...]"; }

(($# >= 2)) || usage
command="$1"
shift

# DIR: where start writes the URL, the port and, as root, the name of the cluster directory.
# CLUSTER: where the server works (data/, postgres.log, its socket).
use_dir() {
  mkdir -p "$1"
  DIR="$(cd "$1" && pwd)"
  CLUSTER="$DIR"
  if [[ -s "$DIR/cluster" ]]; then
    CLUSTER="$(cat "$DIR/cluster")"
  fi
  DATA="$CLUSTER/data"
  LOG="$CLUSTER/postgres.log"
}

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

# From /, so that no server command depends on being able to enter the caller's directory.
as_owner() { (cd / && "${RUN[@]}" "$@"); }

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
  if ((${#RUN[@]})) && [[ ! -s "$DIR/cluster" ]]; then
    chown "$OWNER" "$DIR"
  fi
  if ((${#RUN[@]})) && [[ ! -s "$DIR/cluster" ]] && ! as_owner test -w "$DIR" -a -x "$DIR"; then
    CLUSTER="$(mktemp -d "${KEYGATE_PG_TMPDIR:-/tmp}/keygate-pg.XXXXXX")"
    chown "$OWNER" "$CLUSTER"
    chmod 0700 "$CLUSTER"
    echo "$CLUSTER" >"$DIR/cluster"
    DATA="$CLUSTER/data"
    LOG="$CLUSTER/postgres.log"
  fi
  as_owner test -w "$CLUSTER" -a -x "$CLUSTER" ||
    die "the PostgreSQL user $OWNER cannot work in $CLUSTER (set KEYGATE_PG_TMPDIR to a directory it can enter)"
  say "initdb $DATA (server binaries: $BINDIR, user: $OWNER, port: $port)"
  as_owner mkdir -p "$DATA"
  as_owner chmod 0700 "$DATA"
  as_owner "$BINDIR/initdb" -D "$DATA" -U "$SUPERUSER" --auth=trust --encoding=UTF8 \
    --no-locale >"$DIR/initdb.log" 2>&1 || {
    cat "$DIR/initdb.log" >&2
    die "initdb failed"
  }
  # Loopback TCP only, its socket in CLUSTER (not /var/run/postgresql), no durability:
  # throwaway.
  cat >>"$DATA/postgresql.conf" <<EOF

# scripts/postgres.sh: a throwaway test cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$CLUSTER'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  cat >"$DATA/pg_hba.conf" <<EOF
# scripts/postgres.sh: trust, loopback and the socket in CLUSTER only
local all all              trust
host  all all 127.0.0.1/32 trust
EOF
  echo "$port" >"$DIR/port"
}

start() {
  [[ -f "$DATA/PG_VERSION" ]] || init_cluster
  [[ -f "$DIR/port" ]] || die "$DIR/port is missing: run $0 destroy $DIR and start again"
  if ! is_running; then
    local port
    port="$(cat "$DIR/port")"
    port_in_use "$port" && die "port $port (of the cluster of $DIR) is taken by another process"
    as_owner touch "$LOG"
    as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null || {
      show_log
      die "the server did not start"
    }
    say "started PostgreSQL on 127.0.0.1:$port ($CLUSTER)"
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
      die "the server of $DIR did not stop"
    }
    say "stopped PostgreSQL ($CLUSTER)"
  fi
}

destroy() {
  use_dir "$DIR" # start may have named the cluster directory since DIR was read
  stop
  if [[ "$CLUSTER" != "$DIR" ]]; then
    rm -rf "$CLUSTER"
  else
    rm -rf "$DATA" "$LOG"
  fi
  rm -f "$DIR/url" "$DIR/port" "$DIR/cluster" "$DIR/initdb.log"
  rmdir "$DIR" 2>/dev/null || true
}

# A fresh cluster for one command, destroyed on every way out.
run_with() {
  use_dir "$(mktemp -d "${TMPDIR:-/tmp}/keygate-pg-run.XXXXXX")"
  trap destroy EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local url status=0
  url="$(start)"
  KEYGATE_TEST_POSTGRES_URL="$url" "$@" || status=$?
  exit "$status"
}

case "$command" in
  run) run_with "$@" ;;
  start | stop | url | destroy)
    (($# == 1)) || usage
    use_dir "$1"
    case "$command" in
      start) start ;;
      stop) stop ;;
      destroy) destroy ;;
      url)
        [[ -f "$DIR/port" ]] || die "no cluster for $DIR: run $0 start $DIR"
        url
        ;;
    esac
    ;;
  *) usage ;;
esac
