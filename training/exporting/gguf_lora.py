"""A peft LoRA adapter as a GGUF LoRA file, the way llama.cpp's adapter loader reads it.

What llama.cpp checks (``llama-adapter.cpp``): ``general.type = adapter``, ``adapter.type =
lora``, ``general.architecture`` equal to the base model's; tensors named after the base tensor
they modify plus ``.lora_a`` / ``.lora_b`` (``blk.0.attn_q.weight.lora_a``); shapes in ggml order
``a = [in, r]`` and ``b = [r, out]``, which is exactly peft's ``lora_A (r, in)`` and ``lora_B
(out, r)`` written as they are (GGUF stores dimensions reversed). At run time it adds
``scale * B(A x)`` with ``scale = adapter.lora.alpha / r`` (r read from B's shape).

peft's scaling can differ per module (``rank_pattern``, ``alpha_pattern``) or be alpha/sqrt(r)
(rsLoRA); GGUF has one alpha. So alpha is written once and any module whose peft scaling differs
from alpha / r gets the difference folded into its B matrix: the product is what peft computes.
"""

from __future__ import annotations

import math
from pathlib import Path

from training.exporting.adapter import Adapter, BaseModel
from training.exporting.errors import ExportError
from training.exporting.gguf_common import (
    gguf_arch,
    gguf_name,
    name_map,
    out_dtype,
    write_streamed,
)


def export_gguf_lora(adapter: Adapter, base: BaseModel, out_file: Path, *, name: str, dtype: str = "auto",
                     progress: bool = False) -> dict:
    """Write ``out_file``; returns a summary (alpha, dtype, tensor count, folded modules)."""
    import gguf

    arch = gguf_arch(base)
    problems = adapter.unsupported_features("llama.cpp")
    if problems:
        raise ExportError(f"{adapter.path}: cannot export to GGUF:\n  " + "\n  ".join(problems))
    n_layers = int(base.config.get("num_hidden_layers", 0))
    mapping = name_map(arch, n_layers)

    # One alpha for the file; rsLoRA's alpha/sqrt(r) is alpha*sqrt(r)/r.
    alpha = adapter.alpha * math.sqrt(adapter.rank) if adapter.config.get("use_rslora") else adapter.alpha
    tensors_in = adapter.load_tensors()
    source = str(next(iter(tensors_in.values())).dtype).removeprefix("torch.")
    dt = out_dtype(dtype, source)

    plan: list[tuple[str, tuple[int, ...], str]] = []
    sources: list[tuple[str, float]] = []   # (adapter tensor key, factor applied to it)
    folded = []
    for m in adapter.modules.values():
        target = gguf_name(mapping, f"{m.name}.weight")
        if not target.endswith(".weight"):
            raise ExportError(f"module {m.name}: llama.cpp applies LoRA to weights, and {target} is not one")
        factor = adapter.scaling(m.name) / (alpha / m.rank)
        if not math.isclose(factor, 1.0, rel_tol=1e-6):
            folded.append(m.name)
        plan.append((f"{target}.lora_a", (m.rank, m.in_features), dt))
        sources.append((m.a_key, 1.0))
        plan.append((f"{target}.lora_b", (m.out_features, m.rank), dt))
        sources.append((m.b_key, factor))

    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    if adapter.base_ref:
        writer.add_string("oracle_council.base_model", str(adapter.base_ref))

    def load(i: int):
        key, factor = sources[i]
        t = tensors_in[key].float()
        return (t * factor if factor != 1.0 else t).numpy()

    write_streamed(out_file, writer, plan, load, progress, f"gguf lora {name}")
    return {"alpha": alpha, "dtype": dt, "tensors": len(plan), "folded_scaling": folded}
