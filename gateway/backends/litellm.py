"""Backend for hosted providers through litellm (Gemini, OpenAI, Anthropic, Vertex, Bedrock ...).

``upstream_model`` is a litellm model string such as ``gemini/gemini-2.5-flash`` or
``openai/gpt-4o-mini``; ``base_url`` becomes litellm's ``api_base`` and ``api_key`` (usually
``env:NAME``) its ``api_key``. Chat goes through ``litellm.acompletion`` and ``/v1/completions``
through ``litellm.atext_completion``; litellm's response objects are turned back into plain
OpenAI dicts here, so the rest of the gateway never sees a litellm type.

litellm is imported lazily, the first time a backend of this kind starts or serves, so
importing the gateway does not pay its 3-4 s import (nor need it installed). Retries are the
gateway's job: litellm is called with ``num_retries=0``.

Options (``[backends.options]``):

    drop_params    bool, default true: let litellm drop request fields a provider does not take
                   (e.g. ``logit_bias`` on Gemini) instead of failing the request
    litellm_params table of extra keyword arguments for every call (``api_version``,
                   ``vertex_project`` ...); string values may be ``env:NAME``
    health_model   a litellm model string; when set, ``health()`` sends it a one-token request.
                   Without it, ``health()`` makes no network call.

Only fields of the OpenAI request schema are forwarded from a client's body: litellm reads
some keyword arguments as its own settings (``api_base``, ``api_key``, ``mock_response``), and a
client must not be able to set those.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import socket
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any, ClassVar

from gateway.backends.base import Backend, Health
from gateway.config import BackendSpec, GatewayConfig, resolve_secret
from gateway.errors import (ConfigError, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
                            UpstreamTimeout, UpstreamUnavailable)

INSTALL_HINT = "pip install 'oracle-council[litellm]'"

# The OpenAI request fields forwarded to litellm; anything else in a client's body is dropped.
CHAT_FIELDS = frozenset({
    "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
COMPLETION_FIELDS = frozenset({
    "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream_options", "suffix", "temperature", "top_p", "user",
})
_MUTABLE_FIELDS = frozenset({"messages", "tools", "functions"})
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")

_litellm: ModuleType | None = None


def import_litellm() -> ModuleType:
    """Import litellm once, offline (no cost-map download) and quiet."""
    global _litellm
    if _litellm is not None:
        return _litellm
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # litellm's own TypedDicts make pydantic warn (on import and on first use); not ours to fix
    warnings.filterwarnings("ignore", message=r".*is using the `ReadOnly` qualifier", category=UserWarning)
    try:
        import litellm
    except ImportError as exc:
        raise ImportError(f"backend kind 'litellm' needs the litellm package: {INSTALL_HINT}") from exc
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every error
    if "LITELLM_LOG" not in os.environ:  # when it is set, the user wants litellm's own logs
        for name in _LITELLM_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    _litellm = litellm
    return litellm


class LiteLLMBackend(Backend):
    kind = "litellm"

    # litellm keeps its HTTP clients in one process-wide cache; the last backend to close
    # releases them (closing them earlier would break the other backends' cached clients).
    _open: ClassVar[int] = 0

    def __init__(self, spec: BackendSpec, config: GatewayConfig) -> None:
        super().__init__(spec, config)
        opts = spec.options
        self._drop_params = bool(opts.get("drop_params", True))
        self._health_model: str | None = opts.get("health_model")
        extra = opts.get("litellm_params") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{config.source}: [[backends]] (name = {spec.name!r}), key 'options.litellm_params': "
                              "must be a table of keyword arguments for litellm")
        self._extra = {k: resolve_secret(v) if isinstance(v, str) else v for k, v in extra.items()}
        self._closed = False
        LiteLLMBackend._open += 1

    async def start(self) -> None:
        import_litellm()  # fail at start-up, with the install hint, rather than on the first request

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        LiteLLMBackend._open -= 1
        if LiteLLMBackend._open == 0 and _litellm is not None:
            await _release_clients(_litellm)

    async def health(self) -> Health:
        served = self._served_models()
        if not self._health_model:
            return Health(True, "not probed: litellm has no cheap health check for hosted providers "
                                "(set options.health_model to send a one-token request)", served)
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        try:
            await self.chat(body, self._health_model)
        except UpstreamError as exc:
            return Health(False, exc.message, served)
        return Health(True, f"ok ({self._health_model} answered)", served)

    # -- chat and completions -------------------------------------------------------------------
    async def chat(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        litellm = import_litellm()
        response = await self._call(litellm.acompletion, self._kwargs(body, model, CHAT_FIELDS), model)
        return clean_chat_completion(response.model_dump(exclude_none=True))

    def stream_chat(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        return self._stream("acompletion", self._kwargs(body, model, CHAT_FIELDS), model, clean_chat_chunk)

    async def completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        litellm = import_litellm()
        response = await self._call(litellm.atext_completion, self._kwargs(body, model, COMPLETION_FIELDS), model)
        return clean_text_completion(response.model_dump(exclude_none=True))

    def stream_completion(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        return self._stream("atext_completion", self._kwargs(body, model, COMPLETION_FIELDS), model,
                            clean_text_completion)

    # -- plumbing -------------------------------------------------------------------------------
    def _kwargs(self, body: dict[str, Any], model: str, fields: frozenset[str]) -> dict[str, Any]:
        import httpx  # a gateway dependency; imported here only to keep the module header light

        t = self.spec.timeouts
        kwargs = {k: v for k, v in body.items() if k in fields and v is not None}
        for k in _MUTABLE_FIELDS.intersection(kwargs):
            # some litellm providers edit messages/tools in place; the gateway may resend this
            # body to another deployment or a fallback model
            kwargs[k] = copy.deepcopy(kwargs[k])
        kwargs.update(self._extra)
        kwargs.update(model=model, num_retries=0, drop_params=self._drop_params,
                      timeout=httpx.Timeout(t.read, connect=t.connect))
        if self.spec.base_url:
            kwargs["api_base"] = self.spec.base_url
        key = self.spec.resolved_api_key()
        if key:  # otherwise litellm falls back to the provider's usual variable (GEMINI_API_KEY ...)
            kwargs["api_key"] = key
        return kwargs

    async def _call(self, fn: Callable[..., Awaitable[Any]], kwargs: dict[str, Any], model: str) -> Any:
        try:
            return await asyncio.wait_for(fn(**kwargs), self.spec.timeouts.total)
        except _upstream_errors() as exc:
            raise self._error(exc, model, started=False) from None

    async def _stream(self, fn_name: str, kwargs: dict[str, Any], model: str,
                      clean: Callable[[dict[str, Any]], dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        litellm = import_litellm()
        errors = _upstream_errors()
        stream = None
        try:
            # Connect errors and HTTP statuses surface here or on the first chunk: both come
            # before our first yield, so the gateway may still retry or fall back.
            try:
                stream = await getattr(litellm, fn_name)(**kwargs, stream=True)
                iterator = stream.__aiter__()
            except errors as exc:
                raise self._error(exc, model, started=False) from None
            started = False
            while True:
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    return
                except errors as exc:
                    raise self._error(exc, model, started=started) from None
                started = True
                yield clean(chunk.model_dump(exclude_none=True))
        finally:
            # Release the upstream connection, also when the client went away mid-stream.
            for close in _closers(stream):
                with contextlib.suppress(*_upstream_errors()):  # never hide the error that got us here
                    await close()

    def _error(self, exc: BaseException, model: str, *, started: bool) -> UpstreamError:
        """One litellm (or transport) exception -> the gateway error it means.

        Retryable (nothing reached the client, and sending again is safe): refused connections
        and failed name lookups, connect timeouts, 429 and 502-504. A read timeout is not retried (a hosted
        provider may be working on, and billing, the request) but lets the gateway fall back.
        401/403/404 come from this backend's key, ``api_base`` or model string, not from the
        client: they become 502s so that the gateway falls back instead of telling the client
        its own key or model is wrong.
        """
        where = f"backend {self.name!r} ({model})"
        original = getattr(exc, "original_exception", None)  # MidStreamFallbackError wraps the cause
        cause = original if isinstance(original, BaseException) else exc
        detail = self._redact(_describe(cause))
        chain = _chain(cause)
        status = getattr(cause, "status_code", None)
        status = status if isinstance(status, int) and 400 <= status < 600 else None

        if any(_is_timeout(e) for e in chain):
            if status == 504 and not started:  # the provider's own gateway timed out: an HTTP status
                return UpstreamStatusError(f"{where} answered 504: {detail}", upstream_status=504,
                                           backend=self.name)
            connect = any(_is_connect_timeout(e) for e in chain)
            return UpstreamTimeout(f"{where} did not answer in time: {detail}", backend=self.name,
                                   retryable=connect and not started)
        if started:
            return UpstreamProtocolError(f"{where} broke off the stream after it started: {detail}",
                                         backend=self.name)
        if any(_is_connect_error(e) for e in chain):
            return UpstreamUnavailable(f"cannot connect to {where}: {detail}", backend=self.name)
        if any(_is_transport_error(e) for e in chain):
            return UpstreamProtocolError(f"{where} broke the connection: {detail}", backend=self.name)
        if status in (401, 403):
            return UpstreamError(f"{where} rejected the credentials ({status}: {detail}); check api_key of "
                                 f"[[backends]] {self.name!r}", backend=self.name, code="upstream_auth_failed")
        if status == 404:
            return UpstreamError(f"{where} answered 404 ({detail}); check the litellm model string {model!r} "
                                 f"and base_url of [[backends]] {self.name!r}", backend=self.name,
                                 code="upstream_not_found")
        if status is not None:
            return UpstreamStatusError(f"{where} answered {status}: {detail}", upstream_status=status,
                                       backend=self.name)
        return UpstreamError(f"{where} failed: {detail}", backend=self.name)

    def _redact(self, text: str) -> str:
        key = self.spec.resolved_api_key()
        return text.replace(key, "***") if key else text

    def _served_models(self) -> list[str]:
        return sorted({d.upstream_model or m.name for m in self.config.models if m.deployed
                       for d in m.all_deployments() if d.backend == self.name})


# -- errors -------------------------------------------------------------------------------------

def _upstream_errors() -> tuple[type[BaseException], ...]:
    """What a litellm call raises when the provider fails: litellm's exceptions all derive from
    the openai SDK's; transport errors and our own ``total`` timeout may escape unwrapped."""
    import httpx
    import openai

    return (openai.OpenAIError, httpx.HTTPError, OSError, TimeoutError, asyncio.TimeoutError)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _describe(exc: BaseException) -> str:
    """litellm's message without its ``litellm.BadRequestError: OpenAIException - `` prefixes."""
    text = str(getattr(exc, "message", None) or exc).strip()
    for _ in range(3):
        head, sep, tail = text.partition(": ")
        if sep and " " not in head and ("Error" in head or "Exception" in head or head.startswith("litellm.")):
            text = tail
    head, sep, tail = text.partition(" - ")
    if sep and head.endswith("Exception"):
        text = tail
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _is_timeout(exc: BaseException) -> bool:
    import httpx
    import openai

    # litellm.Timeout derives from openai.APITimeoutError; TimeoutError is our own ``total`` bound
    return isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError, asyncio.TimeoutError))


