"""A LoRA adapter folder that vLLM's LoRA loader accepts.

vLLM (0.3x) reads ``adapter_config.json`` and ``adapter_model.safetensors`` and refuses: DoRA,
LoRA biases, ``modules_to_save``, inits that also change the base (PiSSA, OLoRA, ...),
embedding/lm_head adapters on models without embedding LoRA support (Qwen2, Llama), and a rank
above ``--max-lora-rank`` (one of 1, 8, 16, 32, 64, 128, 256, 320, 512). This export refuses
what it cannot fix, and fixes what it can:

- weights always go out as safetensors, under peft's plain names (``...lora_A.weight``);
- ``target_modules`` lists exactly the modules that have weights (peft may list more);
- the rank decides the ``--max-lora-rank`` to start vLLM with, printed with the exact
  ``--lora-modules name=path`` flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from training.exporting.adapter import ADAPTER_CONFIG, SAFETENSORS, Adapter
from training.exporting.errors import ExportError

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


@dataclass
class VLLMExport:
    folder: Path
    max_lora_rank: int
    fixes: list[str] = field(default_factory=list)

    def lora_modules_flag(self, name: str) -> str:
        return f"--lora-modules {name}={self.folder}"

    def serve_command(self, name: str, base: str) -> str:
        return (f"python -m vllm.entrypoints.openai.api_server --model {base} --enable-lora "
                f"--max-lora-rank {self.max_lora_rank} {self.lora_modules_flag(name)}")


def required_max_lora_rank(rank: int) -> int:
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ExportError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]}); "
                      "retrain with a smaller rank or serve the merged model (--format merged)")


def check(adapter: Adapter) -> list[str]:
    """What vLLM would refuse, as a list of reasons (empty: it loads)."""
    problems = adapter.unsupported_features("vLLM")
    embedding = sorted({m.kind for m in adapter.modules.values() if m.kind in EMBEDDING_MODULES})
    if embedding:
        problems.append(f"vLLM cannot run LoRA on {', '.join(embedding)} for this model family; "
                        "train without them in target_modules")
    return problems


def export_vllm(adapter: Adapter, out: Path) -> VLLMExport:
    """Write the vLLM folder's files into ``out`` (an empty temp folder; the caller renames it)."""
    from safetensors.torch import save_file

    problems = check(adapter)
    if problems:
        raise ExportError(f"{adapter.path}: vLLM would refuse this adapter:\n  " + "\n  ".join(problems))
    max_rank = required_max_lora_rank(adapter.max_rank)
    fixes = []

    tensors = adapter.load_tensors()
    out_tensors = {}
    renamed = 0
    for m in adapter.modules.values():
        for key, half in ((m.a_key, "A"), (m.b_key, "B")):
            plain = f"base_model.model.{m.name}.lora_{half}.weight"
            renamed += plain != key
            out_tensors[plain] = tensors[key].contiguous()
    if renamed:
        fixes.append(f"renamed {renamed} tensors to peft's plain names (base_model.model.<module>.lora_A.weight)")
    if adapter.weights_file.name != SAFETENSORS:
        fixes.append(f"converted {adapter.weights_file.name} to {SAFETENSORS}")
    save_file(out_tensors, str(out / SAFETENSORS), metadata={"format": "pt"})

    config = dict(adapter.config)
    present = sorted({m.kind for m in adapter.modules.values()})
    if config.get("target_modules") != present and sorted(config.get("target_modules") or []) != present:
        fixes.append(f"target_modules set to the modules that have weights: {present} "
                     f"(was {config.get('target_modules')!r})")
        config["target_modules"] = present
    config["inference_mode"] = True
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return VLLMExport(folder=out, max_lora_rank=max_rank, fixes=fixes)
