"""OllamaBackend against a local server that speaks Ollama's wire format.

A real Ollama server cannot run here, so ``tests.ollama_wire`` stands in for one: it answers
``/api/chat``, ``/api/generate`` and ``/api/tags`` with scripted, Ollama-shaped responses. The
backend talks to it through the official ``ollama`` client, which parses every response, so
these tests check the wire format as well as our translation to and from OpenAI shapes.
"""

from __future__ import annotations

import json
import socket

import httpx
import ollama
import pytest

from gateway.backends import create_backend
from gateway.backends.ollama import OllamaBackend
from gateway.config import BackendSpec, GatewayConfig, ModelSpec, Timeouts
from gateway.errors import (InvalidRequest, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
                            UpstreamTimeout, UpstreamUnavailable)
from tests.ollama_wire import VERSION, OllamaWireServer

USER = {"role": "user", "content": "Write a JSL hook at $02C0C3 that restores the displaced LDA"}
ANSWER = USER["content"]
TOOL = {"type": "function", "function": {
    "name": "dungeon-describe-room", "description": "Describe a dungeon room",
    "parameters": {"type": "object", "required": ["room", "rom"],
                   "properties": {"room": {"type": "string", "description": "room id, hex"},
                                  "rom": {"type": "string", "description": "ROM path"}}}}}


@pytest.fixture(scope="module")
def wire():
    with OllamaWireServer(slow_seconds=1.0) as server:
        yield server


def make_backend(base_url: str, **spec) -> OllamaBackend:
    return OllamaBackend(BackendSpec(name="ol", kind="ollama", base_url=base_url, **spec), GatewayConfig())


@pytest.fixture
async def backend(wire):
    b = make_backend(wire.url)
    yield b
    await b.aclose()


async def collect(stream) -> list[dict]:
    return [chunk async for chunk in stream]


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- chat ------------------------------------------------------------------------------------

async def test_chat_echoes_the_last_user_message(backend, wire):
    body = {"messages": [{"role": "system", "content": "You are euclid-asm."}, USER]}
    out = await backend.chat(body, "euclid-asm")

    assert out["object"] == "chat.completion" and out["model"] == "euclid-asm"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": ANSWER}
    assert choice["finish_reason"] == "stop"
    words = len(ANSWER.split())
    assert out["usage"] == {"prompt_tokens": words + 3, "completion_tokens": words, "total_tokens": 2 * words + 3}
    sent = wire.last_request
    assert wire.requests[-1]["path"] == "/api/chat"
    assert sent["model"] == "euclid-asm" and sent["stream"] is False
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert "options" not in sent and "format" not in sent and not sent.get("tools")  # the client sends []


async def test_content_parts_are_flattened_and_developer_becomes_system(backend, wire):
    body = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "text", "text": "first"},
                                                      {"type": "text", "text": "second"}]}]}
    out = await backend.chat(body, "euclid-asm")
    assert out["choices"][0]["message"]["content"] == "first\nsecond"
    assert wire.last_request["messages"] == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "first\nsecond"}]


async def test_stream_chat(backend):
    chunks = await collect(backend.stream_chat({"messages": [USER], "stream": True}, "euclid-asm"))

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == ANSWER
    assert len(chunks) > 3  # one chunk per NDJSON part, not one big one
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert "usage" not in chunks[-1]


async def test_stream_chat_usage_chunk_when_asked(backend):
    body = {"messages": [USER], "stream": True, "stream_options": {"include_usage": True}}
    chunks = await collect(backend.stream_chat(body, "euclid-asm"))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    words = len(ANSWER.split())
    assert last["usage"] == {"prompt_tokens": words, "completion_tokens": words, "total_tokens": 2 * words}


async def test_abandoned_stream_releases_its_connection(backend):
    stream = backend.stream_chat({"messages": [USER], "stream": True}, "euclid-asm")
    await stream.__anext__()
    await stream.aclose()
    # Checked at once, before the event loop could finalize forgotten generators: the HTTP
    # response must already be closed, not left ACTIVE in httpx's pool (private attributes).
    pool = backend._client._client._transport._pool
    assert all(conn.is_idle() for conn in pool.connections)
    out = await backend.chat({"messages": [USER]}, "euclid-asm")
    assert out["choices"][0]["message"]["content"] == ANSWER


# -- options ---------------------------------------------------------------------------------

async def test_options_translation(backend, wire):
    body = {"messages": [USER], "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": "###",
            "seed": 42, "presence_penalty": 0.1, "frequency_penalty": 0.3, "top_k": 40, "num_ctx": 4096,
            "response_format": {"type": "json_object"}}
    out = await backend.chat(body, "euclid-asm")

    sent = wire.last_request
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["###"], "seed": 42,
                               "presence_penalty": 0.1, "frequency_penalty": 0.3, "top_k": 40, "num_ctx": 4096}
    assert sent["format"] == "json"
    assert json.loads(out["choices"][0]["message"]["content"]) == {"text_response": ANSWER}


