"""The trainer's configuration: one validated dataclass, one comment per hyperparameter, saved as
JSON beside every adapter and checkpoint (``training_config.json``).

The defaults are the users' own recipe (docs/ecosystem.md, "Their training script"): LoRA r=16,
alpha=32, dropout 0.05 on q/k/v/o/gate/up/down, 3 epochs, batch 4 x grad-accum 4, lr 2e-4,
warm-up 50 steps, cosine, max_seq 2048, seed 42.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TEMPLATES = ("chatml", "alpaca")
PRECISIONS = ("auto", "bf16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention")

# Fields that may differ between a run and the run it resumes (they do not change the maths).
RESUMABLE_CHANGES = frozenset({"save_steps", "save_total_limit", "eval_steps", "log_steps", "quiet",
                               "compile", "loss_chunk_tokens", "gradient_checkpointing"})


@dataclass
class TrainConfig:
    # -- the adapter ----------------------------------------------------------------------------
    rank: int = 16                       # LoRA rank r: width of the low-rank update B·A
    alpha: int = 32                      # the update is scaled by alpha / rank
    dropout: float = 0.05                # dropout on the LoRA branch's input while training
    target_modules: tuple[str, ...] = ALL_LINEAR  # linear layers that get an adapter
    # -- the data -------------------------------------------------------------------------------
    template: str = "chatml"             # "chatml" (the base model's chat template) or "alpaca"
    max_seq_len: int = 2048              # tokens per row; longer samples are cut on the right
    packing: bool = True                 # pack several short samples into one row (attention kept apart)
    # -- the optimiser --------------------------------------------------------------------------
    learning_rate: float = 2e-4          # AdamW peak learning rate
    weight_decay: float = 0.0            # AdamW decoupled weight decay on the LoRA weights
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    optimizer: str = "adamw"             # "adamw" (fp32 states; fused on CUDA) or "adamw8bit" (bitsandbytes)
    warmup_steps: int = 50               # linear warm-up over this many optimiser steps
    lr_scheduler: str = "cosine"         # "cosine" (to min_lr_ratio x peak) or "constant" (after warm-up)
    min_lr_ratio: float = 0.0            # where the cosine ends, as a fraction of the peak
    max_grad_norm: float = 1.0           # gradient clipping; 0 disables it
    # -- the schedule ---------------------------------------------------------------------------
    epochs: float = 3.0                  # passes over the data (fractions allowed)
    max_steps: int | None = None         # if set, exactly this many optimiser steps (overrides epochs)
    batch_size: int = 4                  # rows per micro-batch, per process
    grad_accum: int = 4                  # micro-batches per optimiser step
    eval_steps: int = 200                # eval loss on val every N optimiser steps (0: only at the end)
    save_steps: int = 500                # checkpoint every N optimiser steps (0: never)
    save_total_limit: int = 2            # checkpoints kept (oldest removed first)
    log_steps: int = 10                  # a log line every N optimiser steps
    # -- hardware -------------------------------------------------------------------------------
    device: str = "auto"                 # "auto" (cuda if available), "cpu" or "cuda"
    precision: str = "auto"              # "auto" (bf16 on cuda, fp32 on cpu), "bf16" or "fp32"
    load_in_4bit: bool = False           # NF4 base weights (QLoRA; bitsandbytes, CUDA only)
    gradient_checkpointing: bool | None = None  # recompute layer activations in backward: less memory,
                                         # ~30% slower; None: on when the planner says the run needs it
                                         # on this GPU (never on CPU)
    attn_implementation: str = "auto"    # "auto": flash_attention_2 if installed on cuda, else sdpa
    compile: bool = False                # torch.compile the decoder layers (pays off on CUDA; works on CPU)
    loss_chunk_tokens: int = 512         # logits are made and freed this many tokens at a time
    # -- reproducibility ------------------------------------------------------------------------
    seed: int = 42                       # LoRA init, dropout and the data order
    quiet: bool = False                  # no progress bar

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        checks = [
            (self.rank >= 1, "rank must be >= 1"),
            (self.alpha > 0, "alpha must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (len(self.target_modules) > 0, "target_modules must name at least one module"),
            (self.template in TEMPLATES, f"template must be one of {', '.join(TEMPLATES)}"),
            (self.max_seq_len >= 8, "max_seq_len must be >= 8"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.lr_scheduler in ("cosine", "constant"), "lr_scheduler must be cosine or constant"),
            (0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must be in [0, 1]"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 (or None)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.eval_steps >= 0 and self.save_steps >= 0 and self.log_steps >= 1,
             "eval_steps and save_steps must be >= 0, log_steps >= 1"),
            (self.save_total_limit >= 1, "save_total_limit must be >= 1"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be auto, cpu or cuda"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.attn_implementation in ATTENTION, f"attn_implementation must be one of {', '.join(ATTENTION)}"),
            (self.loss_chunk_tokens >= 16, "loss_chunk_tokens must be >= 16"),
            (self.gradient_checkpointing in (None, True, False), "gradient_checkpointing must be true, false or null"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: TrainConfig) -> list[str]:
        """Fields (other than the harmless ones) whose values differ: a resume must not change them."""
        mine, theirs = self.to_dict(), other.to_dict()
        return sorted(k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k])
