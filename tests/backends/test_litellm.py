"""LiteLLMBackend with the real litellm against the loopback upstream.

No hosted provider can be reached from here, so litellm's ``openai/`` provider talks to
``eval.loopback_upstream`` (an OpenAI-compatible server on 127.0.0.1): every request goes through
litellm's real request building, HTTP transport, response parsing and exception mapping. The
model name tells the upstream how to behave (``echo``, ``tools``, ``status-500``, ``slow-1`` ...).
Responses are checked with the official ``openai`` SDK's types, the judges of the OpenAI shapes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import socket
import subprocess
import sys
import textwrap

import pytest

if importlib.util.find_spec("litellm") is None:  # find_spec: importing it here would skip our offline setup
    pytest.skip("needs the [litellm] extra: pip install 'oracle-council[litellm]'", allow_module_level=True)

from openai.types import Completion  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

from eval.loopback_upstream import LoopbackUpstream  # noqa: E402
from gateway.backends import create_backend  # noqa: E402
from gateway.backends.litellm import LiteLLMBackend  # noqa: E402
from gateway.config import BackendSpec, GatewayConfig, Timeouts  # noqa: E402
from gateway.errors import (UpstreamError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout,  # noqa: E402
                            UpstreamUnavailable)

API_KEY = "sk-loopback-0123456789abcdef"
USER = {"role": "user", "content": "Write a JSL hook at $02C0C3"}
TOOL = {"type": "function", "function": {
    "name": "dungeon-describe-room", "description": "Describe a dungeon room",
    "parameters": {"type": "object", "required": ["room"],
                   "properties": {"room": {"type": "string", "description": "room id, hex"}}}}}


def make_backend(base_url: str, **spec) -> LiteLLMBackend:
    spec.setdefault("timeouts", Timeouts(connect=2, read=5, total=20))
    backend_spec = BackendSpec(name="cloud", kind="litellm", base_url=base_url, api_key=API_KEY, retries=0, **spec)
    backend = create_backend(backend_spec, GatewayConfig(backends=[backend_spec]))
    assert isinstance(backend, LiteLLMBackend)
    return backend


@pytest.fixture
async def up():
    async with LoopbackUpstream(keep_bodies=True) as upstream:
        yield upstream


@pytest.fixture
async def backend(up):
    b = make_backend(up.base_url)
    await b.start()
    yield b
    await b.aclose()  # before the upstream stops: closes litellm's pooled connections


def chat_body(**extra) -> dict:
    return {"model": "ignored", "messages": [USER], **extra}


async def collect(stream) -> list[dict]:
    return [chunk async for chunk in stream]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- chat ------------------------------------------------------------------------------------

async def test_chat_returns_an_openai_chat_completion(backend):
    out = await backend.chat(chat_body(temperature=0), "openai/echo")
    ChatCompletion.model_validate(out)
    assert out["object"] == "chat.completion"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: " + USER["content"]}
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 7
    assert "provider_specific_fields" not in json.dumps(out)


async def test_stream_concatenates_to_the_answer_and_finishes(backend):
    chunks = await collect(backend.stream_chat(chat_body(stream_options={"include_usage": True}), "openai/echo"))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["object"] == "chat.completion.chunk"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip() == "echo: " + USER["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    assert chunks[-1]["usage"]["total_tokens"] > 0  # include_usage reached the upstream and came back


async def test_tools_round_trip(backend, up):
    out = await backend.chat(chat_body(tools=[TOOL], tool_choice="auto"), "openai/tools")
    ChatCompletion.model_validate(out)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"] == "call_1"
    assert call["function"]["name"] == "dungeon-describe-room"
    assert json.loads(call["function"]["arguments"]) == {"arg": "1"}
    sent = up.stats.bodies[-1]
    assert sent["tools"] == [TOOL] and sent["tool_choice"] == "auto"


async def test_request_fields_pass_through_and_litellm_settings_do_not(backend, up):
    body = chat_body(response_format={"type": "json_object"}, max_tokens=12, stop=["\n\n"], seed=7,
                     api_base="http://attacker.invalid/v1", mock_response="not from the upstream")
    out = await backend.chat(body, "openai/echo")
    assert out["choices"][0]["message"]["content"].startswith("echo: ")  # the loopback answered
    sent = up.stats.bodies[-1]
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["max_tokens"] == 12 and sent["stop"] == ["\n\n"] and sent["seed"] == 7
    assert "api_base" not in sent and "mock_response" not in sent


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("upstream_status, status, retryable", [
    (500, 502, False),
    (429, 429, True),
    (503, 502, True),
    (504, 502, True),
    (400, 400, False),
    (422, 422, False),
    (404, 502, False),  # the backend's model string or base_url is wrong: fall back, not "no such model"
    (401, 502, False),  # the backend's key is wrong, not the client's
])
async def test_upstream_status_maps_to_gateway_errors(backend, up, upstream_status, status, retryable):
    model = f"openai/status-{upstream_status}"
    with pytest.raises(UpstreamError) as info:
        await backend.chat(chat_body(), model)
    err = info.value
    assert (err.status_code, err.retryable, err.backend) == (status, retryable, "cloud")
    assert f"scripted {upstream_status}" in err.message
    assert up.stats.requests[f"status-{upstream_status}"] == 1  # litellm did not retry behind our back


async def test_status_500_is_a_plain_upstream_error(backend):
    with pytest.raises(UpstreamStatusError) as info:
        await backend.chat(chat_body(), "openai/status-500")
    assert not isinstance(info.value, (UpstreamUnavailable, UpstreamTimeout))
    assert info.value.to_openai()["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("status, retryable", [(500, False), (429, True)])
async def test_stream_raises_status_errors_before_the_first_chunk(backend, status, retryable):
    stream = backend.stream_chat(chat_body(), f"openai/status-{status}")
    with pytest.raises(UpstreamError) as info:
        await stream.__anext__()
    assert info.value.retryable is retryable


async def test_connection_refused_is_retryable_unavailable():
    backend = make_backend(f"http://127.0.0.1:{closed_port()}/v1")
    try:
        with pytest.raises(UpstreamUnavailable) as info:
            await backend.chat(chat_body(), "openai/echo")
        assert info.value.retryable and info.value.status_code == 503
        with pytest.raises(UpstreamUnavailable):
            await backend.stream_chat(chat_body(), "openai/echo").__anext__()
    finally:
        await backend.aclose()


async def test_slow_upstream_times_out(up):
    backend = make_backend(up.base_url, timeouts=Timeouts(connect=2, read=0.3, total=5))
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await backend.chat(chat_body(), "openai/slow-1")
        # the provider got the request (and may bill it): fall back, do not resend
        assert not info.value.retryable and info.value.status_code == 504
    finally:
        await backend.aclose()


async def test_stream_broken_after_it_started_is_not_retryable(backend):
    chunks, error = [], None
    try:
        async for chunk in backend.stream_chat(chat_body(), "openai/truncated"):
            chunks.append(chunk)
    except UpstreamError as exc:
        error = exc
    assert chunks, "the first chunks arrived before the connection broke"
    assert isinstance(error, UpstreamProtocolError) and not error.retryable


async def test_stream_stalling_after_it_started_times_out_without_retry(up):
    backend = make_backend(up.base_url, timeouts=Timeouts(connect=2, read=0.3, total=5))
    chunks = []
    try:
        with pytest.raises(UpstreamTimeout) as info:
            async for chunk in backend.stream_chat(chat_body(), "openai/drip-2"):
                chunks.append(chunk)
        assert chunks and not info.value.retryable
    finally:
        await backend.aclose()


async def test_connection_reset_before_an_answer(backend):
    with pytest.raises(UpstreamProtocolError) as info:
        await backend.chat(chat_body(), "openai/reset")
    assert not info.value.retryable  # the upstream may have started on it: fall back, do not resend


async def test_api_key_never_reaches_errors_or_logs(backend, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError) as info:
        await backend.chat(chat_body(), "openai/status-401")
    assert info.value.code == "upstream_auth_failed" and "api_key" in info.value.message
    assert API_KEY not in info.value.message
    assert API_KEY not in caplog.text


# -- completions and health ------------------------------------------------------------------

async def test_completion(backend):
    out = await backend.completion({"model": "ignored", "prompt": "LDA #$01", "max_tokens": 8}, "openai/echo")
    Completion.model_validate(out)
    assert out["object"] == "text_completion"
    assert out["choices"][0]["text"] == "echo: LDA #$01"
    assert out["choices"][0]["finish_reason"] == "stop"


async def test_stream_completion(backend):
    chunks = await collect(backend.stream_completion({"model": "ignored", "prompt": "LDA #$01"}, "openai/echo"))
    for chunk in chunks:  # the SDK's Completion type has no null finish_reason, which chunks carry
        assert chunk["object"] == "text_completion" and set(chunk["choices"][0]) >= {"index", "text", "finish_reason"}
    Completion.model_validate(chunks[-1])
    assert "".join(c["choices"][0]["text"] for c in chunks).strip() == "echo: LDA #$01"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_health_makes_no_call_without_health_model(backend, up):
    health = await backend.health()
    assert health.ok and "not probed" in health.detail
    assert sum(up.stats.requests.values()) == 0


async def test_health_model_sends_a_probe(up):
    good = make_backend(up.base_url, options={"health_model": "openai/echo"})
    bad = make_backend(up.base_url, options={"health_model": "openai/status-500"})
    try:
        assert (await good.health()).ok
        health = await bad.health()
        assert not health.ok and "500" in health.detail
    finally:
        await good.aclose()
        await bad.aclose()


# -- imports ---------------------------------------------------------------------------------

def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)


def test_importing_the_backend_does_not_import_litellm():
    proc = run_python("""
        import asyncio, sys
        import gateway.backends.litellm as mod
        from gateway.config import BackendSpec, GatewayConfig
        spec = BackendSpec(name="cloud", kind="litellm", api_key="env:NOT_SET")
        backend = mod.LiteLLMBackend(spec, GatewayConfig(backends=[spec]))
        assert asyncio.run(backend.health()).ok
        assert "litellm" not in sys.modules, "litellm was imported"
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_missing_litellm_names_the_extra():
    proc = run_python("""
        import sys
        sys.modules["litellm"] = None  # as if it were not installed
        from gateway.backends.litellm import import_litellm
        try:
            import_litellm()
        except ImportError as exc:
            print(exc)
    """)
    assert "pip install 'oracle-council[litellm]'" in proc.stdout, proc.stderr


