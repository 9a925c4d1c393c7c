"""Upstream faults seen through the gateway: the right fallback or a clean, typed error, and
nothing left open. The upstream is eval/loopback_upstream.py, scripted by model name."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.serving import free_port, serve


def config(base_url: str, *, model: str, fallbacks: str = "[]", read: float = 5, retries: int = 2,
           threshold: int = 5, master: str | None = None, extra: str = "") -> str:
    text = f"""
[[backends]]
name = "up"
kind = "openai"
base_url = "{base_url}"
retries = {retries}
timeouts = {{ connect = 1, read = {read}, total = 10 }}
circuit_breaker = {{ failure_threshold = {threshold}, reset_after = 30 }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "up"
upstream_model = "{model}"
fallbacks = {fallbacks}
"""
    if master:
        text += f"""
[[models]]
name = "master-sword"
oracle = "system"
backend = "up"
upstream_model = "{master}"
"""
    return text + extra


def chat(gw, **kw):
    client = openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=30)
    return client.chat.completions.with_raw_response.create(
        model="euclid-asm", messages=[{"role": "user", "content": "hello"}], **kw)


def test_upstream_down_is_a_503_after_retries():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with serve(config(dead, model="echo", retries=1)) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            chat(gw)
    assert info.value.status_code == 503
    assert info.value.body["type"] == "upstream_unavailable"
    assert "cannot connect" in info.value.body["message"]


def test_500_without_fallback_is_a_502_and_not_retried(upstream):
    with serve(config(upstream.base_url, model="status-500")) as gw:
        with pytest.raises(openai.APIStatusError) as info:
            chat(gw)
    assert info.value.status_code == 502
    assert upstream.stats.requests["status-500"] == 1, "a 500 is not retried on the same deployment"


def test_503_is_retried_with_backoff_then_succeeds(upstream):
    with serve(config(upstream.base_url, model="flaky-2", retries=2)) as gw:
        r = chat(gw)
        metrics = httpx.get(gw.url + "/metrics").text
    assert r.parse().choices[0].message.content == "echo: hello"
    assert upstream.stats.requests["flaky-2"] == 3
    assert 'oracle_retries_total{backend="up"} 2.0' in metrics


def test_429_is_passed_on_when_retries_are_exhausted(upstream):
    with serve(config(upstream.base_url, model="status-429", retries=1)) as gw:
        with pytest.raises(openai.RateLimitError):
            chat(gw)
    assert upstream.stats.requests["status-429"] == 2


def test_upstream_4xx_is_the_clients_fault_no_fallback(upstream):
    with serve(config(upstream.base_url, model="status-400", master="echo")) as gw:
        with pytest.raises(openai.BadRequestError):
            chat(gw)
    assert upstream.stats.requests["echo"] == 0


def test_fallback_to_master_sword_is_visible_in_headers(upstream):
    with serve(config(upstream.base_url, model="status-500", master="echo")) as gw:
        r = chat(gw)
        metrics = httpx.get(gw.url + "/metrics").text
    assert r.parse().choices[0].message.content == "echo: hello"
    assert r.headers["x-oracle-model"] == "master-sword"
    assert r.headers["x-oracle-fallback"] == "euclid-asm>master-sword"
    assert r.parse().model == "master-sword"
    assert 'oracle_fallbacks_total{from_model="euclid-asm",to_model="master-sword"} 1.0' in metrics


def test_fallback_chain_follows_config_order(upstream):
    extra = """
[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "up"
upstream_model = "reset"
"""
    with serve(config(upstream.base_url, model="status-502", fallbacks='["seph-tilesmith"]', master="echo",
                      retries=0, extra=extra)) as gw:
        r = chat(gw)
    assert r.headers["x-oracle-fallback"] == "euclid-asm>seph-tilesmith>master-sword"
    assert upstream.stats.requests["reset"] == 1


def test_stream_fallback_happens_before_the_first_byte(upstream):
    with serve(config(upstream.base_url, model="status-503", master="echo", retries=0)) as gw:
        r = chat(gw, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
    assert text.strip() == "echo: hello"
    assert r.headers["x-oracle-fallback"] == "euclid-asm>master-sword"


def test_read_timeout_is_a_504(upstream):
    with serve(config(upstream.base_url, model="slow-3", read=0.5, retries=0)) as gw:
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            chat(gw)
    assert info.value.status_code == 504
    assert time.monotonic() - t0 < 3


def test_stalled_stream_gets_an_error_frame_then_done(upstream):
    with serve(config(upstream.base_url, model="stall", read=0.5)) as gw:
        with httpx.stream("POST", gw.v1 + "/chat/completions", timeout=10, json={
                "model": "euclid-asm", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            frames = [line for line in r.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert '"type":"upstream_timeout"' in frames[-2]


def test_malformed_stream_raises_in_the_sdk(upstream):
    with serve(config(upstream.base_url, model="malformed")) as gw:
        r = chat(gw, stream=True)
        with pytest.raises(openai.APIError, match="not JSON"):
            list(r.parse())


def test_truncated_stream_is_reported_not_silently_cut(upstream):
    with serve(config(upstream.base_url, model="truncated")) as gw:
        with httpx.stream("POST", gw.v1 + "/chat/completions", json={
                "model": "euclid-asm", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            frames = [line for line in r.iter_lines() if line]
    assert frames[-1] == "data: [DONE]"
    assert '"error"' in frames[-2]


def test_circuit_opens_and_stops_calling_a_failing_upstream(upstream):
    with serve(config(upstream.base_url, model="status-500", threshold=3, retries=0)) as gw:
        for _ in range(3):
            with pytest.raises(openai.APIStatusError):
                chat(gw)
        with pytest.raises(openai.APIStatusError) as info:
            chat(gw)
        metrics = httpx.get(gw.url + "/metrics").text
    assert info.value.status_code == 503 and "circuit open" in info.value.body["message"]
    assert upstream.stats.requests["status-500"] == 3
    assert 'oracle_circuit_open{backend="up",upstream_model="status-500"} 1.0' in metrics


def test_several_deployments_route_around_a_dead_one(upstream):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    text = f"""
[[backends]]
name = "dead"
kind = "openai"
base_url = "{dead}"
retries = 0
circuit_breaker = {{ failure_threshold = 1, reset_after = 60 }}

[[backends]]
name = "live"
kind = "openai"
base_url = "{upstream.base_url}"

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "dead"
upstream_model = "echo"
deployments = [{{ backend = "live", upstream_model = "echo" }}]
"""
    with serve(text) as gw:
        backends = [chat(gw).headers["x-oracle-backend"] for _ in range(6)]
    assert set(backends) == {"live"}
    assert upstream.stats.requests["echo"] == 6


def test_client_disconnect_mid_stream_cancels_the_upstream_request(upstream):
    with serve(config(upstream.base_url, model="drip-0.05", read=5)) as gw:
        with httpx.stream("POST", gw.v1 + "/chat/completions", json={
                "model": "euclid-asm", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
            it = r.iter_lines()
            got = [next(it) for _ in range(6)]
        assert any("t1" in line for line in got)
        deadline = time.monotonic() + 5
        while upstream.stats.disconnects["drip-0.05"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = httpx.get(gw.url + "/metrics").text
    assert upstream.stats.disconnects["drip-0.05"] == 1
    assert 'status="client_disconnected"' in metrics
    assert "oracle_in_flight 0.0" in metrics
