"""``oracle-council bench train``: LoRA training throughput, peak memory and MFU of our trainer's
fast path beside a plain transformers + peft loop, in one run on one device.

    oracle-council bench train                                   # Qwen2.5-Coder-1.5B shape on CUDA
    oracle-council bench train --shape tiny --device cpu --steps 3   # a smoke run anywhere

The model is built locally from a config (random weights, no download): the 1.5B shape is
hidden 1536, 28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings.
Both loops train LoRA r=16 (alpha 32, dropout 0.05) on all seven linear layers, bf16 on CUDA,
on the same synthetic samples (lengths uniform in [seq/8, seq], the first third of each a
prompt without loss):

- **plain**: batches of ``--batch-size`` samples padded to ``--seq-len``, ``model(...,
  labels=...)``, ``loss.backward()``, ``torch.optim.AdamW`` (the loop environment.md measured:
  22k tokens/s, 48 GiB on an H100);
- **ours**: the trainer's step: samples packed into ``--batch-size`` rows of ``--seq-len`` tokens
  (flash-attention varlen when flash_attn is installed, else sdpa with a block-diagonal mask),
  bf16 autocast over float32 LoRA weights, the chunked response-only loss, fused AdamW, gradient
  clipping, optionally ``--compile``.

tokens/s counts real tokens (padding excluded); the plain loop's padded rate is shown too. MFU
uses design.md's convention: 4·N FLOPs per token (N = all base parameters; forward 2N plus the
backward pass for activations 2N, as the frozen base needs no weight gradients; attention and the
LoRA matmuls are not counted) over ``--peak-tflops`` (default 790 on H100/H200, the figure
design.md §5 uses). Peak memory is ``torch.cuda.max_memory_allocated`` per loop, printed beside
``oracle-council train --plan``'s estimate for the same setting.
"""

from __future__ import annotations

import argparse
import sys
import time

from eval.benchrun import BenchError, finish

GIB = 1024 ** 3
GOAL_TOKENS_PER_S = 55_000
SHAPES = {
    "qwen1.5b": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                 "intermediate_size": 8960, "vocab_size": 151936},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 256, "vocab_size": 512},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen1.5b",
                        help="model shape, random weights (default qwen1.5b: Qwen2.5-Coder-1.5B)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                        help="auto: cuda, and a clear error when there is none")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per loop (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per step (default 16)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row (default 512)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--loops", default="plain,ours", help="which loops, comma-separated (default plain,ours)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder layers in our loop")
    parser.add_argument("--attn", default="auto", help="our loop's attention: auto, flash_attention_2, sdpa")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak for MFU "
                                                          "(default 790 for H100/H200; none elsewhere)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    return finish("train", args, bench, report)


def _config(shape: str):
    from transformers import Qwen2Config

    return Qwen2Config(**SHAPES[shape], head_dim=SHAPES[shape]["hidden_size"] // SHAPES[shape]["num_attention_heads"],
                       tie_word_embeddings=True, max_position_embeddings=32768, use_cache=False)


def _samples(n: int, seq: int, vocab: int, seed: int) -> list:
    import torch

    from training.trainer.data import IGNORE_INDEX, Example

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(max(8, seq // 8), seq + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        prompt = length // 3
        out.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:], f"synthetic:{i}"))
    return out


def _model(config, dtype, device, attn: str, rank: int, seed: int):
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.config.use_cache = False
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, lora).to(device)


