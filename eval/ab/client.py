"""Send every (sample, arm) to the gateway exactly as a client would, with bounded concurrency,
retries and the response cache.

``POST {gateway}/v1/chat/completions``, non-streaming, ``temperature`` 0, ``model`` = the arm.
Connection errors, 429 and 5xx are retried with jittered exponential backoff (tenacity); after
the last try the row records the status and error instead. Each row: text, time to first byte
and total latency, usage, HTTP status, error and the gateway's ``x-oracle-*`` / ``x-request-id``
headers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence

from eval.ab.cache import ResponseCache, request_hash
from eval.ab.data import Sample

HEADER_PREFIXES = ("x-oracle-", "x-request-id")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class CacheMiss(LookupError):
    """--rescore found a (sample, arm) with no cached answer."""


def chat_body(messages: Sequence[dict], model: str, max_tokens: int | None) -> dict:
    body = {"model": model, "messages": [dict(m) for m in messages], "temperature": 0, "stream": False}
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body


async def post_chat(client, url: str, body: dict, headers: dict, *, attempts: int = 4) -> dict:
    """One request with retries; returns a row (never raises for HTTP or connection failures)."""
    import httpx
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    tries = 0
    try:
        async for attempt in AsyncRetrying(stop=stop_after_attempt(attempts), reraise=True,
                                           wait=wait_exponential_jitter(initial=0.5, max=8),
                                           retry=retry_if_exception_type(_Retryable)):
            with attempt:
                tries += 1
                start = time.perf_counter()
                try:
                    async with client.stream("POST", url, json=body, headers=headers) as resp:
                        chunks, first = [], None
                        async for chunk in resp.aiter_bytes():
                            if first is None:
                                first = time.perf_counter() - start
                            chunks.append(chunk)
                        total = time.perf_counter() - start
                except httpx.TransportError as exc:
                    raise _Retryable(None, f"{type(exc).__name__}: {exc}") from None
                raw = b"".join(chunks)
                if resp.status_code in RETRY_STATUSES:
                    raise _Retryable(resp.status_code, raw.decode("utf-8", "replace")[:500])
                return _row(resp, raw, first if first is not None else total, total, tries)
    except _Retryable as exc:
        return {"status": exc.status, "error": str(exc) or "no answer", "text": None, "ttfb_s": None,
                "latency_s": None, "usage": None, "headers": {}, "attempts": tries}
    raise AssertionError("unreachable")


def _row(resp, raw: bytes, ttfb: float, total: float, tries: int) -> dict:
    headers = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith(HEADER_PREFIXES)}
    row = {"status": resp.status_code, "error": None, "text": None, "ttfb_s": ttfb, "latency_s": total,
           "usage": None, "headers": headers, "attempts": tries}
    try:
        payload = json.loads(raw)
    except ValueError:
        row["error"] = f"not JSON: {raw[:200]!r}"
        return row
    if resp.status_code != 200:
        err = payload.get("error") if isinstance(payload, dict) else None
        row["error"] = (err.get("message") if isinstance(err, dict) else None) or raw.decode("utf-8", "replace")[:500]
        return row
    try:
        row["text"] = payload["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        row["error"] = "the response has no choices[0].message"
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if isinstance(usage, dict):
        row["usage"] = {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return row


async def collect(samples: Sequence[Sample], arms: Sequence[str], *, gateway: str, cache: ResponseCache,
                  api_key: str | None = None, concurrency: int = 4, max_tokens: int | None = None,
                  timeout: float = 600.0, rescore: bool = False, progress: bool = True,
                  on_response: Callable[[dict], None] | None = None) -> dict[tuple[str, str], dict]:
    """Answers for every (sample_id, arm); cached answers are reused without a request.

    ``rescore=True`` sends nothing and raises ``CacheMiss`` for any answer not in the cache.
    ``on_response`` is called after each new (not cached) answer, e.g. to stop a run halfway.
    """
    import httpx
    from tqdm import tqdm

    url = gateway.rstrip("/") + "/v1/chat/completions"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    jobs, results = [], {}
    for s in samples:
        for arm in arms:
            body = chat_body(s.messages, arm, max_tokens)
            rh = request_hash(body)
            hit = cache.get(arm, s.sample_id, rh)
            if hit is not None:
                results[(s.sample_id, arm)] = {**hit, "cached": True}
            else:
                jobs.append((s, arm, body, rh))
    if rescore and jobs:
        missing = ", ".join(f"{s.sample_id}/{arm}" for s, arm, _, _ in jobs[:5])
        raise CacheMiss(f"--rescore: {len(jobs)} answers are not cached (e.g. {missing}); run without --rescore")
    if not jobs:
        return results
    sem = asyncio.Semaphore(max(1, concurrency))
    bar = tqdm(total=len(jobs), desc="requests", unit="req", disable=not progress)
    limits = httpx.Limits(max_connections=max(1, concurrency))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits) as client:
        async def one(s: Sample, arm: str, body: dict, rh: str) -> None:
            async with sem:
                row = await post_chat(client, url, body, headers)
            row = {"arm": arm, "sample_id": s.sample_id, "request_hash": rh, **row}
            if row["status"] == 200 and row["error"] is None:
                cache.put(arm, s.sample_id, rh, row)
            results[(s.sample_id, arm)] = {**row, "cached": False}
            bar.update(1)
            if on_response is not None:
                on_response(row)

        try:
            await asyncio.gather(*(one(*j) for j in jobs))
        finally:
            bar.close()
    return results