async def test_max_completion_tokens_wins_and_schema_becomes_format(backend, wire):
    schema = {"type": "object", "properties": {"text_response": {"type": "string"}}}
    body = {"messages": [USER], "max_tokens": 64, "max_completion_tokens": 32, "stop": ["a", "b"],
            "options": {"num_ctx": 8192},
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}
    await backend.chat(body, "euclid-asm")
    assert wire.last_request["options"] == {"num_predict": 32, "stop": ["a", "b"], "num_ctx": 8192}
    assert wire.last_request["format"] == schema


async def test_keep_alive_from_backend_options(wire):
    b = make_backend(wire.url, options={"keep_alive": "30m"})
    try:
        await b.chat({"messages": [USER]}, "euclid-asm")
        assert wire.last_request["keep_alive"] == "30m"
    finally:
        await b.aclose()


async def test_max_tokens_cut_is_finish_reason_length(backend):
    out = await backend.chat({"messages": [USER], "max_tokens": 2}, "euclid-asm")
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 2
    chunks = await collect(backend.stream_chat({"messages": [USER], "stream": True}, "length"))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert text_of(chunks) == " ".join(ANSWER.split()[:2]) + " "


# -- tools -----------------------------------------------------------------------------------

async def test_tool_calls_round_trip(backend, wire):
    out = await backend.chat({"messages": [USER], "tools": [TOOL]}, "tools")

    assert wire.last_request["tools"] == [TOOL]
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "dungeon-describe-room"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"room": "room-value", "rom": "rom-value"}

    # The client sends the call and its result back: arguments become an object again and the
    # tool result names the function it answers.
    follow_up = {"messages": [USER, choice["message"],
                              {"role": "tool", "tool_call_id": call["id"], "content": "room 0x12: the hall"}],
                 "tools": [TOOL]}
    await backend.chat(follow_up, "euclid-asm")
    sent = wire.last_request["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "dungeon-describe-room",
                                                   "arguments": {"room": "room-value", "rom": "rom-value"}}}]
    assert sent[2] == {"role": "tool", "content": "room 0x12: the hall", "tool_name": "dungeon-describe-room"}


async def test_stream_tool_calls(backend):
    chunks = await collect(backend.stream_chat({"messages": [USER], "tools": [TOOL], "stream": True}, "tools"))
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0
    assert json.loads(calls[0]["function"]["arguments"]) == {"room": "room-value", "rom": "rom-value"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_sends_no_tools(backend, wire):
    out = await backend.chat({"messages": [USER], "tools": [TOOL], "tool_choice": "none"}, "tools")
    assert not wire.last_request.get("tools")
    assert out["choices"][0]["message"]["content"] == ANSWER


# -- completions -----------------------------------------------------------------------------

async def test_completion_uses_generate(backend, wire):
    out = await backend.completion({"prompt": "LDA.l $7EF3C5", "max_tokens": 16, "suffix": "RTL"}, "euclid-asm")
    assert wire.requests[-1]["path"] == "/api/generate"
    assert wire.last_request["prompt"] == "LDA.l $7EF3C5" and wire.last_request["suffix"] == "RTL"
    assert wire.last_request["options"] == {"num_predict": 16}
    assert "raw" not in wire.last_request
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == "LDA.l $7EF3C5" and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 2


async def test_stream_completion(backend):
    body = {"prompt": ["one two three"], "stream": True, "stream_options": {"include_usage": True}}
    chunks = await collect(backend.stream_completion(body, "euclid-asm"))
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "one two three"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_raw_completions_option(wire):
    b = make_backend(wire.url, options={"raw_completions": True})
    try:
        await b.completion({"prompt": "x"}, "euclid-asm")
        assert wire.last_request["raw"] is True
    finally:
        await b.aclose()


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, status_code, retryable", [
    ("status-404", 404, False),
    ("status-400", 400, False),
    ("status-500", 502, False),
    ("status-503", 502, True),
    ("status-429", 429, True),
])
async def test_upstream_status_errors(backend, model, status_code, retryable):
    with pytest.raises(UpstreamStatusError) as info:
        await backend.chat({"messages": [USER]}, model)
    err = info.value
    assert (err.upstream_status, err.status_code, err.retryable) == (int(model[-3:]), status_code, retryable)
    assert err.backend == "ol"
    if model == "status-404":
        assert "model 'status-404' not found" in err.message

    stream = backend.stream_chat({"messages": [USER], "stream": True}, model)
    with pytest.raises(UpstreamStatusError) as info:
        await stream.__anext__()  # raised before the first chunk
    assert info.value.retryable == retryable


