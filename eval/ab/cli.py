"""``oracle-council eval ab``: offline A/B of two arms (default: the routed MoE ``oracle-council``
against the unified ``master-sword``) through the gateway's HTTP API.

Every sample goes to each arm as a plain client request; answers are cached in DIR/cache.sqlite
(an interrupted run resumes, a re-run re-scores without sending anything), scored per domain
(eval/ab/scorers.py), compared (eval/ab/stats.py) and written to DIR as report.md, report.html,
results.json and samples.jsonl. See docs/ab-testing.md.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_ARMS = "oracle-council,master-sword"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--data", required=True,
                        help="test samples, JSONL: a prepared test.jsonl (messages) or instruction/input/output lines")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the report and the answer cache")
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help=f"the two models to compare, comma-separated (default: {DEFAULT_ARMS})")
    parser.add_argument("--api-key", help="bearer key, when the gateway sets api_keys")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default: 4)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens per answer (default: the model's own)")
    parser.add_argument("--limit", type=int, help="only the first N samples")
    parser.add_argument("--judge", metavar="MODEL", help="also ask this registry model to compare each pair (twice)")
    parser.add_argument("--config", metavar="REGISTRY.toml", help="registry file with prices (price_per_mtok_in/out)")
    parser.add_argument("--rescore", action="store_true", help="send nothing: score the cached answers only")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stdout")


def load_prices(path: str) -> dict[str, tuple[float, float]]:
    """model name -> (USD per million input tokens, per million output tokens) from ``[[models]]``."""
    import tomllib

    with open(path, "rb") as fh:
        try:
            doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
    prices = {}
    for m in doc.get("models", []):
        pin = m.get("price_per_mtok_in", m.get("price_per_mtok_input"))
        pout = m.get("price_per_mtok_out", m.get("price_per_mtok_output"))
        if isinstance(m.get("name"), str) and pin is not None and pout is not None:
            prices[m["name"]] = (float(pin), float(pout))
    return prices


def _fail(msg: str) -> int:
    print(f"oracle-council eval ab: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import asyncio
    import datetime as dt
    import time
    from pathlib import Path

    from eval.ab.cache import ResponseCache
    from eval.ab.client import CacheMiss, collect
    from eval.ab.data import DataError, load_samples
    from eval.ab.report import headline_table, summarize, write_report

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if len(arms) != 2 or arms[0] == arms[1]:
        return _fail(f"--arms needs two different models, got {args.arms!r}")
    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be at least 1")
    try:
        samples = load_samples(args.data, limit=args.limit)
    except DataError as exc:
        return _fail(str(exc))
    try:
        prices = load_prices(args.config) if args.config else {}
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    progress = not args.quiet and sys.stderr.isatty()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    cache = ResponseCache(out / "cache.sqlite")
    started = time.perf_counter()
    try:
        if not args.rescore:
            problem = _preflight(args.gateway, arms + ([args.judge] if args.judge else []), args.api_key)
            if problem:
                return _fail(problem)
        try:
            answers = asyncio.run(collect(samples, arms, gateway=args.gateway, cache=cache, api_key=args.api_key,
                                          concurrency=args.concurrency, max_tokens=args.max_tokens,
                                          timeout=args.timeout, rescore=args.rescore, progress=progress))
            judged = {}
            if args.judge:
                from eval.ab.judge import judge_pairs

                judged = asyncio.run(judge_pairs(samples, answers, arms, model=args.judge, gateway=args.gateway,
                                                 cache=cache, api_key=args.api_key, concurrency=args.concurrency,
                                                 rescore=args.rescore, progress=progress))
        except CacheMiss as exc:
            return _fail(str(exc))
        requests_s = time.perf_counter() - started
        rows = score_rows(samples, arms, answers, judged)
        res = summarize(rows, arms, prices=prices, n_boot=args.n_boot, seed=args.seed,
                        router_arms=[a for a in arms if a == "oracle-council"])
        meta = {"data": str(args.data), "gateway": args.gateway, "arms": arms, "judge": args.judge,
                "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "requests_sent": sum(1 for v in answers.values() if not v.get("cached")),
                "answers_from_cache": sum(1 for v in answers.values() if v.get("cached")),
                "wall_s": {"requests": requests_s, "total": time.perf_counter() - started},
                "max_tokens": args.max_tokens, "prices": {k: list(v) for k, v in prices.items()}}
        paths = write_report(out, res, rows, meta)
    finally:
        cache.close()
    if not args.quiet:
        head, table = headline_table(res)
        print(" | ".join(head))
        for r in table:
            print(" | ".join(c.replace("**", "") for c in r))
        errors = sum(g["errors"] for g in res["overall"]["arms"].values())
        print(f"{meta['requests_sent']} requests sent, {meta['answers_from_cache']} answers from the cache"
              + (f", {errors} failed (scored 0; re-run to retry them)" if errors else ""))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _preflight(gateway: str, models: list[str], api_key: str | None) -> str | None:
    """A clear message when the gateway is not there or does not list a model."""
    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(gateway.rstrip("/") + "/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        return f"cannot reach the gateway at {gateway} ({type(exc).__name__}: {exc}); is it running?"
    if resp.status_code == 401:
        return f"the gateway at {gateway} wants an API key: pass --api-key"
    if resp.status_code != 200:
        return f"{gateway}/v1/models answered HTTP {resp.status_code}"
    try:
        listed = {m.get("id") for m in resp.json().get("data", [])}
    except (ValueError, AttributeError):
        return f"{gateway}/v1/models did not answer an OpenAI model list; is this the oracle-council gateway?"
    missing = [m for m in models if m not in listed]
    if missing:
        return f"the gateway does not list {', '.join(missing)} (it has: {', '.join(sorted(x for x in listed if x))})"
    return None


def score_rows(samples, arms, answers: dict, judged: dict) -> list[dict]:
    """One row per sample with both arms' answers, scores and the judge's verdict."""
    from eval.ab import scorers

    pairs, where = [], []
    for s in samples:
        if scorers.kind_for(s.reference) != scorers.PROSE:
            continue
        for arm in arms:
            text = answers[(s.sample_id, arm)].get("text")
            if text is not None:
                pairs.append((text, s.reference))
                where.append((s.sample_id, arm))
    sims = dict(zip(where, scorers.embedding_similarities(pairs)))
    rows = []
    for s in samples:
        row = {"sample_id": s.sample_id, "line": s.line, "domain": s.domain,
               "expected_specialist": s.expected_specialist, "task_type": s.task_type,
               "prompt": s.prompt[:300], "arms": {}, "judge": judged.get(s.sample_id)}
        for arm in arms:
            a = answers[(s.sample_id, arm)]
            text = a.get("text") if not a.get("error") else None
            headers = a.get("headers") or {}
            row["arms"][arm] = {
                "text": a.get("text"), "status": a.get("status"), "error": a.get("error"),
                "latency_s": a.get("latency_s"), "ttfb_s": a.get("ttfb_s"), "usage": a.get("usage"),
                "headers": headers, "served_model": headers.get("x-oracle-model"), "cached": a.get("cached"),
                "scores": scorers.score_answer(s.domain, text, s.reference, embed_sim=sims.get((s.sample_id, arm))),
            }
        rows.append(row)
    return rows
