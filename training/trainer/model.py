"""The model side of the trainer: base + LoRA, and the loss module the loop drives.

``LossModel`` wraps the peft model so that one ``forward`` runs the decoder, keeps only the
positions that have a target (the reply tokens: with response-only loss most positions are
prompt) and computes the cross-entropy ``loss_chunk_tokens`` positions at a time, recomputing
each chunk's logits in the backward pass instead of storing them. For a 152k vocabulary the
full logits of a 16 x 512 batch are 2.5 GB in bf16 and 5 GB in fp32; here they never exist.
Being one module, it is what accelerate wraps for DDP/FSDP, so gradient sync sees the whole pass.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from training.trainer.config import TrainConfig
from training.trainer.data import IGNORE_INDEX


def pick_attention(config: TrainConfig, on_cuda: bool) -> str:
    if config.attn_implementation != "auto":
        return config.attn_implementation
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_model(base_model: str, config: TrainConfig, *, dtype, device, attn: str, device_map=None):
    """The base model (frozen) with LoRA layers; LoRA weights are float32 (peft's default)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn}
    if config.load_in_4bit:
        if device.type != "cuda":
            raise ValueError("--load-in-4bit needs a CUDA GPU (bitsandbytes NF4)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--load-in-4bit needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
        if device_map is not None:
            kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(config.seed)  # the LoRA A matrices' initialisation
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(model, lora)
    if config.compile:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    return model


def _chunk_loss(hidden, targets, weight, bias):
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def make_loss_model(peft_model, chunk_tokens: int):
    import torch
    from torch.utils.checkpoint import checkpoint

    class LossModel(torch.nn.Module):
        """forward(input_ids, position_ids, targets) -> (sum of token losses, number of targets)."""

        def __init__(self) -> None:
            super().__init__()
            self.peft_model = peft_model
            self.chunk_tokens = chunk_tokens

        def forward(self, input_ids, position_ids, targets, **attn_kwargs):
            causal_lm = self.peft_model.get_base_model()
            out = causal_lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **attn_kwargs)
            keep = targets != IGNORE_INDEX
            hidden, wanted = out.last_hidden_state[keep], targets[keep]
            head = causal_lm.get_output_embeddings()
            total = out.last_hidden_state.float().sum() * 0.0  # keeps the graph whole when no target is left
            for i in range(0, hidden.shape[0], self.chunk_tokens):
                h, t = hidden[i:i + self.chunk_tokens], wanted[i:i + self.chunk_tokens]
                if torch.is_grad_enabled():
                    total = total + checkpoint(_chunk_loss, h, t, head.weight, head.bias, use_reentrant=False)
                else:
                    total = total + _chunk_loss(h, t, head.weight, head.bias)
            return total, wanted.numel()

    return LossModel()
