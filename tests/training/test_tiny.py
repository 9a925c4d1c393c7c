"""training.tiny: a standard, loadable, deterministic tiny Qwen2 model with a ChatML tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests import tiny_lm
from training.tiny import build_tiny_base


def test_files_are_a_standard_model_folder(tiny_base: Path) -> None:
    names = {p.name for p in tiny_base.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    config = json.loads((tiny_base / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["head_dim"] >= 32  # vLLM's CPU attention rejects smaller heads
    assert config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 2048


def test_loads_with_auto_classes_and_eos_is_im_end(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == im_end == tok.eos_token_id
    assert model.config.vocab_size == len(tok)
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    out = model.generate(torch.tensor([[im_end]]), max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape == (1, 4)


def test_chat_template_is_chatml(tiny_base: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    reply = tok.apply_chat_template(messages + [{"role": "assistant", "content": "A"}], tokenize=False)
    assert reply.endswith("<|im_start|>assistant\nA<|im_end|>\n")


def test_every_loader_tokenizes_alike(tiny_base: Path) -> None:
    # AutoTokenizer loads a qwen2 model's tokenizer as Qwen2Tokenizer (its own pre-tokenizer);
    # the generic class reads tokenizer.json as is. Both must cut text the same way.
    auto = AutoTokenizer.from_pretrained(tiny_base)
    plain = PreTrainedTokenizerFast.from_pretrained(tiny_base)
    text = "LDA.l $7EF36C ; 4bpp tiles\n\n  STA $0800,X  'll 123456 é<|im_end|>"
    assert auto(text)["input_ids"] == plain(text)["input_ids"]
    assert auto.decode(auto(text)["input_ids"]) == text


def test_same_seed_same_files_other_seed_other_weights(tmp_path: Path, tiny_base: Path) -> None:
    again = tiny_lm.build_base(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_base / name).read_bytes(), name
    other = build_tiny_base(tmp_path / "other", tiny_lm.corpus(), seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_base / "model.safetensors").read_bytes()


def test_rejects_heads_vllm_cannot_serve(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_base(tmp_path, ["x"], hidden=64, heads=4, kv_heads=2)
