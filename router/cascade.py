"""The cascade: which classifier decides, by policy, with a decision cache in front.

    gemini-first     Gemini decides; on any failure (no key, open circuit, timeout, HTTP error,
                     malformed or invalid answer) the embedding classifier decides.
    embedding-first  the embedding classifier decides when its confidence reaches
                     ``confidence_threshold``; below it Gemini is asked, and if Gemini fails the
                     embedding decision stands.
    embedding-only   the embedding classifier alone (offline, keyless).

When no classifier can decide (the embedding extra is missing and Gemini is down, or there is
no user text) ``classify`` raises ``NoDecision`` with the reasons, and the gateway serves its
default model: the router never fails a request. What failed on the way is appended to the
decision's ``reason`` ("gemini: took longer than 2 s").

The embedding classifier is heavy (torch, the encoder, maybe training the default classifier
on first use), so it is loaded on a worker thread that ``start()`` launches and that also runs
every embedding classification afterwards: the event loop never blocks, and requests that
arrive during loading wait for it in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from router.base import Classifier
from router.cache import DecisionCache
from router.decision import RoutingDecision
from router.errors import ClassifierUnavailable, NoDecision, RouterError
from router.text import TextPolicy, cache_key

log = logging.getLogger("oracle_council.router")

Policy = Literal["gemini-first", "embedding-first", "embedding-only"]
POLICIES: tuple[str, ...] = ("gemini-first", "embedding-first", "embedding-only")


@dataclass(frozen=True)
class CascadeOptions:
    policy: Policy = "embedding-only"
    classifier: str | None = None            # a trained classifier folder; None = the default one
    embedding_model: str | None = None       # encoder for the default classifier; None = MiniLM
    embedding_threads: int | None = 1        # torch intra-op threads (process-wide)
    gemini_api_key: str | None = None        # None: Gemini is never asked
    gemini_model: str = "gemini-2.5-flash"
    gemini_timeout: float = 2.0              # seconds for one whole classification, retries included
    gemini_retries: int = 2
    gemini_base_url: str | None = None
    confidence_threshold: float = 0.5        # embedding-first: below it, ask Gemini
    cross_domain_threshold: float | None = None  # None: the classifier's tuned threshold
    cache_size: int = 4096
    cache_ttl: float = 600.0
    text: TextPolicy = field(default_factory=TextPolicy)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(POLICIES)}")


FAILED = "\x00"  # marks a note about a failed call (such decisions are not cached)
Event = Callable[[str, str], None]  # (classifier, outcome): "gemini", "timeout" | "embedding", "ok" ...


class Cascade:
    def __init__(self, options: CascadeOptions, *, embedding: Classifier | None = None,
                 gemini: Classifier | None = None, on_event: Event | None = None) -> None:
        self.options = options
        self.cache = DecisionCache(options.cache_size, options.cache_ttl)
        self.embedding = embedding
        self.gemini = gemini
        self._on_event = on_event
        self._gemini_error = "no Gemini API key"
        self._embedding_error: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-embedding")
        self._loading: Future | None = None
        if gemini is None and options.policy != "embedding-only" and options.gemini_api_key:
            self._build_gemini()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> Future | None:
        """Load the embedding classifier on the worker thread (returns at once)."""
        if self.embedding is None and self._loading is None:
            self._loading = self._worker.submit(self._load_embedding)
        return self._loading

    def load(self) -> None:
        """Load synchronously (the CLI); errors are kept and reported per decision, not raised."""
        future = self.start()
        if future is not None:
            future.result()

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        for c in (self.embedding, self.gemini):
            if c is not None:
                c.close()

    @property
    def embedding_error(self) -> str | None:
        return self._embedding_error

    def status(self) -> dict[str, Any]:
        """Each classifier's state, for ``/readyz``: the embedding classifier is ``loading`` while
        it loads (on a machine's first run that includes training it, about two minutes; requests
        for ``oracle-council`` wait for it meanwhile), then ``ready`` or ``unavailable: why``."""
        if self.embedding is not None:
            embedding = "ready"
        elif self._embedding_error is not None:
            embedding = f"unavailable: {self._embedding_error}"
        elif self._loading is not None and not self._loading.done():
            embedding = "loading"
        else:
            embedding = "not loaded"
        if self.options.policy == "embedding-only":
            gemini = "not used (embedding-only)"
        else:
            gemini = "ready" if self.gemini is not None else f"unavailable: {self._gemini_error}"
        return {"policy": self.options.policy, "embedding": embedding, "gemini": gemini,
                "cached_decisions": len(self.cache)}

    # -- deciding --------------------------------------------------------------------------------
    async def classify(self, text: str, *, within: str | None = None) -> RoutingDecision:
        """A classifier's decision for ``text`` (restricted to the oracle ``within``), or NoDecision."""
        if not text.strip():
            raise NoDecision("no user text to classify")
        key = cache_key(text, within or "")
        hit = self.cache.get(key)
        if hit is not None:
            return replace(hit, router="cache")
        notes: list[str] = []
        decision = await self._decide(text, within, notes)
        failed = any(n.startswith(FAILED) for n in notes)
        notes = [n.removeprefix(FAILED) for n in notes]
        if decision is None:
            raise NoDecision("; ".join(notes) or "no classifier could decide")
        if not failed:  # after a failure nothing is cached: the failed classifier is asked again next time
            self.cache.put(key, decision)
        if notes:
            decision = replace(decision, reason=f"{decision.reason}; {'; '.join(notes)}")
        return decision

    async def _decide(self, text: str, within: str | None, notes: list[str]) -> RoutingDecision | None:
        policy = self.options.policy
        if policy == "gemini-first":
            return await self._ask_gemini(text, within, notes) or await self._ask_embedding(text, within, notes)
        first = await self._ask_embedding(text, within, notes)
        if policy == "embedding-only":
            return first
        if first is not None and first.confidence >= self.options.confidence_threshold:
            return first
        if first is not None:
            notes.append(f"embedding unsure ({first.specialist} {first.confidence:.2f})")
        return await self._ask_gemini(text, within, notes) or first

    async def _ask_gemini(self, text: str, within: str | None, notes: list[str]) -> RoutingDecision | None:
        if self.gemini is None:
            notes.append(f"gemini skipped: {self._gemini_error}")
            return None
        try:
            decision = self.gemini.decide(await self.gemini.ascore(text), within=within)
        except RouterError as exc:
            notes.append(f"{FAILED}gemini: {exc.message}")
            self._event("gemini", type(exc).__name__)
            return None
        self._event("gemini", "ok")
        return decision

    async def _ask_embedding(self, text: str, within: str | None, notes: list[str]) -> RoutingDecision | None:
        self.start()
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(self._worker, self._embedding_scores, text)
            decision = self._require_embedding().decide(scores, within=within)
        except RouterError as exc:
            notes.append(f"{FAILED}embedding: {exc.message}")
            self._event("embedding", type(exc).__name__)
            return None
        self._event("embedding", "ok")
        return decision

    # -- helpers ---------------------------------------------------------------------------------
    def _embedding_scores(self, text: str) -> Any:
        return self._require_embedding().score([text])[0]

    def _require_embedding(self) -> Classifier:
        if self.embedding is None:
            raise ClassifierUnavailable(self._embedding_error or "the embedding classifier is not loaded")
        return self.embedding

    def _load_embedding(self) -> None:
        from router.base import create

        o = self.options
        try:
            self.embedding = create("embedding", path=o.classifier, model=o.embedding_model,
                                    threads=o.embedding_threads, cross_domain_threshold=o.cross_domain_threshold)
        except RouterError as exc:
            self._embedding_error = exc.message
            log.error("embedding classifier unavailable: %s", exc.message)
        except (OSError, ValueError) as exc:  # training data or cache folder problems
            self._embedding_error = f"cannot prepare the embedding classifier: {exc}"
            log.error("%s", self._embedding_error)

    def _build_gemini(self) -> None:
        from router.base import create

        o = self.options
        try:
            self.gemini = create("gemini", api_key=o.gemini_api_key, model=o.gemini_model, timeout=o.gemini_timeout,
                                 retries=o.gemini_retries, base_url=o.gemini_base_url)
        except RouterError as exc:
            self._gemini_error = exc.message
            log.warning("gemini classifier unavailable: %s", exc.message)

    def _event(self, classifier: str, outcome: str) -> None:
        if self._on_event is not None:
            self._on_event(classifier, outcome)
