"""``oracle-council train``: train a LoRA specialist, or (``--plan``) estimate its GPU memory.

    oracle-council train --data DIR --base-model NAME_OR_DIR --specialist NAME --output DIR [options]
    oracle-council train --plan [--base-model NAME_OR_DIR | --params 1.5B] [--gpu-memory 16] [options]

The adapter lands in ``OUTPUT/<specialist>/`` (peft folder + training_config.json +
trainer_state.json, checkpoints under ``checkpoints/``). Defaults are the users' recipe; see
docs/training.md. The top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.trainer.config import ALL_LINEAR, ATTENTION, TrainConfig

_D = TrainConfig()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("what to train")
    io.add_argument("--data", help="a prepared dataset folder (train.jsonl, val.jsonl) or one JSONL file "
                                   "(generator/Alpaca: instruction, input, output; or ChatML: messages)")
    io.add_argument("--val", help="validation JSONL (default: val.jsonl of a prepared folder; none for a file)")
    io.add_argument("--base-model", help="base model: a Hugging Face name or a local folder")
    io.add_argument("--specialist", help="the adapter's name; selects the records whose specialist is NAME")
    io.add_argument("--all-specialists", action="store_true",
                    help="train on every record (e.g. master-sword); the adapter is still named --specialist")
    io.add_argument("--output", help="folder that receives the adapter folder OUTPUT/<specialist>/")
    io.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT/<specialist>/")
    io.add_argument("--overwrite", action="store_true",
                    help="start again even though OUTPUT/<specialist>/ holds checkpoints of an earlier run")

    lo = parser.add_argument_group("LoRA")
    lo.add_argument("--rank", "-r", type=_positive_int, default=_D.rank, help=f"LoRA rank (default {_D.rank})")
    lo.add_argument("--alpha", type=int, default=_D.alpha, help=f"LoRA alpha (default {_D.alpha})")
    lo.add_argument("--dropout", type=float, default=_D.dropout, help=f"LoRA dropout (default {_D.dropout})")
    lo.add_argument("--target-modules", default=",".join(ALL_LINEAR),
                    help="comma-separated linear layers to adapt (default: all seven)")

    da = parser.add_argument_group("data layout")
    da.add_argument("--template", choices=["chatml", "alpaca"], default=_D.template,
                    help="chatml: the base model's chat template (default); alpaca: ### Instruction/Input/Response")
    da.add_argument("--max-seq-len", type=_positive_int, default=_D.max_seq_len,
                    help=f"tokens per row (default {_D.max_seq_len})")
    da.add_argument("--packing", action=argparse.BooleanOptionalAction, default=_D.packing,
                    help="pack short samples into rows of max-seq-len, attention kept apart (default on)")

    op = parser.add_argument_group("optimisation")
    op.add_argument("--epochs", type=float, default=_D.epochs, help=f"passes over the data (default {_D.epochs:g})")
    op.add_argument("--max-steps", type=_positive_int, help="exactly this many optimiser steps (smoke runs)")
    op.add_argument("--batch-size", type=_positive_int, default=_D.batch_size,
                    help=f"rows per micro-batch per process (default {_D.batch_size})")
    op.add_argument("--grad-accum", type=_positive_int, default=_D.grad_accum,
                    help=f"micro-batches per optimiser step (default {_D.grad_accum})")
    op.add_argument("--lr", type=float, default=_D.learning_rate, help=f"peak learning rate (default {_D.learning_rate:g})")
    op.add_argument("--weight-decay", type=float, default=_D.weight_decay, help="AdamW weight decay (default 0)")
    op.add_argument("--warmup-steps", type=int, default=_D.warmup_steps,
                    help=f"linear warm-up steps (default {_D.warmup_steps})")
    op.add_argument("--lr-scheduler", choices=["cosine", "constant"], default=_D.lr_scheduler,
                    help="after warm-up (default cosine)")
    op.add_argument("--min-lr-ratio", type=float, default=_D.min_lr_ratio,
                    help="cosine floor as a fraction of the peak (default 0)")
    op.add_argument("--max-grad-norm", type=float, default=_D.max_grad_norm, help="clip (default 1.0; 0 = off)")
    op.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default=_D.optimizer,
                    help="adamw (fp32 states, fused on CUDA; default) or adamw8bit (bitsandbytes)")
    op.add_argument("--seed", type=int, default=_D.seed, help=f"seed (default {_D.seed})")

    ev = parser.add_argument_group("eval, checkpoints, logs")
    ev.add_argument("--eval-steps", type=int, default=_D.eval_steps,
                    help=f"eval loss on val every N steps, and at the end (default {_D.eval_steps}; 0: end only)")
    ev.add_argument("--save-steps", type=int, default=_D.save_steps,
                    help=f"checkpoint every N steps (default {_D.save_steps}; 0: never)")
    ev.add_argument("--save-total-limit", type=_positive_int, default=_D.save_total_limit,
                    help=f"checkpoints kept (default {_D.save_total_limit})")
    ev.add_argument("--log-steps", type=_positive_int, default=_D.log_steps,
                    help="a log line every N steps when there is no progress bar (default 10)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar or log lines")

    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", choices=["auto", "cpu", "cuda"], default=_D.device, help="default: cuda if available")
    hw.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=_D.precision,
                    help="auto: bf16 on GPU, fp32 on CPU")
    hw.add_argument("--load-in-4bit", action="store_true", help="NF4 base weights (QLoRA; CUDA + bitsandbytes)")
    hw.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                    default=_D.gradient_checkpointing,
                    help="recompute activations in backward (less memory, ~30%% slower); default: on when the "
                         "planner says the run needs it on this GPU, never on CPU")
    hw.add_argument("--attn-implementation", choices=list(ATTENTION), default=_D.attn_implementation,
                    help="auto: flash_attention_2 when installed on CUDA, else sdpa")
    hw.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    hw.add_argument("--loss-chunk-tokens", type=_positive_int, default=_D.loss_chunk_tokens,
                    help="positions per chunk of the chunked cross-entropy (default 512)")

    pl = parser.add_argument_group("--plan: estimate GPU memory instead of training")
    pl.add_argument("--plan", action="store_true", help="print the memory estimate and whether it fits")
    pl.add_argument("--params", help="base size when there is no --base-model config, e.g. 1.5B, 7B, 32B "
                                     "(the Qwen2.5 shape of that size is assumed)")
    pl.add_argument("--gpu-memory", type=float, default=16.0,
                    help="the card's memory in GiB (default 16: RTX 5060 Ti; H100: 80)")
    pl.add_argument("--optimizer-bits", choices=["32", "8"], help="plan only: override --optimizer (32 or 8)")
    pl.add_argument("--num-gpus", type=_positive_int, default=1,
                    help="plan only: GPUs that FSDP shards the weights and LoRA states over (default 1)")
    pl.add_argument("--plan-loop", choices=["ours", "plain"], default="ours",
                    help="plan only: our trainer (default) or a plain transformers+peft loop (full logits, padding)")
    pl.add_argument("--json", action="store_true", help="plan only: print the estimate as JSON")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    modules = tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
    return TrainConfig(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=modules, template=args.template,
        max_seq_len=args.max_seq_len, packing=args.packing, learning_rate=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, warmup_steps=args.warmup_steps, lr_scheduler=args.lr_scheduler,
        min_lr_ratio=args.min_lr_ratio, max_grad_norm=args.max_grad_norm, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        eval_steps=args.eval_steps, save_steps=args.save_steps, save_total_limit=args.save_total_limit,
        log_steps=args.log_steps, device=args.device, precision=args.precision, load_in_4bit=args.load_in_4bit,
        gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn_implementation,
        compile=args.compile, loss_chunk_tokens=args.loss_chunk_tokens, seed=args.seed, quiet=args.quiet)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"oracle-council train: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        from training.planner import run_plan

        return run_plan(args, config)
    missing = [f"--{n.replace('_', '-')}" for n in ("data", "base_model", "specialist", "output") if not getattr(args, n)]
    if missing:
        print(f"oracle-council train: missing {', '.join(missing)} (or use --plan)", file=sys.stderr)
        return 2
    if not args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our bar only
    from training.trainer import DataError, train

    out = Path(args.output) / args.specialist
    try:
        outcome = train(args.data, args.base_model, args.specialist, out, config,
                        all_specialists=args.all_specialists, val_path=args.val, resume=args.resume,
                        overwrite=args.overwrite)
    except (DataError, ValueError, OSError) as exc:
        print(f"oracle-council train: {exc}", file=sys.stderr)
        return 1
    if not args.quiet and outcome.main_process:
        last = f"{outcome.losses[-1]:.4f}" if outcome.losses else "n/a"
        ev = f", eval loss {outcome.eval_losses[-1][1]:.4f}" if outcome.eval_losses else ""
        print(f"{out}: {outcome.steps} steps, final loss {last}{ev}, {outcome.tokens_per_second:,.0f} tokens/s")
    return 0
