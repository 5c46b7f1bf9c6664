#!/usr/bin/env python3
"""Keygate benchmark runner (called by scripts/bench.sh, which builds everything first).

Starts, on free loopback ports: the key service (SQLite), a minimal ext_authz server, and one
Envoy per configuration (A-I with H1-H5, --concurrency 1, a direct_response route, no
upstream). Each configuration is checked first (a bad credential is refused with 401/403, a
good one gets 200; any surprise aborts the run). Then wrk (1 thread, 32 connections) warms
every configuration up and measures it --reps times, in alternating order (A..I, I..A, ...).
Envoy is pinned to one CPU and wrk to the other when there are two or more. Each
configuration's Envoy CPU per request is reported over A, H and H1 (medians of per-repetition
differences), with the performance goals checked. Afterwards the key service is measured on
its own (lookups/s, creations/s), the record-cache curve runs (bench/cache.py, --cache-keys),
and the criterion micro-benchmarks run.

Writes bench/results/<timestamp>.md (printed too) and <timestamp>.json (raw numbers).
Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_SCRIPT = BENCH / "wrk" / "bench.lua"
PATH = "/v1/bench"
ADMIN_KEY = "kg-bench-admin-key-" + secrets.token_hex(16)
KEY_PREFIX = "kg_test_"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIGS = {
    "A": "no auth filter (the limit of this setup)",
    "B": "Keygate, opaque key, record cached",
    "B1": "B-global: B with a fleet-wide limit too high to refuse (spent from leases)",
    "B2": "B1 with rate_limit_headers \"refusals\" (no RateLimit headers on allowed responses)",
    "B3": "B with the revocation feed off (no long-poll, no set to load)",
    "B4": "B with usage analytics off (no response :status read, no usage rows)",
    "C": "Keygate, one JWT ({alg}), verified-token cache hit",
    "D": "Keygate, 10k distinct JWTs ({alg}): the verify path (host crypto)",
    "D1": "D with usage analytics off (D's tokens come from an outside issuer and make no usage rows: D1 should equal D)",
    "R": "Keygate, same tokens as D, signatures verified in Wasm (Rust, host_crypto off)",
    "E": "Envoy jwt_authn ({alg}, jwt_cache_config) + RBAC on scope",
    "F": "Envoy jwt_authn without cache + RBAC, same tokens as D",
    "G": "ext_authz (HTTP) to a local authz server",
    "H": "empty proxy-wasm filter (Action::Continue)",
    "H1": "proxy-wasm floor: request headers read once, one header added",
    "H2": "H1 + one shared-data read of a 300-byte value",
    "H3": "H1 + credential header removed, 3 headers added",
    "H4": "H1 + response :status read",
    "H5": "H1 + H2 + H3 + H4 (the host calls of Keygate's cached path when every request read shared data)",
    "H6": "H1 + H3's edits in one replacement of the whole header map",
    "H7": "H1 + two response headers set (RateLimit-Policy and RateLimit)",
    "H8": "H1 + a tick every 10 ms that does nothing (a timer's cost: Keygate ticks so while it follows the revocation feed)",
    "K1": "B's unavoidable work alone: H1 + key parsed, HMAC tag, digest compared, H3 + H4",
    "K2": "K1 with its edits in one replacement of the header map (H6's way)",
    "K3": "a cached opaque key's host work alone: H1 + H3 + H4 (credential removed, identity added, :status read)",
    "K4": "K3 with its five host calls made 21 times per request (K4 − K3 prices them 20 times over)",
    "K5": "K3 with its edits in one replacement of the header map (H6's way)",
    "K6": "K5 with its two host calls made 21 times per request (K6 − K5 prices them 20 times over)",
    "K7": "H3 with its four header edits made 21 times per request (K7 − H3 prices them 20 times over)",
    "K8": "C's unavoidable work alone: H1 + the token's keyed fingerprint found among the tokens seen and its expiry checked against the host clock, H3 (C's request)",
    "K9": "K8 with its token step (fingerprint, lookup, clock read) made 21 times per request (K9 − K8 prices it 20 times over)",
    "I": "Envoy api_key_auth (plaintext keys, client id forwarded) + RBAC on the id",
    "S": "B on a route with \"signature\": \"required\": Ed25519 signature (verified in Wasm) and nonce checked",
    "S2": "S with an ECDSA P-256 signature (Envoy's native crypto)",
    "S3": "S with an hmac-sha256 signature",
    "B0": "B with the baseline keygate.wasm",
    "C0": "C with the baseline keygate.wasm",
    "D0": "D with the baseline keygate.wasm",
}
# With --baseline-wasm (an earlier build of the filter), these run beside the configurations
# they copy, so "no configuration slower than before" is measured in the same interleaved run.
BASELINE = {"B0": "B", "C0": "C", "D0": "D"}
# The floor filter's steps (its plugin configuration) for each floor configuration.
FLOOR_STEPS = {"H1": "floor", "H2": "shared", "H3": "rewrite", "H4": "status",
               "H5": "shared,rewrite,status", "H6": "replace", "H7": "ratelimit",
               "H8": "floor,tick=10",
               "K1": "keygate,rewrite,status", "K2": "keygate,replace,status",
               "K3": "rewrite,status", "K4": "rewrite,status,repeat=21",
               "K5": "replace,status", "K6": "replace,status,repeat=21",
               "K7": "rewrite,repeat=21", "K8": "token,rewrite",
               "K9": "token,rewrite,lookups=21"}
# The tight goal pass: the goals' configurations and their floors, and the differences it
# reports (minuend, subtrahend, what the difference is).
GOAL_PASS = ["H1", "K1", "B", "K8", "C"]
GOAL_PAIRS = [("B", "H1", "the goal: B within 3 µs of H1"),
              ("C", "H1", "the goal: C within 3 µs of H1"),
              ("K1", "H1", "B's floor: its unavoidable work above the proxy-wasm floor"),
              ("K8", "H1", "C's floor: its unavoidable work above the proxy-wasm floor"),
              ("B", "K1", "what Keygate adds to B's unavoidable work"),
              ("C", "K8", "what Keygate adds to C's unavoidable work")]
# Amplified prices: (name, minuend, subtrahend, divisor, what one unit is). The minuend makes
# the subtrahend's extra host calls `divisor` more times per request, so the difference stands
# well above the noise between windows and divides down to the price of one set.
SCALED = [
    ("(K4 − K3) / 20", "K4", "K3", 20,
     "K3's five host calls once (credential removed, three identity headers, :status read)"),
    ("(K6 − K5) / 20", "K6", "K5", 20,
     "K5's two host calls once (the header map replaced with the credential out and the "
     "identity in, :status read): the same work as K3's five, in one replacement"),
    ("(K7 − H3) / 20", "K7", "H3", 20,
     "H3's four edits once (credential removed, three identity headers): C's host work "
     "beyond H1's (a token of an outside issuer makes no usage row, so no :status read)"),
    ("(K9 − K8) / 20", "K9", "K8", 20,
     "K8's token step once: the token's keyed fingerprint, found among the tokens seen, "
     "its expiry checked against the host clock"),
]
# Differences taken per repetition (configurations run interleaved, so each pair are
# neighbours in time): (name, minuend, subtrahend, what it prices).
PAIRED = [
    ("B1 − B", "B1", "B", "spending from a fleet lease, with the RateLimit headers"),
    ("B2 − B", "B2", "B", "spending from a fleet lease, headers only on refusals"),
    ("B − B3", "B", "B3", "following the revocation feed"),
    ("B − B4", "B", "B4", "usage analytics (the :status read, the usage rows)"),
    ("D − D1", "D", "D1", "usage analytics on the verify path (outside tokens make no rows: about 0)"),
    ("H7 − H1", "H7", "H1", "two response headers: the RateLimit headers B1 adds to B"),
    ("H6 − H3", "H6", "H3", "one replacement of the header map against five single edits"),
    ("H8 − H1", "H8", "H1", "a 10 ms tick that does nothing"),
    ("K1 − H1", "K1", "H1", "B's unavoidable work above the proxy-wasm floor (single edits)"),
    ("K2 − H1", "K2", "H1", "the same with the edits in one replacement"),
    ("B − K1", "B", "K1", "what Keygate adds to that work"),
    ("B − K2", "B", "K2", "the same against K2"),
    ("C − K1", "C", "K1", "Keygate's cached JWT path against the opaque floor"),
    ("K3 − H1", "K3", "H1", "the host calls every cached path makes, above the floor"),
    ("C − H3", "C", "H3", "what Keygate's cached JWT path adds to its host calls (H3's edits)"),
    ("K8 − H1", "K8", "H1", "C's unavoidable work above the proxy-wasm floor"),
    ("C − K8", "C", "K8", "what Keygate adds to that work"),
    ("S − B", "S", "B", "a signed route: Ed25519 verify, signature base, nonce"),
    ("S2 − B", "S2", "B", "a signed route with P-256 (host crypto)"),
    ("S3 − B", "S3", "B", "a signed route with hmac-sha256"),
]
# The signed-route configurations: the algorithm each key's material uses.
SIGNED = {"S": "ed25519", "S2": "ecdsa-p256-sha256", "S3": "hmac-sha256"}
SIGNED_PATH = "/v1/signed/bench"
DEFAULT_CONFIGS = ("A B B1 B2 B3 B4 C D D1 R E F G H H1 H2 H3 H4 H5 H6 H7 H8 K1 K2 K3 K4 K5 K6 K7 "
                   "K8 K9 I S S2 S3")


def parse_configs(text: str) -> list[str]:
    """"ABH H1 I" or "A,B,H1": names are a capital letter with optional digits."""
    names = re.findall(r"[A-Z][0-9]*", text.upper())
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise Abort(f"unknown configuration(s) {unknown}; known: {' '.join(CONFIGS)}")
    return list(dict.fromkeys(names))


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    pass


# ── processes ─────────────────────────────────────────────────────────────────────────────────

PROCS: list[subprocess.Popen] = []


def spawn(cmd: list[str], logfile: Path, cpu: int | None = None, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = open(logfile, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    proc.logfile = logfile  # type: ignore[attr-defined]
    PROCS.append(proc)
    return proc


def stop_all() -> None:
    for proc in PROCS:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + 5
    for proc in PROCS:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    PROCS.clear()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same twice in a run, and below the kernel's
    ephemeral range: a port the kernel picked (bind to 0) is free only until some process's
    outgoing connection takes it, which with some 80 Envoys and their key-service connections
    happened between the pick and Envoy's bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = max(1024, ephemeral_low - 12000), ephemeral_low - 1
    for _ in range(10_000):
        port = secrets.randbelow(high - low + 1) + low
        if port in _GIVEN_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


# ── HTTP ──────────────────────────────────────────────────────────────────────────────────────

def request(port: int, method: str, path: str, headers: dict | None = None,
            body: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("content-type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Abort(f"{what} exited during startup (status {proc.returncode}):\n"
                        f"{tail(proc.logfile)}")
        try:
            if request(port, "GET", path, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise Abort(f"{what} not ready on port {port}{path}:\n{tail(proc.logfile)}")


# ── Envoy configurations ──────────────────────────────────────────────────────────────────────

def reference_plugin_config() -> dict:
    """The Keygate plugin JSON of envoy/envoy.yaml (as tests/support does)."""
    lines = (ROOT / "envoy" / "envoy.yaml").read_text().splitlines()
    marker = next(i for i, l in enumerate(lines) if l.strip().startswith("# KEYGATE-PLUGIN-CONFIG"))
    value = lines[marker + 1]
    if value.strip() != "value: |":
        raise Abort("envoy/envoy.yaml: the line after KEYGATE-PLUGIN-CONFIG is not `value: |`")
    indent = len(value) - len(value.lstrip())
    end = marker + 2
    while end < len(lines) and (not lines[end].strip()
                                or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    return json.loads("\n".join(lines[marker + 2:end]))


def cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def envoy_config(listen: int, admin: int, filters: list[dict], clusters: list[dict]) -> dict:
    router = {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        # As envoy/envoy.yaml: path normalisation on for every configuration.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "route_config": {"name": "bench", "virtual_hosts": [{
            "name": "bench", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]}]},
        "http_filters": filters + [router],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}],
            }],
            "clusters": clusters,
        },
    }


def wasm_filter(name: str, wasm: Path, configuration: str | None, env_keys: list[str]) -> dict:
    config: dict = {
        "name": name,
        "root_id": name,
        "failure_policy": "FAIL_CLOSED",
        # As in envoy/envoy.yaml: a pause on the headers lets the body reach the filter
        # (signed routes read it; Envoy 1.35+), so every filter runs under the same setting.
        "allow_on_headers_stop_iteration": True,
        "vm_config": {
            "vm_id": name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(wasm)}},
        },
    }
    if env_keys:
        config["vm_config"]["environment_variables"] = {"host_env_keys": env_keys}
    if configuration is not None:
        config["configuration"] = {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                   "value": configuration}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": config}}


def keygate_plugin(jwks: dict, claims: dict) -> dict:
    plugin = reference_plugin_config()
    # Records are fetched once and then cached for the whole run: no callouts while measuring.
    plugin.setdefault("cache", {})["ttl_seconds"] = 86400
    # One inline issuer, no key service involved in JWT checks. The verified-token cache holds
    # 1,000 entries, fewer than the 10,000 tokens D cycles through in order, so D never hits
    # it (checked with the token_cache_hit counter) while C always does.
    plugin["jwt"] = {
        "max_token_bytes": 8192,
        "cache_max_entries": 1000,
        "issuers": [{
            "issuer": claims["issuer"],
            "audiences": [claims["audience"]],
            "algorithms": [claims.get("algorithm", "ES256")],
            "jwks": {"inline": jwks},
            "revocation": "none",
        }],
    }
    return plugin


def jwt_authn_filters(jwks_text: str, claims: dict, cache: bool) -> list[dict]:
    provider: dict = {
        "issuer": claims["issuer"],
        "audiences": [claims["audience"]],
        "local_jwks": {"inline_string": jwks_text},
        "forward": False,  # remove the token before forwarding, as Keygate does
        "payload_in_metadata": "jwt_payload",
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 100}
    jwt_authn = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
    }}
    # The same policy as Keygate's route table: GET /v1/... needs demo:read in the
    # space-delimited `scope` claim (RE2 full match).
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"demo-read": {
            "permissions": [{"and_rules": {"rules": [
                {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                {"url_path": {"path": {"prefix": "/v1/"}}},
            ]}}],
            "principals": [{"metadata": {
                "filter": "envoy.filters.http.jwt_authn",
                "path": [{"key": "jwt_payload"}, {"key": "scope"}],
                "value": {"string_match": {"safe_regex": {"regex": "(.* )?demo:read( .*)?"}}},
            }}],
        }}},
    }}
    return [jwt_authn, rbac]


def api_key_auth_filters(credentials: list[tuple[str, str]], client: str) -> list[dict]:
    """Envoy's native API-key filter (keys in its config, the client id forwarded in a header)
    and RBAC allowing one client id, with the same permission as E's RBAC (GET /v1/...)."""
    auth = {"name": "envoy.filters.http.api_key_auth", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
        "credentials": [{"key": key, "client": name} for key, name in credentials],
        # `Authorization: Bearer <key>` is read as the key, like Keygate's bearer source.
        "key_sources": [{"header": "authorization"}],
        # The client id goes upstream; the key does not (as Keygate's default).
        "forwarding": {"header": "x-client-id", "hide_credentials": True},
    }}
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"demo-read": {
            "permissions": [{"and_rules": {"rules": [
                {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                {"url_path": {"path": {"prefix": "/v1/"}}},
            ]}}],
            "principals": [{"header": {"name": "x-client-id", "string_match": {"exact": client}}}],
        }}},
    }}
    return [auth, rbac]


