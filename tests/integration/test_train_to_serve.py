"""The training pipeline end to end on the shipped samples, on CPU, through the CLI a user runs:

    data prepare -> train -> export (vllm folder, GGUF LoRA + Ollama Modelfile, GGUF base)
    -> --register into a registry -> served by the gateway

and at each serving end the answer is the one transformers + peft give for the trained adapter
(greedy): the gateway's in-process backend serving the registered adapter folder, and a
llama.cpp server (how Ollama runs a GGUF LoRA) behind the gateway serving the exported GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from tests import tiny_lm
from tests.integration.llamacpp import running_llamacpp
from tests.serving import serve

pytestmark = [pytest.mark.slow]

SAMPLES = Path(__file__).resolve().parents[2] / "training" / "samples"
MAX_TOKENS = 20
SPECIALIST = "euclid-asm"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    base = tiny_lm.build_base(root / "base")
    data = root / "data"
    assert main(["data", "prepare", "--quiet", "--no-near-dedup", "--output", str(data), "--input",
                 *(str(SAMPLES / f"{n}.jsonl") for n in ("euclid-asm", "seph-tilesmith", "master-sword"))]) == 0
    assert {"train.jsonl", "val.jsonl", "test.jsonl", "metadata.json", "rejected.jsonl"} <= {
        p.name for p in data.iterdir()}
    assert main(["train", "--quiet", "--data", str(data), "--base-model", str(base), "--specialist", SPECIALIST,
                 "--output", str(root / "runs"), "--max-steps", "40", "--max-seq-len", "256", "--batch-size", "4",
                 "--grad-accum", "1", "--lr", "3e-3", "--warmup-steps", "2", "--eval-steps", "20"]) == 0
    adapter = root / "runs" / SPECIALIST
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "training_config.json").exists()
    registry = root / "registry.toml"
    registry.write_text(f"""# our registry: comments survive --register
[[backends]]
name = "local"
kind = "local"
options = {{ base_model = "{base}", adapters = {{}} }}

