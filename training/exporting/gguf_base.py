"""A Hugging Face Qwen2 model folder as a GGUF base model for llama.cpp (f32 or f16).

Mostly for tests and offline use: real users' Ollama models start FROM the stock
``qwen2.5-coder`` tags. What llama.cpp needs, and where it comes from here:

- hyper-parameters under ``qwen2.*``: context length, embedding and feed-forward sizes, block
  count, head counts, RoPE base, RMS-norm epsilon (from ``config.json``);
- the tokenizer: ``tokenizer.ggml.model = gpt2`` (byte-level BPE), ``tokenizer.ggml.pre = qwen2``
  (the pre-tokenizer's split regex, which is checked to be Qwen2's), the tokens in id order with
  their types (normal, control for special added tokens, user-defined for other added ones,
  unused for ids the tokenizer lacks but the embedding has), the merges, the bos/eos/pad ids, and
  the chat template;
- the tensors, renamed with the gguf package's map; 1-D tensors (norms, biases) stay f32 as
  llama.cpp expects, and ``lm_head`` is left out when it is tied to the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.exporting.adapter import BaseModel
from training.exporting.errors import ExportError
from training.exporting.gguf_common import (
    gguf_arch,
    gguf_name,
    name_map,
    out_dtype,
    write_streamed,
)

# Qwen2's pre-tokenizer split (the same regex training.tiny trains its tokenizer under)
QWEN2_PRE = "qwen2"
_SKIP = (".rotary_emb.inv_freq",)


def export_gguf_base(base: BaseModel, out_file: Path, *, name: str, dtype: str = "auto",
                     progress: bool = False) -> dict:
    import gguf
    import torch
    from safetensors import safe_open

    arch = gguf_arch(base)
    cfg = base.config
    hp = _hyperparameters(base)
    tied = bool(cfg.get("tie_word_embeddings", False))
    mapping = name_map(arch, hp["n_layers"])
    dt = out_dtype(dtype, str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"))

    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["n_layers"])
    writer.add_feed_forward_length(hp["ff"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    if hp["head_dim"] != hp["hidden"] // hp["heads"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dt == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    vocab = _write_tokenizer(writer, base, hp["vocab"])

    plan: list[tuple[str, tuple[int, ...], str]] = []
    where: list[tuple[Path, str]] = []
    for file in base.weight_files():
        with safe_open(str(file), framework="pt") as f:
            for key in sorted(f.keys()):
                if key.endswith(_SKIP) or (tied and key == "lm_head.weight"):
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                plan.append((gguf_name(mapping, key), shape, "f32" if len(shape) == 1 else dt))
                where.append((file, key))

    handles: dict[Path, object] = {}

    def load(i: int):
        file, key = where[i]
        if file not in handles:
            handles[file] = safe_open(str(file), framework="pt")
        return handles[file].get_tensor(key).to(torch.float32).numpy()

    write_streamed(out_file, writer, plan, load, progress, f"gguf base {name}")
    return {"dtype": dt, "tensors": len(plan), "vocab": vocab, **hp}


def _hyperparameters(base: BaseModel) -> dict:
    cfg = base.config
    where = base.path / "config.json"
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        hp = {
            "n_layers": int(cfg["num_hidden_layers"]),
            "hidden": hidden,
            "ff": int(cfg["intermediate_size"]),
            "heads": heads,
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "context": int(cfg.get("max_position_embeddings", 32768)),
            "rms_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "vocab": int(cfg["vocab_size"]),
        }
    except KeyError as exc:
        raise ExportError(f"{where}: missing {exc.args[0]!r}, needed for the GGUF header") from None
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    hp["rope_theta"] = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise ExportError(f"{where}: RoPE scaling {rope_type!r} is not written by this converter (default RoPE only)")
    if cfg.get("use_sliding_window"):
        raise ExportError(f"{where}: use_sliding_window = true is not supported by this converter")
    return hp


def _write_tokenizer(writer, base: BaseModel, n_vocab: int) -> int:
    """The gpt2-style (byte-level BPE) vocabulary with Qwen2's pre-tokenizer."""
    import gguf
    from transformers import AutoTokenizer

    tok_file = base.path / "tokenizer.json"
    if not tok_file.is_file():
        raise ExportError(f"base model {base.path}: no tokenizer.json; GGUF needs the fast tokenizer's files")
    spec = json.loads(tok_file.read_text("utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"{tok_file}: a {model.get('type')!r} tokenizer; GGUF export handles byte-level BPE only")
    if not _is_qwen2_pretokenizer(spec.get("pre_tokenizer")):
        raise ExportError(f"{tok_file}: the pre-tokenizer is not Qwen2's (split regex + byte level), so llama.cpp "
                          "would cut text differently; only Qwen2-family tokenizers are converted")

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    ids = tokenizer.get_vocab()
    if max(ids.values()) >= n_vocab:
        raise ExportError(f"{base.path}: the tokenizer has ids up to {max(ids.values())} but vocab_size is {n_vocab}")
    by_id = {i: t for t, i in ids.items()}
    added = {i: a for i, a in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(QWEN2_PRE)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    # Qwen has no BOS in use; its GGUFs name <|endoftext|> (and never add it). So do we.
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = base.config.get("bos_token_id")
    if bos is None:
        bos = ids.get("<|endoftext|>", pad)
    for setter, value in ((writer.add_bos_token_id, bos), (writer.add_eos_token_id, eos),
                          (writer.add_pad_token_id, pad)):
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return len(tokens)


def _is_qwen2_pretokenizer(pre: dict | None) -> bool:
    from training.tiny import QWEN2_SPLIT

    if not pre or pre.get("type") != "Sequence":
        return False
    steps = pre.get("pretokenizers") or []
    splits = [s for s in steps if s.get("type") == "Split"]
    return (len(splits) == 1 and (splits[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and any(s.get("type") == "ByteLevel" for s in steps))
