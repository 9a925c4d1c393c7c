"""The vLLM export, served by a real vLLM (CPU), answers exactly as transformers + peft do.

The demo's tiny base and two of its adapters (``training.demo.ensure_demo``: built once per
machine) go through ``oracle-council export --format vllm``; vLLM is then started with exactly
the ``--max-lora-rank`` and ``--lora-modules`` flags the export printed, and its greedy answers
are compared with peft's on the original adapter folders: text and token counts.

Run: ``pytest -m vllm`` (needs ``.venv-vllm``; about a minute, most of it vLLM's start).
``ORACLE_COUNCIL_SKIP_VLLM=1`` skips these tests.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from gateway.cli import main
from tests.integration.conftest import VLLMServer, running_vllm
from training.lora import to_messages

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ADAPTERS = ("euclid-asm", "seph-tilesmith")
MAX_TOKENS = 24


@dataclass(frozen=True)
class Exports:
    base: Path
    sources: dict[str, Path]        # name -> the demo's peft folder
    folders: dict[str, Path]        # name -> the vLLM export
    flags: dict[str, tuple[int, str]]   # name -> (--max-lora-rank, --lora-modules value) as printed
    prompts: dict[str, str]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    from training.demo import ensure_demo, load_samples

    demo = ensure_demo(progress=False)
    out = tmp_path_factory.mktemp("vllm-export")
    folders, flags = {}, {}
    for name in ADAPTERS:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["export", "--quiet", "--adapter", str(demo / name), "--format", "vllm",
                         "--output", str(out / name)]) == 0
        m = re.search(r"--max-lora-rank (\d+) --lora-modules (\S+)", printed.getvalue())
        assert m, printed.getvalue()
        folders[name], flags[name] = out / name, (int(m[1]), m[2])
    samples = load_samples()
    prompts = {n: to_messages(samples[f"{n}.jsonl"][0])[0]["content"] for n in ADAPTERS}
    return Exports(base=demo / "base", sources={n: demo / n for n in ADAPTERS}, folders=folders, flags=flags,
                   prompts=prompts)


@pytest.fixture(scope="module")
def served(vllm_interpreter: Path, exports: Exports, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    rank = max(r for r, _ in exports.flags.values())
    with running_vllm(vllm_interpreter, exports.base, tmp_path_factory.mktemp("vllm-export-run"),
                      [module for _, module in exports.flags.values()], max_lora_rank=rank) as server:
        yield server


def test_printed_flags_name_the_export(exports: Exports) -> None:
    for name in ADAPTERS:
        assert exports.flags[name] == (16, f"{name}={exports.folders[name].resolve()}")


def test_vllm_lists_the_exported_adapters(served: VLLMServer) -> None:
    client = OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {served.base_model, *ADAPTERS}


@pytest.mark.parametrize("name", ADAPTERS)
def test_exported_adapter_on_vllm_answers_like_peft(served: VLLMServer, exports: Exports, name: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    messages = [{"role": "user", "content": exports.prompts[name]}]
    tokenizer = AutoTokenizer.from_pretrained(exports.base)
    model = AutoModelForCausalLM.from_pretrained(exports.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(exports.sources[name])).eval()
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    generated = out[0, inputs["input_ids"].shape[1]:].tolist()

    client = OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=60)
    answer = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert answer.choices[0].message.content == tokenizer.decode(generated, skip_special_tokens=True)
    assert answer.usage.completion_tokens == len(generated)
    assert len(generated) >= 10
