"""Wire models of Ollama's native API, and their translation into the gateway's OpenAI shape.

The models check what the translation relies on (types, required fields), so bad input gets
a 400 ``{"error": "..."}`` naming the field; unknown fields are allowed and ignored, as Ollama
does. Field order follows Ollama's API reference. ``to_openai()`` turns a request into the
OpenAI chat (or completion) body every backend takes:

    Ollama                                  OpenAI body
    system (top level; YAZE sends it)       a system message first
    messages[].images (base64)              content parts with data: URLs
    assistant tool_calls (arguments obj)    tool_calls with ids, arguments as JSON text
    role tool + tool_name                   role tool + the tool_call_id of that call (else a
                                            user message "[TOOL RESULT for <name>] ...")
    tools                                   tools, same shape
    format "json" / a JSON schema           response_format json_object / json_schema
    options.temperature, top_p, seed, stop, the same fields
      presence/frequency_penalty
    options.num_predict (> 0)               max_tokens
    options.top_k, min_p, repeat_penalty    top_k, min_p, repetition_penalty (vLLM's names)
    the other options (num_ctx, ...)        options: taken natively by Ollama backends
    keep_alive                              keep_alive (Ollama backends)
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from gateway.openai.protocol import FunctionDef
from gateway.toolcalls import TOOL_RESULT_PREFIX

# Options that have an OpenAI (or vLLM) field of their own.
_SAME_NAME = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "top_k", "min_p")
_RENAMED = {"repeat_penalty": "repetition_penalty"}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Options(_Open):
    num_ctx: int | None = Field(None, ge=1)
    num_predict: int | None = Field(None, ge=-2)
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    repeat_penalty: float | None = Field(None, ge=0)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ToolCallFunction(_Open):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCall(_Open):
    function: ToolCallFunction


class Tool(_Open):
    type: Literal["function"] = "function"
    function: FunctionDef


class Message(_Open):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


class _Generating(_Open):
    model: str = Field(min_length=1, max_length=512)
    format: Any = None  # "json", a JSON schema object, or nothing
    options: Options | None = None
    stream: StrictBool | None = None  # Ollama streams unless told not to: see ``streaming``; "yes" is an error
    keep_alive: float | str | None = None
    think: bool | str | None = None

    @property
    def streaming(self) -> bool:
        return self.stream is not False

    @field_validator("format")
    @classmethod
    def _format_ok(cls, v: Any) -> Any:
        if v is None or v == "" or v == "json" or isinstance(v, dict):
            return v or None
        raise ValueError('must be "json" or a JSON schema object')

    def common(self) -> dict[str, Any]:
        """The OpenAI fields every request gets: sampling, limits, format."""
        body: dict[str, Any] = {"model": self.model}
        opts = self.options.model_dump(exclude_none=True) if self.options else {}
        for key in _SAME_NAME:
            if key in opts:
                body[key] = opts[key]
        for key, name in _RENAMED.items():
            if key in opts:
                body[name] = opts[key]
        if opts.get("num_predict", 0) > 0:  # -1 (no limit) and -2 (fill the context) set none
            body["max_tokens"] = opts["num_predict"]
        if isinstance(opts.get("stop"), str):
            opts["stop"] = [opts["stop"]]
        if opts.get("stop"):
            body["stop"] = opts["stop"]
        rest = {k: v for k, v in opts.items() if k not in body and k not in _RENAMED and k != "stop"
                and not (k == "num_predict" and "max_tokens" in body)}
        if rest:  # num_ctx and friends: Ollama backends apply them, the others ignore them
            body["options"] = rest
        if self.format == "json":
            body["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": self.format}}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None
    system: str | None = None  # not in Ollama's /api/chat reference, but YAZE sends it

    def to_openai(self) -> dict[str, Any]:
        body = self.common()
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        call_ids: dict[str, str] = {}  # function name -> id of its latest call, for the tool results
        for m in self.messages:
            messages.append(_message(m, call_ids))
        body["messages"] = messages
        if self.tools:
            body["tools"] = [t.model_dump(exclude_none=True) for t in self.tools]
        return body


class GenerateRequest(_Generating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None

    @property
    def as_completion(self) -> bool:
        """A raw prompt or a fill-in-the-middle suffix goes to /v1/completions, untemplated."""
        return bool(self.raw or self.suffix)

    def to_openai(self) -> dict[str, Any]:
        body = self.common()
        if self.as_completion:
            body["prompt"] = self.prompt if not self.system or self.raw else f"{self.system}\n\n{self.prompt}"
            if self.suffix:
                body["suffix"] = self.suffix
            return body
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        messages.append({"role": "user", "content": _content(self.prompt, self.images)})
        body["messages"] = messages
        return body


class ShowRequest(_Open):
    model: str | None = Field(None, min_length=1)
    name: str | None = Field(None, min_length=1)  # older clients send "name"

    @model_validator(mode="after")
    def _one_name(self) -> "ShowRequest":
        if not (self.model or self.name):
            raise ValueError("model: required field is missing")
        return self

    @property
    def model_name(self) -> str:
        return self.model or self.name or ""


# -- helpers -------------------------------------------------------------------------------------

def _message(m: Message, call_ids: dict[str, str]) -> dict[str, Any]:
    content = _content(m.content or "", m.images)
    if m.role == "assistant" and m.tool_calls:
        calls = []
        for c in m.tool_calls:
            cid = f"call_{uuid.uuid4().hex[:24]}"
            call_ids[c.function.name] = cid
            args = c.function.arguments
            calls.append({"id": cid, "type": "function",
                          "function": {"name": c.function.name,
                                       "arguments": args if isinstance(args, str) else orjson.dumps(args).decode()}})
        return {"role": "assistant", "content": content or None, "tool_calls": calls}
    if m.role == "tool":
        cid = call_ids.get(m.tool_name or "")
        if cid is None:  # no call to answer: keep the result readable, the way YAZE sends its own
            return {"role": "user", "content": f"{TOOL_RESULT_PREFIX}{m.tool_name or 'tool'}] {m.content or ''}"}
        return {"role": "tool", "tool_call_id": cid, "content": m.content or ""}
    return {"role": m.role, "content": content}


def _content(text: str, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for data in images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:{_image_type(data)};base64,{data}"}})
    return parts


def _image_type(b64: str) -> str:
    for prefix, mime in (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                         ("UklGR", "image/webp")):
        if b64.startswith(prefix):
            return mime
    return "image/png"
