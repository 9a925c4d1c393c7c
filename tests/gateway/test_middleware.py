"""API keys, the request-size limit and request ids, against the real app."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from tests.gateway.test_openai_api import one_backend_config
from tests.serving import serve

KEY = "sk-oracle-test-0123456789"


@pytest.fixture
def keyed(upstream, monkeypatch):
    monkeypatch.setenv("OC_TEST_KEY", KEY)
    text = one_backend_config(upstream.base_url).replace(
        "[[backends]]", '[server]\napi_keys = ["env:OC_TEST_KEY", "second-key"]\nmax_request_bytes = 4096\n\n[[backends]]', 1)
    with serve(text) as gw:
        yield gw


def test_missing_or_wrong_key_is_401_in_both_api_shapes(keyed):
    r = httpx.post(keyed.v1 + "/chat/completions", json={"model": "euclid-asm", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(keyed.url + "/api/tags", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.v1, api_key="wrong", max_retries=0).models.list()


def test_valid_keys_pass_and_probes_stay_open(keyed):
    for key in (KEY, "second-key"):
        assert openai.OpenAI(base_url=keyed.v1, api_key=key).models.list().data
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(keyed.url + path).status_code == 200


def test_keys_never_reach_logs_or_errors(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    r = httpx.post(keyed.v1 + "/chat/completions", headers={"authorization": f"Bearer {KEY}x"},
                   json={"model": "euclid-asm", "messages": [{"role": "user", "content": "x"}]})
    assert KEY not in r.text
    openai.OpenAI(base_url=keyed.v1, api_key=KEY).chat.completions.create(
        model="euclid-asm", messages=[{"role": "user", "content": "x"}])
    assert KEY not in caplog.text


def test_oversized_body_is_413(keyed):
    big = {"model": "euclid-asm", "messages": [{"role": "user", "content": "A" * 10_000}]}
    r = httpx.post(keyed.v1 + "/chat/completions", json=big, headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_oversized_chunked_body_is_413_too(keyed):
    def gen():
        yield b'{"model": "euclid-asm", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"B" * 1000
        yield b'"}]}'
    r = httpx.post(keyed.v1 + "/chat/completions", content=gen(), headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 413


def test_cors_origins_allow_browser_callers(upstream):
    text = one_backend_config(upstream.base_url).replace(
        "[[backends]]", '[server]\ncors_origins = ["http://localhost:3000"]\napi_keys = ["k"]\n\n[[backends]]', 1)
    with serve(text) as gw:
        pre = httpx.options(gw.v1 + "/chat/completions", headers={
            "origin": "http://localhost:3000", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type"})
        other = httpx.options(gw.v1 + "/chat/completions", headers={
            "origin": "http://evil.example", "access-control-request-method": "POST"})
        r = httpx.get(gw.v1 + "/models", headers={"origin": "http://localhost:3000", "authorization": "Bearer k"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-origin" not in other.headers
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-request-id" in r.headers["access-control-expose-headers"]
