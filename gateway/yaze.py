"""YAZE as a context source: the project's symbols for the ASM specialists.

With a ``[yaze]`` table in the config, the gateway reads the symbol table of the project open
in YAZE (``GET {base_url}/api/v1/symbols?format=asar`` on ``z3ed --http-port``), finds the
labels and addresses the last user message of a request mentions, and gives the specialist
their definitions in its system message, bounded by ``max_context_chars``:

    ; Symbols of the YAZE project that this request mentions (label = address):
    Link_ReceiveItem = $0987AD
    SRAM_Sword = $7EF359

The table is fetched when the app starts and again, in the background, once it is older than
``ttl``; a request never waits for a refresh. Only while no table has ever arrived does a
request wait for the fetch, at most ``timeout`` seconds (0.3 by default). After a failed
fetch (YAZE not running, an error status, a table too large) nothing is tried for
``RETRY_AFTER`` seconds, so a YAZE that is down costs requests nothing at all.

The table format is Asar's as YAZE exports it (``org $XXXXXX`` then ``Label:``); defines
(``!Name = $XXXXXX``), assignments (``Name = $XXXXXX``) and one-symbol-per-line exports
(``XXXXXX Label``, ``PRG:XXXXXX:Label``) are read too, and so is YAZE's JSON wrapping
(``{"symbols": "<text>", "format": "asar"}``). Parsing runs on a worker thread, so a huge
table does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from gateway.config import GatewayConfig, YazeSettings
from gateway.toolcalls import TOOL_RESULT_PREFIX

log = logging.getLogger("oracle_council.yaze")

SYMBOLS_PATH = "/api/v1/symbols"
RETRY_AFTER = 15.0  # seconds without a fetch after a failed one
MAX_MATCHES = 64  # symbols considered per request, before the size bound
HEADER = "; Symbols of the YAZE project that this request mentions (label = address):"

_ORG = re.compile(r"^\s*org\s+\$([0-9A-Fa-f]{1,6})\b", re.IGNORECASE)
_LABEL = re.compile(r"^([A-Za-z_][\w.]*):")
_ASSIGN = re.compile(r"^\s*(!?[A-Za-z_][\w.]*)\s*=\s*\$([0-9A-Fa-f]{1,6})\b")
_ONE_PER_LINE = re.compile(r"^\s*(?:PRG:)?\$?([0-9A-Fa-f]{6})[\s:]+(!?[A-Za-z_][\w.]*)\s*$")
_WORD = re.compile(r"!?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ADDRESS = re.compile(r"(?:\$|\b0x)([0-9A-Fa-f]{6}|[0-9A-Fa-f]{4})\b")


@dataclass
class SymbolTable:
    by_name: dict[str, int] = field(default_factory=dict)
    by_address: dict[int, list[str]] = field(default_factory=dict)

    def add(self, name: str, address: int) -> None:
        if name not in self.by_name:
            self.by_name[name] = address
            self.by_address.setdefault(address, []).append(name)

    def __len__(self) -> int:
        return len(self.by_name)

    def mentioned(self, text: str) -> list[tuple[str, int]]:
        """The symbols ``text`` names or whose address it writes, in order of mention."""
        found: dict[str, int] = {}
        for m in _WORD.finditer(text):
            word = m.group()
            if len(word) >= 3 and word not in found:
                addr = self.by_name.get(word)
                if addr is not None:
                    found[word] = addr
                    if len(found) >= MAX_MATCHES:
                        return list(found.items())
        for m in _ADDRESS.finditer(text):
            value = int(m.group(1), 16)
            candidates = [value]
            if len(m.group(1)) == 4 and value < 0x2000:  # low RAM is mirrored in bank $00-$3F
                candidates.append(0x7E0000 | value)
            for addr in candidates:
                for name in self.by_address.get(addr, ()):
                    found.setdefault(name, addr)
            if len(found) >= MAX_MATCHES:
                break
        return list(found.items())


def parse_symbols(text: str) -> SymbolTable:
    """A symbol table from YAZE's Asar export (or the other line formats above)."""
    table = SymbolTable()
    org: int | None = None
    for line in text.splitlines():
        if not line or line[0] == ";":
            continue
        m = _ORG.match(line)
        if m:
            org = int(m.group(1), 16)
            continue
        m = _ONE_PER_LINE.match(line)
        if m:
            table.add(m.group(2), int(m.group(1), 16))
            continue
        m = _LABEL.match(line)
        if m:
            if org is not None:
                table.add(m.group(1), org)
            continue
        m = _ASSIGN.match(line)
        if m:
            table.add(m.group(1), int(m.group(2), 16))
    return table


def _table_from_body(content: bytes, content_type: str) -> SymbolTable:
    if "json" in content_type or content[:1] == b"{":
        data = orjson.loads(content)
        symbols = data.get("symbols") if isinstance(data, dict) else None
        if isinstance(symbols, list):  # [{"name": ..., "address": ...}]
            table = SymbolTable()
            for s in symbols:
                if isinstance(s, dict) and isinstance(s.get("name"), str):
                    addr = s.get("address")
                    addr = int(addr.lstrip("$"), 16) if isinstance(addr, str) else addr
                    if isinstance(addr, int):
                        table.add(s["name"], addr)
            return table
        if not isinstance(symbols, str):
            raise ValueError("JSON body without a 'symbols' text or list")
        return parse_symbols(symbols)
    return parse_symbols(content.decode("utf-8", "replace"))


