#!/usr/bin/env bash
# Validates every Kubernetes/Istio manifest under deploy/ against the Kubernetes and Istio
# schemas, offline, and proves the validator rejects the broken manifests under
# deploy/testdata/invalid/. Prints one line per manifest and exits non-zero on any failure.
#
#   scripts/validate-manifests.sh
#
# Tools (npm, pinned in deploy/tools/package.json + package-lock.json), installed once into
# target/manifest-tools/ and reused while those two files are unchanged; after that the run
# needs no network:
#   kubernetes-models          Kubernetes object models + JSON-schema validators (OpenAPI)
#   @kubernetes-models/istio   the same for Istio's CRDs (WasmPlugin, ServiceEntry, ...)
#   typescript                 the strict unknown-field check (see deploy/tools/validate-manifests.mjs)
#   yaml                       YAML 1.1 parsing with duplicate-key detection
# Needs Node >= 20 and npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/deploy/tools"
TOOLS="$ROOT/target/manifest-tools"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "validate-manifests: node and npm are needed (Node >= 20)" >&2
  exit 1
fi
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$NODE_MAJOR" -lt 20 ]; then
  echo "validate-manifests: node $(node --version) is too old; Node >= 20 is needed" >&2
  exit 1
fi

mkdir -p "$TOOLS"
STAMP="$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ ! -d "$TOOLS/node_modules" ] || [ "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "validate-manifests: installing the validator into ${TOOLS#"$ROOT"/} (npm ci)"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$TOOLS/"
  rm -f "$TOOLS/.stamp"
  # The model packages declare engines.node >= 22 but run on Node 20 (checked: this script
  # passes on Node 20); npm only warns about that, so keep its output to errors.
  (cd "$TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$STAMP" >"$TOOLS/.stamp"
fi

# Run from the tools folder so that the script's imports resolve to its node_modules.
cp "$SRC/validate-manifests.mjs" "$TOOLS/validate-manifests.mjs"
exec node "$TOOLS/validate-manifests.mjs" "$ROOT"
