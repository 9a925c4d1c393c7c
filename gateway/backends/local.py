"""In-process backend: one transformers base model with many peft LoRA adapters.

Options (``[backends.options]``):

    base_model      path, Hugging Face id, or ``demo:base`` (required)
    adapters        {name = path or "demo:<name>"}; each name is an ``upstream_model``
    device          "auto" (cuda when available), "cpu", "cuda" or "cuda:N"; default "auto"
    dtype           "auto" (bfloat16 on cuda, float32 on cpu), "float32", "bfloat16", "float16"
    max_new_tokens  completion length when a request sets neither max_tokens nor
                    max_completion_tokens; default 256
    max_batch_size  how many requests are decoded together; default 16 (1 serves them one at a
                    time, in arrival order)
    max_waiting     how many more may wait for a place in the batch; beyond that a request is
                    refused at once with a 503 (retryable: the gateway tries the model's next
                    deployment or fallback); default 256

``upstream_model = "base"`` runs the base model with every adapter disabled. Relative paths are
relative to the config file; ``demo:`` refs are built on first use by ``training.demo``.

Concurrency. Requests are batched continuously (``gateway/backends/batching.py``): one engine
thread decodes every running request together, one forward pass per token, each row under its
own adapter, and a request that arrives mid-way joins the batch at the next token instead of
waiting for the others to finish. A request can never run under another request's adapter: the
adapter is chosen per row inside every LoRA layer, not switched on the model. A lone request
computes exactly what peft computes. Tokens reach the event loop through
``loop.call_soon_threadsafe`` into an ``asyncio.Queue``; the event loop never waits on the model.

Cancellation. A client that goes away closes the stream (or cancels ``chat``); that sets the
request's cancel flag, which the engine checks after every token, so its row leaves the batch
within one decoding step. A request cancelled while waiting for a place in the batch never starts.

Sampling follows the OpenAI API: ``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stop``,
``max_tokens`` / ``max_completion_tokens``, plus vLLM's ``top_k``, ``repetition_penalty``,
``min_tokens`` and ``ignore_eos``; a knob the request leaves out takes the model's
``generation_config`` value, else the neutral one. ``logprobs``, penalties other than
``repetition_penalty`` and, on /v1/completions, ``suffix`` are ignored (``echo`` works). ``n``
(up to 16) runs n sequences in the batch, choice i sampling with ``seed`` + i when a seed is given.

Tools. A request's ``tools`` go to the model's chat template (``apply_chat_template(tools=...)``,
as Qwen2.5's template lists them in its system turn), unless ``tool_choice`` is ``"none"``; the
history's assistant ``tool_calls`` (arguments as objects) and ``tool`` results go in too. The model
answers in text (``<tool_call>{...}</tool_call>`` for Qwen), which the gateway turns into native
``tool_calls`` as for any backend (``gateway/toolcalls.py``). A template that knows no tools
ignores them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends.base import (Backend, Health, chat_chunk, chat_completion, completion_id, text_completion,
                                   usage, wants_usage)
from gateway.config import BackendSpec, GatewayConfig
from gateway.errors import (ConfigError, GatewayError, InvalidRequest, UpstreamError, UpstreamStatusError,
                            UpstreamUnavailable)

logger = logging.getLogger(__name__)

BASE = "base"  # the upstream_model name that means "no adapter"
MAX_CHOICES = 16  # the most choices (n) one request may ask for
OPTIONS = ("base_model", "adapters", "device", "dtype", "max_new_tokens", "max_batch_size", "max_waiting")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Sampling knobs a request may leave out: the model's generation_config fills them, else these.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}

Event = tuple  # ("start", prompt_tokens) | ("text", str) | ("end", finish_reason, completion_tokens)
               # | ("error", exception): what the engine thread hands the event loop


@dataclass(eq=False)  # identity semantics: jobs are dict keys
class _Job:
    """One request (one choice of it), validated, before the engine turns it into a Sequence."""

    adapter: str
    messages: list[dict[str, Any]] | None  # chat: rendered with the chat template
    prompt: str | None                     # completions: used as is
    max_new_tokens: int
    min_new_tokens: int
    sampling: dict[str, float | int]       # temperature/top_p/... as sent; empty = greedy
    stop: list[str]
    seed: int | None
    tools: list[dict[str, Any]] | None = None  # chat: for the chat template
    cancelled: threading.Event = field(default_factory=threading.Event)


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, spec: BackendSpec, config: GatewayConfig) -> None:
        super().__init__(spec, config)
        opts = dict(spec.options)
        where = f"{config.source}: [[backends]] (name = {spec.name!r}), options"
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
        if not isinstance(opts.get("base_model"), str) or not opts["base_model"]:
            raise ConfigError(f"{where}: 'base_model' is required (a path, a Hugging Face id or 'demo:base')")
        adapters = opts.get("adapters", {})
        if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
            raise ConfigError(f"{where}: 'adapters' must be a table of name = path")
        if BASE in adapters:
            raise ConfigError(f"{where}: adapter name {BASE!r} is reserved for the base model without adapters")
        device = opts.get("device", "auto")
        if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ConfigError(f"{where}: 'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}")
        dtype = opts.get("dtype", "auto")
        if dtype not in DTYPES:
            raise ConfigError(f"{where}: 'dtype' must be one of {', '.join(DTYPES)}, not {dtype!r}")
        max_new = opts.get("max_new_tokens", 256)
        if not isinstance(max_new, int) or max_new < 1:
            raise ConfigError(f"{where}: 'max_new_tokens' must be a positive integer")
        max_batch = opts.get("max_batch_size", 16)
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ConfigError(f"{where}: 'max_batch_size' must be a positive integer")
        max_waiting = opts.get("max_waiting", 256)
        if not isinstance(max_waiting, int) or isinstance(max_waiting, bool) or max_waiting < 0:
            raise ConfigError(f"{where}: 'max_waiting' must be a non-negative integer")

        self.base_ref: str = opts["base_model"]
        self.adapter_refs: dict[str, str] = dict(adapters)
        self.device_option: str = device
        self.dtype_option: str = dtype
        self.max_new_tokens: int = max_new
        self.max_batch_size: int = max_batch
        self.max_waiting: int = max_waiting

        self._model: Any = None
        self._tokenizer: Any = None
        self._device: str = ""
        self._context: int = 0  # the model's max positions: prompt + completion must fit
        self._eos: set[int] = set()
        self._pad: int = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-{spec.name}")  # loading
        self._engine: Any = None  # batching.Engine, once loaded
        self._adapter_index: dict[str, int] = {}
        self._jobs: dict[_Job, Callable[[BaseException], None]] = {}  # running or waiting -> fail it
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model on the loading thread (a no-op once loaded; that thread serialises calls)."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    async def aclose(self) -> None:
        """Cancel every request, stop the engine and drop the model (freed once the engine is
        done with it). The backend cannot serve afterwards."""
        self._closed = True
        gone = UpstreamUnavailable(f"backend {self.name!r} is shutting down", backend=self.name)
        for job, fail in list(self._jobs.items()):
            job.cancelled.set()
            fail(gone)
        if self._engine is not None:
            self._engine.close()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._model = self._tokenizer = self._engine = None

    def load_gauges(self) -> dict[str, Callable[[], float]]:
        def count(state: str) -> Callable[[], float]:
            return lambda: self._engine.counts()[state] if self._engine is not None else 0
        return {"running": count("running"), "waiting": count("waiting")}

    async def health(self) -> Health:
        if self._model is None:
            return Health(False, "not loaded yet: start() loads the base model and adapters")
        names = [BASE, *self.adapter_refs]
        return Health(True, f"{self.base_ref} on {self._device}; adapters: {', '.join(self.adapter_refs) or '(none)'}",
                      models=names)

    def _resolve(self, ref: str) -> str:
        """``demo:NAME`` → the built demo artifact; an existing path (relative to the config
        file) → that path; anything else is taken as a Hugging Face id."""
        if ref.startswith("demo:"):
            from training.demo import demo_path

            return str(demo_path(ref))
        path = self.config.resolve_path(ref)
        return path if Path(path).exists() else ref

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device_option
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self.dtype_option
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        base = self._resolve(self.base_ref)
        try:
            tokenizer = AutoTokenizer.from_pretrained(base)
            model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device)
            context = model.config.max_position_embeddings
            if self.adapter_refs:
                from peft import PeftModel

                (first, path), *rest = self.adapter_refs.items()
                with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
                    model = PeftModel.from_pretrained(model, self._resolve(path), adapter_name=first)
                for name, path in rest:
                    model.load_adapter(self._resolve(path), adapter_name=name)
        except (OSError, ValueError) as exc:
            raise UpstreamUnavailable(f"backend {self.name!r} could not load {self.base_ref!r} "
                                      f"with adapters {sorted(self.adapter_refs)}: {exc}", backend=self.name) from exc
        rows = None
        if self.adapter_refs:
            from gateway.backends.batching import UnsupportedAdapter, install_multi_lora

            try:
                model, rows = install_multi_lora(model, list(self.adapter_refs))
            except UnsupportedAdapter as exc:
                raise UpstreamUnavailable(f"backend {self.name!r}: {exc}", backend=self.name) from exc
        model.eval()
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos)
        self._tokenizer, self._device, self._context = tokenizer, device, context
        self._adapter_index = {BASE: 0, **{name: k + 1 for k, name in enumerate(self.adapter_refs)}}

        from gateway.backends.batching import Engine

        self._engine = Engine(model, rows, device=device, eos=self._eos, pad=self._pad, context=context,
                              max_batch=self.max_batch_size, name=self.name)
        self._model = model  # last: a request that sees the model finds everything else in place

    # -- the OpenAI surface -------------------------------------------------------------------

    async def chat(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        jobs = self._jobs_for(body, model, messages=_chat_messages(body))
        texts, finishes, prompt_tokens, completion_tokens = await self._collect(jobs)
        out = chat_completion(model=model, content=texts[0], finish_reason=finishes[0],
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        out["choices"] = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                           "finish_reason": finish} for i, (text, finish) in enumerate(zip(texts, finishes))]
        return out

    async def stream_chat(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        jobs = self._jobs_for(body, model, messages=_chat_messages(body))
        id_, created = completion_id(), int(time.time())

        def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out = chat_chunk(id=id_, model=model, created=created, delta=delta, finish_reason=finish)
            out["choices"][0]["index"] = index
            return out

        prompt_tokens = completion_tokens = 0
        async with contextlib.aclosing(self._merged(jobs)) as events:
            async for index, event in events:
                if event[0] == "start":
                    prompt_tokens = event[1]
                    yield chunk(index, {"role": "assistant", "content": ""})
                elif event[0] == "text":
                    yield chunk(index, {"content": event[1]})
                else:
                    completion_tokens += event[2]
                    yield chunk(index, {}, event[1])
        if wants_usage(body):
            yield {**chunk(0, {}), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    async def completion(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        prompt = _completion_prompt(body)
        jobs = self._jobs_for(body, model, prompt=prompt)
        texts, finishes, prompt_tokens, completion_tokens = await self._collect(jobs)
        if body.get("echo"):
            texts = [prompt + text for text in texts]
        out = text_completion(model=model, text=texts[0], finish_reason=finishes[0],
                              prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        out["choices"] = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                          for i, (text, finish) in enumerate(zip(texts, finishes))]
        return out

    async def stream_completion(self, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        prompt = _completion_prompt(body)
        jobs = self._jobs_for(body, model, prompt=prompt)
        id_, created = completion_id("cmpl"), int(time.time())

        def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
            out = text_completion(model=model, text=text, finish_reason=finish, prompt_tokens=0,
                                  completion_tokens=0, id=id_, created=created, chunk=True)
            out["choices"][0]["index"] = index
            return out

        prompt_tokens = completion_tokens = 0
        async with contextlib.aclosing(self._merged(jobs)) as events:
            async for index, event in events:
                if event[0] == "start":
                    prompt_tokens = event[1]
                    if body.get("echo"):
                        yield chunk(index, prompt)
                elif event[0] == "text":
                    yield chunk(index, event[1])
                else:
                    completion_tokens += event[2]
                    yield chunk(index, "", event[1])
        if wants_usage(body):
            yield {**chunk(0, ""), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    # -- requests → jobs → events -------------------------------------------------------------

    def _jobs_for(self, body: dict[str, Any], model: str, *, messages: list[dict[str, Any]] | None = None,
                  prompt: str | None = None) -> list[_Job]:
        """One job per choice (``n``); with a ``seed``, choice i samples with seed + i."""
        n = body.get("n")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
            raise InvalidRequest(f"n must be an integer from 1 to {MAX_CHOICES}", param="n")
        job = self._job(body, model, messages=messages, prompt=prompt)
        return [job] + [dataclasses.replace(job, seed=None if job.seed is None else job.seed + i,
                                            cancelled=threading.Event()) for i in range(1, n)]

    async def _merged(self, jobs: list[_Job]) -> AsyncIterator[tuple[int, Event]]:
        """The jobs' events as (choice index, event), in the order they come; closing this
        generator (or one job failing) ends every job."""
        if len(jobs) == 1:
            async with contextlib.aclosing(self._events(jobs[0])) as events:
                async for event in events:
                    yield 0, event
            return
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        async def pump(index: int, job: _Job) -> None:
            try:
                async with contextlib.aclosing(self._events(job)) as events:
                    async for event in events:
                        queue.put_nowait((index, event))
            except Exception as exc:  # a GatewayError, or the backend shutting down
                queue.put_nowait((index, ("error", exc)))

        tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
        try:
            ended = 0
            while ended < len(jobs):
                index, event = await queue.get()
                if event[0] == "error":
                    raise event[1]
                yield index, event
                ended += event[0] == "end"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self, jobs: list[_Job]) -> tuple[list[str], list[str], int, int]:
        """Run the jobs to the end: (texts, finish reasons, prompt tokens, completion tokens of all)."""
        parts: list[list[str]] = [[] for _ in jobs]
        finishes = [""] * len(jobs)
        prompt_tokens = completion_tokens = 0
        async with contextlib.aclosing(self._merged(jobs)) as events:
            async for index, event in events:
                if event[0] == "start":
                    prompt_tokens = event[1]
                elif event[0] == "text":
                    parts[index].append(event[1])
                else:
                    finishes[index] = event[1]
                    completion_tokens += event[2]
        return ["".join(p) for p in parts], finishes, prompt_tokens, completion_tokens

    def _job(self, body: dict[str, Any], model: str, *, messages: list[dict[str, Any]] | None = None,
             prompt: str | None = None) -> _Job:
        """Validate a request (before anything is queued or sent) and describe it for the engine."""
        if model != BASE and model not in self.adapter_refs:
            known = ", ".join([BASE, *self.adapter_refs])
            raise UpstreamStatusError(f"backend {self.name!r} has no adapter {model!r}; it serves: {known}. "
                                      "Check upstream_model in the config.", upstream_status=404, backend=self.name)
        max_new = next((body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None),
                       self.max_new_tokens)
        if not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1:
            raise InvalidRequest("max_tokens must be a positive integer", param="max_tokens")
        min_new = max_new if body.get("ignore_eos") else (body.get("min_tokens") or 0)
        if not isinstance(min_new, int) or min_new < 0:
            raise InvalidRequest("min_tokens must be a non-negative integer", param="min_tokens")
        sampling = {k: body[k] for k in NEUTRAL if body.get(k) is not None}
        for key, value in sampling.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(f"{key} must be a non-negative number", param=key)
        if "top_p" in sampling and not 0 < sampling["top_p"] <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("stop must be a string or a list of strings", param="stop")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise InvalidRequest("seed must be an integer", param="seed")
        tools = body.get("tools") if messages is not None and body.get("tool_choice") != "none" else None
        if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
            raise InvalidRequest("tools must be a list of tool objects", param="tools")
        return _Job(adapter=model, messages=messages, prompt=prompt, max_new_tokens=max_new,
                    min_new_tokens=min(min_new, max_new), sampling=sampling, stop=[s for s in stop if s],
                    seed=seed, tools=tools or None)

    async def _events(self, job: _Job) -> AsyncIterator[Event]:
        """Run ``job`` in the engine and yield its events; closing this generator cancels the job."""
        if self._closed:
            raise UpstreamUnavailable(f"backend {self.name!r} is shut down", backend=self.name)
        if self._model is None:  # set last by _load
            await self.start()
        if len(self._jobs) >= self.max_batch_size + self.max_waiting:
            raise UpstreamUnavailable(f"backend {self.name!r} is full: {len(self._jobs)} requests running or waiting "
                                      f"(max_batch_size {self.max_batch_size} + max_waiting {self.max_waiting})",
                                      backend=self.name)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:  # called on the engine thread
            if not job.cancelled.is_set() and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed in between
                    loop.call_soon_threadsafe(queue.put_nowait, event)

        def fail(exc: BaseException) -> None:  # from aclose(), on any thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        self._jobs[job] = fail
        self._engine.submit(self._sequence(job, emit))
        try:
            while True:
                event = await queue.get()
                if event[0] == "error":
                    raise event[1]
                yield event
                if event[0] == "end":
                    return
        finally:
            job.cancelled.set()
            self._jobs.pop(job, None)

    def _sequence(self, job: _Job, emit: Callable[[Event], None]) -> Any:
        """The engine's view of a job; its callbacks run on the engine thread."""
        from gateway.backends.batching import Sequence

        tokenizer, context = self._tokenizer, self._context

        def tokenize() -> list[int]:
            if job.messages is not None:
                text = tokenizer.apply_chat_template(job.messages, tools=job.tools, tokenize=False,
                                                     add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tokenizer(job.prompt)["input_ids"]
            if not ids or len(ids) >= context:
                raise InvalidRequest(f"the prompt has {len(ids)} tokens; this model takes at most "
                                     f"{context - 1} plus the completion",
                                     param="messages" if job.messages is not None else "prompt")
            return ids

        text = _TextStream(tokenizer, job.stop, emit)

        def end(finish: str, completion_tokens: int) -> None:
            text.end()
            emit(("end", finish, completion_tokens))

        # A knob the request leaves out takes the model's generation_config value, else the neutral
        # one; temperature 0 means greedy decoding.
        defaults = self._model.generation_config
        knobs = {key: job.sampling.get(key, getattr(defaults, key, None) or neutral) for key, neutral in NEUTRAL.items()}
        return Sequence(adapter=self._adapter_index[job.adapter], tokenize=tokenize, max_new=job.max_new_tokens,
                        min_new=job.min_new_tokens, temperature=float(knobs["temperature"]),
                        top_p=float(knobs["top_p"]), top_k=int(knobs["top_k"]),
                        repetition_penalty=float(knobs["repetition_penalty"]), seed=job.seed,
                        cancelled=job.cancelled, on_start=lambda n: emit(("start", n)), on_token=text.push,
                        on_end=end, on_error=lambda exc: emit(("error", _as_gateway_error(exc, self.name))))


class _TextStream:
    """Turns one request's tokens into text events, on the engine thread.

    ``push`` decodes the new token and emits text, held back while it could still be the start
    of a stop string or ends in an unfinished UTF-8 character; on a stop string it emits the text
    before it and returns True (the request is done). ``end`` emits what was held back."""

    def __init__(self, tokenizer: Any, stop: list[str], emit: Callable[[Event], None]) -> None:
        self.tokenizer, self.stop, self.emit = tokenizer, stop, emit
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.stopped = False

    def push(self, token: int) -> bool:
        if not self.stopped:
            self.ids.append(token)
            self._advance(final=False)
        return self.stopped

    def end(self) -> None:
        if not self.stopped:
            self._advance(final=True)

    def _advance(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self._send(text, max(self.sent, min(hits)))
            return
        safe = len(text)
        if not final:
            while safe > self.sent and text[safe - 1] == "\ufffd":  # a character still arriving
                safe -= 1
            held = max((k for s in self.stop for k in range(1, len(s)) if text[:safe].endswith(s[:k])), default=0)
            safe -= held
        self._send(text, safe)

    def _send(self, text: str, upto: int) -> None:
        if upto > self.sent:
            self.emit(("text", text[self.sent:upto]))
            self.sent = upto


# -- request helpers --------------------------------------------------------------------------

def _chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI messages as chat-template input: {role, content} text (``developer`` becomes
    ``system``), with an assistant's ``tool_calls`` (arguments parsed into objects, as templates
    print them) and a tool result's ``tool_call_id`` / ``name``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            if any(part.get("type") != "text" for part in content):
                raise InvalidRequest("the local backend accepts text content only", param="messages")
            content = "".join(part.get("text", "") for part in content)
        role = m.get("role")
        message: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content or ""}
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = [_template_call(call) for call in m["tool_calls"]]
        if role == "tool":
            message.update({k: m[k] for k in ("tool_call_id", "name") if m.get(k)})
        out.append(message)
    return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as chat templates read it: the arguments an object, not a JSON string."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # not JSON: the template prints the string
    return {"type": "function", "id": call.get("id"), "function": {"name": function.get("name"),
                                                                     "arguments": arguments}}


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string (one prompt per request on the local backend)", param="prompt")
    return prompt


def _as_gateway_error(exc: BaseException, backend: str) -> BaseException:
    """Request errors pass as they are; anything else (out of memory, a CUDA fault) becomes a
    502 that names the backend."""
    if isinstance(exc, GatewayError):
        return exc
    logger.error("backend %r: generation failed", backend, exc_info=exc)
    return UpstreamError(f"backend {backend!r}: generation failed: {exc!r}", backend=backend)