class YazeContext:
    def __init__(self, settings: YazeSettings, config: GatewayConfig, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.models = frozenset(settings.models) or frozenset(
            m.name for m in config.models
            if m.name.endswith("-asm") or any(t.startswith("asm") for t in m.task_types))
        self._system_prompts = {m.name: m.system_prompt for m in config.models if m.system_prompt}
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._table: SymbolTable | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None
        self._task: asyncio.Task | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.settings.base_url.rstrip("/"), transport=self._transport,
                                         timeout=httpx.Timeout(self.settings.fetch_timeout))
        self._refresh()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def table(self) -> SymbolTable | None:
        return self._table

    # -- the request path ------------------------------------------------------------------------
    async def enrich(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with the definitions of the symbols its last user message mentions, for an
        ASM model; otherwise (or with nothing to add) ``body`` itself."""
        if model not in self.models:
            return body
        text = _last_user_text(body.get("messages"))
        if not text:
            return body
        table = await self._current()
        if table is None or not len(table):
            return body
        mentioned = table.mentioned(text)
        if not mentioned:
            return body
        return self._with_context(model, body, self._render(mentioned))

    async def _current(self) -> SymbolTable | None:
        table = self._table
        if table is not None:
            if time.monotonic() - self._fetched_at > self.settings.ttl:
                self._refresh()  # serve the stale table meanwhile
            return table
        task = self._refresh()
        if task is None:
            return None
        try:
            async with asyncio.timeout(self.settings.timeout):
                await asyncio.shield(task)
        except TimeoutError:
            return None
        return self._table

    def _render(self, mentioned: list[tuple[str, int]]) -> str:
        budget = self.settings.max_context_chars - len(HEADER) - 1
        lines = []
        for name, addr in mentioned:
            line = f"{name} = ${addr:06X}"
            budget -= len(line) + 1
            if budget < 0:
                break
            lines.append(line)
        return "\n".join([HEADER, *lines]) if lines else ""

    def _with_context(self, model: str, body: dict[str, Any], block: str) -> dict[str, Any]:
        """One system message first: the client's, else the model's own system prompt (which the
        dispatcher would otherwise have added), with the block appended."""
        if not block:
            return body
        messages = list(body["messages"])
        first = messages[0] if messages else None
        if isinstance(first, dict) and first.get("role") in ("system", "developer") \
                and isinstance(first.get("content"), str):
            messages[0] = {**first, "content": f"{first['content']}\n\n{block}"}
        else:
            own = self._system_prompts.get(model)
            messages.insert(0, {"role": "system", "content": f"{own}\n\n{block}" if own else block})
        return {**body, "messages": messages}

    # -- fetching ----------------------------------------------------------------------------------
    def _refresh(self) -> asyncio.Task | None:
        """The running fetch, a new one, or None while failures are backing off."""
        if self._task is not None and not self._task.done():
            return self._task
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_AFTER:
            return None
        if self._client is None:
            return None
        self._task = asyncio.get_running_loop().create_task(self._fetch(), name="yaze-symbols")
        return self._task

    async def _fetch(self) -> None:
        assert self._client is not None
        url = f"{self.settings.base_url}{SYMBOLS_PATH}"
        try:
            content, content_type = await self._download()
            table = await asyncio.to_thread(_table_from_body, content, content_type)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # YAZE is optional: whatever goes wrong, requests go on without it
            first = self._failed_at is None
            self._failed_at = time.monotonic()
            (log.warning if first else log.debug)("YAZE symbols from %s unavailable (%s: %s); retrying in %g s",
                                                  url, type(exc).__name__, exc, RETRY_AFTER)
            return
        self._table, self._fetched_at, self._failed_at = table, time.monotonic(), None
        log.info("YAZE symbols: %d from %s", len(table), url)

    async def _download(self) -> tuple[bytes, str]:
        assert self._client is not None
        limit = self.settings.max_table_bytes
        async with self._client.stream("GET", SYMBOLS_PATH, params={"format": "asar"}) as r:
            if r.status_code != 200:
                await r.aread()
                raise ValueError(f"HTTP {r.status_code}: {r.text[:200]}")
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ValueError(f"symbol table of {declared} bytes is over max_table_bytes ({limit})")
            chunks, size = [], 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ValueError(f"symbol table is over max_table_bytes ({limit})")
                chunks.append(chunk)
            return b"".join(chunks), r.headers.get("content-type", "")


def _last_user_text(messages: Any) -> str:
    """The last user message that is not one of YAZE's tool results, as text."""
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text") or "" for p in content if isinstance(p, dict))
        if isinstance(content, str) and content and not content.startswith(TOOL_RESULT_PREFIX):
            return content
    return ""
