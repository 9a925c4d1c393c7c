"""training.lora: the minimal LoRA trainer learns, masks prompts, saves a peft adapter and its
config, and is deterministic for a seed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests import tiny_lm
from training.lora import (CONFIG_FILE, IGNORE_INDEX, LoRATrainConfig, TrainResult, encode, to_messages,
                           train_lora)


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("lora") / "asm"
    return train_lora(tiny_base, tiny_lm.ASM_SAMPLES, out, tiny_lm.FAST, progress=False)


def greedy(base: Path, adapter: Path | None, sample: dict, max_new_tokens: int = 40) -> str:
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    prompt = tok.apply_chat_template(to_messages(sample)[:-1], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    out = model.eval().generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_loss_falls(trained: TrainResult) -> None:
    assert trained.steps == tiny_lm.FAST.max_steps == len(trained.losses)
    first, last = sum(trained.losses[:3]) / 3, sum(trained.losses[-3:]) / 3
    assert last < 0.2 * first, trained.losses
    assert trained.tokens > 0 and trained.samples == len(tiny_lm.ASM_SAMPLES)


def test_adapter_changes_greedy_output_and_learns_its_samples(tiny_base: Path, trained: TrainResult) -> None:
    sample = tiny_lm.ASM_SAMPLES[0]
    tuned = greedy(tiny_base, trained.out_dir, sample)
    assert tuned != greedy(tiny_base, None, sample)
    assert tuned == sample["output"]  # memorised: the tiny base has nothing else to go on


def test_saves_peft_adapter_and_config(trained: TrainResult) -> None:
    out = trained.out_dir
    assert (out / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"}
    saved = LoRATrainConfig.from_json((out / CONFIG_FILE).read_text())
    assert saved == tiny_lm.FAST


def test_same_seed_same_losses(tiny_base: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny_lm.FAST, max_steps=4, dropout=0.1)
    a = train_lora(tiny_base, tiny_lm.GFX_SAMPLES, tmp_path / "a", cfg, progress=False)
    b = train_lora(tiny_base, tiny_lm.GFX_SAMPLES, tmp_path / "b", cfg, progress=False)
    c = train_lora(tiny_base, tiny_lm.GFX_SAMPLES, tmp_path / "c", dataclasses.replace(cfg, seed=1), progress=False)
    assert a.losses == b.losses
    assert a.losses != c.losses
    weights = [(tmp_path / run / "adapter_model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]


def test_loss_only_on_assistant_replies(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "first?"},
                {"role": "assistant", "content": "ONE"}, {"role": "user", "content": "second?"},
                {"role": "assistant", "content": "TWO"}]
    ids, labels = encode(tok, messages, max_seq_len=512)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    trained_on = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(trained_on) == "ONE<|im_end|>\nTWO<|im_end|>\n"
    cut_ids, cut_labels = encode(tok, messages, max_seq_len=10)
    assert len(cut_ids) == len(cut_labels) == 10


def test_accepts_chatml_messages_samples(tiny_base: Path, tmp_path: Path) -> None:
    samples = [{"messages": [{"role": "user", "content": s["instruction"]},
                             {"role": "assistant", "content": s["output"]}]} for s in tiny_lm.GFX_SAMPLES]
    result = train_lora(tiny_base, samples, tmp_path, dataclasses.replace(tiny_lm.FAST, max_steps=3),
                        progress=False)
    assert result.samples == len(samples)


def test_instruction_and_input_become_one_user_turn() -> None:
    sample = {"instruction": "Fix it.", "input": "PHB\nRTL", "output": "Add PLB.", "system": "You write ASM."}
    assert to_messages(sample) == [{"role": "system", "content": "You write ASM."},
                                   {"role": "user", "content": "Fix it.\n\nPHB\nRTL"},
                                   {"role": "assistant", "content": "Add PLB."}]
    with pytest.raises(ValueError, match="instruction"):
        to_messages({"prompt": "x"})


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRATrainConfig(rank=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRATrainConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown"):
        LoRATrainConfig.from_json('{"rnak": 8}')
    assert LoRATrainConfig.from_json(LoRATrainConfig(rank=8).to_json()).rank == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_in_bf16_on_cuda(tiny_base: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(tiny_lm.FAST, device="cuda")
    result = train_lora(tiny_base, tiny_lm.ASM_SAMPLES, tmp_path, cfg, progress=False)
    assert sum(result.losses[-3:]) < 0.2 * sum(result.losses[:3])
    assert (tmp_path / "adapter_model.safetensors").is_file()
