"""The gateway routing ``oracle-council`` for real: the official openai client, the real app over
sockets, a loopback upstream behind it. The Gemini classifier is pointed at a local server that
speaks the generateContent wire format (tests/router/gemini_wire.py), since Gemini cannot be
reached from here."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.router.gemini_wire import GeminiWireServer, Reply
from tests.serving import serve

ASM_PROMPT = "This routine freezes the game when it returns:\n  REP #$20\n  LDA $7EF340\n  STA $0DBF\n  RTL"
TILE_PROMPT = "How do I convert a PNG sprite sheet into 4bpp planar tiles with a BGR555 palette?"


def config(upstream_url: str, router: str) -> str:
    models = "".join(f"""
[[models]]
name = "{name}"
oracle = "{oracle}"
backend = "up"
upstream_model = "echo"
""" for name, oracle in (("euclid-asm", "oracle-din"), ("seph-tilesmith", "oracle-din"), ("master-sword", "system")))
    return f"""
[router]
{router}

[[oracles]]
name = "oracle-din"

[[oracles]]
name = "oracle-nayru"

[[oracles]]
name = "oracle-farore"

[[backends]]
name = "up"
kind = "openai"
base_url = "{upstream_url}"
{models}"""


def ask(client, prompt, model="oracle-council"):
    raw = client.chat.completions.with_raw_response.create(model=model,
                                                           messages=[{"role": "user", "content": prompt}])
    return raw.headers, raw.parse()


@pytest.mark.slow
def test_embedding_only_routes_oracle_council_and_says_so(upstream):
    with serve(config(upstream.base_url, 'policy = "embedding-only"')) as gw, \
            openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
        headers, completion = ask(client, ASM_PROMPT)
        assert headers["x-oracle-router"] == "embedding"
        assert headers["x-oracle-specialist"] == "euclid-asm" and headers["x-oracle-model"] == "euclid-asm"
        assert completion.model == "euclid-asm" and completion.choices[0].message.content.startswith("echo:")
        headers, _ = ask(client, ASM_PROMPT)
        assert headers["x-oracle-router"] == "cache"
        headers, _ = ask(client, TILE_PROMPT)
        assert headers["x-oracle-specialist"] == "seph-tilesmith"
        headers, _ = ask(client, "Which dialogue line should the sage say?", model="oracle-din")
        assert headers["x-oracle-oracle"] == "oracle-din"
        route = httpx.post(gw.v1 + "/route", json={"model": "oracle-council",
                                                   "messages": [{"role": "user", "content": TILE_PROMPT}]}).json()
        assert route["specialist"] == "seph-tilesmith" and route["router"] == "cache"
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'oracle_router_decisions_total{router="embedding",specialist="euclid-asm"} 1.0' in metrics
        assert 'oracle_router_classifier_total{classifier="embedding",outcome="ok"}' in metrics
        router = httpx.get(gw.url + "/readyz").json()["router"]
        assert router == {"policy": "embedding-only", "embedding": "ready", "gemini": "not used (embedding-only)",
                          "cached_decisions": 3}


# each failure as the replies it takes: invalid answers are not retried, 429/5xx are (retries = 1)
FAILURES = [(Reply(text="{broken"),),
            (Reply(json={"specialist": "ganon", "cross_domain": False, "confidence": 1, "reason": "x"}),),
            (Reply(status=429), Reply(status=429)), (Reply(status=500), Reply(status=500)),
            (Reply(status=503), Reply(status=503)), (Reply(delay=1.5),)]


@pytest.mark.slow
def test_gemini_failing_in_every_way_never_fails_a_request(upstream):
    with GeminiWireServer(default=Reply(status=500)) as wire:
        router = (f'policy = "gemini-first"\ngemini_api_key = "test"\ngemini_base_url = "{wire.url}"\n'
                  'gemini_timeout = 1.0\ngemini_retries = 1\ncache_size = 0')
        with serve(config(upstream.base_url, router)) as gw, \
                openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
            breaker = gw.app.state.resolver.cascade.gemini.breaker
            breaker.failure_threshold = 100  # every failure mode reaches Gemini first
            for i, replies in enumerate(FAILURES):
                wire.script(*replies)
                before = len(wire.requests)
                headers, completion = ask(client, f"{TILE_PROMPT} ({i})")
                assert len(wire.requests) == before + len(replies)
                assert headers["x-oracle-router"] == "embedding"
                assert headers["x-oracle-specialist"] == "seph-tilesmith"
            breaker.failure_threshold = 3
            ask(client, "one more failure opens the circuit")
            for i in range(4):  # the circuit is open: Gemini is not even asked
                before = len(wire.requests)
                headers, _ = ask(client, f"{ASM_PROMPT} ; {i}")
                assert headers["x-oracle-router"] == "embedding" and len(wire.requests) == before


def test_with_no_classifier_at_all_the_default_model_answers(upstream, tmp_path):
    router = (f'policy = "gemini-first"\ngemini_api_key = "test"\ngemini_base_url = "http://127.0.0.1:9"\n'
              f'gemini_timeout = 0.3\nclassifier = "{tmp_path / "missing"}"')
    with serve(config(upstream.base_url, router)) as gw, \
            openai.OpenAI(base_url=gw.v1, api_key="x", max_retries=0) as client:
        headers, completion = ask(client, TILE_PROMPT)
        assert headers["x-oracle-router"] == "fallback" and headers["x-oracle-model"] == "master-sword"
        assert completion.choices[0].message.content.startswith("echo:")
        route = httpx.post(gw.v1 + "/route", json={"model": "oracle-council",
                                                   "messages": [{"role": "user", "content": TILE_PROMPT}]}).json()
        assert "gemini" in route["reason"] and "not a trained classifier" in route["reason"]
