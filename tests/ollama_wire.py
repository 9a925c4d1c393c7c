"""A local HTTP server that speaks Ollama's native wire format, for tests.

A real Ollama server cannot run here (no model downloads, no network), so tests point the
official ``ollama`` client (directly, or through ``gateway.backends.ollama``) at this
stand-in instead. It is not a model: its answers are scripted. The client parses every
response it sends, which keeps the format honest: NDJSON lines for streams, ``done_reason``
and the token counts on the final ``"done": true`` part, tool calls as
``message.tool_calls[].function.{name, arguments}`` with ``arguments`` an object, and errors
as ``{"error": "..."}`` with an HTTP status.

Endpoints: ``GET /api/tags``, ``GET /api/version``, ``POST /api/chat``, ``POST /api/generate``.
``stream`` defaults to true, as in Ollama.

What it answers depends on the request's model name:

    any name            the last user message (or the prompt), split into word "tokens"
    "tools"             with tools in the request: a call to the first tool, with an
                        argument for each of its parameters
    "length"            stops after two tokens, done_reason "length"
    "status-NNN"        HTTP NNN and {"error": ...}; "status-404" says "model '...' not found"
    "midstream-error"   streams one part, then an {"error": ...} line (a 200 stream that fails)
    "garbage"           a body that is not JSON
    "slow"              waits ``slow_seconds`` before answering

``options.num_predict`` caps the tokens (done_reason "length"); ``format`` ("json" or a
schema) wraps the answer as ``{"text_response": ...}``. Every POST body is recorded in
``requests``; ``last_request`` is the latest, so tests can check what a client sent.

    with OllamaWireServer() as server:
        client = ollama.AsyncClient(host=server.url)
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request

from tests.serving import ThreadedASGIServer
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

VERSION = "0.12.6"
DEFAULT_MODELS = ("euclid-asm:latest", "seph-tilesmith:latest", "qwen2.5-coder:1.5b")


class OllamaWireServer(ThreadedASGIServer):
    label = "Ollama wire test server"

    def __init__(self, models: tuple[str, ...] = DEFAULT_MODELS, *, slow_seconds: float = 1.0) -> None:
        self.models = models
        self.slow_seconds = slow_seconds
        self.requests: list[dict[str, Any]] = []  # {"path": ..., "body": ...}
        self.app = self._build_app()

    @property
    def last_request(self) -> dict[str, Any]:
        return self.requests[-1]["body"]

    # -- the app ---------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/version")
        async def version() -> dict:
            return {"version": VERSION}

        @app.get("/api/tags")
        async def tags() -> dict:
            return {"models": [_tag(name) for name in self.models]}

        @app.post("/api/chat")
        async def chat(request: Request) -> Response:
            return await self._answer(request, chat=True)

        @app.post("/api/generate")
        async def generate(request: Request) -> Response:
            return await self._answer(request, chat=False)

        return app

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"invalid request body: {exc}"}, status_code=400)
        self.requests.append({"path": request.url.path, "body": body})
        model = body.get("model") or ""
        if not model:
            return JSONResponse({"error": "model is required"}, status_code=400)
        if m := re.fullmatch(r"status-(\d{3})", model):
            status = int(m.group(1))
            text = f"model '{model}' not found" if status == 404 else f"scripted failure {status} for '{model}'"
            return JSONResponse({"error": text}, status_code=status)
        if model == "slow":
            await asyncio.sleep(self.slow_seconds)
        stream = body.get("stream", True)
        if model == "garbage":
            if stream:
                return StreamingResponse(_lines(["this is not json"]), media_type="application/x-ndjson")
            return PlainTextResponse("this is not json")

        text, prompt_tokens = _prompt(body, chat)
        options = body.get("options") or {}
        tool_calls = _tool_call(body) if chat and model == "tools" and body.get("tools") else None
        if tool_calls:
            tokens, reason = [], "stop"
        else:
            if body.get("format"):
                text = json.dumps({"text_response": text})
            tokens, reason = _tokens(text), "stop"
            limit = 2 if model == "length" else options.get("num_predict")
            if limit is not None and 0 <= limit < len(tokens):
                tokens, reason = tokens[:limit], "length"
        final = _final_stats(reason, prompt_tokens, len(tokens) or (1 if tool_calls else 0), chat)

        if not stream:
            part = _part(model, "".join(tokens), chat, tool_calls)
            return JSONResponse({**part, "done": True, **final})
        lines = [{**_part(model, t, chat), "done": False} for t in tokens]
        if tool_calls:
            lines.append({**_part(model, "", chat, tool_calls), "done": False})
        if model == "midstream-error":
            lines = lines[:1] + [{"error": "an error was encountered while running the model"}]
        else:
            lines.append({**_part(model, "", chat), "done": True, **final})
        return StreamingResponse(_lines(lines), media_type="application/x-ndjson")


# -- wire objects ------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-06-01T12:30:45.123456789+02:00",  # Ollama writes nanoseconds
        "size": 986_061_892,
        "digest": "9f438cb9cd581fc025612d27f7c1a6669ff83a8bb0ed86c94fcf4c5440555697",
        "details": {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                    "parameter_size": "1.5B", "quantization_level": "Q4_K_M"},
    }


def _part(model: str, text: str, chat: bool, tool_calls: list | None = None) -> dict[str, Any]:
    if not chat:
        return {"model": model, "created_at": _now(), "response": text}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": model, "created_at": _now(), "message": message}


def _final_stats(reason: str, prompt_tokens: int, eval_tokens: int, chat: bool) -> dict[str, Any]:
    stats: dict[str, Any] = {"done_reason": reason}
    if not chat:
        stats["context"] = list(range(1, prompt_tokens + eval_tokens + 1))
    stats.update(total_duration=5_120_000 + 1_000_000 * eval_tokens, load_duration=1_020_000,
                 prompt_eval_count=prompt_tokens, prompt_eval_duration=2_100_000,
                 eval_count=eval_tokens, eval_duration=1_000_000 * eval_tokens)
    return stats


async def _lines(objects: list) -> Any:
    for obj in objects:
        yield (obj if isinstance(obj, str) else json.dumps(obj)) + "\n"
        await asyncio.sleep(0)


# -- the script --------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    """Word pieces that join back to ``text`` exactly: 'a b' -> ['a ', 'b']."""
    return [t for t in re.split(r"(?<=\s)(?=\S)", text) if t]


def _prompt(body: dict[str, Any], chat: bool) -> tuple[str, int]:
    """The text to echo and a token count for the whole prompt."""
    if not chat:
        prompt = body.get("prompt") or ""
        return prompt, max(1, len((body.get("system") or "").split()) + len(prompt.split()))
    messages = body.get("messages") or []
    last_user = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    count = sum(len((m.get("content") or "").split()) for m in messages)
    return last_user, max(1, count)


def _tool_call(body: dict[str, Any]) -> list[dict[str, Any]]:
    fn = body["tools"][0].get("function") or {}
    props = (fn.get("parameters") or {}).get("properties") or {}
    return [{"function": {"name": fn.get("name", ""),
                          "arguments": {k: _sample(k, v) for k, v in props.items()}}}]


def _sample(name: str, schema: dict[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(
        schema.get("type"), f"{name}-value")
