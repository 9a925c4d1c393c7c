"""``oracle-council train --plan``: how much GPU memory a LoRA run needs, and whether it fits.

The estimate adds up what the CUDA allocator holds at the peak of a training step:

- **weights**: the frozen base, 2 bytes a parameter in bf16; NF4 (4-bit, double-quantised) linear
  layers take 0.5 bytes plus 1/64 byte of block scales, embeddings and the LM head stay bf16.
- **LoRA**: r·(d_in + d_out) parameters per adapted linear layer, float32 (peft's default), with
  a float32 gradient and AdamW's two float32 moments (16 bytes each; 8-bit AdamW: 10).
- **activations**: what autograd keeps for the backward pass, per token per layer. Counted
  tensor by tensor from a Qwen2 decoder layer with LoRA on all seven projections (the count was
  checked against ``torch.autograd.graph.saved_tensors_hooks`` on CPU; see docs/training.md):
  each RMSNorm keeps its float32 input (4H); each adapted layer keeps its LoRA input (4 bytes per
  element with float32 adapters and no autocast, 2 under bf16 autocast) and a 1-byte dropout
  mask, but not the frozen base layer's input; the MLP keeps gate, SiLU(gate) and up (6I); the
  attention kernel keeps q, k, v and its output (k and v at full head count when a padding mask
  forces transformers to repeat them, at KV-head count otherwise). Gradient checkpointing keeps
  one bf16 hidden state per layer plus one layer's activations during its recomputation.
- **loss**: the plain loop's full logits (``loss = model(..., labels=...).loss``: the float32
  log-softmax is kept, and at its backward two float32 gradients of the same size exist beside
  it); our trainer's chunked loss holds one chunk's logits at a time.
- **overhead**: the CUDA context (~0.75 GiB, outside torch's allocator) plus 5% for allocator
  fragmentation and cuBLAS workspaces.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, replace

GIB = 1024 ** 3
CUDA_CONTEXT = 0.75 * GIB
FRAGMENTATION = 0.05


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def module_dims(self) -> dict[str, tuple[int, int]]:
        q, kv = self.heads * self.hd, self.kv_heads * self.hd
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}

    def params(self) -> dict[str, int]:
        dims = self.module_dims()
        q, kv = self.heads * self.hd, self.kv_heads * self.hd
        linear = self.layers * sum(i * o for i, o in dims.values())
        biases = self.layers * (q + 2 * kv)
        norms = self.layers * 2 * self.hidden + self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return {"linear": linear, "other": biases + norms + embed, "embed": embed,
                "total": linear + biases + norms + embed}


# Qwen2.5 shapes by size, for --params without a config (the Coder models share them).
QWEN25 = {
    0.5: Shape("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True),
    1.5: Shape("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
    3.0: Shape("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True),
    7.0: Shape("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
    14.0: Shape("Qwen2.5-14B", 5120, 48, 40, 8, 13824, 152064, False),
    32.0: Shape("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False),
}


def parse_params(text: str) -> float:
    """'1.5B', '7b', '500M', '32' -> billions."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([bBmM]?)\s*", text)
    if not m:
        raise ValueError(f"--params: expected a size such as 1.5B or 500M, got {text!r}")
    value = float(m.group(1))
    return value / 1000 if m.group(2).lower() == "m" else value


def shape_for_params(billions: float) -> Shape:
    nearest = min(QWEN25, key=lambda b: abs(math.log(b / billions)))
    return QWEN25[nearest]


def shape_from_config(name_or_dir: str) -> Shape:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(name_or_dir)
    c = getattr(c, "text_config", c)
    return Shape(name=str(name_or_dir), hidden=c.hidden_size, layers=c.num_hidden_layers,
                 heads=c.num_attention_heads, kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
                 intermediate=c.intermediate_size, vocab=c.vocab_size,
                 tied=bool(getattr(c, "tie_word_embeddings", False)), head_dim=getattr(c, "head_dim", None))


@dataclass(frozen=True)
class PlanInput:
    shape: Shape
    rank: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    batch_size: int = 4
    seq_len: int = 2048
    load_in_4bit: bool = False
    optimizer_bits: int = 32
    gradient_checkpointing: bool = False
    loop: str = "ours"              # "ours": bf16 autocast, chunked loss, no padding; "plain": transformers+peft
    padded: bool = False            # a padding mask (plain loop with ragged rows): k/v repeated to all heads
    loss_chunk_tokens: int = 512
    num_gpus: int = 1               # FSDP: weights and LoRA states are sharded over this many GPUs
    dropout: bool = True
    mask_bytes: int = 1             # a dropout mask element: CUDA keeps bool masks; CPU keeps float32 noise (4)


