"""llama.cpp runs our GGUF exports exactly as transformers + peft run the adapter folders.

The chain: the demo's tiny base and two of its adapters (``training.demo.ensure_demo``, built
once per machine, about a minute) -> ``oracle-council export --format gguf-base`` and
``--format gguf`` -> ``llama_cpp.Llama(model_path=base, lora_path=adapter)``. llama.cpp loads
GGUF LoRA files the way Ollama's ``ADAPTER`` line does, so this is the Ollama path short of an
Ollama server (none can run here).

Both sides get the same prompt token ids (the base tokenizer's chat template), so tokenizer
differences can neither hide nor fake a match; llama.cpp's own tokenization of the same text is
then checked too, and the decoded text compared. A last test serves both adapters from one
llama.cpp server (``python -m llama_cpp.server --config_file``) behind the gateway's ``openai``
backend. Skipped only when ``llama_cpp`` is not importable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                "'llama-cpp-python[server]'; it compiles llama.cpp, a few minutes)")

from gateway.cli import main
from tests.integration.llamacpp import running_llamacpp
from tests.serving import serve
from training.lora import to_messages

pytestmark = [pytest.mark.slow]  # the first run on a machine builds the demo models (about a minute)

ADAPTERS = ("euclid-asm", "seph-tilesmith")
MAX_TOKENS = 24


@dataclass(frozen=True)
class Exported:
    base_dir: Path                 # HF folder of the tiny base
    adapters: dict[str, Path]      # name -> peft folder
    base_gguf: Path
    lora_gguf: dict[str, Path]     # name -> GGUF LoRA
    prompts: dict[str, list[dict]] # name -> chat messages of one of its training samples


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from training.demo import ensure_demo, load_samples

    demo = ensure_demo(progress=False)
    out = tmp_path_factory.mktemp("llamacpp")
    assert main(["export", "--quiet", "--format", "gguf-base", "--base-model", str(demo / "base"),
                 "--output", str(out / "base"), "--name", "tiny-base"]) == 0
    loras = {}
    for name in ADAPTERS:
        assert main(["export", "--quiet", "--adapter", str(demo / name), "--format", "gguf",
                     "--output", str(out / name)]) == 0
        loras[name] = out / name / f"{name}.gguf"
    samples = load_samples()
    prompts = {name: to_messages(samples[f"{name}.jsonl"][0])[:-1] for name in ADAPTERS}
    return Exported(base_dir=demo / "base", adapters={n: demo / n for n in ADAPTERS},
                    base_gguf=out / "base" / "tiny-base.gguf", lora_gguf=loras, prompts=prompts)


@pytest.fixture(scope="module")
def tokenizer(exported: Exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(exported.base_dir)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def peft_greedy(exported: Exported, adapter: str | None, ids: list[int]) -> list[int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exported.base_dir, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, str(exported.adapters[adapter]))
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=MAX_TOKENS, do_sample=False)
    return out[0, len(ids):].tolist()


def llama(exported: Exported, adapter: str | None, **extra):
    kwargs = {"lora_path": str(exported.lora_gguf[adapter])} if adapter else {}
    return llama_cpp.Llama(model_path=str(exported.base_gguf), n_ctx=512, n_threads=1, seed=0, verbose=False,
                           **kwargs, **extra)


def llama_greedy(model, ids: list[int]) -> list[int]:
    """Greedy continuation of ``ids``, stopping at end-of-generation like transformers does."""
    out: list[int] = []
    for token in model.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == MAX_TOKENS or llama_cpp.llama_vocab_is_eog(model._model.vocab, token):
            break
    return out


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_llamacpp_with_gguf_lora_equals_peft(exported: Exported, tokenizer, adapter: str) -> None:
    ids = prompt_ids(tokenizer, exported.prompts[adapter])
    expected = peft_greedy(exported, adapter, ids)
    model = llama(exported, adapter)
    got = llama_greedy(model, ids)
    assert got == expected
    assert len(expected) >= 10  # a real continuation, not an immediate stop

    # llama.cpp's tokenizer (from our GGUF base) cuts the same text into the same ids,
    # and detokenizes the answer into the same text
    text = tokenizer.apply_chat_template(exported.prompts[adapter], add_generation_prompt=True, tokenize=False)
    assert model.tokenize(text.encode(), add_bos=False, special=True) == ids
    got_text = model.detokenize([t for t in got if t != tokenizer.eos_token_id]).decode("utf-8", "replace")
    assert got_text == tokenizer.decode(expected, skip_special_tokens=True)


def test_the_lora_changes_llamacpp_output(exported: Exported, tokenizer) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    ids = prompt_ids(tokenizer, exported.prompts["euclid-asm"])
    # The GGUF base alone is the HF base: the same next-token logits (within 1e-3, with llama.cpp's
    # KV cache in f32; its default f16 cache moves them by ~0.03). Greedy text is not compared: the
    # base's weights are random, so its argmax meets near-ties a few tokens in.
    f32 = llama_cpp.GGML_TYPE_F32
    base = llama(exported, None, logits_all=True, type_k=f32, type_v=f32)
    base.reset()
    base.eval(ids)
    got = np.asarray(base.scores[base.n_tokens - 1])
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(exported.base_dir, dtype=torch.float32)
        want = hf(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.allclose(got, want, atol=1e-3, rtol=1e-3), float(np.abs(got - want).max())

    plain = tuple(llama_greedy(base, ids))
    answers = {name: tuple(llama_greedy(llama(exported, name), ids)) for name in ADAPTERS}
    assert plain not in answers.values()
    assert answers["euclid-asm"] != answers["seph-tilesmith"]


# -- a llama.cpp server with both adapters, behind the gateway ----------------------------------------

@pytest.fixture(scope="module")
def llamacpp_server(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = [{"model": str(exported.base_gguf), "model_alias": name, "lora_path": str(exported.lora_gguf[name]),
               "n_ctx": 512, "n_threads": 1, "seed": 0, "verbose": False} for name in ADAPTERS]
    with running_llamacpp(models, tmp_path_factory.mktemp("llamacpp-server")) as url:
        yield url


def test_gateway_serves_both_gguf_adapters_from_one_llamacpp_server(exported: Exported, tokenizer,
                                                                     llamacpp_server: str) -> None:
    from openai import OpenAI

    toml = f"""
[[backends]]
name = "llamacpp"
kind = "openai"
base_url = "{llamacpp_server}"
retries = 0

[[models]]
name = "euclid-asm"
oracle = "oracle-din"
backend = "llamacpp"

[[models]]
name = "seph-tilesmith"
oracle = "oracle-din"
backend = "llamacpp"
"""
    with serve(toml) as gateway:
        client = OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=120)
        for name in ADAPTERS:
            ids = prompt_ids(tokenizer, exported.prompts[name])
            text = tokenizer.apply_chat_template(exported.prompts[name], add_generation_prompt=True, tokenize=False)
            raw = client.completions.with_raw_response.create(model=name, prompt=text, temperature=0,
                                                              max_tokens=MAX_TOKENS)
            answer = raw.parse()
            assert raw.headers["x-oracle-model"] == name
            expected = peft_greedy(exported, name, ids)
            assert answer.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
