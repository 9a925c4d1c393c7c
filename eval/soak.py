"""Load and soak: a bounded run at a fixed rate with a realistic mix, watching for leaks.

    oracle-council bench soak [--seconds 60] [--rps 50] [--json FILE]

Starts the loopback upstream (eval/loopback_upstream.py) and the gateway (``oracle-council
serve``, access log at INFO into a file) as separate processes, then sends an open-loop request
stream at ``--rps`` for ``--seconds``. Every request carries its own ``x-request-id``. The mix
(seeded, so two runs send the same stream):

    45%  non-stream chat         euclid-asm -> echo
    25%  stream chat             euclid-asm -> echo
    10%  slow stream, abandoned  seph-tilesmith -> drip (the client hangs up after the first chunk)
    10%  upstream 500, served by the fallback   agahnim-patcher -> status-500, falls back to master-sword
    10%  client error            an unknown model (404)

Once a second it samples the gateway process: resident memory, open file descriptors, and TCP
connections to the upstream. At the end it checks, and exits 1 when one fails:

- latency holds: p99 of the last third of the run is within ``--p99-drift`` (x) of the first
  third's (plus 2 ms of slack for a 2-core machine's scheduling noise);
- memory does not grow: resident memory at the end minus after the first 20% is under
  ``--max-rss-growth-mb``;
- nothing leaks: after the run and a short idle, open descriptors and upstream connections are
  back to at most the level before the run plus a few keep-alive sockets (8); an abandoned stream
  whose upstream connection stayed open would leave dozens;
- every request is accounted for: each request id the client sent appears in the gateway's
  access log, with the status class the client saw, and in its SQLite request log (read after
  the gateway's clean shutdown, which writes what is still queued).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from eval.bench_gateway import _free_port, _proc_usage, _wait_http, pct

MIX = (("chat", 0.45), ("stream", 0.25), ("abandon", 0.10), ("fallback", 0.10), ("unknown", 0.10))
MODELS = {"chat": "euclid-asm", "stream": "euclid-asm", "abandon": "seph-tilesmith",
          "fallback": "agahnim-patcher", "unknown": "no-such-model"}
IDLE_SLACK = 8  # keep-alive sockets the gateway may hold to the upstream (and their descriptors) when idle
EXPECTED = {"chat": 200, "stream": 200, "abandon": 200, "fallback": 200, "unknown": 404}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60)")
    p.add_argument("--rps", type=float, default=50.0, help="requests per second, open loop (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--p99-drift", type=float, default=2.0,
                   help="allowed ratio of the last third's p99 to the first third's (default 2)")
    p.add_argument("--max-rss-growth-mb", type=float, default=25.0,
                   help="allowed growth of resident memory after warm-up (default 25 MB)")
    p.add_argument("--json", dest="json_out", help="write the results to this JSON file")


@dataclass
class Outcome:
    kind: str
    rid: str
    scheduled: float
    status: int = 0
    latency: float = float("nan")
    error: str = ""


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    upstream_conns: list[int] = field(default_factory=list)


# -- process inspection -------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections owned by ``pid`` whose remote port is ``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote_port = int(parts[2].rsplit(":", 1)[1], 16)
            if remote_port == port and parts[3] == "01" and parts[9] in inodes:  # 01 = ESTABLISHED
                n += 1
    return n


# -- the client ---------------------------------------------------------------------------------

def _request(port: int, model: str, stream: bool, rid: str) -> bytes:
    body = orjson.dumps({"model": model, "stream": stream, "max_tokens": 16,
                         "messages": [{"role": "user", "content": "STA $7EF3C5 : which flag is that?"}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
            f"x-request-id: {rid}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


async def _one(port: int, o: Outcome) -> None:
    """One request on its own connection (connection: close), so an abandoned stream really
    hangs up; time from the scheduled start to the last byte (or the first chunk, when abandoning)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        o.error = f"connect: {exc}"
        return
    try:
        writer.write(_request(port, MODELS[o.kind], o.kind in ("stream", "abandon"), o.rid))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        o.status = int(head[9:12])
        if o.kind == "abandon" and o.status == 200:
            await asyncio.wait_for(reader.readuntil(b"\n\n"), 30)  # the first SSE frame, then hang up
        else:
            await asyncio.wait_for(reader.read(), 30)  # to EOF (connection: close)
        o.latency = time.perf_counter() - o.scheduled
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        o.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()


