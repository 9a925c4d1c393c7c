"""What the GGUF exports share: the supported architectures, tensor names, streamed writing.

llama.cpp names tensors its own way (``blk.0.attn_q.weight`` for Hugging Face's
``model.layers.0.self_attn.q_proj.weight``); the ``gguf`` package's tensor-name map for the
architecture gives the translation. Only architectures whose weights go into GGUF unchanged
are supported: Llama-style models need their Q/K rows permuted for llama.cpp's RoPE, which
would also have to be applied to a LoRA's B matrices, and that is not done here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from training.exporting.adapter import BaseModel
from training.exporting.errors import ExportError

# Hugging Face model_type -> GGUF architecture name (general.architecture)
SUPPORTED = {"qwen2": "qwen2"}
DTYPES = ("auto", "f32", "f16")


def gguf_arch(base: BaseModel) -> str:
    arch = SUPPORTED.get(base.model_type)
    if arch is None:
        raise ExportError(f"GGUF export supports {', '.join(f'{k} ({v})' for k, v in SUPPORTED.items())} "
                          f"models (Qwen2, Qwen2.5, Qwen2.5-Coder); the base {base.path} is "
                          f"{base.architecture or '?'} (model_type {base.model_type or '?'!r})")
    return arch


def name_map(arch: str, n_layers: int):
    import gguf

    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    return gguf.get_tensor_name_map(model_arch, n_layers)


def gguf_name(mapping, hf_name: str) -> str:
    """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``."""
    name = mapping.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ExportError(f"no GGUF name for tensor {hf_name!r}; the model has layers llama.cpp does not know")
    return name


def out_dtype(requested: str, source_dtype: str) -> str:
    """``auto``: f32 stays f32, anything else (bf16, f16) becomes f16."""
    if requested not in DTYPES:
        raise ExportError(f"GGUF exports write {', '.join(DTYPES)}; got {requested!r}")
    if requested != "auto":
        return requested
    return "f32" if source_dtype.lower() in ("f32", "float32", "torch.float32") else "f16"


def write_streamed(path: Path, writer, tensors: list[tuple[str, tuple[int, ...], str]],
                   load: Callable[[int], Any], progress: bool, desc: str) -> None:
    """Header, metadata and tensor table first, then each tensor as ``load(i)`` produces it: the
    whole model is never in memory at once. ``tensors`` are (name, numpy shape, "f32"|"f16")."""
    import numpy as np

    np_types = {"f32": np.float32, "f16": np.float16}
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape)) * np.dtype(np_types[dtype]).itemsize
        writer.add_tensor_info(name, shape, np.dtype(np_types[dtype]), nbytes)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i in _bar(range(len(tensors)), progress, desc):
        name, shape, dtype = tensors[i]
        array = np.ascontiguousarray(load(i), dtype=np_types[dtype])
        if tuple(array.shape) != tuple(shape):
            raise ExportError(f"tensor {name}: shape {array.shape} differs from the declared {shape}")
        writer.write_tensor_data(array)
    writer.close()


def _bar(items: Iterable[int], progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tensor", disable=not progress)
