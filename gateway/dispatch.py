"""Sending one request to a model: deployments, retries, circuit breakers and fallbacks.

For the model a request resolved to, the dispatcher walks a chain: the model itself, its
configured ``fallbacks``, then ``master-sword`` when deployed. For each model of the chain it
tries the deployments whose circuit lets traffic through, least loaded and fastest first.
An attempt that fails *before the first byte* with a retryable error (refused connection,
connect timeout, 429, 502-504) is retried on the same deployment with jittered exponential
backoff (tenacity), up to the backend's ``retries``; any other upstream failure moves on to
the next deployment, then to the next model. An error that is the client's fault (a 4xx from
the upstream other than 429) is returned at once: another model would not fix it.

Streams are opened here and their first chunk read before anything is sent to the client, so
that retries and fallbacks stay invisible to it and the response headers can name the model
that actually answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from gateway.backends.base import Backend
from gateway.config import MASTER_SWORD, GatewayConfig, ModelSpec
from gateway.errors import ModelNotFound, UpstreamError, UpstreamStatusError, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import Metrics

Op = Literal["chat", "completion"]


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open → (``reset_after`` s) → half-open:
    one probe request goes through; its success closes the circuit, its failure re-opens it."""

    def __init__(self, threshold: int, reset_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._clock() - self.opened_at >= self.reset_after:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self.opened_at = self._clock()
        self._probing = False


@dataclass(eq=False)
class Target:
    """One deployment of one model, with its live health."""

    model: ModelSpec
    backend: Backend
    upstream_model: str
    weight: float
    breaker: CircuitBreaker
    in_flight: int = 0
    latency_ewma: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_ewma = seconds if self.latency_ewma == 0 else 0.8 * self.latency_ewma + 0.2 * seconds

    def sort_key(self) -> tuple[float, float]:
        return (self.in_flight / self.weight, self.latency_ewma)


@dataclass
class Served:
    """What the dispatcher got: a full response, or the first chunk and the rest of a stream."""

    model: ModelSpec
    target: Target
    requested: str
    fallback_from: list[str] = field(default_factory=list)
    response: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    rest: "TrackedStream | None" = None

    @property
    def backend(self) -> str:
        return self.target.backend.name

    def headers(self) -> dict[str, str]:
        """Headers about who served the request; they override the routing decision's
        ``x-oracle-model`` when a fallback answered instead of the decided model."""
        h = {"x-oracle-backend": self.backend}
        if self.fallback_from:
            h["x-oracle-model"] = self.model.name
            h["x-oracle-fallback"] = ">".join([*self.fallback_from, self.model.name])
        return h


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


def _client_fault(exc: UpstreamError) -> bool:
    return isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500 and exc.upstream_status != 429


class Dispatcher:
    def __init__(self, config: GatewayConfig, backends: dict[str, Backend], metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.targets: dict[str, list[Target]] = {}
        for m in config.deployed_models:
            self.targets[m.name] = [
                Target(m, backends[d.backend], d.upstream_model or m.name, d.weight,
                       CircuitBreaker(backends[d.backend].spec.circuit_breaker.failure_threshold,
                                      backends[d.backend].spec.circuit_breaker.reset_after))
                for d in m.all_deployments()
            ]

    def chain(self, name: str) -> list[ModelSpec]:
        """The model, its deployed fallbacks in order, then master-sword: no repeats."""
        spec = self.config.model(name)
        if spec is None:
            raise ModelNotFound(f"model {name!r} does not exist; GET /v1/models lists the models", param="model")
        names = [name, *spec.fallbacks, MASTER_SWORD]
        out: list[ModelSpec] = []
        for n in names:
            m = self.config.model(n)
            if m is not None and m.deployed and m not in out:
                out.append(m)
        if not out:
            raise ModelNotFound(f"model {name!r} is not deployed and none of its fallbacks is", param="model")
        return out

    async def dispatch(self, name: str, body: dict[str, Any], *, op: Op, stream: bool) -> Served:
        chain = self.chain(name)
        tried: list[str] = []
        last: UpstreamError | None = None
        for model in chain:
            request = prepare_body(model, body, op)
            for target in self._ordered(model.name):
                try:
                    served = await self._with_retries(target, request, op, stream)
                except UpstreamError as exc:
                    if _client_fault(exc):
                        raise
                    last = exc
                    continue
                served.requested = name
                served.fallback_from = tried
                if tried:
                    self.metrics.fallbacks.labels(tried[0], model.name).inc()
                return served
            tried.append(model.name)
        if last is None:
            raise UpstreamUnavailable(f"every deployment of {' > '.join(m.name for m in chain)} has its circuit "
                                      "open after repeated failures; retry shortly", retryable=False)
        if len(chain) > 1:
            last.message = f"{last.message} (also tried: {' > '.join(m.name for m in chain)})"
            last.args = (last.message,)
        raise last

    def _ordered(self, model: str) -> list[Target]:
        allowed = [t for t in self.targets[model] if t.breaker.state != "open"]
        return sorted(allowed, key=Target.sort_key)

    async def _with_retries(self, target: Target, body: dict, op: Op, stream: bool) -> Served:
        backend = target.backend
        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + backend.spec.retries),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            retry=retry_if_exception(_retryable),
            before_sleep=lambda _: self.metrics.retries.labels(backend.name).inc(),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(target, body, op, stream)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _attempt(self, target: Target, body: dict, op: Op, stream: bool) -> Served:
        if not target.breaker.allow():
            raise UpstreamUnavailable(f"deployment {target.backend.name}/{target.upstream_model} is cooling down "
                                      "after repeated failures (circuit open)", backend=target.backend.name,
                                      retryable=False)
        backend, labels = target.backend, (target.backend.name, target.model.name)
        start = time.perf_counter()
        target.in_flight += 1
        try:
            if stream:
                rest = (backend.stream_chat if op == "chat" else backend.stream_completion)(body, target.upstream_model)
                try:
                    first = await rest.__anext__()
                except StopAsyncIteration:
                    raise UpstreamError(f"backend {backend.name!r} sent an empty stream", backend=backend.name) from None
                except BaseException:
                    await rest.aclose()
                    raise
                served = Served(target.model, target, "", first=first, rest=self._tracked(target, rest, start))
            else:
                call = backend.chat if op == "chat" else backend.completion
                async with asyncio.timeout(backend.spec.timeouts.total):
                    response = await call(body, target.upstream_model)
                served = Served(target.model, target, "", response=response)
        except TimeoutError:
            target.in_flight -= 1
            self._failed(target, "UpstreamTimeout")
            raise UpstreamTimeout(f"backend {backend.name!r} took longer than its total timeout "
                                  f"({backend.spec.timeouts.total:g} s)", backend=backend.name, retryable=False) from None
        except UpstreamError as exc:
            target.in_flight -= 1
            if _client_fault(exc):
                target.breaker.record_success()  # the upstream is up; the request was bad
            else:
                self._failed(target, type(exc).__name__)
            raise
        except BaseException:
            target.in_flight -= 1
            raise
        elapsed = time.perf_counter() - start
        target.breaker.record_success()
        target.observe_latency(elapsed)
        self._circuit_gauge(target)
        self.metrics.upstream_seconds.labels(*labels, "first_byte").observe(elapsed)
        if not stream:
            target.in_flight -= 1
            self.metrics.upstream_seconds.labels(*labels, "total").observe(elapsed)
        return served

    def _tracked(self, target: Target, rest: AsyncIterator[dict], start: float) -> "TrackedStream":
        return TrackedStream(self, target, rest, start)

    def _failed(self, target: Target, kind: str) -> None:
        target.breaker.record_failure()
        self.metrics.upstream_errors.labels(target.backend.name, target.model.name, kind).inc()
        self._circuit_gauge(target)

    def _circuit_gauge(self, target: Target) -> None:
        self.metrics.circuit_open.labels(target.backend.name, target.upstream_model).set(
            1 if target.breaker.state == "open" else 0)


class TrackedStream:
    """The rest of a stream, keeping its deployment's in-flight count, latency and breaker right.
    ``aclose()`` is idempotent and closes the upstream even if iteration never started."""

    def __init__(self, dispatcher: Dispatcher, target: Target, rest: AsyncIterator[dict], start: float) -> None:
        self._d, self._target, self._rest, self._start = dispatcher, target, rest, start
        self._closed = False

    def __aiter__(self) -> "TrackedStream":
        return self

    def ready(self) -> int:
        """Chunks already received and parsed, waiting to be read (0 when the backend cannot tell)."""
        ready = getattr(self._rest, "ready", None)
        return ready() if ready is not None else 0

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._rest.__anext__()
        except UpstreamError as exc:
            self._d._failed(self._target, type(exc).__name__)
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        t = self._target
        t.in_flight -= 1
        self._d.metrics.upstream_seconds.labels(t.backend.name, t.model.name, "total").observe(
            time.perf_counter() - self._start)
        await self._rest.aclose()


def prepare_body(model: ModelSpec, body: dict[str, Any], op: Op) -> dict[str, Any]:
    """The request as this model should receive it: its default parameters where the client
    set none, and its system prompt when the conversation has no system message."""
    if not model.parameters and not (op == "chat" and model.system_prompt):
        return body
    out = {**model.parameters, **body}
    if op == "chat" and model.system_prompt:
        messages = body.get("messages") or []
        if not any(isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
            out["messages"] = [{"role": "system", "content": model.system_prompt}, *messages]
    return out
