"""Base + LoRA merged into one standalone Hugging Face model folder (peft ``merge_and_unload``).

The folder holds the merged weights (safetensors), config, generation config and the base's
tokenizer, so ``AutoModelForCausalLM.from_pretrained`` (or vLLM ``--model``) serves it with no
adapter machinery. The merge runs in float32 and the result is saved in the base's own dtype
unless ``dtype`` says otherwise.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from training.exporting.adapter import Adapter, BaseModel

TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def export_merged(adapter: Adapter, base: BaseModel, out: Path, *, dtype: str = "auto",
                  progress: bool = False) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    with _hf_bars(progress):
        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
        with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
        source = str(base.config.get("dtype") or base.config.get("torch_dtype") or "float32")
        target = TORCH_DTYPES.get(dtype, source if dtype == "auto" else dtype)
        model = model.to(getattr(torch, target))
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(base.path).save_pretrained(out)
        with contextlib.suppress(OSError):  # no generation_config.json in the base: the model's own was saved
            GenerationConfig.from_pretrained(base.path).save_pretrained(out)
    return {"dtype": target, "parameters": sum(p.numel() for p in model.parameters())}


@contextlib.contextmanager
def _hf_bars(on: bool) -> Iterator[None]:
    """transformers' load/save bars only when ours would show too."""
    from transformers.utils import logging as hf_logging

    were_on = hf_logging.is_progress_bar_enabled()
    if not on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if were_on:
            hf_logging.enable_progress_bar()
