"""The in-process backend on a tiny base model with two adapters trained by our own trainer.

``asm`` and ``gfx`` memorise their samples (tests/tiny_lm.py), so greedy replies tell at once
which adapter produced them: that is what the wrong-adapter test relies on.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gateway.backends.local import LocalBackend
from gateway.config import BackendSpec, GatewayConfig
from gateway.errors import ConfigError, InvalidRequest, UpstreamStatusError
from tests import tiny_lm
from tests.backends.localkit import ASM_PROMPT, GFX_PROMPT, chat_body, make_backend, reply, streamed

# -- what the adapters say --------------------------------------------------------------------

async def test_each_adapter_answers_from_its_training(backend: LocalBackend) -> None:
    asm = await reply(backend, "asm", ASM_PROMPT)
    gfx = await reply(backend, "gfx", ASM_PROMPT)
    base = await reply(backend, "base", ASM_PROMPT)
    assert asm == tiny_lm.ASM_SAMPLES[0]["output"]
    assert len({asm, gfx, base}) == 3
    assert await reply(backend, "gfx", GFX_PROMPT) == tiny_lm.GFX_SAMPLES[1]["output"]


async def test_chat_completion_shape_and_usage(backend: LocalBackend) -> None:
    out = await backend.chat(chat_body(ASM_PROMPT), "asm")
    assert out["object"] == "chat.completion" and out["model"] == "asm"
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    u = out["usage"]
    assert u["prompt_tokens"] > 5 and u["completion_tokens"] > 5
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


async def test_stream_equals_non_stream(backend: LocalBackend) -> None:
    for model, prompt in [("asm", ASM_PROMPT), ("gfx", GFX_PROMPT), ("base", GFX_PROMPT)]:
        whole = await backend.chat(chat_body(prompt), model)
        text, chunks = await streamed(backend, model, prompt, stream_options={"include_usage": True})
        assert text == whole["choices"][0]["message"]["content"]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
        assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_no_usage_chunk_unless_asked(backend: LocalBackend) -> None:
    _, chunks = await streamed(backend, "asm", ASM_PROMPT)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)


async def test_interleaved_requests_never_use_the_wrong_adapter(backend: LocalBackend) -> None:
    # Long, fixed-length replies (ignore_eos) so any token produced under the wrong adapter shows.
    params = {"max_tokens": 40, "ignore_eos": True}
    alone = {m: await reply(backend, m, ASM_PROMPT, **params) for m in ("asm", "gfx", "base")}
    assert len(set(alone.values())) == 3

    async def slow_reader(model: str) -> str:
        parts = []
        async for chunk in backend.stream_chat(chat_body(ASM_PROMPT, **params), model):
            parts.append(chunk["choices"][0]["delta"].get("content") or "")
            await asyncio.sleep(0)  # let the other requests' consumers run in between
        return "".join(parts)

    async def whole(model: str) -> str:
        return await reply(backend, model, ASM_PROMPT, **params)

    order = ["asm", "gfx"] * 4 + ["base", "asm", "gfx", "base"]
    jobs = [slow_reader(m) for m in order[:8]] + [whole(m) for m in order[8:]]
    before = backend._engine.steps
    results = await asyncio.gather(*jobs)
    assert results == [alone[m] for m in order]
    # ... and they were decoded together, three adapters to a batch: 12 requests x 40 tokens in
    # far fewer than 480 steps
    assert backend._engine.peak_batch >= 8
    assert backend._engine.steps - before < 12 * 40 / 4


async def test_max_tokens_gives_length(backend: LocalBackend) -> None:
    out = await backend.chat(chat_body(GFX_PROMPT, max_tokens=3, ignore_eos=True), "base")
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 3
    out = await backend.chat(chat_body(GFX_PROMPT, max_completion_tokens=5, ignore_eos=True), "base")
    assert out["usage"]["completion_tokens"] == 5


async def test_stop_strings_cut_the_reply(backend: LocalBackend) -> None:
    full = tiny_lm.ASM_SAMPLES[0]["output"]  # "FillHealth:\n    LDA.l $7EF36C\n    STA.l ..."
    out = await backend.chat(chat_body(ASM_PROMPT, stop=["STA", "never"]), "asm")
    assert out["choices"][0]["message"]["content"] == full[:full.index("STA")]
    assert out["choices"][0]["finish_reason"] == "stop"
    text, chunks = await streamed(backend, "asm", ASM_PROMPT, stop="$7EF36C")
    assert text == full[:full.index("$7EF36C")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_sampling_honours_seed(backend: LocalBackend) -> None:
    params = {"temperature": 1.5, "top_p": 0.95, "max_tokens": 24, "ignore_eos": True}
    a = await reply(backend, "base", GFX_PROMPT, seed=7, **params)
    b = await reply(backend, "base", GFX_PROMPT, seed=7, **params)
    c = await reply(backend, "base", GFX_PROMPT, seed=8, **params)
    assert a == b != c


async def test_temperature_zero_is_greedy_whatever_the_model_defaults(backend: LocalBackend) -> None:
    greedy = await reply(backend, "gfx", GFX_PROMPT)
    defaults = backend._model.generation_config
    saved = {key: getattr(defaults, key) for key in ("do_sample", "temperature", "top_k")}
    defaults.update(do_sample=True, temperature=0.7, top_k=5)  # as Qwen instruct models ship
    try:
        assert await reply(backend, "gfx", GFX_PROMPT) == greedy
        sampled = {await reply(backend, "base", GFX_PROMPT, temperature=None, max_tokens=16, ignore_eos=True)
                   for _ in range(3)}
        assert len(sampled) > 1  # no temperature in the request: the model's default (sampling) applies
    finally:
        defaults.update(**saved)


async def test_completions_plain_prompt(backend: LocalBackend) -> None:
    body = {"prompt": "LDA.l $7EF36C", "temperature": 0, "max_tokens": 12, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    out = await backend.completion(body, "asm")
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 12
    chunks = [c async for c in backend.stream_completion(body, "asm")]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == out["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == out["usage"]
    echoed = await backend.completion({**body, "echo": True}, "asm")
    assert echoed["choices"][0]["text"] == "LDA.l $7EF36C" + out["choices"][0]["text"]


# -- cancellation -----------------------------------------------------------------------------

async def test_closing_a_stream_stops_generation(backend: LocalBackend, generated_tokens: list[int]) -> None:
    stream = backend.stream_chat(chat_body(GFX_PROMPT, max_tokens=1500, ignore_eos=True), "base")
    for _ in range(3):
        await stream.__anext__()
    await stream.aclose()
    # The worker runs jobs in order: once this short request is done, the closed one has ended.
    await reply(backend, "asm", ASM_PROMPT, max_tokens=4)
    assert generated_tokens[0] < 100


async def test_cancelling_a_request_stops_generation(backend: LocalBackend, generated_tokens: list[int]) -> None:
    task = asyncio.create_task(backend.chat(chat_body(GFX_PROMPT, max_tokens=1500, ignore_eos=True), "base"))
    while generated_tokens[0] < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await reply(backend, "asm", ASM_PROMPT, max_tokens=4)
    assert generated_tokens[0] < 100


async def test_a_request_cancelled_while_queued_never_runs(artifacts: dict[str, Path],
                                                           generated_tokens: list[int]) -> None:
    backend = make_backend(artifacts, max_batch_size=1)  # one at a time: the second request waits
    try:
        first = asyncio.create_task(reply(backend, "base", GFX_PROMPT, max_tokens=200, ignore_eos=True))
        while generated_tokens[0] == 0:  # the first request holds the only place in the batch
            await asyncio.sleep(0.005)
        queued = asyncio.create_task(reply(backend, "base", GFX_PROMPT, max_tokens=500, ignore_eos=True))
        while len(backend._jobs) < 2:  # ... and the second waits behind it
            await asyncio.sleep(0.005)
        queued.cancel()
        await first
        await reply(backend, "asm", ASM_PROMPT, max_tokens=4, ignore_eos=True)
        assert generated_tokens[0] == 200 + 4
        assert backend._engine.peak_batch == 1
    finally:
        await backend.aclose()


# -- errors, health, configuration ------------------------------------------------------------

async def test_unknown_adapter_is_a_404_naming_the_known_ones(backend: LocalBackend) -> None:
    with pytest.raises(UpstreamStatusError) as err:
        await backend.chat(chat_body("hi"), "nope")
    assert err.value.status_code == 404 and not err.value.retryable
    assert "'nope'" in err.value.message and "asm" in err.value.message and "base" in err.value.message
    with pytest.raises(UpstreamStatusError):
        await backend.stream_chat(chat_body("hi"), "nope").__anext__()


async def test_invalid_requests(backend: LocalBackend) -> None:
    for n in (0, 17, 1.5, True):
        with pytest.raises(InvalidRequest, match="n must be an integer from 1 to 16"):
            await backend.chat(chat_body("hi", n=n), "asm")
    with pytest.raises(InvalidRequest, match="max_tokens"):
        await backend.chat(chat_body("hi", max_tokens=-1), "asm")
    with pytest.raises(InvalidRequest, match="at most"):  # longer than the model's 2048 positions
        await backend.chat(chat_body("LDA " * 3000), "asm")
    with pytest.raises(InvalidRequest, match="text content only"):
        await backend.chat({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "asm")


async def test_health_before_and_after_start(artifacts: dict[str, Path]) -> None:
    b = make_backend(artifacts, adapters={"asm": str(artifacts["asm"])})
    assert not (await b.health()).ok
    await b.start()
    health = await b.health()
    assert health.ok and health.models == ["base", "asm"] and "cpu" in health.detail
    await b.aclose()


async def test_base_only_backend(artifacts: dict[str, Path]) -> None:
    b = make_backend(artifacts, adapters={})
    try:
        plain = await reply(b, "base", ASM_PROMPT, max_tokens=10, ignore_eos=True)
        assert len(plain) > 0
        with pytest.raises(UpstreamStatusError):
            await reply(b, "asm", ASM_PROMPT)
    finally:
        await b.aclose()


@pytest.mark.parametrize("options, message", [
    ({"base_model": "x", "adapterz": {}}, "unknown key"),
    ({}, "base_model"),
    ({"base_model": "x", "adapters": {"base": "y"}}, "reserved"),
    ({"base_model": "x", "device": "tpu"}, "device"),
    ({"base_model": "x", "dtype": "int3"}, "dtype"),
    ({"base_model": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ({"base_model": "x", "max_batch_size": 0}, "max_batch_size"),
    ({"base_model": "x", "max_batch_size": True}, "max_batch_size"),
    ({"base_model": "x", "max_waiting": -1}, "max_waiting"),
])
def test_options_are_validated(options: dict, message: str) -> None:
    spec = BackendSpec(name="local", kind="local", options=options)
    with pytest.raises(ConfigError, match=message):
        LocalBackend(spec, GatewayConfig(backends=[spec]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_serves_on_cuda_in_bf16(artifacts: dict[str, Path]) -> None:
    b = make_backend(artifacts, device="cuda")
    try:
        text, chunks = await streamed(b, "asm", ASM_PROMPT, max_tokens=8, ignore_eos=True)
        assert text and chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "cuda" in (await b.health()).detail
    finally:
        await b.aclose()


def test_importing_the_backend_does_not_import_torch() -> None:
    code = "import gateway.backends.local, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
