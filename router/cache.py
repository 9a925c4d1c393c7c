"""The decision cache: least recently used, each entry valid for ``ttl`` seconds.

Keys are ``router.text.cache_key(text, scope)``: a hash of the classified text with case and
whitespace folded, plus the oracle a request was restricted to. Values are classifier decisions
before the gateway maps them onto deployed models, so a config reload never serves a stale
model. Only decisions a classifier made are cached; fallbacks after failures are not, so a
recovered classifier is asked again at once. ``size = 0`` or ``ttl = 0`` turns the cache off.

A hit costs a dict lookup and a move to the end: about a microsecond, under the event loop,
with no lock (asyncio runs one coroutine at a time; the CLI is single-threaded).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from router.decision import RoutingDecision


class DecisionCache:
    def __init__(self, size: int = 4096, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(0, size)
        self.ttl = max(0.0, ttl)
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, RoutingDecision]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl > 0

    def get(self, key: str) -> RoutingDecision | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, decision = entry
        if self._clock() >= expires:
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return decision

    def put(self, key: str, decision: RoutingDecision) -> None:
        if not self.enabled:
            return
        self._entries[key] = (self._clock() + self.ttl, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
