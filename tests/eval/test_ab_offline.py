"""`oracle-council eval ab` end to end: the real gateway in-process, real HTTP, real reports.

The fast tests put the loopback upstream (eval/loopback_upstream.py, which answers instantly and
counts requests) behind the gateway; the slow one serves the embedded default's tiny models
with the embedding router, as `oracle-council serve` does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from importlib import resources
from pathlib import Path

import httpx
import pytest

from eval.ab.cache import ResponseCache
from eval.ab.client import collect
from eval.ab.data import load_samples
from gateway.cli import main
from tests.serving import serve

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "training" / "samples" / "eval-heldout.jsonl"


def loopback_config(base_url: str) -> str:
    return f"""
[router]
policy = "direct"
default_model = "master-sword"

[state]
enabled = false

[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = 0

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"
price_per_mtok_in = 1.0
price_per_mtok_out = 2.0

[[models]]
name = "master-sword"
oracle = "system"
backend = "up"
upstream_model = "parrot"
price_per_mtok_in = 3.0
price_per_mtok_out = 4.0
"""


def check_report(out: Path, arms: list[str], n: int) -> dict:
    """The three reports exist, show the same numbers, embed real PNGs; every sample has both arms."""
    res = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert res["arms"] == arms and res["n_samples"] == n
    headline = md.split("## Headline", 1)[1].split("\n## ", 1)[0]
    md_rows = {r.split("|")[1].strip(): r for r in headline.splitlines() if r.startswith("| ")}
    for name, g in [*res["domains"].items(), ("**overall**", res["overall"])]:
        row = md_rows[name]
        for arm in arms:
            mean = f"{g['arms'][arm]['score']['mean']:.3f}"
            assert mean in row, (name, mean, row)
        c = g["comparison"]
        wtl = f"{c['wins']}/{c['ties']}/{c['losses']}"
        assert wtl in row
        cells = [re.escape(x.strip()) for x in row.strip("| \n").split(" | ")]
        cells[0] = re.escape(name.strip("*"))
        assert re.search(r"<tr><td>(<b>)?" + r"(</b>)?</td><td>".join(cells) + "</td></tr>", page), row
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    for name in ("plot-scores.png", "plot-wins.png", "plot-latency.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG") and f"]({name})" in md
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == n and all(set(r["arms"]) == set(arms) for r in rows)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    return res


def test_interrupted_run_resumes_without_resending(upstream, tmp_path: Path, capsys) -> None:
    samples = load_samples(HELDOUT)
    arms = ["euclid-asm", "master-sword"]
    total = len(samples) * len(arms)
    with serve(loopback_config(upstream.base_url)) as gw:
        # 1. a run cancelled (as by Ctrl-C) after 7 answers
        cache = ResponseCache(tmp_path / "cache.sqlite")

        async def interrupted() -> None:
            task = None
            seen = 0

            def stop(_row: dict) -> None:
                nonlocal seen
                seen += 1
                if seen == 7:
                    task.cancel()

            task = asyncio.ensure_future(collect(samples, arms, gateway=gw.url, cache=cache, concurrency=2,
                                                 progress=False, on_response=stop))
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        cached = cache.count()
        cache.close()
        assert 7 <= cached < total
        sent_before = sum(upstream.stats.requests.values())

        # 2. the CLI finishes the run: only what is not cached goes out
        argv = ["eval", "ab", "--gateway", gw.url, "--data", str(HELDOUT), "--output", str(tmp_path),
                "--arms", ",".join(arms), "--concurrency", "3", "--quiet"]
        assert main(argv) == 0
        assert sum(upstream.stats.requests.values()) - sent_before == total - cached
        res = check_report(tmp_path, arms, len(samples))
        assert res["meta"]["requests_sent"] == total - cached
        assert res["meta"]["answers_from_cache"] == cached

        # 3. re-running (and --rescore) re-scores from the cache: no request at all
        before = sum(upstream.stats.requests.values())
        assert main(argv) == 0
        assert main([*argv, "--rescore"]) == 0
        assert sum(upstream.stats.requests.values()) == before
        res = check_report(tmp_path, arms, len(samples))
        assert res["meta"]["requests_sent"] == 0

        # echo/parrot answers: the headers name the served model, and prices give a cost
        row = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
        assert row["arms"]["euclid-asm"]["headers"]["x-oracle-model"] == "euclid-asm"
        assert row["arms"]["euclid-asm"]["headers"]["x-request-id"]
        # the loopback upstream reports no usage, so no cost can be computed: said, not invented
        assert res["performance"]["euclid-asm"]["latency_s"]["p50"] > 0


def test_cli_errors_are_clear(upstream, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y", "domain": "asm"}\n[1]\n')
    assert main(["eval", "ab", "--gateway", "http://127.0.0.1:9", "--data", str(bad), "--output", str(tmp_path)]) == 2
    assert "bad.jsonl:2: expected a JSON object" in capsys.readouterr().err
    assert main(["eval", "ab", "--gateway", "http://127.0.0.1:9", "--data", str(HELDOUT),
                 "--output", str(tmp_path), "--arms", "a"]) == 2
    assert main(["eval", "ab", "--gateway", "http://127.0.0.1:9", "--data", str(HELDOUT),
                 "--output", str(tmp_path / "o")]) == 2
    assert "cannot reach the gateway" in capsys.readouterr().err
    with serve(loopback_config(upstream.base_url)) as gw:
        assert main(["eval", "ab", "--gateway", gw.url, "--data", str(HELDOUT), "--output", str(tmp_path / "o"),
                     "--arms", "euclid-asm,nope"]) == 2
        assert "does not list nope" in capsys.readouterr().err
        assert main(["eval", "ab", "--gateway", gw.url, "--data", str(HELDOUT), "--output", str(tmp_path / "o"),
                     "--arms", "euclid-asm,master-sword", "--rescore"]) == 2
        assert "not cached" in capsys.readouterr().err


def _requests_total(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("oracle_requests_total{") and 'api="chat"' in line)


@pytest.mark.slow
def test_moe_against_master_sword_on_the_embedded_default(tmp_path: Path) -> None:
    """The shipped held-out samples, both arms, the real demo models and the embedding router."""
    from training.demo import ensure_demo

    ensure_demo(progress=False)
    toml = resources.files("gateway").joinpath("data/default.toml").read_text()
    arms = ["oracle-council", "master-sword"]
    with serve(toml, startup_timeout=600) as gw:
        argv = ["eval", "ab", "--gateway", gw.url, "--data", str(HELDOUT), "--output", str(tmp_path),
                "--max-tokens", "8", "--quiet"]
        assert main(argv) == 0
        res = check_report(tmp_path, arms, 12)
        assert res["meta"]["requests_sent"] == 24
        routing = res["routing"]["oracle-council"]
        assert routing["overall"]["n"] == 12 and sum(sum(c.values()) for c in routing["confusion"].values()) == 12
        # the router sends the gfx prompts to seph-tilesmith (it does on this data; see docs/routing)
        assert routing["per_domain"]["gfx"]["share"] >= 2 / 3
        before = _requests_total(gw.url)
        assert main(argv) == 0
        assert _requests_total(gw.url) == before  # re-run: every answer from the cache
