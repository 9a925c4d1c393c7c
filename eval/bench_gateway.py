"""Added latency of the gateway versus calling the same upstream directly, in one run.

    oracle-council bench gateway [--requests 2000] [--rps 100] [--seconds 10] [--concurrency 32]
                                 [--litellm .venv-litellm/bin/litellm]

Starts the loopback upstream (eval/loopback_upstream.py) and the gateway as separate processes
on loopback, with a config whose one model points at the upstream, then sends the same
request stream to both targets:

1. sequential: one keep-alive connection, requests alternating direct / gateway, non-stream
   and stream (time to the last byte);
2. fixed rate: an open-loop schedule at ``--rps`` for ``--seconds`` per target;
3. saturation: ``--concurrency`` connections in a closed loop for ``--seconds`` per target.

When the LiteLLM proxy is installed (``eval/install-litellm-proxy.sh``, its own venv) it is a
third target: started with a one-model config pointing at the same upstream, it gets every phase
exactly as the gateway does, and the table adds the ratios gateway/litellm.

"Added" is a target's percentile minus the direct percentile. The client is a bare asyncio
HTTP/1.1 client so that its own cost stays small and equal on all sides. CPU seconds and peak
RSS of the gateway (and LiteLLM) process come from /proc. Results print as a table; ``--json FILE``
keeps them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=2000, help="sequential requests per target and mode")
    p.add_argument("--rps", type=float, default=100.0, help="rate of the fixed-rate phase")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the fixed-rate and saturation phases")
    p.add_argument("--concurrency", type=int, default=32, help="connections in the saturation phase")
    p.add_argument("--json", dest="json_out", help="write the results to this JSON file")
    p.add_argument("--litellm", help="the LiteLLM proxy's executable, a third target "
                   "(default: .venv-litellm/bin/litellm when it exists)")
    p.add_argument("--no-litellm", action="store_true", help="measure direct and gateway only")
    p.add_argument("--no-request-log", action="store_true",
                   help="run the gateway with its SQLite request log off ([state] enabled = false), to see its cost")


# -- a lean HTTP/1.1 client ---------------------------------------------------------------------

class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "Conn":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, raw: bytes) -> int:
        """Send a prepared request; read the whole response; return the status."""
        assert self.reader and self.writer
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            i = lower.index(b"content-length:") + 15
            length = int(lower[i:lower.index(b"\r\n", i)])
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def request_bytes(host: str, port: int, path: str, model: str, stream: bool) -> bytes:
    body = orjson.dumps({"model": model, "stream": stream, "max_tokens": 16,
                         "messages": [{"role": "user", "content": "LDA.l $7EF3C5 : what does this load?"}]})
    return (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


# -- phases -------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


async def sequential(targets: dict[str, tuple[int, bytes]], n: int) -> dict[str, list[float]]:
    conns = {name: await Conn("127.0.0.1", port).open() for name, (port, _) in targets.items()}
    lat: dict[str, list[float]] = {name: [] for name in targets}
    for name, (_, raw) in targets.items():  # warm up both paths
        for _ in range(50):
            await conns[name].post(raw)
    for _ in range(n):
        for name, (_, raw) in targets.items():
            t0 = time.perf_counter()
            status = await conns[name].post(raw)
            lat[name].append(time.perf_counter() - t0)
            assert status == 200, f"{name} answered {status}"
    for c in conns.values():
        c.close()
    return lat


async def fixed_rate(port: int, raw: bytes, rps: float, seconds: float) -> list[float]:
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await Conn("127.0.0.1", port).open())
    lat: list[float] = []

    async def one(scheduled: float) -> None:
        conn = await pool.get()
        try:
            await conn.post(raw)
            lat.append(time.perf_counter() - scheduled)  # from the scheduled time: no coordinated omission
        finally:
            pool.put_nowait(conn)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rps * seconds)):
        at = start + i / rps
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    return lat


async def saturation(port: int, raw: bytes, concurrency: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        conn = await Conn("127.0.0.1", port).open()
        while time.perf_counter() < stop:
            await conn.post(raw)
            done += 1
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0)


# -- processes ----------------------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def _proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return cpu, peak


def run(args: argparse.Namespace) -> int:
    up_port, gw_port, ll_port = _free_port(), _free_port(), _free_port()
    litellm = args.litellm or (".venv-litellm/bin/litellm" if Path(".venv-litellm/bin/litellm").exists() else None)
    if getattr(args, "no_litellm", False):
        litellm = None
    elif litellm is None:
        print("LiteLLM proxy not installed (eval/install-litellm-proxy.sh): measuring direct and gateway only")
    elif not Path(litellm).exists():
        raise SystemExit(f"--litellm {litellm}: no such file")
    tmp = Path(tempfile.mkdtemp(prefix="oc-bench-"))
    cfg = tmp / "bench.toml"
    state = ("enabled = false" if getattr(args, "no_request_log", False)
             else f'db = "{tmp / "state.db"}"')  # a fresh file, not the user's home one
    cfg.write_text(f"""
[server]
log_level = "warning"

[state]
{state}