async def test_connection_refused_is_unavailable_and_retryable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    b = make_backend(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await b.chat({"messages": [USER]}, "euclid-asm")
        assert info.value.retryable and info.value.status_code == 503
        with pytest.raises(UpstreamUnavailable):
            await b.stream_chat({"messages": [USER], "stream": True}, "euclid-asm").__anext__()
        with pytest.raises(UpstreamUnavailable):
            await b.stream_completion({"prompt": "x", "stream": True}, "euclid-asm").__anext__()
        health = await b.health()
        assert not health.ok and "cannot connect" in health.detail
    finally:
        await b.aclose()


async def test_read_timeout_is_upstream_timeout(wire):
    b = make_backend(wire.url, timeouts=Timeouts(connect=1.0, read=0.2))
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await b.chat({"messages": [USER]}, "slow")
        assert info.value.retryable
        with pytest.raises(UpstreamTimeout):
            await b.stream_chat({"messages": [USER], "stream": True}, "slow").__anext__()
    finally:
        await b.aclose()


async def test_total_timeout_bounds_a_whole_request(wire):
    b = make_backend(wire.url, timeouts=Timeouts(read=5.0, total=0.2))
    try:
        with pytest.raises(UpstreamTimeout):
            await b.completion({"prompt": "x"}, "slow")
    finally:
        await b.aclose()


async def test_malformed_responses_are_protocol_errors(backend):
    with pytest.raises(UpstreamProtocolError):
        await backend.chat({"messages": [USER]}, "garbage")
    with pytest.raises(UpstreamProtocolError):
        await backend.stream_chat({"messages": [USER], "stream": True}, "garbage").__anext__()


async def test_error_after_the_first_chunk_is_not_retryable(backend):
    stream = backend.stream_chat({"messages": [USER], "stream": True}, "midstream-error")
    first = await stream.__anext__()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(UpstreamError) as info:
        await stream.__anext__()
    assert not info.value.retryable
    assert "error was encountered" in info.value.message


@pytest.mark.parametrize("body, param", [
    ({"messages": [USER], "n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "oracle", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "messages"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     "messages"),
    ({"messages": [USER], "tools": [{"type": "retrieval"}]}, "tools"),
    ({"messages": [USER], "response_format": {"type": "xml"}}, "response_format"),
])
async def test_invalid_requests_fail_before_sending(backend, wire, body, param):
    sent = len(wire.requests)
    with pytest.raises(InvalidRequest) as info:
        await backend.chat(body, "euclid-asm")
    assert info.value.param == param
    assert len(wire.requests) == sent


async def test_images_as_data_urls(backend, wire):
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    await backend.chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "tiles?"}, part]}]},
                       "seph-tilesmith")
    assert wire.last_request["messages"][0]["images"] == ["iVBORw0KGgo="]


# -- health, lifecycle, registry ---------------------------------------------------------------

async def test_health_lists_models(backend):
    health = await backend.health()
    assert health.ok
    assert health.models == ["euclid-asm:latest", "seph-tilesmith:latest", "qwen2.5-coder:1.5b"]


async def test_health_names_configured_models_that_are_not_pulled(wire):
    spec = BackendSpec(name="ol", kind="ollama", base_url=wire.url)
    config = GatewayConfig(backends=[spec], models=[
        ModelSpec(name="euclid-asm", oracle="oracle-din", backend="ol"),  # pulled as euclid-asm:latest
        ModelSpec(name="koume-compress", oracle="oracle-din", backend="ol", upstream_model="koume:q4")])
    b = OllamaBackend(spec, config)
    try:
        health = await b.health()
    finally:
        await b.aclose()
    assert health.ok and "not pulled: koume:q4" in health.detail and "euclid" not in health.detail


async def test_aclose_closes_the_http_client(wire):
    b = make_backend(wire.url)
    await b.aclose()
    assert b._client._client.is_closed


def test_registry_builds_the_ollama_backend(wire):
    b = create_backend(BackendSpec(name="ol", kind="ollama", base_url=wire.url), GatewayConfig())
    assert isinstance(b, OllamaBackend) and b.kind == "ollama"


# -- the stand-in server itself, judged by the official client --------------------------------

async def test_wire_server_is_parsed_by_the_official_client(wire):
    client = ollama.AsyncClient(host=wire.url)
    try:
        tags = await client.list()
        assert tags.models[0].details.quantization_level == "Q4_K_M"
        reply = await client.chat(model="euclid-asm", messages=[USER])
        assert reply.done and reply.done_reason == "stop" and reply.message.content == ANSWER
        parts = [p async for p in await client.chat(model="tools", messages=[USER], tools=[TOOL], stream=True)]
        assert parts[-1].done and parts[-1].eval_count == 1
        assert parts[0].message.tool_calls[0].function.arguments == {"room": "room-value", "rom": "rom-value"}
        gen = await client.generate(model="euclid-asm", prompt="a b c")
        assert gen.response == "a b c" and gen.context
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="status-404", messages=[USER])
        assert info.value.status_code == 404
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=wire.url) as http:
        assert (await http.get("/api/version")).json() == {"version": VERSION}
        async with http.stream("POST", "/api/chat", json={"model": "m", "messages": [USER]}) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) async for line in r.aiter_lines() if line]
        assert lines[-1]["done"] is True and {"done_reason", "total_duration", "eval_count"} <= set(lines[-1])