@dataclass
class Plan:
    components: dict[str, float]    # bytes
    total: float
    gpu_memory_gib: float
    fits: bool
    detail: dict


def estimate(p: PlanInput, gpu_memory_gib: float = 16.0) -> Plan:
    s = p.shape
    dims = s.module_dims()
    unknown = sorted(set(p.target_modules) - set(dims))
    if unknown:
        raise ValueError(f"unknown target modules for a Qwen2/Llama-style model: {', '.join(unknown)}")
    counts = s.params()
    tokens = p.batch_size * p.seq_len

    # weights
    if p.load_in_4bit:
        weights = counts["linear"] * (0.5 + 1 / 64) + counts["other"] * 2
    else:
        weights = counts["total"] * 2
    weights /= p.num_gpus

    # LoRA parameters, gradients, optimiser states
    lora_params = s.layers * sum(p.rank * (dims[m][0] + dims[m][1]) for m in p.target_modules)
    per_param = 4 + 4 + (8 if p.optimizer_bits == 32 else 2)
    lora = lora_params * per_param / p.num_gpus

    # activations, per token per layer
    ours = p.loop == "ours"
    a = 2 if ours else 4                    # bytes per element of a LoRA input kept for backward
    mask = p.mask_bytes if p.dropout else 0
    H, I = s.hidden, s.intermediate
    q, kv = s.heads * s.hd, s.kv_heads * s.hd
    per_layer = 2 * 4 * H + 4 * 2           # two RMSNorms: float32 input and rsqrt
    seen_inputs = set()
    for m in p.target_modules:
        d_in = dims[m][0]
        per_layer += (a + mask) * d_in + a * p.rank  # LoRA input + dropout mask, A's output
        seen_inputs.add(m)
    if p.load_in_4bit:                      # bitsandbytes' 4-bit matmul keeps its bf16 input (conservative)
        per_layer += 2 * (3 * H + q + 2 * H + I)
    per_layer += 6 * I                      # gate, SiLU(gate), up (bf16)
    repeat_kv = p.padded and not ours
    per_layer += 2 * (2 * q + (2 * q if repeat_kv else 2 * kv)) + 4 * s.heads  # q, out, k, v; logsumexp
    if p.gradient_checkpointing:
        activations = tokens * (s.layers * 2 * H + per_layer)
    else:
        activations = tokens * s.layers * per_layer
    activations += tokens * (4 * H + 2 * H)  # final norm input, and the hidden state fed to the head

    # the loss
    V = s.vocab
    if ours:
        n = min(tokens, p.loss_chunk_tokens)
        loss = n * V * (2 + 4 + 4 + 4)      # one chunk recomputed: logits bf16, fp32, log-softmax, its gradient
    else:
        loss = tokens * V * (4 + 4 + 4)      # fp32 log-softmax output + two fp32 gradients at its backward

    subtotal = weights + lora + activations + loss
    overhead = CUDA_CONTEXT + FRAGMENTATION * subtotal
    total = subtotal + overhead
    components = {"weights": weights, "lora (params + grads + optimizer)": lora, "activations": activations,
                  "loss (logits)": loss, "CUDA context + overhead": overhead}
    detail = {"allocated_bytes": subtotal, "shape": asdict(s), "base_params": counts["total"], "lora_params": lora_params,
              "tokens_per_micro_batch": tokens, "activation_bytes_per_token_per_layer": per_layer,
              "input": {k: v for k, v in asdict(p).items() if k != "shape"}}
    return Plan(components, total, gpu_memory_gib, total <= gpu_memory_gib * GIB, detail)


def plan_input(shape: Shape, config, *, optimizer_bits: int | None = None, loop: str = "ours",
               num_gpus: int = 1) -> PlanInput:
    """The planner's view of a ``TrainConfig`` (checkpointing left to the caller when it is auto)."""
    bits = optimizer_bits or (8 if config.optimizer == "adamw8bit" else 32)
    return PlanInput(shape=shape, rank=config.rank, target_modules=config.target_modules,
                     batch_size=config.batch_size, seq_len=config.max_seq_len, load_in_4bit=config.load_in_4bit,
                     optimizer_bits=bits, gradient_checkpointing=bool(config.gradient_checkpointing),
                     loss_chunk_tokens=config.loss_chunk_tokens, dropout=config.dropout > 0, loop=loop,
                     padded=loop == "plain", num_gpus=num_gpus)


