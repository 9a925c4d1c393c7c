"""Backend for any OpenAI-compatible server: vLLM, LM Studio, llama.cpp's server, SGLang.

Plain HTTP through one pooled ``aiohttp`` session per backend (measured on the loopback
benchmark: about 4x less time per request than httpx, and 20x the throughput under
concurrency). Request bodies are passed through untouched apart from ``model`` (tools,
response_format and vendor extensions reach the upstream as sent); streams are relayed chunk
by chunk as they arrive. The upstream's HTTP errors keep their status and message
(``UpstreamStatusError``); transport failures become ``UpstreamUnavailable`` /
``UpstreamTimeout`` / ``UpstreamProtocolError``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gateway.backends.base import Backend, Health
from gateway.config import BackendSpec, GatewayConfig
from gateway.errors import (UpstreamError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout,
                            UpstreamUnavailable)


def normalize_base_url(url: str) -> str:
    """``http://h:8000`` and ``http://h:8000/v1/`` both become ``http://h:8000/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIBackend(Backend):
    kind = "openai"

    def __init__(self, spec: BackendSpec, config: GatewayConfig) -> None:
        super().__init__(spec, config)
        assert spec.base_url, "config validation guarantees base_url for openai backends"
        self.base_url = normalize_base_url(spec.base_url)
        t = spec.timeouts
        self._timeout = aiohttp.ClientTimeout(total=None, connect=t.connect, sock_read=t.read)
        self._headers = {"content-type": "application/json"}
        key = spec.resolved_api_key()
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=self._timeout, raise_for_status=False, auto_decompress=True,
            connector=aiohttp.TCPConnector(limit=self.spec.max_connections, ttl_dns_cache=300),
            json_serialize=lambda o: orjson.dumps(o).decode())

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"backend {self.name!r} used before start()")
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def health(self) -> Health:
        try:
            async with self.session.get(self.base_url + "/models",
                                        timeout=aiohttp.ClientTimeout(total=min(self.spec.timeouts.connect, 5.0))) as r:
                if r.status != 200:
                    return Health(False, f"GET /models answered {r.status}")
                body = await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return Health(False, f"{type(exc).__name__}: {exc}")
        try:
            ids = [m["id"] for m in orjson.loads(body).get("data", [])]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return Health(False, "GET /models returned a malformed body")
        return Health(True, "ok", ids)

    # -- chat -----------------------------------------------------------------------------------
    async def chat(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return await self._post("/chat/completions", body, model)

    def stream_chat(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/chat/completions", body, model)

    async def completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return await self._post("/completions", body, model)

    def stream_completion(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        return self._stream("/completions", body, model)

    # -- transport ------------------------------------------------------------------------------
    async def _post(self, path: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        payload = orjson.dumps({**body, "model": model, "stream": False})
        try:
            async with self.session.post(self.base_url + path, data=payload) as r:
                content = await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._transport_error(exc) from None
        if status != 200:
            raise self._status_error(status, content)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"backend {self.name!r} returned a body that is not JSON",
                                        backend=self.name) from None
        if not isinstance(data, dict) or "choices" not in data:
            raise UpstreamProtocolError(f"backend {self.name!r} returned JSON without 'choices'", backend=self.name)
        return data

    def _stream(self, path: str, body: dict[str, Any], model: str) -> "SSEStream":
        return SSEStream(self, path, orjson.dumps({**body, "model": model, "stream": True}))

    def _transport_error(self, exc: BaseException) -> UpstreamError:
        name = self.name
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"cannot connect to backend {name!r} at {self.base_url}: "
                                       f"{type(exc).__name__}", backend=name)
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return UpstreamTimeout(f"cannot connect to backend {name!r} at {self.base_url}: connect timeout",
                                   backend=name)
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            # The upstream got the request and may be working on it: not retried, but falls back.
            return UpstreamTimeout(f"backend {name!r} did not answer in time (read timeout "
                                   f"{self.spec.timeouts.read:g} s)", backend=name, retryable=False)
        return UpstreamProtocolError(f"backend {name!r} broke the connection: {type(exc).__name__}: {exc}",
                                     backend=name)

    def _status_error(self, status: int, content: bytes) -> UpstreamStatusError:
        detail = content[:500].decode("utf-8", "replace")
        try:
            err = orjson.loads(content).get("error")
            detail = err.get("message", detail) if isinstance(err, dict) else (err or detail)
        except (orjson.JSONDecodeError, AttributeError):
            pass
        return UpstreamStatusError(f"backend {self.name!r} answered {status}: {detail}",
                                   upstream_status=status, backend=self.name)



class SSEStream:
    """The chunks of one upstream server-sent-event stream, as an async iterator of dicts.

    It reads whatever bytes the socket has (not line by line) and parses every complete event in
    them at once, so ``ready()`` can tell the framer how many chunks are already parsed and
    waiting: a burst of events from the upstream (vLLM sends several per read under load) then
    goes to the client in one write instead of one write per event. Nothing ever waits to be
    batched. ``aclose()`` returns a fully read connection to the pool and drops an abandoned one,
    which cancels the upstream request.
    """

    def __init__(self, backend: OpenAIBackend, path: str, payload: bytes) -> None:
        self._b, self._path, self._payload = backend, path, payload
        self._response: aiohttp.ClientResponse | None = None
        self._parsed: deque[dict[str, Any]] = deque()
        self._partial = b""
        self._done = False  # [DONE] seen or the body ended
        self._finished = False  # a choice carried a finish_reason
        self._closed = False
        self._error: UpstreamError | None = None  # a bad frame: raised after the chunks before it

    def __aiter__(self) -> "SSEStream":
        return self

    def ready(self) -> int:
        return len(self._parsed)

    async def __anext__(self) -> dict[str, Any]:
        if self._closed:
            raise StopAsyncIteration
        b = self._b
        try:
            if self._response is None:
                try:
                    self._response = await b.session.post(b.base_url + self._path, data=self._payload)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise b._transport_error(exc) from None
                if self._response.status != 200:
                    raise b._status_error(self._response.status, await self._response.read())
            while not self._parsed:
                if self._error is not None:
                    raise self._error
                if self._done:
                    if not self._finished:
                        raise UpstreamProtocolError(f"backend {b.name!r} closed the stream before it finished",
                                                    backend=b.name)
                    raise StopAsyncIteration
                try:
                    data = await self._response.content.readany()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise b._transport_error(exc) from None
                if not data:  # the body ended
                    if self._partial:
                        self._feed(b"\n")
                    self._done = True
                    continue
                self._feed(data)
            return self._parsed.popleft()
        except BaseException:
            await self.aclose()
            raise

    def _feed(self, data: bytes) -> None:
        try:
            self._parse(data)
        except UpstreamError as exc:
            self._error, self._done = exc, True

    def _parse(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        name = self._b.name
        for raw in lines:
            if self._done or not raw.startswith(b"data:"):
                continue  # blank separators, comments (": ping"), "event:" lines, anything after [DONE]
            data = raw[5:].strip()
            if data == b"[DONE]":
                self._done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(f"backend {name!r} sent a stream frame that is not JSON",
                                            backend=name) from None
            if not isinstance(chunk, dict):
                raise UpstreamProtocolError(f"backend {name!r} sent a stream frame that is not an object",
                                            backend=name)
            if "error" in chunk and "choices" not in chunk:
                err = chunk["error"]
                msg = err.get("message") if isinstance(err, dict) else str(err)
                raise UpstreamError(f"backend {name!r} failed mid-stream: {msg}", backend=name)
            self._finished = self._finished or any(
                isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or ())
            self._parsed.append(chunk)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._parsed.clear()
        r = self._response
        if r is not None:
            if self._done and r.content.at_eof():
                r.release()  # fully read: the connection goes back to the pool
            else:
                r.close()  # abandoned mid-way: drop the connection, which cancels the upstream request
