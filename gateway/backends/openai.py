"""Backend for any OpenAI-compatible server: vLLM, LM Studio, llama.cpp's server, SGLang.

Plain HTTP through one pooled ``httpx.AsyncClient`` per backend. Request bodies are passed
through untouched apart from ``model`` (tools, response_format and vendor extensions reach the
upstream as sent); streams are relayed chunk by chunk as they arrive. The upstream's HTTP
errors keep their status and message (``UpstreamStatusError``); transport failures become
``UpstreamUnavailable`` / ``UpstreamTimeout`` / ``UpstreamProtocolError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
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
        self._timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=t.connect)
        headers = {"content-type": "application/json"}
        key = spec.resolved_api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self._timeout,
            limits=httpx.Limits(max_connections=spec.max_connections,
                                max_keepalive_connections=spec.max_connections),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def health(self) -> Health:
        try:
            r = await self._client.get("/models", timeout=min(self.spec.timeouts.connect, 5.0))
        except httpx.HTTPError as exc:
            return Health(False, f"{type(exc).__name__}: {exc}")
        if r.status_code != 200:
            return Health(False, f"GET /models answered {r.status_code}")
        try:
            ids = [m["id"] for m in r.json().get("data", [])]
        except (ValueError, KeyError, TypeError, AttributeError):
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
            r = await self._client.post(path, content=payload)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if r.status_code != 200:
            raise self._status_error(r.status_code, r.content)
        try:
            data = orjson.loads(r.content)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(f"backend {self.name!r} returned a body that is not JSON",
                                        backend=self.name) from None
        if not isinstance(data, dict) or "choices" not in data:
            raise UpstreamProtocolError(f"backend {self.name!r} returned JSON without 'choices'", backend=self.name)
        return data

    async def _stream(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        payload = orjson.dumps({**body, "model": model, "stream": True})
        request = self._client.build_request("POST", path, content=payload)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        try:
            if response.status_code != 200:
                raise self._status_error(response.status_code, await response.aread())
            finished = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamProtocolError(f"backend {self.name!r} sent a stream frame that is not JSON",
                                                backend=self.name) from None
                if not isinstance(chunk, dict):
                    raise UpstreamProtocolError(f"backend {self.name!r} sent a stream frame that is not an object",
                                                backend=self.name)
                if "error" in chunk and "choices" not in chunk:
                    err = chunk["error"]
                    msg = err.get("message") if isinstance(err, dict) else str(err)
                    raise UpstreamError(f"backend {self.name!r} failed mid-stream: {msg}", backend=self.name)
                finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or ())
                yield chunk
            if not finished:
                raise UpstreamProtocolError(f"backend {self.name!r} closed the stream before it finished",
                                            backend=self.name)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        finally:
            await response.aclose()

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        name = self.name
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            cls = UpstreamTimeout if isinstance(exc, httpx.TimeoutException) else UpstreamUnavailable
            return cls(f"cannot connect to backend {name!r} at {self.base_url}: {type(exc).__name__}",
                       backend=name)
        if isinstance(exc, httpx.TimeoutException):
            # The upstream got the request and may be working on it: not retried, but falls back.
            return UpstreamTimeout(f"backend {name!r} did not answer in time ({type(exc).__name__})",
                                   backend=name, retryable=False)
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