def auto_checkpointing(p: PlanInput, gpu_memory_gib: float) -> tuple[bool, str]:
    """What ``gradient_checkpointing = None`` (auto) becomes for this run on this card: off when
    the run fits without it, else on (the less memory of the two, fitting or not); and why."""
    without = estimate(replace(p, gradient_checkpointing=False), gpu_memory_gib)
    need = f"{without.total / GIB:.1f} GiB estimated without it, {gpu_memory_gib:g} GiB on the GPU"
    if without.fits:
        return False, f"gradient checkpointing off (auto: {need})"
    return True, f"gradient checkpointing on (auto: {need})"


def format_plan(plan: Plan) -> str:
    d = plan.detail
    inp = d["input"]
    lines = [f"base {d['shape']['name']}: {d['base_params'] / 1e9:.2f}B params, "
             f"{'NF4 4-bit' if inp['load_in_4bit'] else 'bf16'}; LoRA r={inp['rank']} on "
             f"{len(inp['target_modules'])} modules: {d['lora_params'] / 1e6:.1f}M params; "
             f"batch {inp['batch_size']} x {inp['seq_len']} tokens; "
             f"AdamW {'fp32' if inp['optimizer_bits'] == 32 else '8-bit'} states; "
             f"gradient checkpointing {'on' if inp['gradient_checkpointing'] else 'off'}; "
             f"{inp['loop']} loop" + (f"; FSDP over {inp['num_gpus']} GPUs" if inp['num_gpus'] > 1 else ""),
             "", f"{'component':<36}{'GiB':>9}", "-" * 45]
    for name, value in plan.components.items():
        lines.append(f"{name:<36}{value / GIB:>9.2f}")
    lines += ["-" * 45, f"{'total (per GPU)':<36}{plan.total / GIB:>9.2f}",
              f"{'  of which torch allocates (peak)':<36}{d['allocated_bytes'] / GIB:>9.2f}", ""]
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"{verdict} a {plan.gpu_memory_gib:g} GiB GPU ({plan.gpu_memory_gib - plan.total / GIB:+.2f} GiB headroom)")
    if not plan.fits:
        lines.append("to shrink it: --gradient-checkpointing, a smaller --batch-size (raise --grad-accum to keep "
                     "the effective batch), a shorter --max-seq-len, --load-in-4bit, --optimizer adamw8bit")
    return "\n".join(lines)


def run_plan(args: argparse.Namespace, config) -> int:
    try:
        if args.base_model:
            shape = shape_from_config(args.base_model)
        elif args.params:
            shape = shape_for_params(parse_params(args.params))
        else:
            shape = QWEN25[1.5]
    except (OSError, ValueError) as exc:
        print(f"oracle-council train --plan: {exc}", file=sys.stderr)
        return 2
    auto_note = None
    try:
        p = plan_input(shape, config, optimizer_bits=int(args.optimizer_bits) if args.optimizer_bits else None,
                       loop=args.plan_loop, num_gpus=args.num_gpus)
        if config.gradient_checkpointing is None:  # what `train` would choose on this card
            checkpointing, auto_note = auto_checkpointing(p, args.gpu_memory)
            p = replace(p, gradient_checkpointing=checkpointing)
        plan = estimate(p, args.gpu_memory)
    except ValueError as exc:
        print(f"oracle-council train --plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"components_gib": {k: round(v / GIB, 3) for k, v in plan.components.items()},
                          "total_gib": round(plan.total / GIB, 3),
                          "allocated_gib": round(plan.detail["allocated_bytes"] / GIB, 3), "gpu_memory_gib": plan.gpu_memory_gib,
                          "fits": plan.fits, "gradient_checkpointing_auto": auto_note, **plan.detail}, indent=2))
    else:
        print(format_plan(plan))
        if auto_note:
            print(f"train would run with {auto_note}; --gradient-checkpointing / --no-gradient-checkpointing "
                  "decide it yourself")
    return 0 if plan.fits else 1