[[models]]
name = "master-sword"
oracle = "system"
backend = "local"
upstream_model = "base"
""")
    assert main(["export", "--quiet", "--adapter", str(adapter), "--format", "vllm",
                 "--output", str(root / "export" / "vllm"), "--register", str(registry), "--backend", "local"]) == 0
    assert main(["export", "--quiet", "--format", "gguf-base", "--base-model", str(base),
                 "--output", str(root / "export" / "base"), "--name", "tiny-base"]) == 0
    assert main(["export", "--quiet", "--adapter", str(adapter), "--format", "ollama", "--ollama-from",
                 str(root / "export" / "base" / "tiny-base.gguf"), "--output", str(root / "export" / "ollama")]) == 0
    return {"root": root, "base": base, "data": data, "adapter": adapter, "registry": registry,
            "vllm": root / "export" / "vllm", "ollama": root / "export" / "ollama",
            "base_gguf": root / "export" / "base" / "tiny-base.gguf"}


def _prompt(pipeline) -> list[dict]:
    rec = json.loads((pipeline["data"] / "test.jsonl").read_text().splitlines()[0])
    return [m for m in rec["messages"] if m["role"] != "assistant"]


def _peft_answer(pipeline, messages: list[dict], adapter: Path | None) -> tuple[list[int], str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pipeline["base"])
    model = AutoModelForCausalLM.from_pretrained(pipeline["base"], dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.eval().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=MAX_TOKENS, do_sample=False)
    new = out[0, len(ids):].tolist()
    return new, tok.decode(new, skip_special_tokens=True)


def test_prepared_and_trained_on_the_shipped_samples(pipeline):
    data = pipeline["data"]
    meta = json.loads((data / "metadata.json").read_text())
    lines = {split: len((data / f"{split}.jsonl").read_text().splitlines()) for split in ("train", "val", "test")}
    shipped = sum(len((SAMPLES / f"{n}.jsonl").read_text().splitlines())
                  for n in ("euclid-asm", "seph-tilesmith", "master-sword"))
    assert meta["counts"]["read"] == shipped and meta["counts"]["splits"] == lines
    assert meta["counts"]["kept"] == sum(lines.values())
    # every prepared record follows the one record shape, and the split is stratified: each
    # specialist appears in every split
    records = [json.loads(line) for split in lines for line in (data / f"{split}.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["role"] == "assistant" and r["specialist"] for r in records)
    for specialist in ("euclid-asm", "seph-tilesmith", "master-sword"):
        assert all(meta["counts"]["per_specialist"][specialist][split] > 0 for split in lines)
    assert (pipeline["adapter"] / "adapter_config.json").exists()
    assert json.loads((pipeline["adapter"] / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        pipeline["base"])
    # the adapter changes the model's answer
    messages = _prompt(pipeline)
    assert _peft_answer(pipeline, messages, pipeline["adapter"])[0] != _peft_answer(pipeline, messages, None)[0]


def test_registered_adapter_is_served_by_the_gateway_like_peft(pipeline):
    from openai import OpenAI

    text = pipeline["registry"].read_text()
    assert text.startswith("# our registry: comments survive --register")
    config = load_config(str(pipeline["registry"]))
    model = config.model(SPECIALIST) if hasattr(config, "model") else next(
        m for m in config.models if m.name == SPECIALIST)
    assert model.deployed and model.oracle == "oracle-din"
    messages = _prompt(pipeline)
    _, expected = _peft_answer(pipeline, messages, pipeline["vllm"])
    with serve(config) as gw:
        client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=300)
        raw = client.chat.completions.with_raw_response.create(model=SPECIALIST, messages=messages, temperature=0,
                                                               max_tokens=MAX_TOKENS)
        answer = raw.parse()
    assert raw.headers["x-oracle-model"] == SPECIALIST
    assert answer.choices[0].message.content == expected


def test_ollama_export_runs_in_llamacpp_behind_the_gateway_like_peft(pipeline):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (the llamacpp extra)")
    modelfile = (pipeline["ollama"] / "Modelfile").read_text()
    gguf = pipeline["ollama"] / f"{SPECIALIST}.gguf"
    assert f"ADAPTER ./{gguf.name}" in modelfile and "<|im_start|>" in modelfile
    assert f"FROM {pipeline['base_gguf']}" in modelfile
    registry = pipeline["root"] / "registry-llamacpp.toml"
    registry.write_text("")
    models = [{"model": str(pipeline["base_gguf"]), "model_alias": SPECIALIST, "lora_path": str(gguf), "n_ctx": 512,
               "n_threads": 1, "seed": 0, "verbose": False}]
    with running_llamacpp(models, pipeline["root"] / "llamacpp") as url:
        assert main(["export", "--quiet", "--adapter", str(pipeline["adapter"]), "--format", "gguf", "--force",
                     "--output", str(pipeline["root"] / "export" / "gguf"), "--register", str(registry),
                     "--backend", "llamacpp", "--base-url", url, "--backend-kind", "openai"]) == 0
        from openai import OpenAI
        from transformers import AutoTokenizer

        messages = _prompt(pipeline)
        text = AutoTokenizer.from_pretrained(pipeline["base"]).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False)
        _, expected = _peft_answer(pipeline, messages, pipeline["adapter"])
        with serve(load_config(str(registry))) as gw:
            client = OpenAI(base_url=gw.v1, api_key="unused", max_retries=0, timeout=120)
            # llama.cpp's server applies a repeat penalty of 1.1 unless told otherwise; plain greedy is
            # what peft does (the gateway passes the vendor field on untouched)
            raw = client.completions.with_raw_response.create(model=SPECIALIST, prompt=text, temperature=0,
                                                              max_tokens=MAX_TOKENS,
                                                              extra_body={"repeat_penalty": 1.0})
        assert raw.headers["x-oracle-model"] == SPECIALIST
        # bytes that are not valid UTF-8 (a tiny model babbles byte tokens) decode to U+FFFD in
        # transformers, and llama.cpp's server drops them: the rest must be identical
        assert raw.parse().choices[0].text == expected.replace("\ufffd", "")