def ext_authz_filter(authz_port: int) -> dict:
    return {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": False,
        # `authorization` is among the headers ext_authz forwards by default.
        "http_service": {"server_uri": {"uri": f"http://127.0.0.1:{authz_port}",
                                        "cluster": "authz", "timeout": "1s"}},
    }}


# ── wrk ───────────────────────────────────────────────────────────────────────────────────────

def run_wrk(args, port: int, path: str, seconds: float, load: dict, method: str = "GET") -> dict:
    env = dict(os.environ)
    env["BENCH_METHOD"] = method
    env["BENCH_HEADER"] = load.get("header", "")
    env["BENCH_TOKENS_FILE"] = load.get("tokens_file", "")
    env["BENCH_SIGNED_FILE"] = load.get("signed_file", "")
    env["BENCH_BODY"] = load.get("body", "")
    # Continue the token cycle where this configuration's previous run stopped (plus a margin
    # for requests wrk sent but did not count), so no run starts on freshly cached tokens.
    env["BENCH_TOKENS_OFFSET"] = str(load.get("sent", 0))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{seconds:g}s", "--timeout", "5s",
           "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}{path}"]
    if args.load_cpu is not None:
        cmd = ["taskset", "-c", str(args.load_cpu)] + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise Abort(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result = json.loads(line[len("BENCH_JSON "):])
    load["sent"] = load.get("sent", 0) + 2 * args.connections + result["requests"]
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def check_wrk(name: str, result: dict) -> None:
    errors = result["errors"]
    if any(errors.values()):
        raise Abort(f"{name}: wrk saw errors {errors} in {result['requests']} requests "
                    "(non-2xx responses or socket errors): the numbers would not be honest")


# ── the run ───────────────────────────────────────────────────────────────────────────────────

def machine_info(args) -> dict:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy_version = subprocess.run([args.envoy, "--version"], capture_output=True,
                                   text=True).stdout.strip().split("version:")[-1].strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    wrk_version = wrk_version.splitlines()[0] if wrk_version else "wrk"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    wasm_sha = hashlib.sha256(Path(args.wasm).read_bytes()).hexdigest()[:12]
    baseline_sha = (hashlib.sha256(Path(args.baseline_wasm).read_bytes()).hexdigest()[:12]
                    if args.baseline_wasm else None)
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "envoy": envoy_version,
        "wrk": wrk_version,
        "git": git + (" (+ uncommitted changes)" if dirty else ""),
        "keygate_wasm_sha256": wasm_sha,
        "keygate_wasm_bytes": Path(args.wasm).stat().st_size,
        "baseline_wasm": args.baseline_wasm or None,
        "baseline_wasm_sha256": baseline_sha,
        "loadavg_start": os.getloadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wasm", required=True)
    p.add_argument("--keygate-bin", required=True)
    p.add_argument("--envoy", required=True)
    p.add_argument("--tools-dir", required=True, help="dir with the gen-tokens and authz binaries")
    p.add_argument("--empty-wasm", required=True)
    p.add_argument("--floor-wasm", required=True)
    p.add_argument("--baseline-wasm", default="",
                   help="an earlier keygate.wasm: adds B0, C0, D0 (B, C, D with it)")
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--duration", type=float, default=6)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--tokens", type=int, default=10000)
    p.add_argument("--jwt-alg", default="ES256", choices=["ES256", "EdDSA", "RS256"])
    p.add_argument("--ks-warmup", type=float, default=2)
    p.add_argument("--ks-duration", type=float, default=5)
    p.add_argument("--skip-key-service", action="store_true")
    p.add_argument("--cache-keys", default="",
                   help="the record-cache curve's key counts, e.g. \"10000 100000\" (empty: skip)")
    p.add_argument("--cache-capacity", type=int, default=None,
                   help="cache.max_entries for the curve (default: the filter's default)")
    p.add_argument("--criterion", action="store_true", help="run the criterion micro-benchmarks")
    p.add_argument("--criterion-args", default="--warm-up-time 1 --measurement-time 3")
    p.add_argument("--goal-reps", type=int, default=21,
                   help="repetitions of the tight goal pass (H1, K1, B, K8, C only); 0 skips it")
    p.add_argument("--goal-duration", type=float, default=3,
                   help="seconds per window in the tight goal pass")
    p.add_argument("--out", default=str(BENCH / "results"))
    p.add_argument("--label", default="", help="a note printed in the report header")
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--profile", default="",
                   help="configurations to sample with perf after the repetitions, e.g. "
                        "\"H1 K1 B C\": where Envoy's CPU goes (Wasm code, Envoy, kernel)")
    args = p.parse_args()

    for tool in ("wrk", args.envoy):
        if not shutil.which(tool):
            raise Abort(f"{tool} not found")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        args.envoy_cpu, args.load_cpu = cpus[0], cpus[1]
    else:
        args.envoy_cpu = args.load_cpu = None
    configs = parse_configs(args.configs)
    if args.baseline_wasm:
        if not Path(args.baseline_wasm).is_file():
            raise Abort(f"--baseline-wasm {args.baseline_wasm}: no such file")
        # Each right after the configuration it copies, so the two run close in time.
        for b0, base in BASELINE.items():
            if base in configs and b0 not in configs:
                configs.insert(configs.index(base) + 1, b0)
    elif any(name in BASELINE for name in configs):
        raise Abort("B0, C0 and D0 need a baseline filter (BENCH_BASELINE_WASM / --baseline-wasm)")
    for name in CONFIGS:
        CONFIGS[name] = CONFIGS[name].replace("{alg}", args.jwt_alg)

    started = time.time()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    log(f"work dir {work}")
    info = machine_info(args)
    report: dict = {"timestamp": stamp, "machine": info, "label": args.label,
                    "settings": {"warmup_s": args.warmup, "duration_s": args.duration,
                                 "reps": args.reps, "wrk_threads": 1,
                                 "connections": args.connections, "envoy_concurrency": 1,
                                 "envoy_cpu": args.envoy_cpu, "load_cpu": args.load_cpu,
                                 "tokens": args.tokens, "jwt_alg": args.jwt_alg, "path": PATH},
                    "configs": {}, "key_service": {}, "criterion": [], "counters": {}}

    # Tokens and secrets.
    jwt_dir = work / "jwt"
    subprocess.run([str(Path(args.tools_dir) / "gen-tokens"), str(jwt_dir), str(args.tokens),
                    args.jwt_alg],
                   check=True)
    jwks_text = (jwt_dir / "jwks.json").read_text()
    jwks = json.loads(jwks_text)
    claims = json.loads((jwt_dir / "claims.json").read_text())
    tokens = (jwt_dir / "tokens.txt").read_text().split()
    good_jwt = (jwt_dir / "good.jwt").read_text().strip()
    noscope_jwt = (jwt_dir / "noscope.jwt").read_text().strip()
    forged_jwt = (jwt_dir / "forged.jwt").read_text().strip()
    gateway_key = secrets.token_hex(32)
    service_token = secrets.token_hex(32)

    # Key service (pinned with Envoy: it is idle while Envoy is measured).
    ks_port = free_port()
    ks_dir = work / "service"
    ks_dir.mkdir()
    ks_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key, KEYGATE_SERVICE_TOKEN=service_token,
                  KEYGATE_ADMIN_KEY=ADMIN_KEY, RUST_LOG="warn")
    ks = spawn([args.keygate_bin, "serve", "--listen", f"127.0.0.1:{ks_port}",
                "--database", f"sqlite://{ks_dir / 'keygate.db'}", "--key-prefix", KEY_PREFIX,
                "--admin-key-file", str(ks_dir / "admin.key")],
               work / "keygate.log", cpu=args.envoy_cpu, env=ks_env, cwd=ks_dir)
    wait_ready(ks_port, "/healthz", ks, "key service")
    admin_auth = {"authorization": f"Bearer {ADMIN_KEY}"}

    def create_key(name: str, scopes: list[str], **extra) -> dict:
        status, body = request(ks_port, "POST", "/api/v1/auth/keys", admin_auth,
                               json.dumps({"name": name, "scopes": scopes, **extra}))
        if status != 201:
            raise Abort(f"creating key {name}: {status} {body[:300]!r}")
        return json.loads(body)

    good_key = create_key("bench-good", ["demo:read"])
    other_key = create_key("bench-noscope", ["other:write"])
    key = good_key["key"]
    # B1 (B-global): the same path with a fleet-wide limit that never refuses, so the table
    # shows what spending from a lease costs per request.
    global_key = create_key("bench-global", ["demo:read"],
                            global_limit={"requests_per_second": 1000000, "burst": 1000000})["key"]
    # S, S2, S3: keys with request-signing material (Ed25519 and P-256 public keys are made by
    # gen-signed below, once the Envoy ports, which signatures cover, are known; the HMAC
    # secret is the key service's).
    signed_keys = {name: create_key(f"bench-signed-{name}", ["demo:read"],
                                    **({"signing_material": {"alg": alg}} if alg == "hmac-sha256"
                                       else {}))
                   for name, alg in SIGNED.items() if name in configs}
    # A typo (one character changed): refused inline by the checksum.
    mistyped = key[:-1] + ("a" if key[-1] != "a" else "b")
    (work / "good.key").write_text(key)

    # ext_authz server (on the load CPU: Envoy's CPU is what the table reports).
    authz_port = free_port()
    authz = spawn([str(Path(args.tools_dir) / "authz"), str(authz_port), str(work / "good.key")],
                  work / "authz.log", cpu=args.load_cpu)

    # One Envoy per configuration.
    envoy_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key,
                     KEYGATE_SERVICE_TOKEN=service_token)
    keygate_json = json.dumps(keygate_plugin(jwks, claims), indent=2)
    keygate_refusals_json = json.dumps({**keygate_plugin(jwks, claims),
                                        "rate_limit_headers": "refusals"}, indent=2)
    rust_plugin = keygate_plugin(jwks, claims)
    rust_plugin["jwt"]["host_crypto"] = False
    keygate_rust_json = json.dumps(rust_plugin, indent=2)
    keygate_nofeed_json = json.dumps({**keygate_plugin(jwks, claims),
                                      "revocation_feed": {"enabled": False}}, indent=2)
    keygate_nousage_json = json.dumps({**keygate_plugin(jwks, claims),
                                       "usage": {"enabled": False}}, indent=2)
    # The signed route: signatures made before the run stay valid through it (a long
    # max_age), and every nonce of the run fits in the store (so none is refused as "full").
    signed_plugin = keygate_plugin(jwks, claims)
    signed_plugin["routes"].insert(0, {"prefix": "/v1/signed/", "scopes": ["demo:read"],
                                       "signature": "required"})
    signed_plugin["signatures"] = {"max_age_seconds": 86400, "max_nonces": 1048576}
    keygate_signed_json = json.dumps(signed_plugin, indent=2)
    kg_clusters = [dict(cluster("keygate_service", ks_port), connect_timeout="0.25s")]
    secrets_env = ["KEYGATE_GATEWAY_KEY", "KEYGATE_SERVICE_TOKEN"]
    filters = {
        "A": ([], []),
        "B": ([wasm_filter("keygate", Path(args.wasm), keygate_json, secrets_env)], kg_clusters),
        "B1": ([wasm_filter("keygate", Path(args.wasm), keygate_json, secrets_env)], kg_clusters),
        "B2": ([wasm_filter("keygate", Path(args.wasm), keygate_refusals_json, secrets_env)],
               kg_clusters),
        "C": ([wasm_filter("keygate", Path(args.wasm), keygate_json, secrets_env)], kg_clusters),
        "D": ([wasm_filter("keygate", Path(args.wasm), keygate_json, secrets_env)], kg_clusters),
        "R": ([wasm_filter("keygate", Path(args.wasm), keygate_rust_json, secrets_env)], kg_clusters),
        "B3": ([wasm_filter("keygate", Path(args.wasm), keygate_nofeed_json, secrets_env)],
               kg_clusters),
        "B4": ([wasm_filter("keygate", Path(args.wasm), keygate_nousage_json, secrets_env)],
               kg_clusters),
        "D1": ([wasm_filter("keygate", Path(args.wasm), keygate_nousage_json, secrets_env)],
               kg_clusters),
        "E": (jwt_authn_filters(jwks_text, claims, cache=True), []),
        "F": (jwt_authn_filters(jwks_text, claims, cache=False), []),
        "G": ([ext_authz_filter(authz_port)], [cluster("authz", authz_port)]),
        "H": ([wasm_filter("empty", Path(args.empty_wasm), None, [])], []),
        # The K floors check keys minted under this run's gateway key (an ephemeral secret).
        **{name: ([wasm_filter("floor", Path(args.floor_wasm),
                               steps.replace("keygate", f"keygate={gateway_key}"), [])], [])
           for name, steps in FLOOR_STEPS.items()},
        "I": (api_key_auth_filters([(key, "bench-good"), (other_key["key"], "bench-noscope")],
                                   "bench-good"), []),
    }
    for name in SIGNED:
        filters[name] = ([wasm_filter("keygate", Path(args.wasm), keygate_signed_json,
                                      secrets_env)], kg_clusters)
    if args.baseline_wasm:
        for b0 in BASELINE:
            filters[b0] = ([wasm_filter("keygate", Path(args.baseline_wasm), keygate_json,
                                        secrets_env)], kg_clusters)
    bearer = lambda t: {"authorization": f"Bearer {t}"}  # noqa: E731
    # (label, headers, expected statuses)
    checks = {
        "A": [("no credential", {}, {200})],
        "B": [("no credential", {}, {401}), ("mistyped key", bearer(mistyped), {401}),
              ("key without demo:read", bearer(other_key["key"]), {403}),
              ("good key", bearer(key), {200}), ("good key in x-api-key", {"x-api-key": key}, {200})],
        "C": [("no credential", {}, {401}), ("token signed by another key", bearer(forged_jwt), {401}),
              ("token without demo:read", bearer(noscope_jwt), {403}),
              ("good token", bearer(good_jwt), {200})],
        "E": [("no credential", {}, {401}), ("token signed by another key", bearer(forged_jwt), {401}),
              ("token without demo:read", bearer(noscope_jwt), {403}),
              ("good token", bearer(good_jwt), {200})],
        "G": [("no credential", {}, {401, 403}), ("wrong key", bearer(mistyped), {401, 403}),
              ("good key", bearer(key), {200})],
        "H": [("no credential", {}, {200})],
        **{name: [("no credential", {}, {200}), ("good key", bearer(key), {200})]
           for name, steps in FLOOR_STEPS.items() if "keygate" not in steps and "token" not in steps},
        **{name: [("no credential", {}, {401}), ("good token", bearer(good_jwt), {200})]
           for name, steps in FLOOR_STEPS.items() if "token" in steps},
        **{name: [("no credential", {}, {401}), ("mistyped key", bearer(mistyped), {401}),
                  ("good key", bearer(key), {200})]
           for name, steps in FLOOR_STEPS.items() if "keygate" in steps},
        "I": [("no credential", {}, {401}), ("mistyped key", bearer(mistyped), {401}),
              ("key of another client", bearer(other_key["key"]), {403}),
              ("good key", bearer(key), {200})],
    }
    sample = [tokens[i] for i in sorted({1, len(tokens) // 2, len(tokens) - 1})]
    checks["B1"] = [("no credential", {}, {401}), ("good key with a global limit",
                                                 bearer(global_key), {200})]
    checks["B2"] = checks["B1"]
    checks["B3"] = checks["B4"] = checks["B"]
    checks["D"] = checks["C"] + [(f"token #{i}", bearer(t), {200}) for i, t in enumerate(sample)]
    checks["R"] = checks["D1"] = checks["D"]
    checks["F"] = checks["E"] + [(f"token #{i}", bearer(t), {200}) for i, t in enumerate(sample)]
    for b0, base in BASELINE.items():
        checks[b0] = checks[base]
    # A, H and the floor configurations carry the same header as B, so the request Envoy
    # parses is the same size and only the filters differ.
    loads = {
        "A": {"header": f"Authorization: Bearer {key}"},
        "H": {"header": f"Authorization: Bearer {key}"},
        **{name: {"header": f"Authorization: Bearer {key}"} for name in FLOOR_STEPS},
        "I": {"header": f"Authorization: Bearer {key}"},
        "B": {"header": f"Authorization: Bearer {key}"},
        "B1": {"header": f"Authorization: Bearer {global_key}"},
        "B2": {"header": f"Authorization: Bearer {global_key}"},
        "B3": {"header": f"Authorization: Bearer {key}"},
        "B4": {"header": f"Authorization: Bearer {key}"},
        "C": {"header": f"Authorization: Bearer {good_jwt}"},
        "K8": {"header": f"Authorization: Bearer {good_jwt}"},
        "K9": {"header": f"Authorization: Bearer {good_jwt}"},
        "D": {"tokens_file": str(jwt_dir / "tokens.txt")},
        "R": {"tokens_file": str(jwt_dir / "tokens.txt")},
        "D1": {"tokens_file": str(jwt_dir / "tokens.txt")},
        "E": {"header": f"Authorization: Bearer {good_jwt}"},
        "F": {"tokens_file": str(jwt_dir / "tokens.txt")},
        "G": {"header": f"Authorization: Bearer {key}"},
    }
    for b0, base in BASELINE.items():
        loads[b0] = {k: v for k, v in loads[base].items() if k != "sent"}
    for name in SIGNED:
        loads[name] = {"header": f"Authorization: Bearer {signed_keys.get(name, {}).get('key')}",
                       "path": SIGNED_PATH}

    envoys: dict[str, dict] = {}
    for name in configs:
        listen, admin = free_port(), free_port()
        config_path = work / f"envoy-{name}.json"
        config_path.write_text(json.dumps(envoy_config(listen, admin, *filters[name]), indent=2))
        proc = spawn([args.envoy, "-c", str(config_path), "--concurrency", "1",
                      "--disable-hot-restart", "-l", "warn"],
                     work / f"envoy-{name}.log", cpu=args.envoy_cpu, env=envoy_env, cwd=ROOT)
        envoys[name] = {"proc": proc, "listen": listen, "admin": admin}
    for name in configs:
        e = envoys[name]
        wait_ready(e["admin"], "/ready", e["proc"], f"Envoy {name}")
    # Signatures for S, S2, S3, over this run's authorities: one nonce per request, enough for
    # the whole run at 10,000 requests/s; the first is the checks' and the run starts after it.
    signed_count = int(10000 * (args.warmup + args.reps * args.duration + 5))
    for name, alg in SIGNED.items():
        if name not in configs:
            continue
        key_view = signed_keys[name]
        out_dir = work / f"signed-{name}"
        gen = [str(Path(args.tools_dir) / "gen-signed"), str(out_dir), str(signed_count), alg,
               key_view["id"], f"127.0.0.1:{envoys[name]['listen']}", SIGNED_PATH]
        if alg == "hmac-sha256":
            gen.append(key_view["signing_material"]["secret"])
        log(f"{name}: signing {signed_count} requests ({alg})")
        subprocess.run(gen, check=True)
        if alg != "hmac-sha256":
            status, body = request(ks_port, "PUT",
                                   f"/api/v1/auth/keys/{key_view['id']}/signing-material",
                                   admin_auth, json.dumps({
                                       "alg": alg,
                                       "public_key": (out_dir / "public.txt").read_text()}))
            if status != 200:
                raise Abort(f"registering {name}'s signing material: {status} {body[:300]!r}")
        first = (out_dir / "signed.txt").open().readline().rstrip("\n").split("\t")
        signed_headers = {**bearer(key_view["key"]), "signature-input": first[0],
                          "signature": first[1]}
        checks[name] = [("no signature", bearer(key_view["key"]), {401}),
                        ("signed", signed_headers, {200}),
                        ("the same nonce again", signed_headers, {401})]
        loads[name].update(signed_file=str(out_dir / "signed.txt"), sent=1)
    deadline = time.time() + 10
    while True:  # the authz server answers 401 to a request without credentials
        try:
            if request(authz_port, "GET", "/", timeout=1)[0] == 401:
                break
        except OSError:
            if time.time() > deadline or authz.poll() is not None:
                raise Abort(f"authz server not up:\n{tail(authz.logfile)}")
            time.sleep(0.1)

    # Checks: a bad credential is refused, a good one accepted.
    for name in configs:
        port = envoys[name]["listen"]
        for label, headers, expected in checks[name]:
            status, body = request(port, "GET", loads.get(name, {}).get("path", PATH), headers)
            ok = status in expected
            report["configs"].setdefault(name, {"description": CONFIGS[name], "checks": [], "reps": []})
            report["configs"][name]["checks"].append({"check": label, "status": status,
                                                      "expected": sorted(expected), "ok": ok})
            if not ok:
                raise Abort(f"check failed for {name} ({CONFIGS[name]}): {label}: got {status}, "
                            f"expected {sorted(expected)}; body {body[:300]!r}\n"
                            f"Envoy log:\n{tail(envoys[name]['proc'].logfile)}")
        log(f"{name}: checks passed ({len(checks[name])})")
    lookups_before = service_lookups(ks_port, service_token)

    # Warm-up.
    for name in configs:
        log(f"{name}: warm-up {args.warmup:g} s")
        check_wrk(f"{name} warm-up", run_wrk(args, envoys[name]["listen"],
                                             loads[name].get("path", PATH), args.warmup,
                                             loads[name]))
    counters_before = {n: envoy_counters(envoys[n]["admin"]) for n in configs}

    # Measured repetitions, alternating order. Each Envoy's CPU outside its own windows (its
    # timers, while the others are measured) is kept too: Envoy's CPU per request includes it.
    idle_from = {n: (time.time(), cpu_ticks(envoys[n]["proc"].pid)) for n in configs}
    own = {n: [0.0, 0] for n in configs}
    for rep in range(args.reps):
        order = configs if rep % 2 == 0 else list(reversed(configs))
        for name in order:
            e = envoys[name]
            pid = e["proc"].pid
            authz_ticks = cpu_ticks(authz.pid)
            t0, ticks0 = time.time(), cpu_ticks(pid)
            result = run_wrk(args, e["listen"], loads[name].get("path", PATH), args.duration,
                             loads[name])
            t1, ticks1 = time.time(), cpu_ticks(pid)
            own[name][0] += t1 - t0
            own[name][1] += ticks1 - ticks0
            check_wrk(name, result)
            cpu_s = (ticks1 - ticks0) / CLK_TCK
            result["envoy_cpu_us_per_req"] = cpu_s * 1e6 / max(1, result["requests"])
            # Over wrk's own measured window: its start (reading a file of signed requests
            # for S, S2, S3) takes seconds during which Envoy is idle.
            result["envoy_cpu_busy"] = cpu_s / max(result["duration_us"] / 1e6, 1e-3)
            if name == "G":
                a_s = (cpu_ticks(authz.pid) - authz_ticks) / CLK_TCK
                result["authz_cpu_us_per_req"] = a_s * 1e6 / max(1, result["requests"])
            report["configs"][name]["reps"].append(result)
            log(f"rep {rep + 1}/{args.reps} {name}: {result['rps']:.0f} rps, p50 "
                f"{result['latency_us']['p50']} us, p99 {result['latency_us']['p99']} us, "
                f"{result['envoy_cpu_us_per_req']:.1f} Envoy CPU us/req")

    for name in configs:
        start, ticks = idle_from[name]
        idle_s = time.time() - start - own[name][0]
        idle_ticks = cpu_ticks(envoys[name]["proc"].pid) - ticks - own[name][1]
        report["configs"][name]["idle_cpu_ms_per_s"] = (
            idle_ticks / CLK_TCK * 1e3 / idle_s if idle_s > 1 else None)

    # The goals again, in a tight pass: only the goals' configurations and their floors,
    # alternating in short windows, so each pair of windows is seconds apart (in the main
    # repetitions, with every configuration, a pair can be minutes apart).
    goal_names = [n for n in GOAL_PASS if n in configs]
    if args.goal_reps > 0 and "H1" in goal_names and len(goal_names) > 1:
        report["goal_pass"] = goal_pass(args, envoys, loads, goal_names)

    # Where the CPU goes: one more window per profiled configuration, sampled by perf.
    profiled = [n for n in parse_configs(args.profile) if n in configs] if args.profile else []
    if profiled:
        report["profile"] = profile_configs(args, work, envoys, loads, profiled)

    # Sanity counters: no callouts while measuring; C hits the token cache, D does not.
    for name in configs:
        after = envoy_counters(envoys[name]["admin"])
        before = counters_before[name]
        report["counters"][name] = {k: after[k] - before.get(k, 0) for k in after
                                    if after[k] - before.get(k, 0)}
    report["key_service_lookups_during_measurement"] = service_lookups(ks_port, service_token) - lookups_before

    for name in configs:
        e = envoys[name]
        e["proc"].terminate()
        e["proc"].wait(timeout=10)
    authz.terminate()

    # Key service throughput (alone now; pinned to the Envoy CPU, wrk on the other).
    if not args.skip_key_service:
        ks_auth = f"Authorization: Bearer {service_token}"
        status, body = request(ks_port, "GET", f"/v1/keys/{good_key['id']}",
                               {"authorization": f"Bearer {service_token}"})
        if status != 200:
            raise Abort(f"key service lookup check: {status} {body[:200]!r}")
        status, _ = request(ks_port, "GET", f"/v1/keys/{good_key['id']}",
                            {"authorization": "Bearer wrong-token-0123456789abcdef0123456789"})
        if status not in (401, 403):
            raise Abort(f"key service lookup with a wrong service token: {status}, expected 401/403")
        create_body = json.dumps({"name": "bench-created", "scopes": ["demo:read"]})
        tests = [
            ("lookup", "GET", f"/v1/keys/{good_key['id']}", {"header": ks_auth}),
            ("create", "POST", "/api/v1/auth/keys",
             {"header": f"Authorization: Bearer {ADMIN_KEY}", "body": create_body}),
        ]
        for label, method, path, load in tests:
            log(f"key service {label}: warm-up {args.ks_warmup:g} s, measure {args.ks_duration:g} s")
            check_wrk(f"key service {label} warm-up",
                      run_wrk(args, ks_port, path, args.ks_warmup, load, method))
            ticks0, t0 = cpu_ticks(ks.pid), time.time()
            result = run_wrk(args, ks_port, path, args.ks_duration, load, method)
            ticks1, t1 = cpu_ticks(ks.pid), time.time()
            check_wrk(f"key service {label}", result)
            cpu_s = (ticks1 - ticks0) / CLK_TCK
            result["service_cpu_us_per_req"] = cpu_s * 1e6 / max(1, result["requests"])
            result["service_cpu_busy"] = cpu_s / (t1 - t0)
            report["key_service"][label] = result
            log(f"key service {label}: {result['rps']:.0f} /s")
    stop_all()

    if args.cache_keys.strip():
        # bench/cache.py shares this module's helpers (and its process list) when imported
        # from here.
        sys.modules.setdefault("run", sys.modules[__name__])
        import cache
        report["cache_curve"] = cache.run_curve(
            args.keygate_bin, args.envoy, args.wasm,
            cache.parse_counts(args.cache_keys), args.cache_capacity, 2, args.connections, work)
        stop_all()

    if args.criterion:
        report["criterion"] = run_criterion(args)

    report["machine"]["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = render(report, configs)
    (out / f"{stamp}.md").write_text(md)
    (out / f"{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(md)
    log(f"wrote {out / (stamp + '.md')} and {stamp}.json")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def goal_pass(args, envoys: dict, loads: dict, names: list[str]) -> dict:
    """Each of `names` measured args.goal_reps times for args.goal_duration seconds, in
    alternating order: Envoy CPU µs per request, repetition by repetition."""
    cpu: dict[str, list[float]] = {n: [] for n in names}
    log(f"tight goal pass: {' '.join(names)}, {args.goal_reps} x {args.goal_duration:g} s")
    for rep in range(args.goal_reps):
        order = names if rep % 2 == 0 else list(reversed(names))
        for name in order:
            pid = envoys[name]["proc"].pid
            ticks0 = cpu_ticks(pid)
            result = run_wrk(args, envoys[name]["listen"], loads[name].get("path", PATH),
                             args.goal_duration, loads[name])
            ticks1 = cpu_ticks(pid)
            check_wrk(f"{name} (goal pass)", result)
            cpu[name].append((ticks1 - ticks0) / CLK_TCK * 1e6 / max(1, result["requests"]))
    return {"reps": args.goal_reps, "duration_s": args.goal_duration, "cpu_us_per_req": cpu}


def goal_pass_lines(goal: dict) -> list[str]:
    """The tight goal pass: each pair's median difference, its spread, and in how many
    repetitions it was above 0 and above the goal's 3 µs."""
    cpu = goal["cpu_us_per_req"]
    out = []
    for a, b, what in GOAL_PAIRS:
        if a in cpu and b in cpu:
            d = [x - y for x, y in zip(cpu[a], cpu[b])]
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            out.append(f"| {a} − {b} | {statistics.median(d):+.1f} | {sd:.1f} | "
                       f"{sum(1 for x in d if x > 0)} of {len(d)} | "
                       f"{sum(1 for x in d if x > 3.0)} of {len(d)} | {what} |")
    if not out:
        return []
    medians = ", ".join(f"{n} {statistics.median(v):.1f}" for n, v in cpu.items())
    return ["", f"Goals, tight pass ({' '.join(cpu)} only, {goal['reps']} alternating repetitions "
            f"of {goal['duration_s']:g} s, so each pair of windows is seconds apart; Envoy CPU "
            f"µs/req, medians {medians}):", "",
            "| difference | median | sd | repetitions above 0 | above 3 µs | what |",
            "|---|---:|---:|---:|---:|---|", *out, ""]


# perf's names for where a sample landed, grouped. V8 compiles the module's functions (and the
# wrappers between them and Envoy) into anonymous executable memory, so samples there are the
# filter's own code; V8's runtime and builtins are inside the envoy binary.
REGIONS = ("wasm", "envoy", "kernel", "libs")


def region_of(dso: str) -> str:
    if dso in ("[unknown]", "//anon", "[anon]") or dso.startswith(("[JIT]", "[anon")) \
            or dso.startswith(("//anon", "jitted-", "/tmp/perf-")):
        return "wasm"
    if dso.startswith("[kernel") or dso in ("[vdso]", "[kernel.kallsyms]"):
        return "kernel"
    if Path(dso).name == "envoy":
        return "envoy"
    return "libs"


def profile_configs(args, work: Path, envoys: dict, loads: dict, names: list[str]) -> dict:
    """One extra measured window per configuration with `perf record -e cpu-clock` on its
    Envoy: the share of samples in the Wasm module's compiled code, in the envoy binary (HTTP
    handling, the host calls, V8's runtime), in the kernel (sockets) and in shared libraries,
    each turned into µs per request with that window's Envoy CPU per request. Shares come from
    one window each, so they do not depend on how fast the machine ran between windows."""
    perf = shutil.which("perf")
    if not perf:
        raise Abort("--profile needs perf (Debian: apt-get install linux-perf)")
    out: dict = {}
    for name in names:
        e = envoys[name]
        data = work / f"perf-{name}.data"
        rec = subprocess.Popen([perf, "record", "-q", "-e", "cpu-clock", "-F", "2000",
                                "-p", str(e["proc"].pid), "-o", str(data)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        ticks0 = cpu_ticks(e["proc"].pid)
        result = run_wrk(args, e["listen"], loads[name].get("path", PATH), args.duration,
                         loads[name])
        ticks1 = cpu_ticks(e["proc"].pid)
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=60)
        check_wrk(f"{name} profile", result)
        if rec.returncode not in (0, -signal.SIGINT) or not data.exists():
            raise Abort(f"perf record on {name} failed: {err.decode(errors='replace')[-500:]}")
        report = subprocess.run([perf, "report", "-i", str(data), "--stdio", "-q",
                                 "--sort", "dso", "--percent-limit", "0"],
                                capture_output=True, text=True, check=True).stdout
        shares = dict.fromkeys(REGIONS, 0.0)
        for line in report.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
            if m:
                shares[region_of(m.group(2))] += float(m.group(1)) / 100
        us = (ticks1 - ticks0) / CLK_TCK * 1e6 / max(1, result["requests"])
        out[name] = {"cpu_us_per_req": us, "shares": shares,
                     "us_per_req": {r: us * shares[r] for r in REGIONS}}
        log(f"{name} profile: {us:.1f} us/req; " + ", ".join(
            f"{r} {us * shares[r]:.1f}" for r in REGIONS))
    return out


def envoy_counters(admin: int) -> dict:
    status, body = request(admin, "GET", "/stats?filter=" +
                           "(keygate|jwt_authn|api_key_auth|rbac|ext_authz|downstream_rq_(2|4|5)xx)")
    counters = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            counters[name.strip()] = int(value)
    return counters


def service_lookups(port: int, token: str) -> int:
    status, body = request(port, "GET", "/v1/stats", {"authorization": f"Bearer {token}"})
    if status != 200:
        return -1
    return int(json.loads(body).get("lookups", -1))


def run_criterion(args) -> list[dict]:
    since = time.time()
    cmd = (["cargo", "bench", "-p", "keygate-core", "--bench", "hot_path", "--bench", "request_path",
            "--"] + args.criterion_args.split())
    if args.load_cpu is not None:
        cmd = ["taskset", "-c", str(args.envoy_cpu)] + cmd
    log("criterion: " + " ".join(cmd))
    done = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if done.returncode != 0:
        raise Abort(f"cargo bench failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    results = []
    for bench_json in sorted((target / "criterion").glob("**/new/benchmark.json")):
        if bench_json.stat().st_mtime < since:
            continue
        meta = json.loads(bench_json.read_text())
        est = json.loads((bench_json.parent / "estimates.json").read_text())
        results.append({
            "id": meta.get("full_id") or meta.get("title"),
            "median_ns": est["median"]["point_estimate"],
            "median_ci_ns": [est["median"]["confidence_interval"]["lower_bound"],
                             est["median"]["confidence_interval"]["upper_bound"]],
            "mean_ns": est["mean"]["point_estimate"],
        })
    return results


# ── report ────────────────────────────────────────────────────────────────────────────────────

def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 10000 else f"{us:.0f} µs"


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def summarize(reps: list[dict]) -> dict:
    rps = [r["rps"] for r in reps]
    return {
        "rps_median": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_us": statistics.median(r["latency_us"]["p50"] for r in reps),
        "p99_us": statistics.median(r["latency_us"]["p99"] for r in reps),
        "cpu_us_per_req": statistics.median(r["envoy_cpu_us_per_req"] for r in reps),
        "cpu_busy": statistics.median(r["envoy_cpu_busy"] for r in reps),
        "_reps": reps,
    }


def add_overheads(sums: dict) -> None:
    """cpu_over_a / _h / _h1 on every summary: the median of the per-repetition differences
    (None when the reference configuration was not run)."""
    for ref, field in (("A", "cpu_over_a"), ("H", "cpu_over_h"), ("H1", "cpu_over_h1")):
        for name, sm in sums.items():
            ref_reps = sums[ref]["_reps"] if ref in sums else None
            if ref_reps is None:
                sm[field] = None
                continue
            pairs = zip(sm["_reps"], ref_reps)
            sm[field] = statistics.median(r["envoy_cpu_us_per_req"] - q["envoy_cpu_us_per_req"]
                                          for r, q in pairs)
    for name in ("B1", "B2"):
        if "B" in sums and name in sums:
            pairs = zip(sums[name]["_reps"], sums["B"]["_reps"])
            sums[name]["cpu_vs_b"] = statistics.median(
                r["envoy_cpu_us_per_req"] - q["envoy_cpu_us_per_req"] for r, q in pairs)
    for b0, base in BASELINE.items():
        if b0 in sums and base in sums:
            pairs = zip(sums[base]["_reps"], sums[b0]["_reps"])
            sums[base]["cpu_vs_baseline"] = statistics.median(
                r["envoy_cpu_us_per_req"] - q["envoy_cpu_us_per_req"] for r, q in pairs)


def differences(sums: dict, a: str, b: str) -> list[float]:
    """a − b in Envoy CPU µs/req, repetition by repetition (neighbours in time)."""
    return [r["envoy_cpu_us_per_req"] - q["envoy_cpu_us_per_req"]
            for r, q in zip(sums[a]["_reps"], sums[b]["_reps"])]


def paired(sums: dict) -> list[str]:
    """The PAIRED differences whose configurations ran: the median of the per-repetition
    differences, their standard deviation, and in how many repetitions a cost more than b."""
    out = []
    for label, a, b, what in PAIRED:
        if a in sums and b in sums:
            d = differences(sums, a, b)
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            above = sum(1 for x in d if x > 0)
            out.append(f"| {label} | {statistics.median(d):+.1f} | {sd:.1f} | {above} of {len(d)} "
                       f"| {what} |")
    for label, a, b, divisor, what in SCALED:
        if a in sums and b in sums:
            d = [x / divisor for x in differences(sums, a, b)]
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            above = sum(1 for x in d if x > 0)
            out.append(f"| {label} | {statistics.median(d):+.2f} | {sd:.2f} | {above} of {len(d)} "
                       f"| {what} |")
    if not out:
        return []
    return ["", "Paired differences (Envoy CPU µs/req, over the repetitions):", "",
            "| difference | median | sd | repetitions above 0 | prices |",
            "|---|---:|---:|---:|---|", *out, ""]


def goals(sums: dict) -> list[str]:
    """The performance goals, checked on this run's medians (only those whose configurations ran)."""
    out = []
    h1 = sums.get("H1")
    for name in ("B", "C"):
        if h1 and name in sums:
            d = sums[name]["cpu_over_h1"]
            out.append(f"- {name} over H1: {d:+.1f} µs/req (goal ≤ 3.0): "
                       f"{'met' if d <= 3.0 else 'not met'}")
    # The floors of that goal: B and C cannot cost less than the least code doing their
    # unavoidable work. In how many repetitions that floor alone exceeds H1 + 3 µs.
    for floor, of in (("K1", "B"), ("H3", "C"), ("K8", "C")):
        if h1 and floor in sums:
            d = differences(sums, floor, "H1")
            over = sum(1 for x in d if x > 3.0)
            out.append(f"- {of}'s floor, {floor} over H1: {statistics.median(d):+.1f} µs/req; "
                       f"above 3.0 in {over} of {len(d)} repetitions")
    # The host work B and C do beyond H1's, priced 20 times over: a floor under each goal
    # that the noise between windows cannot hide.
    for label, a, b, how in (
            ("(K4 − K3) / 20", "K4", "K3", "B's: five single calls, the :status read among them"),
            ("(K6 − K5) / 20", "K6", "K5", "B's made as one replacement of the map and the :status read"),
            ("(K7 − H3) / 20", "K7", "H3", "C's: four single edits")):
        if h1 and a in sums and b in sums:
            d = [x / 20 for x in differences(sums, a, b)]
            over = sum(1 for x in d if x > 3.0)
            out.append(f"- the host work beyond H1's ({how}), priced by {label}: "
                       f"{statistics.median(d):+.2f} µs/req; above 3.0 in {over} of {len(d)} "
                       f"repetitions")
    # C's floor, priced per repetition from the amplified configurations: its token step
    # ((K9 − K8) / 20) and three of the four edits (K7 − H3) / 20 prices (H1 already makes
    # one header edit, so C's remove and two more adds are the rest).
    if h1 and all(n in sums for n in ("K7", "H3", "K8", "K9")):
        edits = [x / 20 for x in differences(sums, "K7", "H3")]
        token = [x / 20 for x in differences(sums, "K9", "K8")]
        floor = [t + 0.75 * e for t, e in zip(token, edits)]
        over = sum(1 for x in floor if x > 3.0)
        out.append(f"- C's floor above H1, priced: (K9 − K8) / 20 + ¾ (K7 − H3) / 20 = "
                   f"{statistics.median(floor):+.2f} µs/req (token step "
                   f"{statistics.median(token):+.2f}, three edits "
                   f"{0.75 * statistics.median(edits):+.2f}); above 3.0 in {over} of "
                   f"{len(floor)} repetitions, from {min(floor):+.2f} to {max(floor):+.2f}")
    for name in ("B1", "B2"):
        if "B" in sums and name in sums:
            d = sums[name]["cpu_vs_b"]
            out.append(f"- {name} (global limit) over B: {d:+.2f} µs/req (goal ≤ 1.0): "
                       f"{'met' if d <= 1.0 else 'not met'}")
    if "D" in sums and "F" in sums:
        r = sums["D"]["cpu_us_per_req"] / sums["F"]["cpu_us_per_req"]
        out.append(f"- D / F Envoy CPU per request: {r:.2f}× (goal ≤ 1.30): "
                   f"{'met' if r <= 1.3 else 'not met'}")
    for name in BASELINE.values():
        d = sums.get(name, {}).get("cpu_vs_baseline")
        if d is not None:
            out.append(f"- {name} against the baseline filter ({name}0): {d:+.1f} µs/req (goal: "
                       f"not slower): {'met' if d <= 0 else 'slower by this much'}")
    for name in ("E", "I"):
        if h1 and name in sums:
            d = sums[name]["cpu_over_h1"]
            out.append(f"- {name} over H1: {d:+.1f} µs/req ({'below' if d < 0 else 'above'} "
                       "the proxy-wasm floor)")
    return (["", "Goals (this run's medians):", ""] + out + [""]) if out else []


def profile_lines(profile: dict, configs: dict, duration: float) -> list[str]:
    """The perf shares, priced at each configuration's median Envoy CPU per request over the
    repetitions (a share does not depend on how fast the machine ran; one window's µs/req
    does), with the Wasm code's differences between the floor and Keygate's paths."""
    lines = ["## Where Envoy's CPU goes (perf, one extra window each)", "",
             "| config | Envoy CPU µs/req | in the Wasm module's code | in the envoy binary "
             "| in the kernel | in shared libraries |", "|---|---:|---:|---:|---:|---:|"]
    wasm_us = {}
    for name, pr in profile.items():
        us = configs[name].get("summary", {}).get("cpu_us_per_req", pr["cpu_us_per_req"])
        wasm_us[name] = us * pr["shares"]["wasm"]
        lines.append(f"| {name} | {us:.1f} | " + " | ".join(
            f"{us * pr['shares'][r]:.1f} ({pr['shares'][r] * 100:.1f}%)" for r in REGIONS) + " |")
    lines += ["", "`perf record -e cpu-clock` on the configuration's Envoy over one more "
              f"{duration:g} s window; each share of the samples times the configuration's "
              "median Envoy CPU per request. \"Wasm module's code\" is V8's compiled code in "
              "anonymous memory (the module's functions and the wrappers around them); V8's "
              "runtime, the host calls and HTTP handling are in the envoy binary."]
    steps = [(a, b) for a, b in (("K1", "H1"), ("K3", "H1"), ("B", "K1"), ("C", "H3"),
                                 ("B", "H1"), ("C", "H1"), ("B", "B0"), ("C", "C0"))
             if a in wasm_us and b in wasm_us]
    if steps:
        lines += ["", "Time in the Wasm module's code: " + "; ".join(
            f"{a} − {b} {wasm_us[a] - wasm_us[b]:+.1f} µs/req" for a, b in steps) + "."]
    return lines + [""]


def render(report: dict, configs: list[str]) -> str:
    m, s = report["machine"], report["settings"]
    pin = (f"Envoy pinned to CPU {s['envoy_cpu']}, wrk (and the ext_authz server) to CPU "
           f"{s['load_cpu']} with taskset" if s["envoy_cpu"] is not None
           else "no CPU pinning (fewer than 2 CPUs or no taskset)")
    lines = [
        f"# Keygate benchmark {report['timestamp']}",
        "",
        *( [f"> {report['label']}", ""] if report["label"] else [] ),
        *([f"> **Warning:** load average {m['loadavg_start'][0]:.1f} at the start on "
           f"{m['cpus']} CPUs: other work shared the machine, so these figures are not "
           "comparable with an idle run's.", ""]
          if m["cpus"] and m["loadavg_start"][0] > 0.5 * m["cpus"] else []),
        f"- Machine: {m['cpu_model']}, {m['cpus']} CPUs, Linux {m['kernel']}; load average at "
        f"start {m['loadavg_start'][0]:.2f}, at end {m['loadavg_end'][0]:.2f}",
        f"- Envoy {m['envoy']}, `--concurrency 1`, `direct_response` route (no upstream); {pin}",
        f"- {m['wrk']}: 1 thread, {s['connections']} connections, GET {s['path']}; warm-up "
        f"{s['warmup_s']:g} s, then {s['reps']} × {s['duration_s']:g} s per configuration in "
        "alternating order; every configuration first checked to refuse bad credentials "
        "(401/403) and accept good ones (200), and every measured response was 2xx",
        f"- Keygate {m['git']}, keygate.wasm sha256 {m['keygate_wasm_sha256']} "
        f"({m['keygate_wasm_bytes'] // 1024} KiB); total run {report['elapsed_s']:g} s",
        *([f"- Baseline filter (B0, C0, D0): {m['baseline_wasm']}, sha256 "
           f"{m['baseline_wasm_sha256']}"] if m.get("baseline_wasm") else []),
        "",
        "| config | rps (median) | rps min–max | p50 | p99 | rps / A | Envoy CPU µs/req | "
        "over A | over H | over H1 | Envoy CPU busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sums = {n: summarize(report["configs"][n]["reps"]) for n in configs if report["configs"][n]["reps"]}
    paired_lines = paired(sums)
    add_overheads(sums)
    for name, sm in sums.items():
        report["configs"][name]["summary"] = sm
    base = sums.get("A")
    over = lambda v: "—" if v is None else f"{v:+.1f}"  # noqa: E731
    for name, sm in sums.items():
        ratio = f"{sm['rps_median'] / base['rps_median']:.2f}" if base else "—"
        lines.append(
            f"| {name}. {CONFIGS[name]} | {sm['rps_median']:,.0f} | {sm['rps_min']:,.0f}–"
            f"{sm['rps_max']:,.0f} | {fmt_us(sm['p50_us'])} | {fmt_us(sm['p99_us'])} | {ratio} | "
            f"{sm['cpu_us_per_req']:.1f} | {over(sm['cpu_over_a'])} | {over(sm['cpu_over_h'])} | "
            f"{over(sm['cpu_over_h1'])} | {sm['cpu_busy'] * 100:.0f}% |")
    lines += ["", "Envoy CPU µs/req: the Envoy process's utime+stime (/proc/<pid>/stat) over each "
              "measured window divided by the requests served (median of the repetitions); "
              "\"over A/H/H1\": the median over the repetitions of this configuration's µs/req "
              "minus A's (no filter), H's (empty Wasm filter) or H1's (the proxy-wasm floor) in "
              "the same repetition (configurations run interleaved, so each difference compares "
              "neighbours in time); \"busy\" near 100% means Envoy's one CPU was the bottleneck."]
    lines += paired_lines
    lines += goals(sums)
    if report.get("goal_pass"):
        lines += goal_pass_lines(report["goal_pass"])
    for sm in sums.values():
        sm.pop("_reps", None)
    if "G" in sums:
        g = [r.get("authz_cpu_us_per_req") for r in report["configs"]["G"]["reps"]]
        g = [x for x in g if x is not None]
        if g:
            lines.append(f"G's authz server used another {statistics.median(g):.1f} CPU µs/req "
                         "(on the load CPU, not included above).")
    idle = [(n, report["configs"][n].get("idle_cpu_ms_per_s")) for n in sums]
    idle = [(n, v) for n, v in idle if v is not None]
    if idle:
        lines += ["", "Envoy CPU while idle (ms per second, while the other configurations were "
                  "measured: its timers, which the Envoy CPU per request above includes, spread "
                  "over the requests): " + ", ".join(f"{n} {v:.1f}" for n, v in idle) + "."]
    lines.append("")
    cnt = report["counters"]
    notes = []
    for n in ("B", "B0"):
        if n in cnt:
            notes.append(f"{n}: keygate.cache_hit +{cnt[n].get('wasmcustom.keygate.cache_hit', 0):,}, "
                         f"cache_miss +{cnt[n].get('wasmcustom.keygate.cache_miss', 0)}")
    for n in ("C", "D", "D1", "R", "C0", "D0"):
        if n in cnt:
            notes.append(f"{n}: keygate.allowed +{cnt[n].get('wasmcustom.keygate.allowed', 0):,}, "
                         f"token_cache_hit +{cnt[n].get('wasmcustom.keygate.token_cache_hit', 0):,}")
    notes.append("key service lookups while measuring: "
                 f"{report.get('key_service_lookups_during_measurement', '?')}")
    lines += ["Sanity counters (warm-up excluded): " + "; ".join(notes) + ".", ""]

    ks = report["key_service"]
    if ks:
        lines += ["## Key service (SQLite)", "",
                  "| operation | per second | p50 | p99 | service CPU µs/op | service CPU busy |",
                  "|---|---:|---:|---:|---:|---:|"]
        names = {"lookup": "lookup `GET /v1/keys/{id}` (service token)",
                 "create": "create `POST /api/v1/auth/keys` (admin key)"}
        for label, r in ks.items():
            lines.append(f"| {names.get(label, label)} | {r['rps']:,.0f} | "
                         f"{fmt_us(r['latency_us']['p50'])} | {fmt_us(r['latency_us']['p99'])} | "
                         f"{r['service_cpu_us_per_req']:.1f} | {r['service_cpu_busy'] * 100:.0f}% |")
        lines += ["", f"wrk 1 thread / {s['connections']} connections, one run of "
                  "the measured duration after a warm-up; key service pinned like Envoy.", ""]
    if report.get("profile"):
        lines += profile_lines(report["profile"], report["configs"], s["duration_s"])
    if report.get("cache_curve"):
        sys.modules.setdefault("run", sys.modules[__name__])
        import cache
        lines += cache.render(report["cache_curve"])
    crit = report["criterion"]
    if crit:
        lines += ["## Criterion micro-benchmarks (native, `crates/core/benches/hot_path.rs` and "
                  "`request_path.rs`)", "",
                  "| benchmark | median | 95% CI of the median | per second |", "|---|---:|---:|---:|"]
        for c in crit:
            lo, hi = c["median_ci_ns"]
            lines.append(f"| {c['id']} | {fmt_ns(c['median_ns'])} | {fmt_ns(lo)}–{fmt_ns(hi)} | "
                         f"{1e9 / c['median_ns']:,.0f} |")
        lines.append("")
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines) + "\n")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except Abort as err:
        log(f"ABORTED: {err}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        stop_all()