async def _drive(port: int, pid: int, up_port: int, rps: float, seconds: float, seed: int,
                 samples: Samples) -> list[Outcome]:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    outcomes: list[Outcome] = []
    tasks: list[asyncio.Task] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.t.append(time.perf_counter() - t0)
            samples.rss_mb.append(rss_mb(pid))
            samples.fds.append(open_fds(pid))
            samples.upstream_conns.append(connections_to(pid, up_port))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    sampling = asyncio.create_task(sampler())
    start = time.perf_counter()
    for i in range(int(rps * seconds)):
        at = start + i / rps
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        o = Outcome(rng.choices(kinds, weights)[0], f"soak-{seed}-{i:06d}", at)
        outcomes.append(o)
        tasks.append(asyncio.create_task(_one(port, o)))
    await asyncio.gather(*tasks)
    stop.set()
    await sampling
    return outcomes


# -- the run ------------------------------------------------------------------------------------

_CONFIG = """
[server]
log_level = "info"

[state]
db = "{db}"

[router]
policy = "direct"

[[backends]]
name = "upstream"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"
retries = 0
timeouts = {{ connect = 1, read = 10, total = 60 }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "upstream"
upstream_model = "echo"

[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "upstream"
upstream_model = "drip-0.05"

[[models]]
name = "agahnim-patcher"
oracle = "oracle-din"
backend = "upstream"
upstream_model = "status-500"

[[models]]
name = "master-sword"
oracle = "system"
backend = "upstream"
upstream_model = "echo"
"""

_ACCESS = re.compile(r"(soak-\d+-\d+) api=\S+ model=\S+ backend=\S+ status=(\S+)")


def run(args: argparse.Namespace) -> int:
    up_port, gw_port = _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="oc-soak-"))
    cfg = tmp / "soak.toml"
    cfg.write_text(_CONFIG.format(port=up_port, db=tmp / "state.db"))
    log_path = tmp / "gateway.log"
    up = subprocess.Popen([sys.executable, "-m", "eval.loopback_upstream", "--port", str(up_port)],
                          stdout=subprocess.DEVNULL)
    with log_path.open("w") as log_file:
        gw = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                               "--port", str(gw_port), "--log-level", "info"], stdout=log_file,
                              stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{up_port}/healthz", up)
        _wait_http(f"http://127.0.0.1:{gw_port}/healthz", gw)
        before = {"fds": open_fds(gw.pid), "upstream_conns": connections_to(gw.pid, up_port)}
        samples = Samples()
        t0 = time.perf_counter()
        outcomes = asyncio.run(_drive(gw_port, gw.pid, up_port, args.rps, args.seconds, args.seed, samples))
        wall = time.perf_counter() - t0
        time.sleep(2.0)  # let abandoned streams and keep-alive sockets settle
        after = {"fds": open_fds(gw.pid), "upstream_conns": connections_to(gw.pid, up_port),
                 "rss_mb": rss_mb(gw.pid)}
        cpu, peak = _proc_usage(gw.pid)
    finally:
        for p in (gw, up):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    logged = {m.group(1): m.group(2) for m in _ACCESS.finditer(log_path.read_text(errors="replace"))}
    results = evaluate(args, outcomes, samples, before, after, logged)
    # the SQLite request log, written by a background thread and flushed at shutdown: every row there
    stored = _stored_ids(tmp / "state.db")
    lost = [o.rid for o in outcomes if o.rid not in stored]
    results["checks"]["every_request_in_state_db"] = not lost
    results["ok"] = all(results["checks"].values())
    results |= {"state_db_rows": len(stored), "missing_from_state_db": lost[:10]}
    results |= {"wall_seconds": wall, "gateway_cpu_seconds": cpu, "gateway_peak_rss_mb": peak / 2**20,
                "log": str(log_path)}
    _print(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json_out}")
    return 0 if results["ok"] else 1


def _stored_ids(path: Path) -> set[str]:
    import sqlite3

    if not path.exists():
        return set()
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT request_id FROM requests WHERE request_id LIKE 'soak-%'")}


