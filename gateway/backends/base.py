"""The interface every backend implements.

A backend speaks to one kind of model server (or runs models in-process) and exchanges
OpenAI-shaped dicts with the gateway:

- ``chat(body, model)`` takes an OpenAI chat-completions request body (``model`` already
  replaced by the upstream name) and returns a ``chat.completion`` dict;
- ``stream_chat(body, model)`` yields ``chat.completion.chunk`` dicts as they arrive;
- ``completion`` / ``stream_completion`` do the same for ``/v1/completions``
  (``text_completion`` objects); a backend that cannot do them keeps the default, which
  raises ``InvalidRequest``;
- ``health()`` reports whether the backend can serve; ``start()`` runs once when the app
  starts (load weights, open pools); ``aclose()`` releases everything.

Failures are raised as ``gateway.errors.UpstreamError`` subclasses. A streaming backend must
raise retryable errors *before* its first chunk where it can (connect errors, 429, 5xx), so
the gateway can retry or fall back before anything reaches the client. Heavy libraries
(torch, litellm) are imported inside methods, never at module level.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.config import BackendSpec, GatewayConfig
from gateway.errors import InvalidRequest


@dataclass
class Health:
    ok: bool
    detail: str = ""
    models: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "models": self.models}


class Backend(ABC):
    kind: ClassVar[str]

    def __init__(self, spec: BackendSpec, config: GatewayConfig) -> None:
        self.spec = spec
        self.config = config
        self.name = spec.name

    async def start(self) -> None:
        """Called once by the app's lifespan before serving."""

    async def aclose(self) -> None:
        """Release connections, threads and memory."""

    def load_gauges(self) -> dict[str, Callable[[], float]]:
        """Request counts by state that ``/metrics`` reads at each scrape, as
        ``oracle_backend_requests{backend,state}`` (the in-process backend: running, waiting)."""
        return {}

    @abstractmethod
    async def health(self) -> Health: ...

    @abstractmethod
    async def chat(self, body: dict[str, Any], model: str) -> dict[str, Any]: ...

    @abstractmethod
    def stream_chat(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]: ...

    async def completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        raise InvalidRequest(f"backend {self.name!r} (kind {self.kind!r}) does not support /v1/completions; "
                             "use /v1/chat/completions", param="model")

    def stream_completion(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        raise InvalidRequest(f"backend {self.name!r} (kind {self.kind!r}) does not support /v1/completions; "
                             "use /v1/chat/completions", param="model")


# -- helpers shared by backends that build OpenAI objects themselves ------------------------

def completion_id(prefix: str = "chatcmpl") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def chat_completion(*, model: str, content: str | None, finish_reason: str | None,
                    prompt_tokens: int, completion_tokens: int, tool_calls: list[dict] | None = None,
                    id: str | None = None, created: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": id or completion_id(),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(*, id: str, model: str, created: int, delta: dict[str, Any],
               finish_reason: str | None = None, usage_: dict | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_completion(*, model: str, text: str, finish_reason: str | None, prompt_tokens: int,
                    completion_tokens: int, id: str | None = None, created: int | None = None,
                    chunk: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": id or completion_id("cmpl"),
        "object": "text_completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if not chunk:
        out["usage"] = usage(prompt_tokens, completion_tokens)
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def wants_usage(body: dict[str, Any]) -> bool:
    """True when the client asked for a final usage chunk (``stream_options.include_usage``)."""
    opts = body.get("stream_options") or {}
    return bool(isinstance(opts, dict) and opts.get("include_usage"))