@pytest.mark.parametrize("method", ["stream_chat", "stream_completion"])
async def test_closing_a_stream_early_hangs_up_on_the_upstream(backend, up, method):
    body = chat_body() if method == "stream_chat" else {"model": "ignored", "prompt": "LDA"}
    stream = getattr(backend, method)(body, "openai/drip-0.1")  # a chunk every 0.1 s, 1000 of them
    await stream.__anext__()
    await stream.aclose()  # what the gateway does when its client disconnects
    for _ in range(100):
        if up.stats.disconnects["drip-0.1"]:
            break
        await asyncio.sleep(0.02)
    assert up.stats.disconnects["drip-0.1"] == 1


# -- through the gateway ---------------------------------------------------------------------

def test_gateway_serves_a_litellm_backend_to_the_openai_client(upstream):
    """The real app (dispatcher, SSE framing) over a litellm backend, judged by the openai SDK;
    a deployment whose provider rejects the backend's key falls back to master-sword."""
    import openai

    from tests.serving import serve

    config = f"""
        [[backends]]
        name = "cloud"
        kind = "litellm"
        base_url = "{upstream.base_url}"
        api_key = "{API_KEY}"
        retries = 0

        [[models]]
        name = "master-sword"
        oracle = "system"
        backend = "cloud"
        upstream_model = "openai/echo"

        [[models]]
        name = "euclid-asm"
        oracle = "oracle-din"
        backend = "cloud"
        upstream_model = "openai/status-401"
    """
    with serve(textwrap.dedent(config)) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        out = client.chat.completions.create(model="master-sword", messages=[USER])
        assert out.choices[0].message.content == "echo: " + USER["content"]
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="master-sword", messages=[USER], stream=True) if c.choices)
        assert text.strip() == "echo: " + USER["content"]
        raw = client.chat.completions.with_raw_response.create(model="euclid-asm", messages=[USER])
        assert raw.parse().choices[0].message.content.startswith("echo: ")
        assert raw.headers.get("x-oracle-fallback") == "euclid-asm>master-sword"
