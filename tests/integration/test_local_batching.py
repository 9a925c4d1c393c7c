"""The in-process backend's continuous batching, end to end: the official openai and ollama
clients send concurrent requests for two adapters and the base model through the gateway's HTTP
APIs, streamed and not; every reply equals the reply the same request gets alone, and the
backend did decode them together."""

from __future__ import annotations

import asyncio

import ollama
import openai
import pytest

from tests import tiny_lm
from tests.serving import serve

ASM_PROMPT = tiny_lm.ASM_SAMPLES[0]["instruction"]
GFX_PROMPT = tiny_lm.GFX_SAMPLES[1]["instruction"]


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    base = tiny_lm.build_base(root / "base")
    asm = tiny_lm.train(base, tiny_lm.ASM_SAMPLES, root / "asm")
    gfx = tiny_lm.train(base, tiny_lm.GFX_SAMPLES, root / "gfx")
    toml = f"""
[[backends]]
name = "local"
kind = "local"
retries = 0
options = {{ base_model = "{base}", device = "cpu", max_new_tokens = 40, adapters = {{ euclid-asm = "{asm}", seph-tilesmith = "{gfx}" }} }}

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "local"
upstream_model = "euclid-asm"

[[models]]
name = "seph-tilesmith"
oracle = "oracle-nayru"
backend = "local"
upstream_model = "seph-tilesmith"

[[models]]
name = "master-sword"
oracle = "oracle-farore"
backend = "local"
upstream_model = "base"
"""
    with serve(toml) as gw:
        yield gw


@pytest.mark.slow
async def test_concurrent_requests_for_different_adapters_through_both_apis(local_gateway):
    gw = local_gateway
    fixed = {"max_tokens": 32, "temperature": 0, "extra_body": {"ignore_eos": True}}
    cases = [("euclid-asm", ASM_PROMPT), ("seph-tilesmith", GFX_PROMPT), ("master-sword", GFX_PROMPT),
             ("seph-tilesmith", ASM_PROMPT), ("euclid-asm", GFX_PROMPT), ("master-sword", ASM_PROMPT)]

    async with openai.AsyncOpenAI(base_url=gw.v1, api_key="x", max_retries=0, timeout=120) as client:
        async def whole(model: str, prompt: str) -> str:
            out = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                       **fixed)
            return out.choices[0].message.content

        async def streamed(model: str, prompt: str) -> str:
            parts = []
            async for chunk in await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], stream=True, **fixed):
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
            return "".join(parts)

        alone = [await whole(m, p) for m, p in cases]
        assert len(set(alone)) == len(alone)
        engine = gw.app.state.backends["local"]._engine
        steps = engine.steps
        together = await asyncio.gather(*(whole(m, p) for m, p in cases), *(streamed(m, p) for m, p in cases))
        assert together == alone + alone
        assert engine.peak_batch >= 4 and engine.steps - steps < 12 * 32 / 2

    ollama_client = ollama.AsyncClient(host=gw.url, timeout=120)
    replies = await asyncio.gather(*(ollama_client.chat(model=f"{m}:latest", messages=[{"role": "user", "content": p}],
                                                        options={"num_predict": 32, "temperature": 0})
                                     for m, p in cases))
    for reply, expected in zip(replies, alone):
        # Ollama's num_predict without ignore_eos may stop at the end of sequence: a prefix of the
        # fixed-length reply, never anything else
        assert reply.message.content and expected.startswith(reply.message.content)


@pytest.mark.slow
def test_n_choices_through_the_openai_sdk(local_gateway):
    with openai.OpenAI(base_url=local_gateway.v1, api_key="x", max_retries=0, timeout=120) as client:
        params = {"model": "master-sword", "messages": [{"role": "user", "content": GFX_PROMPT}], "n": 3,
                  "max_tokens": 16, "temperature": 1.3, "seed": 21, "extra_body": {"ignore_eos": True}}
        whole = client.chat.completions.create(**params)
        assert [c.index for c in whole.choices] == [0, 1, 2] and len({c.message.content for c in whole.choices}) == 3
        assert whole.usage.completion_tokens == 3 * 16
        texts = ["", "", ""]
        for chunk in client.chat.completions.create(stream=True, **params):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        assert texts == [c.message.content for c in whole.choices]
