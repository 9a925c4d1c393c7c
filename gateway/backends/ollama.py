"""Ollama backend: OpenAI-shaped requests served by Ollama's native API through the official
``ollama`` client; chat goes to ``/api/chat``, ``/v1/completions`` to ``/api/generate``.

    OpenAI request                         Ollama request
    content as a list of parts             text parts joined by newlines; base64 data: images
    assistant tool_calls (arguments text)  tool_calls[].function.arguments (an object)
    role tool + tool_call_id               role tool + tool_name (the call's function name)
    tools (tool_choice "none" drops them)  tools, same shape
    temperature, top_p, seed, stop,        options of the same names
      presence/frequency_penalty
    max_completion_tokens | max_tokens     options.num_predict
    top_k, num_ctx, ..., options (extra)   options (Ollama-native keys)
    response_format json_object / schema   format "json" / the schema

    Ollama response                        OpenAI response
    message.content / .thinking            content / reasoning_content
    message.tool_calls                     tool_calls (ids generated, arguments as JSON text)
    done_reason stop | length              finish_reason; tool_calls when calls came back
    prompt_eval_count, eval_count          usage

Backend ``options``: ``keep_alive`` (sent with every request); ``raw_completions`` (send
completion prompts with ``raw: true``, skipping the chat template; off by default, like
Ollama's own ``/v1/completions``, so ``suffix`` fill-in-the-middle works).

Errors map to ``UpstreamStatusError`` (HTTP status), ``UpstreamUnavailable`` (refused),
``UpstreamTimeout`` and ``UpstreamProtocolError`` (not Ollama's format). Streams send the
request and read the first NDJSON part before yielding, so those errors come while the
gateway can still retry or fall back.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
from ollama import AsyncClient, Image, Message, ResponseError, Tool
from pydantic import ValidationError

from gateway.backends.base import (Backend, Health, chat_chunk, chat_completion, completion_id,
                                   text_completion, usage, wants_usage)
from gateway.errors import (InvalidRequest, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
                            UpstreamTimeout, UpstreamUnavailable)

# OpenAI fields that are Ollama options under the same name.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# Ollama-only options a client may put in the request body (OpenAI SDK ``extra_body``).
_NATIVE = ("top_k", "min_p", "typical_p", "num_ctx", "num_keep", "repeat_penalty", "repeat_last_n",
           "mirostat", "mirostat_tau", "mirostat_eta")
_FINISH = {"stop": "stop", "length": "length"}
# What the client and the transport raise; each is mapped to an UpstreamError in _error().
_FAILURES = (ResponseError, httpx.RequestError, ConnectionError, TimeoutError, asyncio.TimeoutError,
             json.JSONDecodeError, ValidationError)


class OllamaBackend(Backend):
    kind = "ollama"

    def __init__(self, spec, config) -> None:
        super().__init__(spec, config)
        key = spec.resolved_api_key()
        self._keep_alive = spec.options.get("keep_alive")
        self._raw_completions = bool(spec.options.get("raw_completions", False))
        self._client = AsyncClient(
            host=spec.base_url,
            timeout=httpx.Timeout(spec.timeouts.read, connect=spec.timeouts.connect),
            limits=httpx.Limits(max_connections=spec.max_connections),
            headers={"Authorization": f"Bearer {key}"} if key else None,
        )

    async def aclose(self) -> None:
        await self._client.close()  # closes the underlying httpx.AsyncClient

    async def health(self) -> Health:
        try:
            listing = await self._client.list()
        except _FAILURES as exc:
            return Health(ok=False, detail=self._error(exc).message)
        names = [m.model for m in listing.models if m.model]
        wanted = {d.upstream_model for m in self.config.deployed_models for d in m.all_deployments()
                  if d.backend == self.name}
        missing = sorted(w for w in wanted if w and w not in names and f"{w}:latest" not in names)
        detail = f"{len(names)} models at {self.spec.base_url}"
        if missing:
            detail += f"; not pulled: {', '.join(missing)} (run `ollama pull` or `ollama create`)"
        return Health(ok=True, detail=detail, models=names)

    # -- chat ------------------------------------------------------------------------------
    async def chat(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        request = self._chat_request(body, model)
        resp = await self._call(self._client.chat(stream=False, **request), total=self.spec.timeouts.total)
        calls = _tool_calls(resp.message)
        out = chat_completion(model=model, content=resp.message.content or ("" if not calls else None),
                              finish_reason=_finish(resp.done_reason, bool(calls)),
                              prompt_tokens=resp.prompt_eval_count or 0,
                              completion_tokens=resp.eval_count or 0, tool_calls=calls or None)
        if resp.message.thinking:
            out["choices"][0]["message"]["reasoning_content"] = resp.message.thinking
        return out

    async def stream_chat(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        request = self._chat_request(body, model)
        cid, created, n_calls, last = completion_id(), int(time.time()), 0, None
        async with aclosing(self._parts(self._client.chat, request)) as parts:
            async for part in parts:
                delta: dict[str, Any] = {} if last is not None else {"role": "assistant"}
                if part.message.content or "role" in delta:
                    delta["content"] = part.message.content or ""
                if part.message.thinking:
                    delta["reasoning_content"] = part.message.thinking
                calls = _tool_calls(part.message)
                if calls:
                    delta["tool_calls"] = [{"index": n_calls + i, **c} for i, c in enumerate(calls)]
                    n_calls += len(calls)
                if delta:
                    yield chat_chunk(id=cid, model=model, created=created, delta=delta)
                last = part
        yield chat_chunk(id=cid, model=model, created=created, delta={},
                         finish_reason=_finish(last.done_reason, n_calls > 0))
        if wants_usage(body):
            chunk = chat_chunk(id=cid, model=model, created=created, delta={},
                               usage_=usage(last.prompt_eval_count or 0, last.eval_count or 0))
            chunk["choices"] = []
            yield chunk

    # -- completions (/api/generate) -------------------------------------------------------
    async def completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        request = self._generate_request(body, model)
        resp = await self._call(self._client.generate(stream=False, **request), total=self.spec.timeouts.total)
        return text_completion(model=model, text=resp.response or "", finish_reason=_finish(resp.done_reason, False),
                               prompt_tokens=resp.prompt_eval_count or 0, completion_tokens=resp.eval_count or 0)

    async def stream_completion(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        request = self._generate_request(body, model)
        cid, created, last = completion_id("cmpl"), int(time.time()), None

        def piece(text: str, finish_reason: str | None = None) -> dict[str, Any]:
            return text_completion(model=model, text=text, finish_reason=finish_reason, prompt_tokens=0,
                                   completion_tokens=0, id=cid, created=created, chunk=True)

        async with aclosing(self._parts(self._client.generate, request)) as parts:
            async for last in parts:
                if last.response:
                    yield piece(last.response)
        yield piece("", _finish(last.done_reason, False))
        if wants_usage(body):
            chunk = piece("")
            chunk["choices"], chunk["usage"] = [], usage(last.prompt_eval_count or 0, last.eval_count or 0)
            yield chunk

    # -- request building ------------------------------------------------------------------
    def _chat_request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        _check_common(body, model)
        return {"model": model, "messages": _messages(body.get("messages")), "tools": _tools(body),
                "format": _format(body), "options": _options(body) or None,
                "keep_alive": body.get("keep_alive", self._keep_alive)}

    def _generate_request(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        _check_common(body, model)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt must be one string (Ollama generates one completion per request)",
                                 param="prompt")
        return {"model": model, "prompt": prompt, "suffix": body.get("suffix") or None,
                "raw": True if self._raw_completions else None, "format": _format(body),
                "options": _options(body) or None, "keep_alive": body.get("keep_alive", self._keep_alive)}

    # -- transport and errors --------------------------------------------------------------
    async def _call(self, awaitable, *, total: float | None = None):
        try:
            return await asyncio.wait_for(awaitable, total)
        except _FAILURES as exc:
            raise self._error(exc) from exc

    async def _parts(self, send, request: dict[str, Any]) -> AsyncIterator[Any]:
        """Ollama's NDJSON parts, up to and including the ``done`` one. The request goes out and the
        first part is read on the first ``__anext__``, so a caller that yields only what it got
        from here raises connection and status errors before its first chunk."""
        started = False
        try:
            parts = await send(stream=True, **request)
        except _FAILURES as exc:
            raise self._error(exc) from exc
        try:
            while True:
                try:
                    part = await parts.__anext__()
                except StopAsyncIteration:
                    raise UpstreamProtocolError(f"ollama backend {self.name!r}: the stream ended without a "
                                                "final 'done' part", backend=self.name, retryable=not started) from None
                except _FAILURES as exc:
                    raise self._error(exc, started=started) from exc
                yield part
                if part.done:
                    return
                started = True
        finally:
            await parts.aclose()

    def _error(self, exc: BaseException, *, started: bool = False) -> UpstreamError:
        where = f"ollama backend {self.name!r} ({self.spec.base_url})"
        if isinstance(exc, ResponseError) and exc.status_code >= 400:
            err: UpstreamError = UpstreamStatusError(f"{where}: {exc.error} (HTTP {exc.status_code})",
                                                     upstream_status=exc.status_code, backend=self.name)
        elif isinstance(exc, ResponseError):  # an {"error": ...} line inside a 200 stream
            err = UpstreamError(f"{where}: {exc.error}", backend=self.name, retryable=True)
        elif isinstance(exc, (httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)):
            err = UpstreamTimeout(f"{where}: timed out ({type(exc).__name__}); raise [backends] timeouts "
                                  "if the model is still loading", backend=self.name)
        elif isinstance(exc, (ConnectionError, httpx.NetworkError)):
            err = UpstreamUnavailable(f"{where}: cannot connect; is `ollama serve` running there?",
                                      backend=self.name)
        else:
            err = UpstreamProtocolError(f"{where}: response is not in Ollama's format: {exc}", backend=self.name)
        if started:  # chunks already reached the client: the request cannot be replayed
            err.retryable = False
        return err


# -- OpenAI -> Ollama -----------------------------------------------------------------------

def _check_common(body: dict[str, Any], model: str) -> None:
    if not model:
        raise InvalidRequest("no upstream model name for the ollama backend", param="model")
    if (body.get("n") or 1) != 1:
        raise InvalidRequest("Ollama returns one choice per request; n must be 1", param="n")


def _options(body: dict[str, Any]) -> dict[str, Any]:
    opts = {k: body[k] for k in _SAME_NAME if body.get(k) is not None}
    limit = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None), None)
    if limit is not None:
        opts["num_predict"] = limit
    stop = body.get("stop")
    if stop:
        opts["stop"] = [stop] if isinstance(stop, str) else list(stop)
    opts.update({k: body[k] for k in _NATIVE if body.get(k) is not None})
    if isinstance(body.get("options"), dict):
        opts.update(body["options"])
    return opts


def _format(body: dict[str, Any]) -> str | dict | None:
    rf = body.get("response_format")
    kind = rf.get("type") if isinstance(rf, dict) else rf
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
        raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object",
                             param="response_format")
    raise InvalidRequest(f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
                         param="response_format")


def _tools(body: dict[str, Any]) -> list[Tool] | None:
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none":
        return None
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"tools[{i}]: only function tools are supported", param="tools")
        try:
            out.append(Tool.model_validate(tool))
        except ValidationError as exc:
            raise InvalidRequest(f"tools[{i}]: {exc.errors()[0]['msg']}", param="tools") from None
    return out


def _messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for the tool results
    out = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        text, images = _content(m.get("content") if isinstance(m, dict) else None, i)
        msg: dict[str, Any] = {"role": role, "content": text, "images": [Image(value=b) for b in images] or None}
        if role == "developer":
            msg["role"] = "system"
        elif role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = []
            for call in m["tool_calls"]:
                fn = call.get("function") or {}
                call_names[call.get("id", "")] = fn.get("name", "")
                msg["tool_calls"].append({"function": {"name": fn.get("name", ""),
                                                       "arguments": _arguments(fn.get("arguments"), i)}})
        elif role in ("tool", "function"):
            msg["role"] = "tool"
            msg["tool_name"] = m.get("name") or call_names.get(m.get("tool_call_id", "")) or None
        elif role not in ("system", "user", "assistant"):
            raise InvalidRequest(f"messages[{i}]: unsupported role {role!r}", param="messages")
        try:
            out.append(Message.model_validate({k: v for k, v in msg.items() if v is not None}))
        except ValidationError as exc:
            raise InvalidRequest(f"messages[{i}]: {exc.errors()[0]['msg']}", param="messages") from None
    return out


def _content(content: Any, i: int) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise InvalidRequest(f"messages[{i}].content must be a string or a list of parts", param="messages")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, dict) else str(ref or "")
            if not (url.startswith("data:") and ";base64," in url):
                raise InvalidRequest(f"messages[{i}]: Ollama takes images as base64 data: URLs only",
                                     param="messages")
            data = url.split(",", 1)[1]
            try:
                base64.b64decode(data, validate=True)
            except binascii.Error:
                raise InvalidRequest(f"messages[{i}]: image data is not valid base64", param="messages") from None
            images.append(data)
        else:
            raise InvalidRequest(f"messages[{i}].content: unsupported part type {kind!r}", param="messages")
    return "\n".join(texts), images


def _arguments(raw: Any, i: int) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        args = json.loads(raw) if raw else {}
    except (TypeError, json.JSONDecodeError):
        args = None
    if not isinstance(args, dict):  # Ollama wants an object, and so does every function schema
        raise InvalidRequest(f"messages[{i}].tool_calls: function.arguments must be a JSON object",
                             param="messages")
    return args


# -- Ollama -> OpenAI -----------------------------------------------------------------------

def _tool_calls(message: Message) -> list[dict[str, Any]]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.function.name,
                          "arguments": json.dumps(dict(c.function.arguments), ensure_ascii=False)}}
            for c in message.tool_calls or []]


def _finish(done_reason: str | None, called_tools: bool) -> str:
    return "tool_calls" if called_tools else _FINISH.get(done_reason or "stop", "stop")
