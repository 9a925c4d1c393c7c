"""Pieces of the dispatcher that need no server: the circuit breaker and request defaults."""

from __future__ import annotations

import orjson

from gateway.config import parse_config
from gateway.dispatch import CircuitBreaker, prepare_body


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_after_threshold_then_half_opens_for_one_probe():
    clock = Clock()
    b = CircuitBreaker(threshold=2, reset_after=10, clock=clock)
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow()
    clock.t = 10
    assert b.state == "half_open"
    assert b.allow() and not b.allow(), "only one probe while half-open"
    b.record_failure()
    assert b.state == "open"
    clock.t = 20
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_success_resets_the_failure_count():
    b = CircuitBreaker(threshold=2, reset_after=10, clock=Clock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


CFG = parse_config("""
[[backends]]
name = "b"
kind = "openai"
base_url = "http://x"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "b"
system_prompt = "You write Asar 65816."
parameters = { temperature = 0.2, max_tokens = 256 }
""")


def test_model_defaults_apply_only_where_the_client_set_none():
    m = CFG.model("euclid-asm")
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.9}
    out = prepare_body(m, body, "chat")
    assert out["temperature"] == 0.9 and out["max_tokens"] == 256
    assert out["messages"][0] == {"role": "system", "content": "You write Asar 65816."}
    assert body["messages"] == [{"role": "user", "content": "hi"}], "the client's body is not mutated"


def test_client_system_prompt_wins():
    m = CFG.model("euclid-asm")
    body = {"messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]}
    assert prepare_body(m, body, "chat")["messages"] == body["messages"]
    assert "messages" not in prepare_body(m, {"prompt": "x"}, "completion")


# -- stream framing: chunks that arrive together leave together ---------------------------------

class _Burst:
    """A stream whose chunks all arrived at once (ready() counts what is still parsed and waiting)."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.closed = False

    def ready(self) -> int:
        return len(self.chunks)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self):
        self.closed = True


class _OneByOne(_Burst):
    def ready(self) -> int:
        return 0


def _chunk(i: int, finish: str | None = None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": finish}]}


async def _frames(rest) -> list[bytes]:
    from gateway.sse import sse_frames

    ended = []
    out = [f async for f in sse_frames(_chunk(0), rest, rewrite=lambda c: c, on_end=lambda s, u: ended.append(s))]
    assert ended == ["ok"] and rest.closed
    return out


async def test_a_burst_of_chunks_is_written_once_and_byte_for_byte_the_same():
    burst = await _frames(_Burst([_chunk(1), _chunk(2), _chunk(3, "stop")]))
    single = await _frames(_OneByOne([_chunk(1), _chunk(2), _chunk(3, "stop")]))
    assert len(single) == 5 and len(burst) == 2  # all four chunks in one write, then [DONE]
    assert b"".join(burst) == b"".join(single)


def test_sse_parser_handles_any_read_boundaries_and_keeps_chunks_before_a_bad_frame():
    from types import SimpleNamespace

    from gateway.backends.openai import SSEStream
    from gateway.errors import UpstreamProtocolError

    body = b"".join(b"data: " + orjson.dumps(_chunk(i, "stop" if i == 4 else None)) + b"\n\n" for i in range(5))
    body += b": ping\n\ndata: [DONE]\n\n"
    for step in (1, 7, 64, len(body)):
        s = SSEStream(SimpleNamespace(name="up"), "/chat/completions", b"")
        for i in range(0, len(body), step):
            s._feed(body[i:i + step])
        got = [c["choices"][0]["delta"]["content"] for c in s._parsed]
        assert got == [f"t{i}" for i in range(5)] and s._done and s._finished and s._error is None
    s = SSEStream(SimpleNamespace(name="up"), "/chat/completions", b"")
    s._feed(b"data: " + orjson.dumps(_chunk(0)) + b"\n\ndata: {not json\n\n")
    assert s.ready() == 1 and isinstance(s._error, UpstreamProtocolError)
