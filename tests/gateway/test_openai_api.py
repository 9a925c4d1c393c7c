"""The OpenAI API as the official ``openai`` SDK sees it, against the real app over sockets,
with a loopback OpenAI-compatible upstream (eval/loopback_upstream.py) behind it."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serving import serve


def one_backend_config(base_url: str, *, extra: str = "") -> str:
    return f"""
[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = 1

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "echo"

[[models]]
name = "tool-user"
oracle = "oracle-din"
backend = "up"
upstream_model = "tools"
{extra}
"""


@pytest.fixture
def gateway(upstream):
    with serve(one_backend_config(upstream.base_url)) as gw:
        yield gw


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0) as c:
        yield c


def test_non_stream_chat_reaches_upstream_and_names_the_model(client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="euclid-asm", messages=[{"role": "user", "content": "LDA #$01"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: LDA #$01"
    assert completion.model == "euclid-asm"
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-oracle-model"] == "euclid-asm"
    assert raw.headers["x-oracle-router"] == "direct"
    assert raw.headers["x-oracle-backend"] == "up"
    assert len(raw.headers["x-request-id"]) >= 8
    assert upstream.stats.requests["echo"] == 1


def test_stream_chat_relays_chunks_and_ends_cleanly(client):
    stream = client.chat.completions.create(
        model="euclid-asm", stream=True, messages=[{"role": "user", "content": "write a hook"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == "echo: write a hook"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.model == "euclid-asm" for c in chunks)
    assert all(c.usage is None for c in chunks), "usage was not asked for, so none is sent"


def test_stream_usage_only_when_asked(client):
    chunks = list(client.chat.completions.create(
        model="euclid-asm", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count me"}]))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_raw_stream_ends_with_done(gateway):
    with httpx.stream("POST", gateway.v1 + "/chat/completions", json={
            "model": "euclid-asm", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-oracle-model"] == "euclid-asm"
        frames = [line for line in r.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert all(f.startswith("data: ") for f in frames)


def test_tools_and_tool_calls_pass_through(client, upstream):
    tools = [{"type": "function", "function": {"name": "dungeon-list-sprites", "description": "list sprites",
                                               "parameters": {"type": "object", "properties": {"room": {"type": "string"}}}}}]
    completion = client.chat.completions.create(model="tool-user", tools=tools,
                                                messages=[{"role": "user", "content": "sprites in room 12?"}])
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "dungeon-list-sprites"
    assert completion.choices[0].finish_reason == "tool_calls"


def test_tools_reach_the_upstream_untouched():
    from tests.conftest import ThreadedUpstream
    with ThreadedUpstream() as up:
        up.stats.keep_bodies = True
        with serve(one_backend_config(up.base_url)) as gw:
            tools = [{"type": "function", "function": {"name": "hex-read", "parameters": {"type": "object"}}}]
            openai.OpenAI(base_url=gw.v1, api_key="x").chat.completions.create(
                model="euclid-asm", tools=tools, tool_choice="auto", extra_body={"top_k": 40},
                messages=[{"role": "user", "content": "read"}])
        sent = up.stats.bodies[-1]
    assert sent["tools"] == tools and sent["tool_choice"] == "auto" and sent["top_k"] == 40
    assert sent["model"] == "echo"


def test_models_lists_deployed_router_and_oracles(client):
    ids = [m.id for m in client.models.list()]
    assert ids[:3] == ["euclid-asm", "tool-user", "oracle-council"]
    assert client.models.retrieve("euclid-asm").id == "euclid-asm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_oracle_council_goes_to_default_model_until_a_router_lands(client):
    raw = client.chat.completions.with_raw_response.create(
        model="oracle-council", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-oracle-router"] == "direct"
    assert raw.headers["x-oracle-model"] == "euclid-asm"
    assert raw.parse().model == "euclid-asm"


def test_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="ganon-asm", messages=[{"role": "user", "content": "x"}])
    err = info.value.body
    assert err["code"] == "model_not_found" and "ganon-asm" in err["message"] and err["param"] == "model"


@pytest.mark.parametrize("body, param", [
    ({"model": "euclid-asm", "messages": []}, "messages"),
    ({"model": "euclid-asm"}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "euclid-asm", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "euclid-asm", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "euclid-asm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**12}, "max_tokens"),
    ({"model": "euclid-asm", "messages": [{"role": "user", "content": "x"}], "n": 1000}, "n"),
])
def test_bad_requests_are_400_naming_the_field(gateway, body, param):
    r = httpx.post(gateway.v1 + "/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == param
    assert r.headers["x-request-id"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe{}", b'"a string"'])
def test_unparseable_bodies_are_400(gateway, content):
    r = httpx.post(gateway.v1 + "/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_completions_endpoint_for_editor_autocomplete(client):
    c = client.completions.create(model="euclid-asm", prompt="LDA.l $7EF3C5", max_tokens=8)
    assert c.choices[0].text == "echo: LDA.l $7EF3C5"
    stream = client.completions.create(model="euclid-asm", prompt="STA $00", max_tokens=8, stream=True)
    assert "".join(ch.choices[0].text for ch in stream).strip() == "echo: STA $00"


async def test_async_client_concurrent_requests(gateway):
    import asyncio
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key="x") as client:
        results = await asyncio.gather(*(client.chat.completions.create(
            model="euclid-asm", messages=[{"role": "user", "content": f"n{i}"}]) for i in range(20)))
    assert [r.choices[0].message.content for r in results] == [f"echo: n{i}" for i in range(20)]


def test_route_endpoint_returns_the_decision(gateway):
    r = httpx.post(gateway.v1 + "/route", json={"model": "oracle-council", "messages": [{"role": "user", "content": "x"}]})
    d = r.json()
    assert set(d) == {"model", "specialist", "oracle", "task_type", "cross_domain", "confidence", "router", "reason"}
    assert d["model"] == "euclid-asm" and d["router"] == "direct"


def test_request_id_is_echoed_when_sane(gateway):
    r = httpx.get(gateway.url + "/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(gateway.url + "/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_count_requests_tokens_and_latency(client, gateway):
    client.chat.completions.create(model="euclid-asm", messages=[{"role": "user", "content": "a b c"}])
    text = httpx.get(gateway.url + "/metrics").text
    assert 'oracle_requests_total{api="chat",backend="up",model="euclid-asm",status="ok"} 1.0' in text
    assert 'oracle_tokens_total{backend="up",kind="completion",model="euclid-asm"}' in text
    assert 'oracle_upstream_seconds_bucket{backend="up",le="0.001",model="euclid-asm",phase="first_byte"}' in text


def test_readyz_reports_each_backend(gateway):
    r = httpx.get(gateway.url + "/readyz")
    assert r.status_code == 200
    assert r.json()["backends"]["up"]["ok"] is True


def test_readyz_reports_the_router(gateway):
    assert gateway.app.state.config.router.policy == "direct"
    assert httpx.get(gateway.url + "/readyz").json()["router"] == {"policy": "direct"}