[[backends]]
name = "upstream"
kind = "openai"
base_url = "http://127.0.0.1:{up_port}/v1"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "upstream"
upstream_model = "echo"
""")
    ll_cfg = tmp / "litellm.yaml"
    ll_cfg.write_text(json.dumps({"model_list": [{"model_name": "euclid-asm", "litellm_params": {
        "model": "openai/echo", "api_base": f"http://127.0.0.1:{up_port}/v1", "api_key": "none"}}]}))
    procs = [subprocess.Popen([sys.executable, "-m", "eval.loopback_upstream", "--port", str(up_port)],
                              stdout=subprocess.DEVNULL)]
    procs.append(subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg),
                                   "--port", str(gw_port), "--log-level", "warning"]))
    if litellm:  # as environment.md says; its log goes to a file so that the table stays readable
        env = os.environ | {"LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
                            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        procs.append(subprocess.Popen([litellm, "--config", str(ll_cfg), "--host", "127.0.0.1",
                                       "--port", str(ll_port)], env=env, stdout=(tmp / "litellm.log").open("w"),
                                      stderr=subprocess.STDOUT))
    try:
        _wait_http(f"http://127.0.0.1:{up_port}/healthz", procs[0])
        _wait_http(f"http://127.0.0.1:{gw_port}/healthz", procs[1])
        if litellm:
            _wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", procs[2], timeout=120)
        results = asyncio.run(_measure(args, up_port, {"gateway": (gw_port, procs[1].pid)} | (
            {"litellm": (ll_port, procs[2].pid)} if litellm else {})))
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    _print(results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json_out}")
    return 0


async def _measure(args: argparse.Namespace, up_port: int, proxies: dict[str, tuple[int, int]]) -> dict:
    """``proxies``: name -> (port, pid) of the gateway and, when installed, the LiteLLM proxy."""
    path = "/v1/chat/completions"
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "platform": platform.platform()}, "args": vars(args) | {"func": None}}
    cpu0 = {name: _proc_usage(pid)[0] for name, (_, pid) in proxies.items()}
    for stream in (False, True):
        mode = "stream" if stream else "non_stream"
        targets = {"direct": (up_port, request_bytes("127.0.0.1", up_port, path, "echo", stream))} | {
            name: (port, request_bytes("127.0.0.1", port, path, "euclid-asm", stream))
            for name, (port, _) in proxies.items()}
        lat = await sequential(targets, args.requests)
        res[f"sequential_{mode}"] = _summary(lat)
        rate = {name: await fixed_rate(port, raw, args.rps, args.seconds) for name, (port, raw) in targets.items()}
        res[f"rate_{int(args.rps)}_{mode}"] = _summary(rate)
        sat = {name: await saturation(port, raw, args.concurrency, args.seconds)
               for name, (port, raw) in targets.items()}
        res[f"saturation_{mode}"] = {"rps": sat, "gateway_over_direct": sat["gateway"] / sat["direct"]} | (
            {"gateway_over_litellm": sat["gateway"] / sat["litellm"]} if "litellm" in sat else {})
    for name, (_, pid) in proxies.items():
        cpu1, peak = _proc_usage(pid)
        res[f"{name}_process"] = {"cpu_seconds": cpu1 - cpu0[name], "peak_rss_mb": peak / 2**20}
    return res


def _summary(lat: dict[str, list[float]]) -> dict:
    out: dict = {}
    for name, values in lat.items():
        out[name] = {f"p{q}": pct(values, q) * 1000 for q in (50, 95, 99)} | {
            "mean": statistics.fmean(values) * 1000, "n": len(values)}
    q = ("p50", "p95", "p99")
    out["added_ms"] = {k: out["gateway"][k] - out["direct"][k] for k in q}
    if "litellm" in out:
        out["litellm_added_ms"] = {k: out["litellm"][k] - out["direct"][k] for k in q}
        out["added_gateway_over_litellm"] = {k: out["added_ms"][k] / out["litellm_added_ms"][k] for k in q}
    return out


def _print(res: dict) -> None:
    print(f"\nmachine: {res['machine']['cpus']} CPUs, Python {res['machine']['python']}")
    print(f"{'phase':<28}{'target':<10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    ll = "litellm_process" in res
    rows = (("direct", "direct"), ("gateway", "gateway"), ("added_ms", "added gw")) + (
        (("litellm", "litellm"), ("litellm_added_ms", "added ll"), ("added_gateway_over_litellm", "gw/ll"))
        if ll else ())
    for phase, data in res.items():
        if phase.startswith(("sequential", "rate")):
            for key, label in rows:
                d, f = data[key], ".3g" if label == "gw/ll" else ".3f"
                print(f"{phase:<28}{label:<10}{d['p50']:>9{f}}{d['p95']:>9{f}}{d['p99']:>9{f}}")
    for phase, data in res.items():
        if phase.startswith("saturation"):
            r = data["rps"]
            print(f"{phase:<28}direct {r['direct']:.0f} req/s, gateway {r['gateway']:.0f} req/s "
                  f"(gateway/direct {data['gateway_over_direct']:.2f})" + (
                      f", litellm {r['litellm']:.0f} req/s (gateway/litellm {data['gateway_over_litellm']:.2f})"
                      if ll else ""))
    for name in ("gateway", "litellm") if ll else ("gateway",):
        g = res[f"{name}_process"]
        print(f"{name} process: {g['cpu_seconds']:.1f} CPU s over the run, peak RSS {g['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
