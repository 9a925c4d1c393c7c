"""A local HTTP server that speaks the Gemini API's ``generateContent`` wire format, for tests.

Gemini cannot be reached from here (no network, no key), so the router's Gemini classifier is
tested through the official ``google-genai`` client pointed at this stand-in
(``base_url``). It is not a model: each request takes the next scripted reply. The client parses
everything it sends, which keeps the format honest: ``candidates[].content.parts[].text`` with
``finishReason`` and ``usageMetadata`` on success, ``{"error": {"code", "message", "status"}}``
with the HTTP status on failure.

    POST /{version}/models/{model}:generateContent

Replies (``server.script(...)``, consumed in order; when none is left, ``default`` answers):

    Reply(json={...})            200, the object serialised as the candidate's text
    Reply(text="...")            200, the candidate's text as given (e.g. malformed JSON)
    Reply(status=429)            that HTTP status with a Gemini-shaped error body
    Reply(delay=3.0, ...)        waits first (for timeouts)

Every request body is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request

from tests.serving import ThreadedASGIServer
from fastapi.responses import JSONResponse

_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
           503: "UNAVAILABLE"}


@dataclass(frozen=True)
class Reply:
    json: dict[str, Any] | None = None
    text: str | None = None
    status: int = 200
    delay: float = 0.0


DEFAULT = Reply(json={"specialist": "seph-tilesmith", "task_type": None, "cross_domain": False, "oracles": [],
                      "confidence": 0.93, "reason": "tile format question"})


class GeminiWireServer(ThreadedASGIServer):
    label = "Gemini wire test server"

    def __init__(self, default: Reply = DEFAULT) -> None:
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self.app = self._build_app()

    def script(self, *replies: Reply) -> None:
        self._script.extend(replies)

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{version}/models/{target}")
        async def generate(version: str, target: str, request: Request) -> JSONResponse:
            model, _, method = target.partition(":")
            body = await request.json()
            self.requests.append({"version": version, "model": model, "method": method, "body": body})
            reply = self._script.popleft() if self._script else self.default
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if method != "generateContent":
                return JSONResponse(_error(404, f"method {method} not found"), status_code=404)
            if reply.status != 200:
                return JSONResponse(_error(reply.status, "scripted failure"), status_code=reply.status)
            text = reply.text if reply.text is not None else json.dumps(reply.json)
            return JSONResponse({
                "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP",
                                "index": 0}],
                "usageMetadata": {"promptTokenCount": 120, "candidatesTokenCount": 30, "totalTokenCount": 150},
                "modelVersion": model,
            })

        return app


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}}
