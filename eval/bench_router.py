"""``oracle-council bench router [--config FILE] [--iterations N] [--json FILE]``: decision latency.

Measured on the embedding classifier the config selects (the embedded default: MiniLM, one torch
thread), after a warm-up, through the same ``Cascade.classify`` the gateway awaits (worker-thread
hop included):

- uncached: one prompt at a time, the cache off, prompts from router/data/train.jsonl (real
  lengths; the content does not change the cost), p50/p95;
- cached: the same prompt again with the cache on, p50/p95;
- batched: ``score()`` over 8 and 32 prompts at once, per prompt;
- growth with prompt length: one sentence repeated to about 16-256 tokens;
- growth with the number of labels: the label head re-fitted on 13 to 208 synthetic labels over
  the real features (only the heads depend on it; the encoder does not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

GOAL_UNCACHED_MS = 15.0
GOAL_CACHED_MS = 0.1
SENTENCE = "Write a JSL hook at $02A1F3 that checks the flag in $7EF3C5 before the tilemap upload. "


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": round(statistics.median(s) * 1000, 4), "p95": round(s[max(0, int(len(s) * 0.95) - 1)] * 1000, 4)}


def _time(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.routing import cascade_options
    from router.cascade import Cascade
    from router.train import default_data_path, load_rows

    options = replace(cascade_options(load_config(args.config)), policy="embedding-only", cache_size=0)
    cascade = Cascade(options)
    cascade.load()
    if cascade.embedding is None:
        print(f"oracle-council bench router: {cascade.embedding_error}")
        return 1
    clf: Any = cascade.embedding
    prompts = [r["prompt"] for r in load_rows(default_data_path())]
    n = max(10, args.iterations)
    results: dict[str, Any] = {"classifier": str(getattr(clf, "folder", "")), "iterations": n}

    async def measure() -> None:
        for p in prompts[:20]:  # warm-up
            await cascade.classify(p)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await cascade.classify(prompts[i % len(prompts)])
            samples.append(time.perf_counter() - start)
        results["uncached"] = _stats(samples)
        cached = Cascade(replace(options, cache_size=4096), embedding=clf)
        await cached.classify(prompts[0])
        samples = []
        for _ in range(n * 10):
            start = time.perf_counter()
            await cached.classify(prompts[0])
            samples.append(time.perf_counter() - start)
        results["cached"] = _stats(samples)

    asyncio.run(measure())
    results["median_prompt_chars"] = statistics.median(len(p) for p in prompts[:n])
    results["batched_per_prompt_ms"] = {
        str(b): round(statistics.median(_time(lambda b=b: clf.score(prompts[:b]), max(3, n // 20))) * 1000 / b, 3)
        for b in (8, 32)}
    results["by_length"] = {}
    for repeats in (1, 2, 4, 8, 16):
        text = SENTENCE * repeats
        tokens = len(text.split()) * 1.6  # rough word-piece count
        results["by_length"][f"~{int(tokens)} tokens"] = _stats(_time(lambda t=text: clf.decide(clf.score([t])[0]),
                                                                      max(10, n // 5)))
    results["heads_by_labels"] = _heads_by_labels(clf, prompts, max(10, n // 5))
    cascade.close()

    print(render(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


def _heads_by_labels(clf: Any, prompts: list[str], n: int) -> dict[str, dict[str, float]]:
    """Time of the label head alone when it has k labels (synthetic labels, real feature width)."""
    from sklearn.linear_model import LogisticRegression

    texts = prompts[:208]
    X = clf.heads.features(texts, clf.encoder(texts))
    one = X[:1]
    out = {}
    for k in (13, 26, 52, 104, 208):
        y = [i % k for i in range(X.shape[0])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # synthetic labels: "many classes for few samples" is the point here
            head = LogisticRegression(C=1.0, max_iter=50).fit(X, y)
        out[str(k)] = _stats(_time(lambda h=head: h.predict_proba(one), n))
    return out


def render(r: dict[str, Any]) -> str:
    u, c = r["uncached"], r["cached"]
    lines = [f"router decision latency ({r['classifier']}; {r['iterations']} decisions; median prompt "
             f"{r['median_prompt_chars']:.0f} chars)",
             f"  uncached, one prompt   p50 {u['p50']:8.3f} ms  p95 {u['p95']:8.3f} ms   goal p50 <= {GOAL_UNCACHED_MS} ms: "
             f"{'met' if u['p50'] <= GOAL_UNCACHED_MS else 'NOT met'}",
             f"  cached                 p50 {c['p50']:8.4f} ms  p95 {c['p95']:8.4f} ms   goal p50 <= {GOAL_CACHED_MS} ms: "
             f"{'met' if c['p50'] <= GOAL_CACHED_MS else 'NOT met'}",
             "  batched, per prompt    " + ", ".join(f"batch {b}: {ms} ms" for b, ms in r["batched_per_prompt_ms"].items()),
             "  by prompt length       " + ", ".join(f"{k}: {v['p50']:.2f} ms" for k, v in r["by_length"].items()),
             "  label head by labels   " + ", ".join(f"{k}: {v['p50']:.3f} ms" for k, v in r["heads_by_labels"].items())]
    return "\n".join(lines)
