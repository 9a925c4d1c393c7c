"""Server-sent events framing for OpenAI-style streams: the only place frames are written.

Each chunk becomes ``data: {json}\\n\\n``; the stream always ends with ``data: [DONE]\\n\\n``.
Chunks the backend has already received together (``rest.ready()``) are written together.
When the upstream fails mid-stream an OpenAI-shaped error frame (``data: {"error": {...}}``)
goes out before ``[DONE]``, which the official SDK raises as an ``APIError``. When the client
goes away the framer's generator is cancelled and the upstream stream is closed, which
cancels the upstream request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError

log = logging.getLogger("oracle_council.stream")

DONE = b"data: [DONE]\n\n"


def frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def sse_frames(first: dict[str, Any], rest: Any, *, rewrite: Callable[[dict], dict | None],
                     on_end: Callable[[str, dict | None], None]) -> AsyncIterator[bytes]:
    """Frame ``first`` then every chunk of ``rest`` (a ``TrackedStream``). ``rewrite`` adjusts
    a chunk (or drops it by returning None); ``on_end(status, usage)`` runs exactly once with
    ``ok``, ``upstream_error`` or ``client_disconnected``."""
    usage: dict | None = None
    status = "client_disconnected"
    ready = getattr(rest, "ready", None) or (lambda: 0)
    try:
        out = rewrite(first)
        usage = first.get("usage")
        pending = [frame(out)] if out is not None else []
        if pending and not ready():
            yield pending.pop()
        async for chunk in rest:
            usage = chunk.get("usage") or usage
            out = rewrite(chunk)
            if out is not None:
                pending.append(frame(out))
            # chunks that arrived together leave together: one write, never a wait
            if pending and not ready():
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
        if pending:
            yield b"".join(pending)
        status = "ok"
    except GatewayError as exc:
        status = "upstream_error"
        log.warning("stream failed mid-way: %s", exc.message)
        yield frame(exc.to_openai())
    except Exception as exc:  # an unexpected bug must still end the stream cleanly for the client
        status = "upstream_error"
        log.exception("stream failed mid-way")
        yield frame({"error": {"message": f"internal error while streaming: {type(exc).__name__}",
                               "type": "server_error", "param": None, "code": None}})
    finally:
        await rest.aclose()
        on_end(status, usage)
    yield DONE
