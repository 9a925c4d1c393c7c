"""Wire models of the OpenAI API, as far as the gateway checks them.

They validate what the gateway and its backends rely on (types, ranges, required fields) so
that bad input gets a clear 400 instead of an upstream error or a crash; unknown fields are
allowed and passed on untouched (vendor extensions such as vLLM's ``top_k``). Field order
follows the OpenAI reference.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from gateway.errors import InvalidRequest

MAX_TOKENS_LIMIT = 1_000_000
MAX_N = 16
MAX_FEEDBACK_COMMENT = 4000


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionDef(_Open):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class ToolCallFunction(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ContentPart(_Open):
    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(_Open):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1, max_length=512)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    user: str | None = None


class CompletionRequest(_Open):
    model: str = Field(min_length=1, max_length=512)
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    echo: StrictBool | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    n: int | None = Field(None, ge=1, le=MAX_N)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    user: str | None = None


def validate(model: type[BaseModel], raw: Any) -> BaseModel:
    """Validate a parsed JSON body; the first problem becomes an ``InvalidRequest`` naming the field."""
    if not isinstance(raw, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        msg = "required field is missing" if err["type"] == "missing" else err["msg"]
        raise InvalidRequest(f"{param}: {msg}{more}" if param else f"{msg}{more}", param=param) from None


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: about the request whose ``x-request-id`` is ``request_id``; a
    ``score`` (0 = worst, 1 = best) or ``thumbs`` or both, and an optional comment. Unknown
    fields are refused (a typo would otherwise lose the rating)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    request_id: str = Field(min_length=1, max_length=128)
    score: float | None = Field(None, ge=0, le=1)
    thumbs: Literal["up", "down"] | None = None
    comment: str | None = Field(None, max_length=MAX_FEEDBACK_COMMENT)

    @model_validator(mode="after")
    def _rated(self) -> "FeedbackRequest":
        if self.score is None and self.thumbs is None:
            raise ValueError("send 'score' (a number from 0 to 1) or 'thumbs' ('up' or 'down'), or both")
        return self
