"""Serving logic of the Ollama API: translate, decide, dispatch, translate back, account.

A request is validated (``protocol``), turned into the OpenAI body every backend takes, and
served through the same ``ModelResolver.decide`` and ``Dispatcher.dispatch`` as the OpenAI
API, so routing, retries, fallbacks and the ``x-oracle-*`` headers are the same. The answer
comes back in Ollama's shape: one JSON object, or NDJSON parts ending in ``done: true``
(``gateway.ndjson``).

Model names: every deployed model, ``oracle-council``, the oracles, and registry models that
fall back. ``/api/tags`` lists them as ``name:latest``, as Ollama does, so a client that checks
by substring (YAZE) finds the name it is configured with; a ``:tag`` suffix is dropped when
resolving, so ``euclid-asm``, ``euclid-asm:latest`` and ``euclid-asm:q4`` are one model.

The YAZE contract, when ``format`` is ``"json"`` or a schema: an answer that is a JSON object
or array passes untouched; a fenced one (```` ```json ... ``` ````) is unfenced; anything else
becomes ``{"text_response": "<the text, intact>"}``. So the content always parses as JSON.
A stream with a format holds its text back and sends it, checked, in one part before the end.

Deadline: YAZE reads with a 60 s timeout, so an answer (or, streaming, its first part) that
is not there after ``deadline`` seconds (55 by default) becomes a 504 with a clear error, sent
while the client still listens.

Tools: calls come back as ``message.tool_calls[].function.{name, arguments}`` with arguments
an object; calls a model wrote as text are recognised (``gateway.toolcalls``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import orjson
from starlette.responses import Response, StreamingResponse

from gateway import __version__, toolcalls
from gateway.ab import Tagger
from gateway.accounting import failed
from gateway.config import ROUTER_MODEL, GatewayConfig, ModelSpec
from gateway.dispatch import Dispatcher, Served
from gateway.errors import GatewayError, ModelNotFound, UpstreamTimeout
from gateway.metrics import Metrics
from gateway.ndjson import MEDIA_TYPE, Timing, final_part, ndjson_lines
from gateway.ollama.protocol import ChatRequest, GenerateRequest, ShowRequest
from gateway.openai.protocol import validate
from gateway.routing import ModelResolver
from gateway.yaze import YazeContext
from router.decision import RoutingDecision

# The Ollama version this API matches; some clients check it before using tools or formats.
OLLAMA_VERSION = "0.12.6"
ANSWER_DEADLINE = 55.0  # seconds: under YAZE's 60 s read timeout
_DONE = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}
_PARAMS = re.compile(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")
Api = Literal["ollama_chat", "ollama_generate"]


class OllamaService:
    def __init__(self, resolver: ModelResolver, dispatcher: Dispatcher, metrics: Metrics, config: GatewayConfig,
                 *, started: float, context: YazeContext | None = None,
                 deadline: float = ANSWER_DEADLINE, tagger: Tagger | None = None) -> None:
        self.resolver = resolver
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.config = config
        self.context = context
        self.deadline = deadline
        self.tag = tagger or Tagger(None, log=False)
        self.modified_at = _timestamp(started)
        self._listed = resolver.model_ids()
        self._known = {*self._listed, *(m.name for m in config.models)}

    # -- model names ----------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """``euclid-asm:latest`` -> ``euclid-asm``; an unknown name is a 404."""
        if name in self._known:
            return name
        base, sep, _tag = name.rpartition(":")
        if sep and base in self._known:
            return base
        raise ModelNotFound(f"model {name!r} not found; GET /api/tags lists the models "
                            f"({', '.join(_tagged(n) for n in self._listed[:6])}, ...)", param="model")

    # -- /api/chat and /api/generate ------------------------------------------------------------
    async def chat(self, raw: Any, request_id: str, http: Any = None) -> Response:
        req: ChatRequest = validate(ChatRequest, raw)  # type: ignore[assignment]
        name = self.canonical(req.model)
        if not req.messages:  # Ollama's way of loading a model: nothing to generate
            return self._loaded(name, {"message": {"role": "assistant", "content": ""}})
        body = req.to_openai()
        body["model"] = name
        return await self._serve("ollama_chat", name, body, req.streaming, req.format is not None, request_id,
                                 http=http)

    async def generate(self, raw: Any, request_id: str, http: Any = None) -> Response:
        req: GenerateRequest = validate(GenerateRequest, raw)  # type: ignore[assignment]
        name = self.canonical(req.model)
        if not req.prompt and not req.images:
            return self._loaded(name, {"response": ""})
        body = req.to_openai()
        body["model"] = name
        return await self._serve("ollama_generate", name, body, req.streaming, req.format is not None, request_id,
                                 completion=req.as_completion, http=http)

    async def _serve(self, api: Api, name: str, body: dict[str, Any], stream: bool, as_json: bool,
                     request_id: str, *, completion: bool = False, http: Any = None) -> Response:
        timing = Timing()
        start = time.perf_counter()
        arm, record = self.tag(name, body, http)
        self.metrics.in_flight.inc()
        decision: RoutingDecision | None = None
        tools = toolcalls.requested_tools(body)
        try:
            if arm == "treatment":
                decision = self.tag.experiment.decision  # type: ignore[union-attr]
            else:
                decision = await self.resolver.decide(name, body)
            if record is not None:
                record.router, record.specialist = decision.router, decision.specialist
            if self.context is not None and not completion:
                body = await self.context.enrich(decision.model, body)
            if stream:
                body["stream_options"] = {"include_usage": True}
            try:
                async with asyncio.timeout(self.deadline):
                    served = await self.dispatcher.dispatch(decision.model, body, stream=stream,
                                                            op="completion" if completion else "chat")
            except TimeoutError:
                raise UpstreamTimeout(f"{decision.model} did not answer within {self.deadline:g} s; the Ollama API "
                                      "gives up before YAZE's 60 s read timeout. Try a shorter num_predict, "
                                      "or stream", retryable=False) from None
            if record is not None:
                record.first_byte = time.perf_counter()
        except GatewayError as exc:
            failed(self.metrics, self.tag, exc, api=api, arm=arm, start=start, request_id=request_id, record=record,
                   model=decision.model if decision else name)
            raise
        except BaseException:
            self.metrics.in_flight.dec()
            raise
        headers = {**decision.headers(), **served.headers(), **self.tag.headers(arm)}
        shape = _Shape(served.model.name, chat=api == "ollama_chat", completion=completion, as_json=as_json,
                       tools=tools)

        if not stream:
            response = served.response or {}
            self.metrics.in_flight.dec()
            self.metrics.account(api, shape.model, served.backend, "ok", response.get("usage"), start, request_id,
                                 record)
            return Response(orjson.dumps(shape.whole(response, timing)), media_type="application/json",
                            headers=headers)

        def on_end(status: str) -> None:
            self.metrics.in_flight.dec()
            self.metrics.account(api, shape.model, served.backend, status, shape.usage, start, request_id, record)

        assert served.rest is not None
        return StreamingResponse(ndjson_lines(shape.parts(served, timing), close=served.rest.aclose, on_end=on_end),
                                 media_type=MEDIA_TYPE,
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    def _loaded(self, name: str, part: dict[str, Any]) -> Response:
        out = {"model": name, "created_at": _now(), **part, "done": True, "done_reason": "load"}
        return Response(orjson.dumps(out), media_type="application/json")


    # -- /api/tags, /api/show, /api/ps, /api/version ----------------------------------------------
    def tags(self) -> dict[str, Any]:
        return {"models": [{"name": _tagged(n), "model": _tagged(n), "modified_at": self.modified_at, "size": 0,
                            "digest": _digest(n), "details": self._details(n)} for n in self._listed]}

    def show(self, raw: Any) -> dict[str, Any]:
        req: ShowRequest = validate(ShowRequest, raw)  # type: ignore[assignment]
        name = self.canonical(req.model_name)
        spec = self.config.model(name)
        details = self._details(name)
        params = (spec.parameters if spec else {}) or {}
        return {
            "license": "",
            "modelfile": f"# served by oracle-council {__version__}\nFROM {self._upstream(spec) or name}\n",
            "parameters": "\n".join(f"{k} {v}" for k, v in params.items()),
            "template": "{{ .Prompt }}",
            "system": (spec.system_prompt or "") if spec else "",
            "details": details,
            "model_info": {"general.architecture": details["family"], "general.basename": name,
                           "oracle_council.oracle": spec.oracle if spec else ("system" if name == ROUTER_MODEL
                                                                              else name),
                           "oracle_council.description": (spec.description if spec else "")},
            "capabilities": ["completion", "tools"],
            "modified_at": self.modified_at,
        }

    def ps(self) -> dict[str, Any]:
        expires = (datetime.now(timezone.utc) + timedelta(hours=24)).isoformat().replace("+00:00", "Z")
        return {"models": [{"name": _tagged(m.name), "model": _tagged(m.name), "size": 0, "digest": _digest(m.name),
                            "details": self._details(m.name), "expires_at": expires, "size_vram": 0}
                           for m in self.config.deployed_models]}

    @staticmethod
    def version() -> dict[str, Any]:
        return {"version": OLLAMA_VERSION, "gateway": f"oracle-council {__version__}"}

    def _details(self, name: str) -> dict[str, Any]:
        spec = self.config.model(name)
        base = (spec.base_model or "") if spec else ""
        backend = self.config.backend(spec.backend) if spec and spec.backend else None
        family = _family(base) if base else ("oracle-council" if spec is None else "")
        size = _PARAMS.search(base.rsplit("/", 1)[-1]) if base else None
        return {"parent_model": base, "format": "gguf" if backend and backend.kind == "ollama" else "safetensors",
                "family": family, "families": [family] if family else None,
                "parameter_size": f"{size.group(1)}B" if size else "", "quantization_level": ""}

    @staticmethod
    def _upstream(spec: ModelSpec | None) -> str | None:
        if spec is None:
            return None
        deployments = spec.all_deployments()
        return deployments[0].upstream_model if deployments else spec.base_model


class _Shape:
    """One answer in Ollama's shape, whole or as parts; remembers the usage for accounting."""

    def __init__(self, model: str, *, chat: bool, completion: bool, as_json: bool,
                 tools: frozenset[str] | None) -> None:
        self.model = model
        self.chat = chat
        self.completion = completion
        self.as_json = as_json
        self.tools = tools if chat else None
        self.usage: dict | None = None

    def part(self, text: str, calls: list[dict] | None = None, thinking: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if not self.chat:
            out["response"] = text
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        out["done"] = False
        return out

    # -- whole ------------------------------------------------------------------------------------
    def whole(self, response: dict[str, Any], timing: Timing) -> dict[str, Any]:
        self.usage = response.get("usage")
        choice = (response.get("choices") or [{}])[0]
        if self.completion:
            text, calls, thinking = choice.get("text") or "", [], None
        else:
            if self.tools:
                toolcalls.rewrite_completion(response, self.tools)
            message = choice.get("message") or {}
            text = message.get("content") or ""
            calls = [_ollama_call(c) for c in message.get("tool_calls") or ()]
            thinking = message.get("reasoning_content")
        if self.as_json and not calls:
            text = as_json_text(text)
        done = _DONE.get(choice.get("finish_reason") or "stop", "stop")
        return final_part(self.part(text, calls, thinking), done, timing, self.usage)

    # -- parts ------------------------------------------------------------------------------------
    async def parts(self, served: Served, timing: Timing) -> AsyncIterator[dict[str, Any]]:
        assert served.first is not None and served.rest is not None
        rest = served.rest
        scanner = toolcalls.ToolCallScanner(self.tools) if self.tools else None
        held: list[str] = []  # text kept back for the JSON check
        streamed: dict[int, dict[str, Any]] = {}  # native tool calls, assembled from their fragments
        found: list[toolcalls.ParsedCall] = []
        finish = "stop"
        chunk: dict[str, Any] | None = served.first
        while chunk is not None:
            self.usage = chunk.get("usage") or self.usage
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue
                finish = choice.get("finish_reason") or finish
                text, thinking = _delta_text(choice, self.completion)
                if text:
                    timing.mark_first()
                    if scanner is not None:
                        text, calls = scanner.feed(text)
                        found += calls
                if text and self.as_json:
                    held.append(text)
                elif text or thinking:
                    yield self.part(text, thinking=thinking)
                for c in (choice.get("delta") or {}).get("tool_calls") or ():
                    _assemble(streamed, c)
            chunk = await anext(rest, None)
        if scanner is not None:
            text, calls = scanner.finish()
            found += calls
            if text and self.as_json:
                held.append(text)
            elif text:
                yield self.part(text)
        calls = [*(_ollama_call(c) for c in streamed.values()),
                 *({"function": {"name": c.name, "arguments": c.arguments}} for c in found)]
        if self.as_json and not calls:
            yield self.part(as_json_text("".join(held)))
        elif held:
            yield self.part("".join(held))
        if calls:
            yield self.part("", calls)
        yield final_part(self.part(""), _DONE.get(finish, "stop"), timing, self.usage)


# -- helpers -------------------------------------------------------------------------------------

def as_json_text(text: str) -> str:
    """The YAZE contract: JSON passes untouched, fenced JSON is unfenced, text is wrapped."""
    s = text.strip()
    if s[:1] in ("{", "["):
        try:
            orjson.loads(s)
            return text
        except orjson.JSONDecodeError:
            pass
    if s.startswith("```") and s.endswith("```") and len(s) > 6:
        inner = s[3:-3]
        nl = inner.find("\n")
        if nl >= 0 and inner[:nl].strip().lower() in ("", "json"):
            inner = inner[nl + 1:]
        inner = inner.strip()
        if inner[:1] in ("{", "["):
            try:
                orjson.loads(inner)
                return inner
            except orjson.JSONDecodeError:
                pass
    return orjson.dumps({"text_response": text}).decode()


def _delta_text(choice: dict[str, Any], completion: bool) -> tuple[str, str | None]:
    if completion:
        return choice.get("text") or "", None
    delta = choice.get("delta") or {}
    return delta.get("content") or "", delta.get("reasoning_content")


def _assemble(calls: dict[int, dict[str, Any]], fragment: Any) -> None:
    """OpenAI streams a call in fragments (name first, arguments in pieces), keyed by index."""
    if not isinstance(fragment, dict):
        return
    call = calls.setdefault(fragment.get("index", len(calls)), {"function": {"name": "", "arguments": ""}})
    fn = fragment.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    call["function"]["arguments"] += fn.get("arguments") or ""


def _ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    args: Any = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            args = {"arguments": args}  # keep what the model wrote rather than drop the call
    if not isinstance(args, dict):
        args = {"value": args}
    return {"function": {"name": fn.get("name") or "", "arguments": args}}


def _tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _digest(name: str) -> str:
    return hashlib.sha256(f"oracle-council/{name}".encode()).hexdigest()


def _family(base_model: str) -> str:
    """``Qwen/Qwen2.5-Coder-1.5B-Instruct`` -> ``qwen2``, ``google/gemma-3-4b-it`` -> ``gemma3``."""
    stem = base_model.rsplit("/", 1)[-1].lower()
    m = re.match(r"([a-z]+)[-_]?(\d*)", stem)
    return f"{m.group(1)}{m.group(2)}" if m else stem


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")
