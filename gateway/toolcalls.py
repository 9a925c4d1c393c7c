"""Tool calls that a model wrote as text, turned into native OpenAI ``tool_calls``.

Qwen2.5-Coder, served by a server without a working tool-call parser for it (vLLM's Hermes
parser does not match its output), answers a request that has tools with plain text:

    <tool_call>{"name": "dungeon-list-sprites", "arguments": {"room": "0x12"}}</tool_call>

or a bare JSON object (``{"name": ..., "arguments": {...}}``, sometimes fenced as
```` ```json ````, sometimes several in a row or in a list). When the request had tools, the
gateway recognises both forms, returns them as ``tool_calls`` (``finish_reason`` becomes
``tool_calls``) and removes their text from ``content``. Only calls that name a tool of the
request count: any other JSON (YAZE's own ``{"text_response": ...}`` answers included) is
left alone, and so is a block that does not parse.

Streams are scanned as they go (``ToolCallScanner``): text that cannot start a call is passed
on at once; text that might (a ``<tool_call>`` tag, possibly cut between chunks, or an answer
that opens like a call object) is held back until it is decided. A block's call goes out as
soon as its closing tag arrives; bare JSON is decided when the stream ends.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# How YAZE sends a tool's result back: a user message "[TOOL RESULT for <name>] <output>".
TOOL_RESULT_PREFIX = "[TOOL RESULT for "
# The first key of an object that may be a call ({"name": ..., "arguments": ...} and variants).
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "function", "type"})
_HOLD_LIMIT = 64  # chars of an undecided opening after which it is taken for text
_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}


def requested_tools(body: dict[str, Any]) -> frozenset[str] | None:
    """The function names a chat request offers, or None when it offers none (or forbids them)."""
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none" or not isinstance(tools, list):
        return None
    names = frozenset(t["function"].get("name") for t in tools
                      if isinstance(t, dict) and isinstance(t.get("function"), dict))
    return names - {None} or None


# -- one text -----------------------------------------------------------------------------------

def parse_text(text: str, names: frozenset[str]) -> tuple[str, list[ParsedCall]]:
    """``text`` without its tool calls, and the calls."""
    if OPEN not in text and text.lstrip()[:1] not in ("{", "[", "`"):
        return text, []
    scanner = ToolCallScanner(names)
    head, calls = scanner.feed(text)
    tail, more = scanner.finish()
    return head + tail, calls + more


def rewrite_completion(response: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """A ``chat.completion`` with text-written calls of each choice made native (in place)."""
    for choice in response.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or message.get("tool_calls"):
            continue
        content = message.get("content")
        if not isinstance(content, str) or not content:
            continue
        text, calls = parse_text(content, names)
        if calls:
            message["content"] = text.strip() or None
            message["tool_calls"] = [c.to_openai() for c in calls]
            choice["finish_reason"] = "tool_calls"
    return response


# -- streams ----------------------------------------------------------------------------------

class ToolCallScanner:
    """Incremental: ``feed(text)`` returns the text that may go out now and any complete calls;
    ``finish()`` returns what was held back, or the calls it turned out to be."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.mode = "undecided"  # -> "text" (pass on, watch for tags) or "json" (hold to the end)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        self.pending += text
        if self.mode == "undecided":
            self.mode = self._decide(self.pending)
            if self.mode == "undecided":
                return "", []
        if self.mode == "json":
            return "", []
        return self._scan_text(final=False)

    def finish(self) -> tuple[str, list[ParsedCall]]:
        if self.mode == "text":
            return self._scan_text(final=True)
        held, self.pending = self.pending, ""
        calls = self._bare_calls(held)
        return ("", calls) if calls else (held, [])

    # -- internals ------------------------------------------------------------------------------
    def _decide(self, buf: str) -> str:
        s = buf.lstrip()
        if not s:
            return "undecided"
        if s[0] == "<":
            return "text" if len(s) >= len(OPEN) or not OPEN.startswith(s) else "undecided"
        if s[0] not in "{[`":
            return "text"
        verdict = _may_be_call(s)
        if verdict is None:
            return "undecided" if len(s) < _HOLD_LIMIT else "text"
        return "json" if verdict else "text"

    def _scan_text(self, *, final: bool) -> tuple[str, list[ParsedCall]]:
        out: list[str] = []
        calls: list[ParsedCall] = []
        buf = self.pending
        while True:
            start = buf.find(OPEN)
            if start < 0:
                keep = 0 if final else _partial_tag(buf)
                out.append(buf[:len(buf) - keep])
                buf = buf[len(buf) - keep:]
                break
            end = buf.find(CLOSE, start)
            if end < 0:
                if not final:
                    out.append(buf[:start])
                    buf = buf[start:]
                    break
                found = self._bare_calls(buf[start + len(OPEN):])  # the model stopped before closing it
                out.append(buf[:start] if found else buf)
                calls += found
                buf = ""
                break
            found = self._bare_calls(buf[start + len(OPEN):end])
            if found:
                out.append(buf[:start])
                calls += found
            else:
                out.append(buf[:end + len(CLOSE)])
            buf = buf[end + len(CLOSE):]
        self.pending = buf
        return "".join(out), calls

    def _bare_calls(self, text: str) -> list[ParsedCall]:
        """Every JSON value of ``text`` (unfenced) as calls, or [] unless all of them are calls."""
        s = _unfence(text.strip())
        values: list[Any] = []
        i = 0
        while i < len(s):
            try:
                value, i = _decoder.raw_decode(s, i)
            except json.JSONDecodeError:
                return []
            values.extend(value if isinstance(value, list) else [value])
            while i < len(s) and s[i] in " \t\r\n,;":
                i += 1
        calls = [self._as_call(v) for v in values]
        return calls if calls and all(calls) else []  # type: ignore[return-value]

    def _as_call(self, obj: Any) -> ParsedCall | None:
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
            obj = obj["function"]
        name = obj.get("name")
        if not isinstance(name, str) or name not in self.names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                return None
        if args is None:
            args = {}
        return ParsedCall(name, args) if isinstance(args, dict) else None


