"""The minimal LoRA trainer: samples in, a peft adapter folder out.

Reads top to bottom: config → samples to token ids (loss on assistant replies only) → the base
model with LoRA layers → an AdamW loop → ``save_pretrained``. The adapter folder holds
``adapter_config.json`` and ``adapter_model.safetensors`` (what vLLM and peft load) and
``training_config.json`` (this run's ``LoRATrainConfig``).

Samples are dicts in either shape:

- ``{"instruction", "input", "output"}`` (optional ``system``): one user turn (instruction, then
  input after a blank line) and one assistant reply;
- ``{"messages": [{"role", "content"}, ...]}`` (ChatML): every assistant turn is trained on.

Other keys (``domain``, ``task_type`` ...) are ignored. Text is laid out by the tokenizer's own
chat template, so an adapter sees at serving time exactly the prompt format it was trained on.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "training_config.json"
IGNORE_INDEX = -100  # label value that cross-entropy skips (prompt and padding tokens)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRATrainConfig:
    # -- the adapter ----------------------------------------------------------------------------
    rank: int = 16                      # LoRA rank r: width of the low-rank update B·A
    alpha: int = 32                     # scale: the update is multiplied by alpha / rank
    dropout: float = 0.05               # dropout on the LoRA branch's input while training
    target_modules: tuple[str, ...] = ALL_LINEAR  # linear layers that get an adapter
    # -- the optimiser --------------------------------------------------------------------------
    learning_rate: float = 2e-4         # AdamW peak learning rate
    weight_decay: float = 0.0           # AdamW decoupled weight decay on the LoRA weights
    warmup_steps: int = 0               # linear warm-up, then cosine decay to 10% of the peak
    max_grad_norm: float = 1.0          # gradient clipping; 0 disables it
    # -- the schedule ---------------------------------------------------------------------------
    epochs: float = 3.0                 # passes over the samples (fractions allowed)
    max_steps: int | None = None        # if set, exactly this many optimiser steps (overrides epochs)
    batch_size: int = 4                 # sequences per optimiser step
    max_seq_len: int = 512              # tokens per sequence; longer samples are cut on the right
    # -- reproducibility and hardware -----------------------------------------------------------
    seed: int = 0                       # seeds LoRA init, dropout and the sample order
    device: str = "auto"                # "auto" (cuda if available), "cpu" or "cuda[:N]"

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        checks = [
            (self.rank >= 1, "rank must be >= 1"),
            (self.alpha > 0, "alpha must be > 0"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (len(self.target_modules) > 0, "target_modules must name at least one module"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1 (or None)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_seq_len >= 8, "max_seq_len must be >= 8"),
            (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
             "device must be 'auto', 'cpu' or 'cuda[:N]'"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ValueError("invalid LoRATrainConfig: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LoRATrainConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoRATrainConfig keys: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[float]                 # mean loss of every optimiser step
    steps: int
    samples: int                        # samples used (after dropping those with no reply tokens)
    tokens: int                         # tokens processed, padding excluded
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def to_messages(sample: dict[str, Any]) -> list[dict[str, str]]:
    """A sample in either accepted shape, as ChatML messages."""
    if "messages" in sample:
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in sample["messages"]]
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("a 'messages' sample needs at least one assistant turn")
        return messages
    if "instruction" not in sample or "output" not in sample:
        raise ValueError(f"a sample needs 'messages' or 'instruction' + 'output'; got keys {sorted(sample)}")
    user = sample["instruction"].strip()
    if sample.get("input"):
        user += "\n\n" + str(sample["input"]).strip()
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": str(sample["output"]).strip()}]
    if sample.get("system"):
        messages.insert(0, {"role": "system", "content": sample["system"]})
    return messages


def encode(tokenizer, messages: list[dict[str, str]], max_seq_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; labels are IGNORE_INDEX outside assistant replies.

    Each piece of the rendered conversation is tokenised separately, so a prompt is cut into
    tokens exactly as it will be at inference time (the template's text, then the generation).
    """
    def render(msgs: list[dict[str, str]], prompt: bool) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    def tokens(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the tokenizer's chat template is not prefix-stable; cannot mask prompts")
        context, reply = tokens(prompt[len(done):]), tokens(full[len(prompt):])
        ids += context + reply
        labels += [IGNORE_INDEX] * len(context) + reply
        done = full
    return ids[:max_seq_len], labels[:max_seq_len]


def train_lora(base_dir: str | Path, samples: list[dict[str, Any]], out_dir: str | Path,
               config: LoRATrainConfig | None = None, progress: bool = True) -> TrainResult:
    """Train one LoRA adapter on ``samples`` over the model in ``base_dir``; save it in ``out_dir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = config or LoRATrainConfig()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(cfg.seed)

    # 1. samples → (ids, labels); a sample whose reply was cut away entirely teaches nothing.
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = [encode(tokenizer, to_messages(s), cfg.max_seq_len) for s in samples]
    data = [(ids, labels) for ids, labels in data if any(t != IGNORE_INDEX for t in labels[1:])]
    if not data:
        raise ValueError("no usable samples: each needs an assistant reply within max_seq_len tokens")

    # 2. the base model, frozen, with LoRA layers (peft keeps the adapter weights in float32).
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype).to(device)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        model = get_peft_model(model, lora)
    model.train()

    # 3. the schedule: warm-up, then cosine decay to 10% of the peak learning rate.
    batches_per_epoch = math.ceil(len(data) / cfg.batch_size)
    steps = cfg.max_steps or max(1, round(cfg.epochs * batches_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    # 4. the loop: every pass over the data is a fresh shuffle; batches pad to their longest row.
    order = torch.Generator().manual_seed(cfg.seed)
    queue: list[int] = []
    losses: list[float] = []
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"lora {Path(out_dir).name}", disable=not progress)
    for _ in bar:
        if len(queue) < cfg.batch_size:
            queue += torch.randperm(len(data), generator=order).tolist()
        batch, queue = [data[i] for i in queue[:cfg.batch_size]], queue[cfg.batch_size:]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in batch], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)

        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        losses.append(loss.item())
        tokens += int(attention.sum())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - start

    # 5. save: the adapter (peft format) and, beside it, the config that made it.
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / CONFIG_FILE).write_text(cfg.to_json() + "\n", encoding="utf-8")
    return TrainResult(out_dir=out, losses=losses, steps=steps, samples=len(data), tokens=tokens, seconds=seconds)