def _plain(args, config, samples, dtype, device, sync) -> dict:
    """transformers + peft as most scripts write it: pad to seq_len, labels, AdamW."""
    import torch

    model = _model(config, dtype, device, "sdpa", args.rank, args.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    B, S = args.batch_size, args.seq_len

    def step(i: int) -> tuple[int, int]:
        batch = [samples[(i * B + k) % len(samples)] for k in range(B)]
        ids = torch.tensor([e.ids + [0] * (S - len(e)) for e in batch], device=device)
        labels = torch.tensor([e.labels + [-100] * (S - len(e)) for e in batch], device=device)
        mask = torch.tensor([[1] * len(e) + [0] * (S - len(e)) for e in batch], device=device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return sum(len(e) for e in batch), B * S

    out = _timed(args, step, device, sync)
    out["attn"] = "sdpa"
    return out


def _ours(args, config, samples, dtype, device, sync) -> dict:
    """The trainer's step (training.trainer): packed rows, autocast, chunked loss, fused AdamW."""
    import torch

    from training.trainer.config import TrainConfig
    from training.trainer.data import pack
    from training.trainer.loop import _batch, _optimizer
    from training.trainer.model import make_loss_model, pick_attention

    cfg = TrainConfig(rank=args.rank, alpha=2 * args.rank, max_seq_len=args.seq_len, batch_size=args.batch_size,
                      grad_accum=1, attn_implementation=args.attn, compile=args.compile)
    attn = pick_attention(cfg, on_cuda=device.type == "cuda")
    model = _model(config, dtype, device, attn, args.rank, args.seed)
    if args.compile:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    loss_model = make_loss_model(model, cfg.loss_chunk_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params, device.type == "cuda")
    rows = pack([len(e) for e in samples], list(range(len(samples))), args.seq_len, packing=True)
    loss_model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(i: int) -> tuple[int, int]:
        chosen = [rows[(i * args.batch_size + k) % len(rows)] for k in range(args.batch_size)]
        batch = _batch(chosen, samples, 0, attn, device)
        n_targets = int((batch["targets"] != -100).sum())
        with autocast:
            s, _ = loss_model(**batch)
        (s / n_targets).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        real = sum(len(samples[j]) for row in chosen for j in row)
        return real, batch["input_ids"].numel()

    out = _timed(args, step, device, sync)
    out["attn"] = attn
    return out


def _timed(args, step, device, sync) -> dict:
    import torch

    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    real = slots = 0
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        r, s = step(i)
        real, slots = real + r, slots + s
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None
    return {"tokens_per_s": real / seconds, "slots_per_s": slots / seconds, "step_ms": 1000 * seconds / args.steps,
            "real_tokens": real, "seconds": seconds, "peak_gib": peak}


def bench(args: argparse.Namespace) -> dict:
    import torch

    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 16:
        raise BenchError("--steps >= 1, --warmup >= 0, --batch-size >= 1 and --seq-len >= 16 please")
    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    if not loops or set(loops) - {"plain", "ours"}:
        raise BenchError(f"--loops takes plain and/or ours, got {args.loops!r}")
    if args.device in ("auto", "cuda") and not torch.cuda.is_available():
        raise BenchError("no CUDA GPU here: the throughput numbers mean something only on one; "
                         "for a smoke run use --shape tiny --device cpu")
    device = torch.device("cuda" if args.device in ("auto", "cuda") else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak_tflops = args.peak_tflops or (790.0 if device.type == "cuda" and any(k in name for k in ("H100", "H200"))
                                       else None)

    config = _config(args.shape)
    samples = _samples(max(64, 4 * args.batch_size * (args.warmup + args.steps)), args.seq_len,
                       config.vocab_size, args.seed)
    from training.planner import PlanInput, Shape, estimate

    shape = Shape(args.shape, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                  config.num_key_value_heads, config.intermediate_size, config.vocab_size, True)
    n_params = shape.params()["total"]
    results = {"shape": args.shape, "device": name, "dtype": str(dtype).removeprefix("torch."),
               "base_params": n_params, "batch_size": args.batch_size, "seq_len": args.seq_len, "rank": args.rank,
               "steps": args.steps, "peak_tflops": peak_tflops, "flops_per_token": 4 * n_params,
               "versions": _versions(), "loops": {}}
    for loop in loops:
        fn = _plain if loop == "plain" else _ours
        try:
            r = fn(args, config, samples, dtype, device, sync)
        except torch.cuda.OutOfMemoryError as exc:
            r = {"error": f"out of memory: {exc}".splitlines()[0]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        plan = estimate(PlanInput(shape=shape, rank=args.rank, batch_size=args.batch_size, seq_len=args.seq_len,
                                  loop=loop, padded=loop == "plain"), 80)
        r["planner_allocated_gib"] = plan.detail["allocated_bytes"] / GIB
        if "tokens_per_s" in r:
            r["mfu"] = (4 * n_params * r["tokens_per_s"] / (peak_tflops * 1e12)) if peak_tflops else None
        results["loops"][loop] = r
    p, o = results["loops"].get("plain", {}), results["loops"].get("ours", {})
    if "tokens_per_s" in p and "tokens_per_s" in o:
        results["speedup"] = o["tokens_per_s"] / p["tokens_per_s"]
    if "tokens_per_s" in o and device.type == "cuda":
        results["goal_met"] = o["tokens_per_s"] >= GOAL_TOKENS_PER_S
    return results


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in ("torch", "transformers", "peft", "flash-attn"):
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def report(r: dict) -> str:
    def cell(loop: str, key: str, fmt: str) -> str:
        v = r["loops"].get(loop, {}).get(key)
        if v is None:
            return r["loops"].get(loop, {}).get("error", "n/a")[:28] if key == "tokens_per_s" else "n/a"
        return format(v, fmt)

    loops = list(r["loops"])
    size = f"{r['base_params'] / 1e9:.2f}B" if r["base_params"] >= 1e8 else f"{r['base_params'] / 1e6:.1f}M"
    head = (f"bench train: {r['shape']} shape ({size} params, random weights), "
            f"LoRA r={r['rank']} on all linear layers, {r['dtype']}, {r['device']}, "
            f"batch {r['batch_size']} x {r['seq_len']}, {r['steps']} timed steps")
    rows = [("tokens/s (real tokens)", "tokens_per_s", ",.0f"), ("tokens/s (incl. padding)", "slots_per_s", ",.0f"),
            ("step time (ms)", "step_ms", ".1f"), ("peak memory, measured (GiB)", "peak_gib", ".2f"),
            ("peak memory, planner (GiB)", "planner_allocated_gib", ".2f"), ("MFU (4·N FLOPs/token)", "mfu", ".1%"),
            ("attention", "attn", "s")]
    names = {"plain": "plain transformers+peft", "ours": "ours (fast path)"}
    lines = [head, "", f"{'':<30}" + "".join(f"{names[x]:>26}" for x in loops)]
    for label, key, fmt in rows:
        lines.append(f"{label:<30}" + "".join(f"{cell(x, key, fmt):>26}" for x in loops))
    if "speedup" in r:
        lines.append(f"\nours / plain: {r['speedup']:.2f}x real tokens/s")
    if "goal_met" in r:
        lines.append(f"goal (design.md §5): >= {GOAL_TOKENS_PER_S:,} tokens/s on an H100: "
                     f"{'met' if r['goal_met'] else 'not met'}")
    if r["peak_tflops"] is None:
        lines.append("MFU: n/a (pass --peak-tflops for this device)")
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m eval.bench_train`: runs where only torch/transformers/peft are installed
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
