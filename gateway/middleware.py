"""One pure-ASGI middleware for what every request needs before routing:

- a request id: the client's ``x-request-id`` when it is sane, else a new one; echoed on every
  response and available to handlers as ``request.state.request_id``;
- optional bearer API keys, compared in constant time (``/healthz``, ``/readyz`` and
  ``/metrics`` stay open for probes and scrapers); the key itself is never logged;
- a request-size limit, checked on ``content-length`` and again while the body is read (a
  chunked upload cannot slip past it);
- the accounting of a request to a serving endpoint that is answered with an error before any
  service took it on (a rejected key or size here, a body or model the app refuses, a crash):
  it is followed with a ``Tracked`` and settled once its answer is sent (``gateway.accounting``).

Errors are written in the wire format of the API the request was for (Ollama under ``/api/``,
OpenAI elsewhere). Pure ASGI rather than ``BaseHTTPMiddleware``: it adds microseconds, not a task
per request, and never buffers streams.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson

from gateway import accounting
from gateway.errors import AuthenticationError, GatewayError, PayloadTooLarge

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def error_body(path: str, exc: GatewayError) -> bytes:
    return orjson.dumps(exc.to_ollama() if path.startswith("/api/") else exc.to_openai())


class GatewayMiddleware:
    def __init__(self, app: Callable, *, api_keys: Iterable[str], max_body: int,
                 serving: Mapping[str, str] | None = None) -> None:
        """``serving``: the paths of the serving endpoints, each with its ``api`` label."""
        self.app = app
        self.keys = [k.encode() for k in api_keys if k]
        self.max_body = max_body
        self.serving = dict(serving or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = auth = length = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value
            elif name == b"authorization":
                auth = value
            elif name == b"content-length":
                length = value
        rid = rid if rid is not None and _SANE_ID.match(rid) else uuid.uuid4().hex.encode()
        state = scope.setdefault("state", {})
        state["request_id"] = rid.decode()
        path = scope["path"]
        api = self.serving.get(path)
        tracked = None
        if api is not None:
            tracked = state[accounting.TRACKED] = accounting.Tracked(api, time.perf_counter())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
                if tracked is not None:
                    tracked.status = message["status"]
                    if tracked.status >= 400:  # counted before it is sent, so a client that reads the
                        accounting.settle(scope, tracked)  # metrics or the log next finds it there
            await send(message)

        try:
            if self.keys and path not in OPEN_PATHS and not self._authorized(auth):
                err: GatewayError = AuthenticationError("missing or invalid API key: send 'Authorization: Bearer "
                                                        "<key>' with a key from [server].api_keys")
                accounting.note_error(scope, err)
                await self._reject(path, err, send_with_id, extra=[(b"www-authenticate", b"Bearer")])
                return
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                err = self._too_large()
                accounting.note_error(scope, err)
                await self._reject(path, err, send_with_id)
                return

            received = 0

            async def counting_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise self._too_large()
                return message

            await self.app(scope, counting_receive, send_with_id)
        except Exception:
            if tracked is not None and tracked.status is None:  # nothing was sent: the server answers 500
                tracked.status = 500
                accounting.settle(scope, tracked, crashed=True)
            raise

    def _authorized(self, header: bytes | None) -> bool:
        if header is None or not header[:7].lower() == b"bearer ":
            return False
        token = header[7:].strip()
        ok = False
        for key in self.keys:  # every key is compared, so timing says nothing about which matched
            ok |= hmac.compare_digest(token, key)
        return ok

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body larger than the limit of {self.max_body} bytes "
                               "([server].max_request_bytes)")

    @staticmethod
    async def _reject(path: str, exc: GatewayError, send: Send, extra: list | None = None) -> None:
        body = error_body(path, exc)
        await send({"type": "http.response.start", "status": exc.status_code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})
