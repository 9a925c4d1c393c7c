"""Continuous batching in the in-process backend (gateway/backends/batching.py).

The judges are transformers and peft themselves: a lone request must compute exactly what peft
computes, rows under different adapters must each match that adapter alone, and greedy decoding
with a repetition penalty and min_tokens must give what ``generate`` gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.backends.batching import UnsupportedAdapter, install_multi_lora
from gateway.backends.local import LocalBackend
from gateway.errors import UpstreamError, UpstreamUnavailable
from tests import tiny_lm
from tests.backends.localkit import ASM_PROMPT, GFX_PROMPT, chat_body, make_backend, reply


def load_peft(artifacts: dict[str, Path]) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(artifacts["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, artifacts["asm"], adapter_name="asm")
    model.load_adapter(artifacts["gfx"], adapter_name="gfx")
    return model.eval()


def prompt_ids(artifacts: dict[str, Path], prompt: str) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(artifacts["base"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


# -- the layers ----------------------------------------------------------------------------------

@torch.inference_mode()
def test_one_adapter_is_peft_exactly_and_mixed_rows_match_each_adapter(artifacts: dict[str, Path]) -> None:
    from peft.tuners.lora import LoraLayer

    ids = prompt_ids(artifacts, ASM_PROMPT)
    peft_model = load_peft(artifacts)
    expected = {}
    for name in ("asm", "gfx"):
        peft_model.set_adapter(name)
        expected[name] = peft_model(input_ids=ids).logits
    with peft_model.disable_adapter():
        expected["base"] = peft_model(input_ids=ids).logits
    assert not torch.allclose(expected["asm"], expected["gfx"])

    model, rows = install_multi_lora(load_peft(artifacts), ["asm", "gfx"])
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    for index, name in enumerate(("base", "asm", "gfx")):
        rows.assign([index])
        assert torch.equal(model(input_ids=ids).logits, expected[name]), name
    rows.assign([1, 2, 0, 2])
    mixed = model(input_ids=ids.repeat(4, 1)).logits
    for row, name in enumerate(("asm", "gfx", "base", "gfx")):
        torch.testing.assert_close(mixed[row], expected[name][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra, message", [({"use_dora": True}, "DoRA"),
                                            ({"modules_to_save": ["lm_head"]}, "modules_to_save")])
def test_adapters_that_cannot_be_batched_are_refused_with_the_reason(
        artifacts: dict[str, Path], tmp_path: Path, extra: dict, message: str) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(artifacts["base"], dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **extra)).save_pretrained(tmp_path)
    fresh = AutoModelForCausalLM.from_pretrained(artifacts["base"], dtype=torch.float32)
    with pytest.raises(UnsupportedAdapter, match=message):
        install_multi_lora(PeftModel.from_pretrained(fresh, tmp_path, adapter_name="odd"), ["odd"])
    served = make_backend(artifacts, adapters={"odd": str(tmp_path)})
    with pytest.raises(UpstreamUnavailable, match=message):
        asyncio.run(served.start())


# -- the engine ----------------------------------------------------------------------------------

async def test_a_request_joins_a_running_batch(backend: LocalBackend, generated_tokens: list[int]) -> None:
    alone = await reply(backend, "base", GFX_PROMPT, max_tokens=300, ignore_eos=True)
    long = asyncio.create_task(reply(backend, "base", GFX_PROMPT, max_tokens=300, ignore_eos=True))
    while generated_tokens[0] < 305:  # the long request is running (300 tokens were counted above)
        await asyncio.sleep(0.005)
    # the short one does not wait for the long one to finish
    assert await reply(backend, "asm", ASM_PROMPT) == tiny_lm.ASM_SAMPLES[0]["output"]
    assert not long.done()
    assert await long == alone


async def test_a_seeded_sample_does_not_depend_on_its_batch(backend: LocalBackend) -> None:
    params = {"temperature": 1.3, "top_p": 0.95, "max_tokens": 24, "ignore_eos": True}
    alone = await reply(backend, "gfx", GFX_PROMPT, seed=11, **params)
    crowd = await asyncio.gather(reply(backend, "asm", ASM_PROMPT),
                                 reply(backend, "base", GFX_PROMPT, **params),
                                 reply(backend, "gfx", GFX_PROMPT, seed=11, **params),
                                 reply(backend, "gfx", ASM_PROMPT, seed=12, **params))
    assert crowd[2] == alone
    assert crowd[0] == tiny_lm.ASM_SAMPLES[0]["output"]


async def test_top_k_one_and_a_tiny_top_p_are_greedy(backend: LocalBackend) -> None:
    params = {"max_tokens": 20, "ignore_eos": True}
    greedy = await reply(backend, "base", GFX_PROMPT, **params)
    assert await reply(backend, "base", GFX_PROMPT, temperature=1.5, top_k=1, **params) == greedy
    assert await reply(backend, "base", GFX_PROMPT, temperature=1.5, top_p=1e-6, **params) == greedy
    sampled = {await reply(backend, "base", GFX_PROMPT, temperature=1.5, **params) for _ in range(3)}
    assert sampled != {greedy}


@pytest.mark.parametrize("model", ["asm", "base"])
async def test_repetition_penalty_and_min_tokens_decode_as_transformers_generate(
        artifacts: dict[str, Path], backend: LocalBackend, model: str) -> None:
    from transformers import AutoTokenizer

    ids = prompt_ids(artifacts, ASM_PROMPT)
    peft_model = load_peft(artifacts)
    tokenizer = AutoTokenizer.from_pretrained(artifacts["base"])
    for knobs, ours in [({"repetition_penalty": 1.3}, {"repetition_penalty": 1.3}),
                        ({"min_new_tokens": 40}, {"min_tokens": 40})]:
        peft_model.set_adapter("asm")
        with torch.inference_mode(), (peft_model.disable_adapter() if model == "base" else contextlib.nullcontext()):
            out = peft_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=48, pad_token_id=tokenizer.eos_token_id, **knobs)
        expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert await reply(backend, model, ASM_PROMPT, max_tokens=48, **ours) == expected, knobs


async def test_a_failed_step_fails_its_batch_and_the_engine_goes_on(backend: LocalBackend,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = backend._engine
    decode, calls = engine._decode, []

    def broken() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        decode()

    monkeypatch.setattr(engine, "_decode", broken)
    with pytest.raises(UpstreamError, match="out of memory"):
        await reply(backend, "asm", ASM_PROMPT)
    assert await reply(backend, "asm", ASM_PROMPT) == tiny_lm.ASM_SAMPLES[0]["output"]


async def test_closing_the_backend_ends_running_and_waiting_requests(artifacts: dict[str, Path]) -> None:
    closing = make_backend(artifacts, max_batch_size=1)
    running = closing.stream_chat(chat_body(GFX_PROMPT, max_tokens=1500, ignore_eos=True), "base")
    await running.__anext__()
    waiting = asyncio.create_task(reply(closing, "asm", ASM_PROMPT))
    while len(closing._jobs) < 2:
        await asyncio.sleep(0.005)
    await closing.aclose()
    with pytest.raises(UpstreamUnavailable, match="shutting down"):
        while True:
            await running.__anext__()
    with pytest.raises(UpstreamUnavailable, match="shutting down"):
        await waiting
    with pytest.raises(UpstreamUnavailable, match="shut down"):
        await reply(closing, "asm", ASM_PROMPT)


async def test_running_and_waiting_requests_are_published_as_gauges(artifacts: dict[str, Path],
                                                                    generated_tokens: list[int]) -> None:
    from gateway.metrics import Metrics

    one = make_backend(artifacts, max_batch_size=1)
    metrics = Metrics()
    metrics.watch_backend(one)
    gauges = one.load_gauges()
    try:
        assert {state: read() for state, read in gauges.items()} == {"running": 0, "waiting": 0}
        first = asyncio.create_task(reply(one, "base", GFX_PROMPT, max_tokens=300, ignore_eos=True))
        while generated_tokens[0] == 0:
            await asyncio.sleep(0.005)
        second = asyncio.create_task(reply(one, "asm", ASM_PROMPT))
        while gauges["waiting"]() == 0:
            await asyncio.sleep(0.005)
        text = metrics.render().decode()
        assert 'oracle_backend_requests{backend="local",state="running"} 1.0' in text
        assert 'oracle_backend_requests{backend="local",state="waiting"} 1.0' in text
        second.cancel()  # a request that gives up while waiting leaves the queue at the next step
        with contextlib.suppress(asyncio.CancelledError):
            await second
        while gauges["waiting"]() != 0:
            await asyncio.sleep(0.005)
        assert gauges["running"]() == 1 and not first.done()
        third = asyncio.create_task(reply(one, "asm", ASM_PROMPT))
        await asyncio.gather(first, third)
        assert {state: read() for state, read in gauges.items()} == {"running": 0, "waiting": 0}
    finally:
        await one.aclose()


async def test_a_full_backend_refuses_at_once_with_a_retryable_503(artifacts: dict[str, Path],
                                                                  generated_tokens: list[int]) -> None:
    small = make_backend(artifacts, max_batch_size=1, max_waiting=1)
    try:
        first = asyncio.create_task(reply(small, "base", GFX_PROMPT, max_tokens=300, ignore_eos=True))
        while generated_tokens[0] == 0:
            await asyncio.sleep(0.005)
        second = asyncio.create_task(reply(small, "asm", ASM_PROMPT))
        while len(small._jobs) < 2:
            await asyncio.sleep(0.005)
        with pytest.raises(UpstreamUnavailable, match="is full: 2 requests running or waiting") as err:
            await reply(small, "gfx", GFX_PROMPT)
        assert err.value.status_code == 503 and err.value.retryable
        assert await second == tiny_lm.ASM_SAMPLES[0]["output"]
        await first
        assert await reply(small, "asm", ASM_PROMPT) == tiny_lm.ASM_SAMPLES[0]["output"]  # room again
    finally:
        await small.aclose()


# -- tools ---------------------------------------------------------------------------------------

# A ChatML template that lists the tools in a system turn and prints tool calls and results the
# way Qwen2.5's template does (written for this test; the tiny base's own template knows no tools).
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools you may call:\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n"
    "Answer a call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>.<|im_end|>\n{% endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant"
    "{%- for call in message.tool_calls %}\n<tool_call>{\"name\": \"{{ call.function.name }}\", "
    "\"arguments\": {{ call.function.arguments | tojson }}}</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TOOL = {"type": "function", "function": {"name": "list_sprites", "description": "Sprites of a dungeon room",
                                         "parameters": {"type": "object", "properties": {"room": {"type": "string"}}}}}


async def test_tools_and_the_tool_history_reach_the_chat_template(artifacts: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from gateway.backends.local import _chat_messages

    base = tmp_path / "tools-base"
    shutil.copytree(artifacts["base"], base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = TOOLS_TEMPLATE
    tokenizer.save_pretrained(base)
    tooled = make_backend(artifacts, base_model=str(base), adapters={})
    await tooled.start()
    body = {"tools": [TOOL], "messages": [
        {"role": "user", "content": "Which sprites are in room 0x12?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "list_sprites", "arguments": "{\"room\": \"0x12\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Stalfos, Keese"}]}

    def rendered(request: dict) -> str:
        job = tooled._job(request, "base", messages=_chat_messages(request))
        return tooled._tokenizer.decode(tooled._sequence(job, lambda event: None).tokenize())

    try:
        text = rendered(body)
        assert "Tools you may call:" in text and '"name": "list_sprites"' in text and "Sprites of a dungeon room" in text
        # the earlier call, its arguments an object (not a JSON string inside a string), and its result
        assert '<tool_call>{"name": "list_sprites", "arguments": {"room": "0x12"}}</tool_call>' in text
        assert "<tool_response>Stalfos, Keese</tool_response>" in text
        assert text.endswith("<|im_start|>assistant\n")
        assert "Tools you may call" not in rendered({**body, "tool_choice": "none"})
        assert "Tools you may call" not in rendered({"messages": body["messages"][:1]})
        out = await tooled.chat({**body, "max_tokens": 4, "temperature": 0}, "base")  # it generates from it
        assert out["usage"]["prompt_tokens"] == len(tooled._tokenizer(text, add_special_tokens=False)["input_ids"])
    finally:
        await tooled.aclose()


def test_bench_generate_cpu_smoke(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gateway.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "generate", "--shape", "tiny", "--device", "cpu", "--batch", "4", "--prompt-len", "8",
                 "--new-tokens", "4", "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mixed / one adapter: ours" in text and "peft" in text
    r = json.loads(out.read_text())
    assert set(r["runs"]) == {"peft, one adapter", "peft, mixed", "ours, one adapter", "ours, mixed",
                              "ours, one at a time"}
    assert all(v > 0 for v in r["tokens_per_s"].values()) and r["mixed_over_one"]["ours"] > 0
    assert main(["bench", "generate", "--batch", "0"]) == 2
    assert main(["bench", "generate", "--device", "cuda"]) == 2 or torch.cuda.is_available()
    assert "no CUDA device" in capsys.readouterr().err or torch.cuda.is_available()


async def test_a_storm_of_mixed_requests(artifacts: dict[str, Path]) -> None:
    """Forty requests at random moments, a small batch (so some wait): adapters, lengths, stop
    strings, seeded sampling, streams dropped part-way and requests cancelled. Every request that
    ends gives what it gives alone; the dropped ones leave nothing behind."""
    import random

    rng = random.Random(1234)
    storm = make_backend(artifacts, max_batch_size=4)
    prompts = [s["instruction"] for s in tiny_lm.ASM_SAMPLES[:3] + tiny_lm.GFX_SAMPLES[:3]]
    requests = []
    for i in range(40):
        body = chat_body(rng.choice(prompts), max_tokens=rng.randint(1, 40))
        if rng.random() < 0.4:
            body["ignore_eos"] = True
        if rng.random() < 0.2:
            body["stop"] = [rng.choice(["LDA", "tile", "$7E", ". "])]
        if rng.random() < 0.3:
            body.update(temperature=1.2, top_p=0.9, seed=i)
        fate = rng.choice(["whole", "whole", "stream", "drop", "cancel"])
        requests.append((rng.choice(["asm", "gfx", "base"]), body, fate, rng.random() * 0.3))

    async def one(model: str, body: dict, fate: str, delay: float) -> str | None:
        await asyncio.sleep(delay)
        if fate == "whole":
            return (await storm.chat(body, model))["choices"][0]["message"]["content"]
        if fate == "cancel":
            task = asyncio.create_task(storm.chat(body, model))
            await asyncio.sleep(rng.random() * 0.05)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        parts = []
        async with contextlib.aclosing(storm.stream_chat(body, model)) as stream:
            async for chunk in stream:
                if chunk["choices"]:
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
                if fate == "drop" and len(parts) >= 3:
                    return None
        return "".join(parts)

    try:
        results = await asyncio.gather(*(one(*r) for r in requests))
        for (model, body, fate, _), got in zip(requests, results):
            if got is not None:
                assert got == (await storm.chat(body, model))["choices"][0]["message"]["content"], (model, body)
        assert sum(r is not None for r in results) >= 20
        assert storm._engine.peak_batch == 4
        for _ in range(100):  # the engine retires a dropped request at its next step
            if storm._engine.counts() == {"running": 0, "waiting": 0}:
                break
            await asyncio.sleep(0.01)
        assert storm._engine.counts() == {"running": 0, "waiting": 0} and not storm._jobs
    finally:
        await storm.aclose()


# -- n choices -----------------------------------------------------------------------------------

async def test_n_choices_run_in_one_batch(backend: LocalBackend) -> None:
    alone = await backend.chat(chat_body(ASM_PROMPT), "asm")
    out = await backend.chat(chat_body(ASM_PROMPT, n=3), "asm")
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in out["choices"]} == {tiny_lm.ASM_SAMPLES[0]["output"]}  # greedy
    assert all(c["finish_reason"] == "stop" for c in out["choices"])
    assert out["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == 3 * alone["usage"]["completion_tokens"]

    sampled = {"temperature": 1.3, "max_tokens": 16, "ignore_eos": True, "seed": 5}
    three = await backend.chat(chat_body(GFX_PROMPT, n=3, **sampled), "base")
    texts = [c["message"]["content"] for c in three["choices"]]
    assert len(set(texts)) == 3  # choice i samples with seed + i ...
    for i, text in enumerate(texts):  # ... so each is the single request with that seed
        assert await reply(backend, "base", GFX_PROMPT, **{**sampled, "seed": 5 + i}) == text


async def test_n_choices_stream_interleaved_by_index(backend: LocalBackend) -> None:
    body = chat_body(GFX_PROMPT, n=2, temperature=1.3, max_tokens=12, ignore_eos=True, seed=9,
                     stream_options={"include_usage": True})
    whole = await backend.chat(body, "gfx")
    chunks = [c async for c in backend.stream_chat(body, "gfx")]
    texts = {0: "", 1: ""}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
    assert [texts[0], texts[1]] == [c["message"]["content"] for c in whole["choices"]]
    finals = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert sorted(f["index"] for f in finals) == [0, 1] and {f["finish_reason"] for f in finals} == {"length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    completions = await backend.completion({"prompt": "LDA.l $7EF36C", "n": 2, "temperature": 0, "max_tokens": 6,
                                            "ignore_eos": True, "echo": True}, "asm")
    assert [c["index"] for c in completions["choices"]] == [0, 1]
    assert completions["choices"][0]["text"] == completions["choices"][1]["text"]
    assert completions["choices"][0]["text"].startswith("LDA.l $7EF36C")


async def test_closing_an_n_stream_ends_every_choice(backend: LocalBackend, generated_tokens: list[int]) -> None:
    stream = backend.stream_chat(chat_body(GFX_PROMPT, n=3, max_tokens=1500, ignore_eos=True), "base")
    for _ in range(6):
        await stream.__anext__()
    await stream.aclose()
    for _ in range(200):
        if backend._engine.counts()["running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert backend._engine.counts() == {"running": 0, "waiting": 0} and not backend._jobs
    assert generated_tokens[0] < 3 * 100
