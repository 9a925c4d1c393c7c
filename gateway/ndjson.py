"""Newline-delimited JSON framing for Ollama-style streams: the only place those lines are written.

Each part becomes one line, ``{json}\\n``. A stream ends with a ``"done": true`` part that
carries ``done_reason`` and Ollama's timing fields, all in nanoseconds and measured by the
gateway (``Timing``): ``total_duration`` from the request's start to the end,
``prompt_eval_duration`` up to the first generated text, ``eval_duration`` from there to the
end (for a whole, non-streamed answer all of it); ``load_duration`` is 0 (models are loaded
before the gateway serves them). When the
upstream fails mid-stream, the last line is ``{"error": "..."}``, which the official ``ollama``
client raises as ``ResponseError``. When the client goes away the parts generator is closed,
which closes the upstream stream and cancels the upstream request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError

log = logging.getLogger("oracle_council.stream")

MEDIA_TYPE = "application/x-ndjson"


def line(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"


class Timing:
    """Nanosecond clock of one request: its start, and when the first text came back."""

    __slots__ = ("start", "first")

    def __init__(self, start: int | None = None) -> None:
        self.start = start if start is not None else time.perf_counter_ns()
        self.first: int | None = None

    def mark_first(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def fields(self, prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
        """Durations are at least 1 ns (clients divide by them). Without a first-text mark (a
        whole answer) the time counts as generation: prefill is the small part of it."""
        end = time.perf_counter_ns()
        first = self.first if self.first is not None else self.start
        return {"total_duration": max(1, end - self.start), "load_duration": 0,
                "prompt_eval_count": prompt_tokens, "prompt_eval_duration": max(1, first - self.start),
                "eval_count": eval_tokens, "eval_duration": max(1, end - first)}


def final_part(part: dict[str, Any], done_reason: str, timing: Timing, usage: dict | None) -> dict[str, Any]:
    """``part`` completed as the last object of an answer: ``done``, ``done_reason``, timings, counts."""
    usage = usage if isinstance(usage, dict) else {}
    part["done"] = True
    part["done_reason"] = done_reason
    part.update(timing.fields(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))))
    return part


def _count(n: Any) -> int:
    return n if isinstance(n, int) and n >= 0 else 0


async def ndjson_lines(parts: AsyncIterator[dict[str, Any]], *, close: Callable[[], Awaitable[None]],
                       on_end: Callable[[str], None]) -> AsyncIterator[bytes]:
    """Frame every part of ``parts`` (an async generator). ``close()`` closes the upstream stream
    (idempotent), even when ``parts`` never started; ``on_end(status)`` runs exactly once with
    ``ok``, ``upstream_error`` or ``client_disconnected``."""
    status = "client_disconnected"
    try:
        async for part in parts:
            yield line(part)
        status = "ok"
    except GatewayError as exc:
        status = "upstream_error"
        log.warning("stream failed mid-way: %s", exc.message)
        yield line(exc.to_ollama())
    except Exception as exc:  # an unexpected bug must still end the stream cleanly for the client
        status = "upstream_error"
        log.exception("stream failed mid-way")
        yield line({"error": f"internal error while streaming: {type(exc).__name__}"})
    finally:
        try:
            await parts.aclose()  # type: ignore[attr-defined]
        finally:
            await close()
            on_end(status)
