"""oracle-council export: each format's files, read back with the library that consumes them.

The adapter here is made in a blink: peft LoRA layers on the tiny base with seeded random A and B
(no training), so every module really changes the model. GGUF files are read back with
``gguf.GGUFReader``; the merged model is judged against peft itself; registry edits against the
gateway's own loader. llama.cpp and vLLM run the exports in tests/integration.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomllib

from gateway.cli import main
from gateway.config import load_config
from training.exporting import ollama
from training.exporting.errors import ExportError
from training.exporting.vllm import required_max_lora_rank

RANK, ALPHA = 8, 16
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
PROMPT = [{"role": "user", "content": "Write a routine that gives Link full health."}]


def make_adapter(base: Path, out: Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """A LoRA adapter over ``base`` with random (seeded) A and B: a real peft folder, no training."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(MODULES), task_type="CAUSAL_LM",
                        **lora_kwargs)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_base, tmp_path_factory.mktemp("adapters") / "euclid-asm")


def export(*argv: str) -> int:
    return main(["export", "--quiet", *argv])


def fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- vllm -------------------------------------------------------------------------------------------

def test_vllm_folder_has_what_vllm_loads(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "vllm"
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"--max-lora-rank {RANK} --lora-modules euclid-asm={out.resolve()}" in printed

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA and config["peft_type"] == "LORA"
    assert sorted(config["target_modules"]) == sorted(MODULES)
    source, written = load_file(adapter / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(written) == set(source) and len(written) == 2 * 7 * 2  # A and B, 7 modules, 2 layers
    assert all(k.startswith("base_model.model.model.layers.") for k in written)
    assert all(bool((written[k] == source[k]).all()) for k in written)
    assert json.loads((out / "oracle-council-export.json").read_text())["max_lora_rank"] == RANK
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by a server running as another user


@pytest.mark.parametrize(("rank", "flag"), [(1, 1), (8, 8), (12, 16), (64, 64), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_next_value_vllm_accepts(rank: int, flag: int) -> None:
    assert required_max_lora_rank(rank) == flag


def test_rank_above_vllm_limit_is_refused() -> None:
    with pytest.raises(ExportError, match="512"):
        required_max_lora_rank(513)


@pytest.mark.parametrize(("change", "words"), [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"init_lora_weights": "pissa"}, "pissa"),
    ({"bias": "all"}, "bias"),
])
def test_what_vllm_refuses_is_refused_clearly(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                             change: dict, words: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, **change}))
    assert export("--adapter", str(bad), "--format", "vllm", "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "vLLM would refuse" in err and words in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_vllm_fixes_target_modules_and_adapter_name_infix(adapter: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """peft may list modules that have no weights, and some savers keep the adapter name in the
    tensor names; the export writes what vLLM expects and says what it fixed."""
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    odd.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (odd / "adapter_config.json").write_text(json.dumps({**config, "target_modules": [*MODULES, "lm_head"]}))
    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({k.replace(".weight", ".default.weight"): v for k, v in tensors.items()},
              odd / "adapter_model.safetensors")
    assert export("--adapter", str(odd), "--format", "vllm", "--output", str(tmp_path / "out")) == 0
    assert "fixed: renamed 28 tensors" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["target_modules"] == sorted(MODULES)
    assert set(load_file(tmp_path / "out" / "adapter_model.safetensors")) == set(tensors)


# -- gguf -----------------------------------------------------------------------------------------------

def test_gguf_lora_is_what_llamacpp_reads(adapter: Path, tmp_path: Path) -> None:
    import gguf
    from safetensors.torch import load_file

    out = tmp_path / "gguf"
    assert export("--adapter", str(adapter), "--format", "gguf", "--output", str(out)) == 0
    reader = gguf.GGUFReader(out / "euclid-asm.gguf")
    meta = fields(reader)
    assert meta["general.architecture"] == "qwen2"
    assert meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == pytest.approx(ALPHA)

    source = load_file(adapter / "adapter_model.safetensors")
    expected = {f"blk.{layer}.{GGUF_NAMES[m]}.weight.lora_{ab}"
                for layer in (0, 1) for m in MODULES for ab in "ab"}
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected
    # ggml order: a = [in, r], b = [r, out]; the data is peft's A and B unchanged
    block = "self_attn.k_proj"
    a = source[f"base_model.model.model.layers.1.{block}.lora_A.weight"].numpy()
    b = source[f"base_model.model.model.layers.1.{block}.lora_B.weight"].numpy()
    ta, tb = tensors["blk.1.attn_k.weight.lora_a"], tensors["blk.1.attn_k.weight.lora_b"]
    assert list(ta.shape) == [a.shape[1], RANK] and list(tb.shape) == [RANK, b.shape[0]]
    assert np.array_equal(np.asarray(ta.data).reshape(a.shape), a)
    assert np.array_equal(np.asarray(tb.data).reshape(b.shape), b)


def test_gguf_folds_per_module_scaling_into_b(tiny_base: Path, tmp_path: Path) -> None:
    """GGUF has one alpha; a module with its own (alpha_pattern) scaling gets it folded into B."""
    import gguf
    from safetensors.torch import load_file

    patterned = make_adapter(tiny_base, tmp_path / "patterned", seed=1, alpha_pattern={"q_proj": 64})
    assert export("--adapter", str(patterned), "--format", "gguf", "--output", str(tmp_path / "out")) == 0
    reader = gguf.GGUFReader(tmp_path / "out" / "patterned.gguf")
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    source = load_file(patterned / "adapter_model.safetensors")
    q_b = source["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].numpy()
    k_b = source["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].numpy()
    assert np.allclose(tensors["blk.0.attn_q.weight.lora_b"].reshape(q_b.shape), q_b * 64 / ALPHA)
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_b"].reshape(k_b.shape), k_b)
    manifest = json.loads((tmp_path / "out" / "oracle-council-export.json").read_text())
    assert manifest["folded_scaling"] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_gguf_f16_halves_the_tensors(adapter: Path, tmp_path: Path) -> None:
    import gguf

    assert export("--adapter", str(adapter), "--format", "gguf", "--dtype", "f16", "--output", str(tmp_path / "o")) == 0
    reader = gguf.GGUFReader(tmp_path / "o" / "euclid-asm.gguf")
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16}


def test_gguf_base_has_the_tokenizer_llamacpp_needs(tiny_base: Path, tmp_path: Path) -> None:
    import gguf
    from transformers import AutoTokenizer

    out = tmp_path / "base-gguf"
    assert export("--format", "gguf-base", "--base-model", str(tiny_base), "--output", str(out), "--name", "tiny") == 0
    reader = gguf.GGUFReader(out / "tiny.gguf")
    meta = fields(reader)
    config = json.loads((tiny_base / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert meta["general.architecture"] == "qwen2" and meta["general.type"] == "model"
    assert meta["qwen2.block_count"] == config["num_hidden_layers"]
    assert meta["qwen2.embedding_length"] == config["hidden_size"]
    assert meta["qwen2.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"] == len(meta["tokenizer.ggml.token_type"])
    vocab = tokenizer.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    assert meta["tokenizer.ggml.token_type"][vocab["<|im_end|>"]] == gguf.TokenType.CONTROL
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    merges = json.loads((tiny_base / "tokenizer.json").read_text())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    names = {t.name for t in reader.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_q.bias" in names
    assert "output.weight" not in names  # tied to the embedding: llama.cpp reuses token_embd


def test_gguf_refuses_other_architectures(tiny_base: Path, adapter: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    llama = tmp_path / "llama-base"
    shutil.copytree(tiny_base, llama)
    config = json.loads((llama / "config.json").read_text())
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama",
                                                   "architectures": ["LlamaForCausalLM"]}))
    rc = export("--adapter", str(adapter), "--base-model", str(llama), "--format", "gguf",
                "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and "supports qwen2" in err and "LlamaForCausalLM" in err
    assert not (tmp_path / "out").exists()


# -- ollama ------------------------------------------------------------------------------------------------

def test_ollama_modelfile(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ollama"
    base_gguf = tmp_path / "base.gguf"
    base_gguf.write_bytes(b"GGUF")  # FROM only needs the path to exist here
    rc = export("--adapter", str(adapter), "--format", "ollama", "--output", str(out), "--ollama-from", str(base_gguf),
                "--system", "You write 65816 assembly for Asar.", "--parameter", "temperature=0.3")
    assert rc == 0
    assert f"ollama create euclid-asm -f {out.resolve() / 'Modelfile'}" in capsys.readouterr().out
    assert (out / "euclid-asm.gguf").is_file()
    text = (out / "Modelfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", " ", "{", "<", "}"))]
    directives = [line.split()[0] for line in lines if line.split()[0].isupper()]
    assert directives[:3] == ["FROM", "ADAPTER", "TEMPLATE"]
    assert f"FROM {base_gguf.resolve()}" in lines
    assert "ADAPTER ./euclid-asm.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER temperature 0.3" in lines and "PARAMETER top_p 0.92" in lines
    assert 'SYSTEM """You write 65816 assembly for Asar."""' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama.CHATML_TEMPLATE
    for piece in ("<|im_start|>system", "<|im_start|>user", "<|im_start|>assistant", "<tool_call>",
                  "<tool_response>", "range $i, $_ := .Messages", "range .Tools"):
        assert piece in template
    # Go-template actions balance: every if/range/with has its end
    opens = sum(template.count(k) for k in ("{{- if ", "{{ if ", "{{- range ", "{{ range "))
    assert opens == template.count("{{- end }}") + template.count("{{ end }}")


def test_ollama_from_defaults_to_the_stock_tag() -> None:
    assert ollama.ollama_tag_for("Qwen/Qwen2.5-Coder-1.5B-Instruct") == "qwen2.5-coder:1.5b-instruct"
    assert ollama.ollama_tag_for("Qwen/Qwen2.5-Coder-1.5B") == "qwen2.5-coder:1.5b-base"
    assert ollama.ollama_tag_for("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5:7b-instruct"
    assert ollama.ollama_tag_for("/models/tiny-base") is None
    assert ollama.resolve_from("qwen2.5-coder:1.5b", None) == "qwen2.5-coder:1.5b"


def test_ollama_without_a_known_base_tag_says_what_to_pass(adapter: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert export("--adapter", str(adapter), "--format", "ollama", "--output", str(tmp_path / "o")) == 2
    assert "--ollama-from" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- merged ---------------------------------------------------------------------------------------------------

def test_merged_model_answers_like_peft(tiny_base: Path, adapter: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert export("--adapter", str(adapter), "--format", "merged", "--output", str(out)) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= \
           {p.name for p in out.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True, return_tensors="pt")

    def greedy(model) -> list[int]:
        with torch.no_grad():
            ids = model.eval().generate(**inputs, max_new_tokens=16, do_sample=False)
        return ids[0, inputs["input_ids"].shape[1]:].tolist()

    merged = greedy(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    plain = greedy(base)
    reference = greedy(PeftModel.from_pretrained(base, str(adapter)))
    assert merged == reference
    assert merged != plain  # the adapter is really in the merged weights


# -- --register ----------------------------------------------------------------------------------------------

REGISTRY = """\
# my registry: this comment must survive
[router]
default_model = "master-sword"

[[oracles]]
name = "oracle-din"
aspect = "power"

[[backends]]
name = "vllm"        # vLLM on the GPU box
kind = "openai"
base_url = "http://127.0.0.1:8001/v1"

[[backends]]
name = "local"
kind = "local"

[backends.options]
base_model = "demo:base"

[[models]]
name = "master-sword"
oracle = "system"
backend = "vllm"
upstream_model = "master-sword"   # keep me

[yaze]
base_url = "http://127.0.0.1:8080"
"""


def test_register_creates_then_updates_in_place(adapter: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(REGISTRY)
    out = tmp_path / "vllm"
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out),
                  "--register", str(config), "--backend", "vllm") == 0
    assert "created [[models]] 'euclid-asm'" in capsys.readouterr().out
    text = config.read_text()
    assert "# my registry: this comment must survive" in text and "# vLLM on the GPU box" in text
    assert 'upstream_model = "master-sword"   # keep me' in text
    loaded = load_config(config)
    model = loaded.model("euclid-asm")
    assert (model.backend, model.upstream_model, model.oracle) == ("vllm", "euclid-asm", "oracle-din")
    assert model.base_model == str(tiny_base_ref(adapter))
    assert [m.name for m in loaded.models] == ["master-sword", "euclid-asm"]
    assert loaded.yaze is not None  # tables after [[models]] are untouched

    # again, to another upstream name and with a system prompt: the same entry changes
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out), "--force",
                  "--register", str(config), "--backend", "vllm", "--upstream-model", "euclid-asm-v2",
                  "--system", "You write Asar.") == 0
    assert "updated [[models]] 'euclid-asm'" in capsys.readouterr().out
    loaded = load_config(config)
    assert [m.name for m in loaded.models] == ["master-sword", "euclid-asm"]
    model = loaded.model("euclid-asm")
    assert (model.upstream_model, model.system_prompt) == ("euclid-asm-v2", "You write Asar.")
    assert tomllib.loads(config.read_text())["models"][1]["name"] == "euclid-asm"
    assert leftovers(tmp_path) == []


def tiny_base_ref(adapter: Path) -> str:
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_register_on_a_local_backend_adds_the_adapter_path(adapter: Path, tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(REGISTRY)
    out = tmp_path / "exports" / "euclid"
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out),
                  "--register", str(config), "--backend", "local") == 0
    loaded = load_config(config)
    assert loaded.backend("local").options["adapters"] == {"euclid-asm": str(out.resolve())}
    assert loaded.backend("local").options["base_model"] == "demo:base"
    assert loaded.model("euclid-asm").backend == "local"


def test_register_unknown_backend_lists_the_existing_ones(adapter: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(REGISTRY)
    args = ["--adapter", str(adapter), "--format", "ollama", "--ollama-from", "qwen2.5-coder:1.5b",
            "--output", str(tmp_path / "ollama"), "--register", str(config), "--backend", "ollama"]
    assert export(*args) == 2
    err = capsys.readouterr().err
    assert "no [[backends]] named 'ollama'" in err and "existing backends: local, vllm" in err
    assert config.read_text() == REGISTRY and not (tmp_path / "ollama").exists()  # checked before any work

    assert export(*args, "--base-url", "http://127.0.0.1:11434") == 0
    loaded = load_config(config)
    assert (loaded.backend("ollama").kind, loaded.backend("ollama").base_url) == ("ollama", "http://127.0.0.1:11434")
    assert loaded.model("euclid-asm").backend == "ollama"


def test_register_uses_the_entry_system_prompt_and_parameters_in_the_modelfile(adapter: Path, tmp_path: Path) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(REGISTRY.replace('[yaze]', '[[backends]]\nname = "ollama"\nkind = "ollama"\n'
                                       'base_url = "http://127.0.0.1:11434"\n\n[[models]]\nname = "euclid-asm"\n'
                                       'oracle = "oracle-din"\ndeployed = false\nsystem_prompt = "Asar only."\n'
                                       'parameters = { temperature = 0.0, repetition_penalty = 1.1 }\n\n[yaze]'))
    out = tmp_path / "ollama"
    assert export("--adapter", str(adapter), "--format", "ollama", "--ollama-from", "qwen2.5-coder:1.5b",
                  "--output", str(out), "--register", str(config), "--backend", "ollama") == 0
    text = (out / "Modelfile").read_text()
    assert 'SYSTEM """Asar only."""' in text
    assert "PARAMETER temperature 0.0" in text and "PARAMETER repeat_penalty 1.1" in text
    model = load_config(config).model("euclid-asm")
    assert model.deployed and model.backend == "ollama" and model.upstream_model == "euclid-asm"


def test_register_the_reference_config_keeps_it_valid(adapter: Path, tmp_path: Path) -> None:
    reference = Path(__file__).resolve().parents[2] / "config" / "oracle-council.toml"
    config = tmp_path / "oracle-council.toml"
    shutil.copy(reference, config)
    before = reference.read_text()
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(tmp_path / "v"),
                  "--register", str(config), "--backend", "vllm") == 0
    after = config.read_text()
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert all(c in after for c in comments)
    loaded = load_config(config)
    assert loaded.model("euclid-asm").upstream_model == "euclid-asm"
    assert len([m for m in loaded.models if m.name == "euclid-asm"]) == 1
    assert [m.name for m in loaded.models] == [m.name for m in load_config(reference).models]


def test_register_needs_an_oracle_for_names_outside_the_taxonomy(adapter: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "registry.toml"
    config.write_text(REGISTRY)
    args = ["--adapter", str(adapter), "--format", "vllm", "--name", "my-helper", "--output", str(tmp_path / "v"),
            "--register", str(config), "--backend", "vllm"]
    assert export(*args) == 2
    assert "--oracle" in capsys.readouterr().err
    assert export(*args, "--oracle", "oracle-din") == 0
    assert load_config(config).model("my-helper").oracle == "oracle-din"


# -- atomic outputs and clear errors ---------------------------------------------------------------------

def test_a_failed_export_leaves_nothing(adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    from training.exporting import gguf_lora

    def crash(path, writer, tensors, load, progress, desc):
        path.write_bytes(b"GGUF half a file")
        raise ExportError("disk full (simulated)")

    monkeypatch.setattr(gguf_lora, "write_streamed", crash)
    assert export("--adapter", str(adapter), "--format", "gguf", "--output", str(tmp_path / "out")) == 2
    assert "disk full" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out)) == 2
    assert "--force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert export("--adapter", str(adapter), "--format", "vllm", "--output", str(out), "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "adapter_config.json").is_file()
    assert leftovers(tmp_path) == []


def test_missing_adapter_files_are_named(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out")
    assert export("--adapter", str(tmp_path / "nope"), "--format", "vllm", "--output", out) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export("--adapter", str(empty), "--format", "vllm", "--output", out) == 2
    assert "adapter_config.json is missing" in capsys.readouterr().err
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(adapter / "adapter_config.json", no_weights)
    assert export("--adapter", str(no_weights), "--format", "gguf", "--output", out) == 2
    assert "adapter_model.safetensors" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_config.json").write_text('{\n  "r": 8,\n  oops\n}')
    assert export("--adapter", str(broken), "--format", "vllm", "--output", out) == 2
    assert "adapter_config.json, line 3: invalid JSON" in capsys.readouterr().err


def test_a_base_of_other_shapes_is_refused(adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests import tiny_lm
    from training.tiny import build_tiny_base

    other = build_tiny_base(tmp_path / "other-base", tiny_lm.corpus(), hidden=128, heads=2, kv_heads=1)
    for fmt in ("vllm", "gguf", "merged"):
        rc = export("--adapter", str(adapter), "--base-model", str(other), "--format", fmt,
                    "--output", str(tmp_path / fmt))
        err = capsys.readouterr().err
        assert rc == 2 and "does not fit the base model" in err and "(128, 128)" in err, err
        assert not (tmp_path / fmt).exists()