def _is_connect_timeout(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))


def _is_connect_error(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.ConnectError, ConnectionRefusedError, socket.gaierror)):
        return True
    aiohttp = sys.modules.get("aiohttp")  # litellm's default transport; only present if litellm loaded it
    return aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError)


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return True
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError)


# -- litellm objects -> OpenAI dicts ------------------------------------------------------------

def clean_chat_completion(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``ModelResponse`` (``exclude_none``) in OpenAI's ``chat.completion`` shape."""
    data.pop("provider_specific_fields", None)
    data.setdefault("object", "chat.completion")
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
        message = choice.setdefault("message", {})
        message.pop("provider_specific_fields", None)
        message.setdefault("role", "assistant")
        message.setdefault("content", None)  # OpenAI sends content: null beside tool_calls
    return data


def clean_chat_chunk(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``ModelResponseStream`` in OpenAI's ``chat.completion.chunk`` shape."""
    data.pop("provider_specific_fields", None)
    data.setdefault("object", "chat.completion.chunk")
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
        delta = choice.setdefault("delta", {})
        delta.pop("provider_specific_fields", None)
    return data


def clean_text_completion(data: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``TextCompletionResponse`` (whole or chunk) in OpenAI's ``text_completion`` shape."""
    data.setdefault("object", "text_completion")
    for choice in data.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        choice.setdefault("text", "")
        choice.setdefault("logprobs", None)
        choice.setdefault("finish_reason", None)
    return data


def _closers(stream: Any) -> list[Callable[[], Awaitable[Any]]]:
    """How to close a litellm stream, so that the provider stops generating.

    A chat stream (``CustomStreamWrapper``) has ``aclose()``. The text-completion wrapper has
    none: it iterates async generators (``litellm.main._async_streaming``, the provider's own
    streaming generator) and closing a generator does not close the stream it is iterating. So
    the streams are looked up in the suspended generators' frames, a few levels deep; only
    stream objects and generators are collected, never the (shared, cached) HTTP client.
    """
    import inspect

    import openai

    stream_types = (import_litellm().CustomStreamWrapper, openai.AsyncStream)
    found: list[Callable[[], Awaitable[Any]]] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, stream_types):
            found.append(obj.aclose if hasattr(obj, "aclose") else obj.close)
        elif inspect.isasyncgen(obj):
            frame = obj.ag_frame
            for value in (frame.f_locals.values() if frame is not None else ()):
                visit(value, depth + 1)
            found.append(obj.aclose)
        else:
            visit(getattr(obj, "completion_stream", None), depth + 1)

    visit(stream, 0)
    return found


async def _release_clients(litellm: ModuleType) -> None:
    """Close litellm's cached HTTP clients and forget them, so a later call builds fresh ones
    instead of reusing a closed client."""
    close = getattr(litellm, "close_litellm_async_clients", None)
    if close is not None:
        await close()
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    if cache is not None and hasattr(cache, "flush_cache"):
        cache.flush_cache()
