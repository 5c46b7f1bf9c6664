#!/usr/bin/env python3
"""The record-cache miss curve through Envoy (called by bench/run.py, or alone through
`make bench-cache` -> scripts/bench.sh cache).

Mints max(N) valid opaque keys on a key service of its own (SQLite, concurrent POSTs to the
admin API), then for each N: a fresh Envoy (2 workers by default) with the Keygate filter
(`cache.ttl_seconds` 86400, so nothing expires; `cache.max_entries` the filter's default
unless --capacity says otherwise), and uniform traffic over N keys: every key once in a random
order (the warm pass), then every key once in another random order (the measured pass). The
miss ratio is the filter's own counters over the measured pass, from Envoy's /stats:
cache_miss / (cache_hit + cache_miss). The key service's lookup count over the same pass is
printed beside it as a cross-check, and Envoy's allocated memory (admin /memory) before and
after the warm pass gives the memory per cached key.

Writes bench/results/cache-<timestamp>.md and .json when run alone. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the shared helpers of the benchmark runner)
from run import Abort, log  # noqa: E402

STAT_PREFIX = "wasmcustom.keygate."


def mint_keys(port: int, count: int, threads: int = 8) -> list[str]:
    """`count` opaque keys with demo:read, created through the admin API by `threads`
    keep-alive connections at once."""
    local = threading.local()
    auth = {"authorization": f"Bearer {run.ADMIN_KEY}", "content-type": "application/json"}

    def create(i: int) -> str:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"name": f"cache-{i}", "scopes": ["demo:read"]})
        for attempt in range(3):
            try:
                conn.request("POST", "/api/v1/auth/keys", body=body, headers=auth)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 201:
                    raise Abort(f"minting key {i}: {resp.status} {data[:200]!r}")
                return json.loads(data)["key"]
            except (OSError, ConnectionError):
                conn.close()
                conn = local.conn = HTTPConnection("127.0.0.1", port, timeout=30)
                if attempt == 2:
                    raise
        raise Abort("unreachable")

    started = time.time()
    keys: list[str] = []
    with ThreadPoolExecutor(threads) as pool:
        for n, key in enumerate(pool.map(create, range(count), chunksize=64), 1):
            keys.append(key)
            if n % 20000 == 0:
                log(f"cache: minted {n:,} keys ({n / (time.time() - started):,.0f}/s)")
    log(f"cache: minted {count:,} keys in {time.time() - started:.0f} s")
    return keys


def keygate_counters(admin: int) -> dict[str, int]:
    status, body = run.request(admin, "GET", "/stats?filter=" + quote(r"^wasmcustom\.keygate\."))
    if status != 200:
        raise Abort(f"Envoy /stats: {status}")
    counters = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            counters[name.strip()[len(STAT_PREFIX):]] = int(value)
    return counters


def envoy_allocated(admin: int) -> int | None:
    status, body = run.request(admin, "GET", "/memory")
    if status != 200:
        return None
    try:
        return int(json.loads(body)["allocated"])
    except (ValueError, KeyError):
        return None


def decided(counters: dict[str, int]) -> int:
    return counters.get("cache_hit", 0) + counters.get("cache_miss", 0)


def rss_bytes(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def wrk_pass(port: int, admin: int, tokens_file: Path, offset: int, count: int,
             connections: int) -> dict:
    """Sends `count` requests, credentials taken in order from `tokens_file` starting at line
    `offset`: wrk's script stops sending after `count` responses, and wrk (which otherwise
    waits out its -d) is interrupted once the filter has counted them."""
    env = dict(os.environ, BENCH_TOKENS_FILE=str(tokens_file), BENCH_TOKENS_OFFSET=str(offset),
               BENCH_MAX_REQUESTS=str(count), BENCH_METHOD="GET", BENCH_HEADER="", BENCH_BODY="")
    cmd = ["wrk", "-t1", f"-c{connections}", "-d600s", "--timeout", "10s", "-s",
           str(run.WRK_SCRIPT), f"http://127.0.0.1:{port}{run.PATH}"]
    base = decided(keygate_counters(admin))
    wrk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 590
    while wrk.poll() is None and time.time() < deadline:
        time.sleep(0.25)
        if decided(keygate_counters(admin)) - base >= count:
            break
    time.sleep(0.5)  # the last responses on their way back
    if wrk.poll() is None:
        wrk.send_signal(signal.SIGINT)
    stdout, stderr = wrk.communicate(timeout=60)
    line = next((l for l in stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if line is None:
        raise Abort(f"wrk failed ({wrk.returncode}):\n{stdout}\n{stderr}")
    result = json.loads(line[len("BENCH_JSON "):])
    result["rps"] = result["requests"] / max(1e-9, result["duration_us"] / 1e6)
    return result


def run_curve(keygate_bin: str, envoy: str, wasm: str, key_counts: list[int],
              capacity: int | None, workers: int, connections: int, work: Path) -> dict:
    """Runs the curve; returns {"settings": ..., "rows": [...]}. Starts and stops its own
    processes (run.spawn / run.stop_all)."""
    rng = random.Random(13)
    gateway_key, service_token = secrets.token_hex(32), secrets.token_hex(32)
    ks_port = run.free_port()
    ks_dir = work / "cache-service"
    ks_dir.mkdir(parents=True, exist_ok=True)
    ks_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key, KEYGATE_SERVICE_TOKEN=service_token,
                  KEYGATE_ADMIN_KEY=run.ADMIN_KEY, RUST_LOG="warn")
    ks = run.spawn([keygate_bin, "serve", "--listen", f"127.0.0.1:{ks_port}",
                    "--database", f"sqlite://{ks_dir / 'keygate.db'}", "--key-prefix",
                    run.KEY_PREFIX, "--admin-key-file", str(ks_dir / "admin.key")],
                   work / "cache-keygate.log", env=ks_env, cwd=ks_dir)
    run.wait_ready(ks_port, "/healthz", ks, "key service")
    keys = mint_keys(ks_port, max(key_counts))

    plugin = run.reference_plugin_config()
    # Opaque keys only: no JWT issuer (its JWKS would be fetched from a key service that has
    # no signing keys here, and refetched while the curve runs).
    plugin.pop("jwt", None)
    plugin.setdefault("cache", {})["ttl_seconds"] = 86400
    if capacity is None:
        plugin["cache"].pop("max_entries", None)  # the filter's default
    else:
        plugin["cache"]["max_entries"] = capacity
    # Enough lookups in flight that the warm pass (every request a miss) is never refused.
    plugin.setdefault("key_service", {})["max_in_flight"] = max(64, 2 * connections)
    plugin_json = json.dumps(plugin, indent=2)
    envoy_env = dict(os.environ, KEYGATE_GATEWAY_KEY=gateway_key,
                     KEYGATE_SERVICE_TOKEN=service_token)
    filters = [run.wasm_filter("keygate", Path(wasm), plugin_json,
                               ["KEYGATE_GATEWAY_KEY", "KEYGATE_SERVICE_TOKEN"])]
    clusters = [dict(run.cluster("keygate_service", ks_port), connect_timeout="0.25s")]

    rows = []
    for n in key_counts:
        subset = keys[:n]
        warm, measured = subset[:], subset[:]
        rng.shuffle(warm)
        rng.shuffle(measured)
        tokens_file = work / f"cache-tokens-{n}.txt"
        tokens_file.write_text("\n".join(warm + measured) + "\n")

        listen, admin = run.free_port(), run.free_port()
        config_path = work / f"cache-envoy-{n}.json"
        config_path.write_text(json.dumps(run.envoy_config(listen, admin, filters, clusters)))
        proc = run.spawn([envoy, "-c", str(config_path), "--concurrency", str(workers),
                          "--disable-hot-restart", "-l", "warn"],
                         work / f"cache-envoy-{n}.log", env=envoy_env, cwd=run.ROOT)
        run.wait_ready(admin, "/ready", proc, f"Envoy (cache curve, {n} keys)")
        status, body = run.request(listen, "GET", run.PATH,
                                   {"authorization": f"Bearer {subset[0]}"})
        if status != 200:
            raise Abort(f"cache curve: a minted key got {status}: {body[:200]!r}\n"
                        f"{run.tail(proc.logfile)}")

        mem0, rss0 = envoy_allocated(admin), rss_bytes(proc.pid)
        log(f"cache: {n:,} keys: warm pass")
        c0, l0 = keygate_counters(admin), run.service_lookups(ks_port, service_token)
        warm_result = wrk_pass(listen, admin, tokens_file, 0, n, connections)
        c1, l1 = keygate_counters(admin), run.service_lookups(ks_port, service_token)
        mem1, rss1 = envoy_allocated(admin), rss_bytes(proc.pid)
        log(f"cache: {n:,} keys: measured pass")
        result = wrk_pass(listen, admin, tokens_file, n, n, connections)
        c2, l2 = keygate_counters(admin), run.service_lookups(ks_port, service_token)
        proc.terminate()
        proc.wait(timeout=10)

        delta = {k: c2.get(k, 0) - c1.get(k, 0) for k in c2 if c2.get(k, 0) != c1.get(k, 0)}
        warm_delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1 if c1.get(k, 0) != c0.get(k, 0)}
        hits, misses = delta.get("cache_hit", 0), delta.get("cache_miss", 0)
        errors = {k: v for k, v in result["errors"].items() if v}
        row = {
            "keys": n,
            "requests": result["requests"],
            "cache_hit": hits,
            "cache_miss": misses,
            "miss_ratio": misses / max(1, hits + misses),
            "key_service_lookups": l2 - l1,
            "rps": result["rps"],
            "errors": errors,
            "warm": {"requests": warm_result["requests"], "counters": warm_delta,
                     "key_service_lookups": l1 - l0,
                     "errors": {k: v for k, v in warm_result["errors"].items() if v}},
            "counters": delta,
            "envoy_allocated_before": mem0,
            "envoy_allocated_after_warm": mem1,
            "bytes_per_key": (mem1 - mem0) / n if mem0 is not None and mem1 is not None else None,
            "envoy_rss_before": rss0,
            "envoy_rss_after_warm": rss1,
            "rss_bytes_per_key": (rss1 - rss0) / n if rss0 is not None and rss1 is not None else None,
        }
        rows.append(row)
        log(f"cache: {n:,} keys: miss ratio {row['miss_ratio'] * 100:.2f}% "
            f"({misses:,} misses, {hits:,} hits), key service lookups {l2 - l1:,}")
    ks.terminate()
    ks.wait(timeout=10)
    return {"settings": {"capacity": capacity if capacity is not None else "filter default",
                         "workers": workers, "connections": connections,
                         "ttl_seconds": 86400, "key_counts": key_counts},
            "rows": rows}


def render(curve: dict, heading: str = "##") -> list[str]:
    s = curve["settings"]
    lines = [
        f"{heading} Record cache at scale (through Envoy)", "",
        f"Envoy `--concurrency {s['workers']}`, the Keygate filter with `cache.max_entries` = "
        f"{s['capacity']}, `ttl_seconds` {s['ttl_seconds']}; wrk 1 thread × "
        f"{s['connections']} connections; N valid keys, each sent once in a random order (warm "
        "pass), then once more in another random order (measured pass). Misses are the "
        "filter's counters over the measured pass (`wasmcustom.keygate.cache_miss` / "
        "(`cache_hit` + `cache_miss`)); each miss is a key-service lookup unless another "
        "request for the same key was already waiting on one.", "",
        "| active keys | requests | cache misses | miss ratio | key service lookups | "
        "Envoy allocated Δ per key | Envoy RSS Δ per key | non-2xx / errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in curve["rows"]:
        per_key = f"{r['bytes_per_key']:,.0f} B" if r["bytes_per_key"] is not None else "—"
        rss_key = f"{r['rss_bytes_per_key']:,.0f} B" if r.get("rss_bytes_per_key") is not None else "—"
        errs = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {r['keys']:,} | {r['requests']:,} | {r['cache_miss']:,} | "
                     f"{r['miss_ratio'] * 100:.2f}% | {r['key_service_lookups']:,} | {per_key} | "
                     f"{rss_key} | "
                     f"{errs} |")
    lines += ["", "Δ per key: growth over the warm pass divided by N. Allocated is Envoy's admin "
              "`/memory` `allocated` (host heap: the shared-data cache); RSS is the Envoy "
              "process's resident memory, which also counts the Wasm VMs' linear memory (each "
              "worker's decoded copy of the records it used). Once N exceeds the capacity the "
              "slots are full, so the figure per key falls: divide by the capacity instead.", ""]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wasm", required=True)
    p.add_argument("--keygate-bin", required=True)
    p.add_argument("--envoy", required=True)
    p.add_argument("--keys", default="10000 100000", help="N values, e.g. \"10000 100000\"")
    p.add_argument("--capacity", type=int, default=None,
                   help="cache.max_entries (default: the filter's default)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--out", default=str(run.BENCH / "results"))
    p.add_argument("--label", default="")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    counts = parse_counts(args.keys)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-cache-"))
    log(f"work dir {work}")
    started = time.time()
    curve = run_curve(args.keygate_bin, args.envoy, args.wasm, counts, args.capacity,
                      args.workers, args.connections, work)
    curve["elapsed_s"] = round(time.time() - started, 1)
    md = [f"# Keygate record-cache curve {stamp}", ""]
    if args.label:
        md += [f"> {args.label}", ""]
    md += render(curve)
    text = "\n".join(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cache-{stamp}.md").write_text(text)
    (out / f"cache-{stamp}.json").write_text(json.dumps(curve, indent=2) + "\n")
    print(text)
    log(f"wrote {out / ('cache-' + stamp + '.md')} and cache-{stamp}.json")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def parse_counts(text: str) -> list[int]:
    counts = [int(x.replace("_", "")) for x in text.replace(",", " ").split()]
    if not counts or any(c < 1 for c in counts):
        raise Abort(f"--keys {text!r}: give one or more positive key counts")
    return counts


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
        run.stop_all()