def _may_be_call(s: str) -> bool | None:
    """Does an answer that opens with ``s`` (``{``, ``[`` or a fence) look like a call object?
    None: not enough text yet."""
    if s.startswith("`"):
        if not "```".startswith(s[:3]):
            return False
        nl = s.find("\n")
        if nl < 0:
            return None
        if s[3:nl].strip().lower() not in ("", "json"):
            return False  # ```asm and friends: code, not a call
        s = s[nl + 1:].lstrip()
    if s.startswith("["):
        s = s[1:].lstrip()
    if not s:
        return None
    if s[0] != "{":
        return False
    s = s[1:].lstrip()
    if not s:
        return None
    if s[0] != '"':
        return False
    end = s.find('"', 1)
    if end < 0:
        return None
    return s[1:end] in _CALL_KEYS


def _unfence(s: str) -> str:
    if s.startswith("```"):
        nl = s.find("\n")
        s = s[nl + 1:] if nl >= 0 else s[3:]
        if s.rstrip().endswith("```"):
            s = s.rstrip()[:-3]
    return s.strip()


def _partial_tag(buf: str) -> int:
    """How many chars at the end of ``buf`` could be the start of ``<tool_call>``."""
    tail = buf[-(len(OPEN) - 1):]
    at = tail.rfind("<")
    if at < 0:
        return 0
    return len(tail) - at if OPEN.startswith(tail[at:]) else 0


class StreamRewriter:
    """Per-chunk rewrite of a ``chat.completion.chunk`` stream: calls written as text become
    ``delta.tool_calls``. Returns None for a chunk that has nothing left to say."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self._scanners: dict[int, ToolCallScanner] = {}
        self._count: dict[int, int] = {}  # tool_calls sent so far per choice (the upstream's and ours)
        self._ours: set[int] = set()  # choices where text became calls

    def __call__(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = chunk.get("choices")
        if not choices:
            return chunk
        alive = "usage" in chunk and chunk["usage"] is not None
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            idx = choice.get("index", 0)
            scanner = self._scanners.get(idx)
            if scanner is None:
                scanner = self._scanners[idx] = ToolCallScanner(self.names)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            found: list[ParsedCall] = []
            text = delta.get("content")
            if isinstance(text, str) and text:
                text, found = scanner.feed(text)
                self._set_text(delta, text)
            native = delta.get("tool_calls")
            if native:  # the upstream's own calls keep their indexes; ours are numbered after them
                self._count[idx] = max(self._count.get(idx, 0),
                                       1 + max((c.get("index", 0) for c in native if isinstance(c, dict)), default=-1))
            if choice.get("finish_reason"):
                rest, more = scanner.finish()
                found += more
                if rest:
                    self._set_text(delta, (delta.get("content") or "") + rest)
            if found:
                base = self._count.get(idx, 0)
                delta["tool_calls"] = [*(native or []),
                                       *({"index": base + i, **c.to_openai()} for i, c in enumerate(found))]
                self._count[idx] = base + len(found)
                self._ours.add(idx)
            if idx in self._ours and choice.get("finish_reason") == "stop":
                choice["finish_reason"] = "tool_calls"
            alive = alive or bool(delta) or bool(choice.get("finish_reason"))
        return chunk if alive else None

    @staticmethod
    def _set_text(delta: dict[str, Any], text: str) -> None:
        if text or "role" in delta:
            delta["content"] = text
        else:
            delta.pop("content", None)