def evaluate(args: argparse.Namespace, outcomes: list[Outcome], samples: Samples, before: dict, after: dict,
             logged: dict[str, str]) -> dict:
    by_kind: dict[str, dict] = {}
    for kind, _ in MIX:
        group = [o for o in outcomes if o.kind == kind]
        lat = [o.latency for o in group if o.status]
        by_kind[kind] = {"n": len(group), "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
                         "unexpected": sum(o.status != EXPECTED[kind] for o in group)}
    timed = [o for o in outcomes if o.kind in ("chat", "stream", "fallback") and o.status == 200]
    third = len(timed) // 3
    first = [o.latency for o in timed[:third]]
    last = [o.latency for o in timed[-third:]] if third else []
    p99_first, p99_last = pct(first, 99) * 1000, pct(last, 99) * 1000
    warm = max(1, len(samples.rss_mb) // 5)
    rss_growth = (samples.rss_mb[-1] - samples.rss_mb[warm]) if len(samples.rss_mb) > warm else 0.0
    missing = [o.rid for o in outcomes if o.rid not in logged]
    # the log's status matches what the client saw; an abandoned stream is logged as the client's
    # disconnect (or "ok" when the hang-up raced the end of the stream)
    mismatched = [o.rid for o in outcomes if o.rid in logged and o.status and not (
        logged[o.rid] in ("client_disconnected", "ok") if o.kind == "abandon"
        else (logged[o.rid] == "ok") == (o.status == 200))]
    pool = max(samples.upstream_conns or [0])
    checks = {
        "no_client_errors": [o.error for o in outcomes if o.error][:5] == [],
        "statuses_as_expected": sum(k["unexpected"] for k in by_kind.values()) == 0,
        "p99_holds": p99_last <= p99_first * args.p99_drift + 2.0,
        "memory_flat": rss_growth <= args.max_rss_growth_mb,
        # idle after the run: only keep-alive sockets may remain (a leaked abandoned stream would
        # hold one upstream connection per hang-up: dozens at this rate)
        "fds_back": after["fds"] <= before["fds"] + IDLE_SLACK,
        "upstream_conns_bounded": after["upstream_conns"] <= before["upstream_conns"] + IDLE_SLACK,
        "every_request_logged": not missing and not mismatched,
    }
    return {
        "ok": all(checks.values()), "checks": checks, "requests": len(outcomes), "rps": args.rps,
        "seconds": args.seconds, "by_kind": by_kind,
        "p99_first_third_ms": p99_first, "p99_last_third_ms": p99_last,
        "rss_mb": {"after_warmup": samples.rss_mb[warm] if len(samples.rss_mb) > warm else None,
                   "end": samples.rss_mb[-1] if samples.rss_mb else None, "growth": rss_growth},
        "fds": {"before": before["fds"], "max": max(samples.fds or [0]), "after": after["fds"]},
        "upstream_conns": {"before": before["upstream_conns"], "max": pool, "after": after["upstream_conns"]},
        "missing_from_log": missing[:10], "status_mismatch": mismatched[:10], "n_missing": len(missing),
        "client_errors": [o.error for o in outcomes if o.error][:5],
        "mean_rss_mb": statistics.fmean(samples.rss_mb) if samples.rss_mb else None,
    }


def _print(r: dict) -> None:
    print(f"\nsoak: {r['requests']} requests at {r['rps']:g} req/s over {r['seconds']:g} s "
          f"(wall {r['wall_seconds']:.1f} s)")
    print(f"{'kind':<10}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'unexpected':>12}")
    for kind, k in r["by_kind"].items():
        print(f"{kind:<10}{k['n']:>6}{k['p50_ms']:>10.2f}{k['p99_ms']:>10.2f}{k['unexpected']:>12}")
    print(f"p99 first third {r['p99_first_third_ms']:.2f} ms, last third {r['p99_last_third_ms']:.2f} ms")
    m = r["rss_mb"]
    print(f"RSS after warm-up {m['after_warmup']:.1f} MB, at the end {m['end']:.1f} MB (growth {m['growth']:+.1f} MB); "
          f"gateway CPU {r['gateway_cpu_seconds']:.1f} s")
    print(f"open fds before {r['fds']['before']}, peak {r['fds']['max']}, after {r['fds']['after']}; "
          f"upstream connections before {r['upstream_conns']['before']}, peak {r['upstream_conns']['max']}, "
          f"after {r['upstream_conns']['after']}")
    print(f"requests missing from the access log: {r['n_missing']}; rows in the SQLite request log: "
          f"{r.get('state_db_rows', 0)} of {r['requests']}")
    for name, ok in r["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
