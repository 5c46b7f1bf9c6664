#!/usr/bin/env python3
"""Revocation propagation benchmark (run by scripts/bench-revocation.sh).

Starts, on free loopback ports: the key service (SQLite, default settings), the echo upstream
(scripts/echo_upstream.py) and Envoy (2 workers) on envoy/envoy.yaml exactly as shipped (the
demo plugin configuration, default revocation-feed settings) with only its ports and the wasm
path substituted. Then:

  1. creates N keys (scope demo:read) and warms each with one request through Envoy (200), so
     every record is cached and only the feed can refuse it;
  2. for each key, one by one: revoke it (DELETE /api/v1/auth/keys/{id}); when that call
     returns, start the clock and send GET /v1/... with the key through Envoy on fresh
     connections, back to back, until one answers 401; the delay is that time.

Writes bench/results/revocation-<timestamp>.md (p50/p99/max and more; printed too) and
revocation-<timestamp>.json (every delay). Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "kg-bench-admin-key-" + secrets.token_hex(16)
KEY_PREFIX = "kg_test_"
PATH = "/v1/revocation-bench"
WASM_IN_TEMPLATE = "filename: target/wasm32-wasip1/release/keygate.wasm"

PROCS: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"bench-revocation: {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], logfile: Path, env: dict | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    out = open(logfile, "wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    proc.logfile = logfile  # type: ignore[attr-defined]
    PROCS.append(proc)
    return proc


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def request(port: int, method: str, path: str, headers: dict | None = None,
            body: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        hdrs["connection"] = "close"
        if body is not None:
            hdrs.setdefault("content-type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, proc: subprocess.Popen, name: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Abort(f"{name} exited ({proc.returncode}):\n{tail(proc.logfile)}")  # type: ignore[attr-defined]
        try:
            if request(port, "GET", path, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise Abort(f"{name} not ready on :{port}{path}:\n{tail(proc.logfile)}")  # type: ignore[attr-defined]


def render_envoy(listener: int, admin: int, service: int, echo: int, wasm: Path) -> str:
    """envoy/envoy.yaml with its four ports and the wasm path substituted (nothing else)."""
    text = (ROOT / "envoy" / "envoy.yaml").read_text()
    for old, new in ((10000, listener), (9901, admin), (8080, service), (8090, echo)):
        pattern = f"port_value: {old} "
        if text.count(pattern) != 1:
            raise Abort(f"envoy/envoy.yaml must contain `{pattern}` exactly once")
        text = text.replace(pattern, f"port_value: {new} ")
    if text.count(WASM_IN_TEMPLATE) != 1:
        raise Abort(f"envoy/envoy.yaml must contain `{WASM_IN_TEMPLATE}` exactly once")
    return text.replace(WASM_IN_TEMPLATE, f"filename: {wasm}")


def envoy_stats(admin: int) -> dict[str, int]:
    status, body = request(admin, "GET", "/stats")
    out = {}
    for line in body.decode(errors="replace").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("wasmcustom.keygate.") and re.fullmatch(r"\d+", value.strip()):
            out[name[len("wasmcustom.keygate."):]] = int(value)
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-p * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-revocation-"))
    gateway_key = secrets.token_hex(32)
    service_token = secrets.token_hex(32)
    ks_port, echo_port, listener, admin = free_port(), free_port(), free_port(), free_port()

    ks_dir = work / "service"
    ks_dir.mkdir()
    ks_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key, KEYGATE_SERVICE_TOKEN=service_token,
                  KEYGATE_ADMIN_KEY=ADMIN_KEY, RUST_LOG="warn")
    ks = spawn([args.keygate_bin, "serve", "--listen", f"127.0.0.1:{ks_port}",
                "--database", f"sqlite://{ks_dir / 'keygate.db'}", "--key-prefix", KEY_PREFIX,
                "--admin-key-file", str(ks_dir / "admin.key")],
               work / "keygate.log", env=ks_env, cwd=ks_dir)
    echo = spawn([sys.executable, str(ROOT / "scripts" / "echo_upstream.py"), str(echo_port)],
                 work / "echo.log")
    wait_ready(ks_port, "/healthz", ks, "key service")
    wait_ready(echo_port, "/ready", echo, "echo upstream")
    config = work / "envoy.yaml"
    config.write_text(render_envoy(listener, admin, ks_port, echo_port, Path(args.wasm).resolve()))
    envoy_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key, KEYGATE_SERVICE_TOKEN=service_token)
    envoy = spawn([args.envoy, "-c", str(config), "--concurrency", str(args.concurrency),
                   "--disable-hot-restart", "-l", "warn"],
                  work / "envoy.log", env=envoy_env, cwd=ROOT)
    wait_ready(admin, "/ready", envoy, "envoy")

    admin_auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    svc_auth = {"authorization": f"Bearer {service_token}"}

    log(f"creating {args.keys} keys")
    keys = []
    for i in range(args.keys):
        status, body = request(ks_port, "POST", "/api/v1/auth/keys", admin_auth,
                               json.dumps({"name": f"revocation-bench-{i}", "scopes": ["demo:read"]}))
        if status != 201:
            raise Abort(f"creating key {i}: {status} {body[:300]!r}")
        keys.append(json.loads(body))

    log("warming every key through Envoy")
    deadline = time.monotonic() + 30
    for key in keys:
        while True:
            status, body = request(listener, "GET", PATH, {"authorization": f"Bearer {key['key']}"})
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise Abort(f"key {key['id']} not accepted while warming: {status} {body[:300]!r}")
            time.sleep(0.05)

    # A follower at feed sequence 0 never holds a long-poll (it re-polls back to back until the
    # first revocation exists), so revoke one throwaway key before measuring.
    status, body = request(ks_port, "POST", "/api/v1/auth/keys", admin_auth,
                           json.dumps({"name": "revocation-bench-primer", "scopes": ["demo:read"]}))
    if status != 201:
        raise Abort(f"creating the primer key: {status} {body[:300]!r}")
    primer = json.loads(body)["id"]
    _, body = request(ks_port, "GET", "/v1/stats", svc_auth)
    spin_before = json.loads(body)["feed_requests"]
    status, _ = request(ks_port, "DELETE", f"/api/v1/auth/keys/{primer}", admin_auth)
    if not 200 <= status < 300:
        raise Abort(f"revoking the primer key: {status}")

    def feed_waiting() -> int:
        status, body = request(ks_port, "GET", "/v1/stats", svc_auth)
        if status != 200:
            raise Abort(f"GET /v1/stats: {status} {body[:200]!r}")
        return int(json.loads(body)["feed_waiting"])

    deadline = time.monotonic() + 30
    while feed_waiting() != 1:
        if time.monotonic() > deadline:
            raise Abort("the filter's follower never held a long-poll on the key service")
        time.sleep(0.05)
    stats_before = envoy_stats(admin)
    _, body = request(ks_port, "GET", "/v1/stats", svc_auth)
    ks_before = json.loads(body)

    log(f"revoking {len(keys)} keys one by one")
    delays_ms: list[float] = []
    revoke_ms: list[float] = []
    tries: list[int] = []
    for key in keys:
        sent = time.perf_counter()
        status, body = request(ks_port, "DELETE", f"/api/v1/auth/keys/{key['id']}", admin_auth)
        returned = time.perf_counter()
        if not 200 <= status < 300:
            raise Abort(f"revoking {key['id']}: {status} {body[:300]!r}")
        n = 0
        while True:
            n += 1
            status, body = request(listener, "GET", PATH, {"authorization": f"Bearer {key['key']}"})
            if status == 401:
                break
            if status != 200:
                raise Abort(f"key {key['id']}: unexpected {status} {body[:300]!r}")
            if time.perf_counter() - returned > args.timeout:
                raise Abort(f"key {key['id']} still accepted {args.timeout} s after its revocation")
        delays_ms.append((time.perf_counter() - returned) * 1000)
        revoke_ms.append((returned - sent) * 1000)
        tries.append(n)
        if args.pause:
            time.sleep(args.pause)

    stats_after = envoy_stats(admin)
    _, body = request(ks_port, "GET", "/v1/stats", svc_auth)
    ks_after = json.loads(body)

    ordered = sorted(delays_ms)
    summary = {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
        "min_ms": ordered[0],
        "mean_ms": statistics.fmean(ordered),
        "revoke_call_p50_ms": percentile(sorted(revoke_ms), 50),
        "first_request_refused": sum(1 for t in tries if t == 1),
        "feed_events": stats_after.get("feed.events", 0) - stats_before.get("feed.events", 0),
        "feed_failures": stats_after.get("feed.failure", 0) - stats_before.get("feed.failure", 0),
        "feed_requests": ks_after["feed_requests"] - ks_before["feed_requests"],
        "lookups": ks_after["lookups"] - ks_before["lookups"],
        "feed_requests_before_first_revocation": spin_before,
    }
    target_ok = summary["p99_ms"] < 100

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
    md = "\n".join([
        f"# Revocation propagation — {stamp}",
        "",
        f"Host: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}; load average at "
        f"start {args.load or load}.",
        f"Setup: key service (SQLite, default settings), echo upstream, Envoy "
        f"(--concurrency {args.concurrency}) on envoy/envoy.yaml as shipped (default "
        f"revocation_feed: wait_seconds 20). {summary['n']} keys, each warmed (cached), then "
        "revoked one by one via REST; the delay runs from the DELETE returning to the first 401 "
        "through Envoy, polling on fresh connections back to back.",
        "",
        "| keys | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | min (ms) | mean (ms) | target p99 < 100 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|:---|",
        f"| {summary['n']} | {summary['p50_ms']:.1f} | {summary['p90_ms']:.1f} | "
        f"{summary['p99_ms']:.1f} | {summary['max_ms']:.1f} | {summary['min_ms']:.1f} | "
        f"{summary['mean_ms']:.1f} | {'met' if target_ok else 'MISSED'} |",
        "",
        f"- the first request after the revoke was already refused for "
        f"{summary['first_request_refused']} of {summary['n']} keys",
        f"- revoke call (DELETE) p50: {summary['revoke_call_p50_ms']:.1f} ms",
        f"- filter: feed.events +{summary['feed_events']}, feed.failure +{summary['feed_failures']}",
        f"- key service during the revocations: {summary['feed_requests']} feed requests, "
        f"{summary['lookups']} lookups",
        f"- before any revocation existed (feed sequence 0) the follower had already sent "
        f"{spin_before} feed requests during start-up and warm-up (it does not long-poll at "
        "sequence 0)",
        "",
    ])
    (results / f"revocation-{stamp}.md").write_text(md)
    (results / f"revocation-{stamp}.json").write_text(json.dumps(
        {"summary": summary, "delays_ms": delays_ms, "revoke_call_ms": revoke_ms, "tries": tries},
        indent=1))
    print(md)
    log(f"wrote bench/results/revocation-{stamp}.md and .json")
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work}")
    return 0 if target_ok or not args.strict else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", default=str(ROOT / "target/wasm32-wasip1/release/keygate.wasm"))
    parser.add_argument("--keygate-bin", default=str(ROOT / "target/release/keygate"))
    parser.add_argument("--envoy", default=str(ROOT / ".venv/bin/envoy"))
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="give up on a key still accepted this long after its revocation")
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds between two revocations (0: back to back)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when p99 >= 100 ms")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    parser.add_argument("--load", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.keys < 1:
        parser.error("--keys must be positive")
    try:
        return run(args)
    except Abort as e:
        log(f"ERROR: {e}")
        return 1
    finally:
        for proc in reversed(PROCS):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
