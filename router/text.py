"""Which text of a request is classified, and the cache key made from it.

The choice (documented in README.md, "Routing"):

- the last user turn is the prompt; system messages are never classified (YAZE and editors
  send long, fixed system prompts that say nothing about this turn), nor are tool results
  (YAZE sends them as user turns starting ``[TOOL RESULT for``) or assistant turns;
- when that last turn is short (under ``short_turn`` characters: "and now the ASM for it",
  "make it shorter"), earlier user turns are put before it, newest first, until
  ``context_chars`` characters are used, so a follow-up stays with the subject it follows up;
- ``/v1/completions`` and Ollama's ``/api/generate`` send ``prompt`` instead of messages: that
  string is classified as it is;
- text parts of multi-part content are joined; images and other parts are ignored;
- every classified text is cut to ``max_chars`` (the encoder reads 256 tokens at most anyway).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

TOOL_RESULT_PREFIX = "[TOOL RESULT for"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class TextPolicy:
    short_turn: int = 160       # a last user turn shorter than this gets earlier user turns as context
    context_chars: int = 600    # at most this many characters of earlier turns
    max_chars: int = 4000       # what is classified is cut to this length


def content_text(content: Any) -> str:
    """The text of an OpenAI/Ollama message ``content``: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def routed_text(body: dict[str, Any], policy: TextPolicy = TextPolicy()) -> str:
    """The text the router classifies for a chat or completion request body."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        if isinstance(prompt, list):  # OpenAI completions accept a list of prompts: route on the first
            prompt = prompt[0] if prompt else ""
        return prompt[: policy.max_chars] if isinstance(prompt, str) else ""
    turns = [content_text(m.get("content")) for m in messages
             if isinstance(m, dict) and m.get("role") == "user"]
    turns = [t for t in turns if t.strip() and not t.lstrip().startswith(TOOL_RESULT_PREFIX)]
    if not turns:
        return ""
    last = turns[-1].strip()
    if len(last) >= policy.short_turn:
        return last[: policy.max_chars]
    context: list[str] = []
    budget = policy.context_chars
    for earlier in reversed(turns[:-1]):
        piece = earlier.strip()[-budget:]
        if not piece:
            break
        context.insert(0, piece)
        budget -= len(piece)
        if budget <= 0:
            break
    return "\n".join([*context, last])[-policy.max_chars:]


def normalize(text: str) -> str:
    """Case and whitespace folded: the same question typed twice hits the same cache entry."""
    return _SPACES.sub(" ", text).strip().lower()


def cache_key(text: str, scope: str = "") -> str:
    """A short stable key for a classified text (and the oracle it is restricted to, if any)."""
    digest = hashlib.blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16)
    if scope:
        digest.update(b"\x00" + scope.encode())
    return digest.hexdigest()
