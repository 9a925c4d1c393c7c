"""``train()``: a prepared dataset and a base model in, a peft LoRA adapter folder out.

Reads top to bottom: the accelerator → the data (selected, templated, encoded) → the model with
LoRA layers → the step plan (which packed rows every optimiser step sees) → resume → the loop
(micro-batches, gradient accumulation, clipping, eval, checkpoints) → the adapter, saved
atomically beside ``training_config.json`` and ``trainer_state.json``.

The output folder::

    OUTPUT/adapter_config.json, adapter_model.safetensors   the adapter (peft; vLLM loads it)
    OUTPUT/training_config.json      hyperparameters, data stats, versions, base model
    OUTPUT/trainer_state.json        losses, eval losses, tokens/s, steps
    OUTPUT/checkpoints/step-NNNNNNNN/   the last few checkpoints: adapter, optimizer, scheduler, RNG

Every step's data is a pure function of (seed, step): epoch e's sample order is a permutation
seeded with seed + e, packed deterministically. A checkpoint therefore needs only the step
number to resume the data exactly; with the optimizer, scheduler and RNG states restored the
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import json
import math
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.trainer.config import TrainConfig
from training.trainer.data import DataError, Example, collate, encode_split, load_dataset, pack

CONFIG_FILE = "training_config.json"
STATE_FILE = "trainer_state.json"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainOutcome:
    out_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)           # per optimiser step (this run's steps)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0                                             # tokens processed, padding excluded
    seconds: float = 0.0
    resumed_from: int | None = None
    main_process: bool = True                                   # False on the other processes of a launch

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class StepPlan:
    """Which rows each optimiser step sees, for one process: ``steps[s]`` is a list of
    micro-batches, each a list of rows, each a list of example indices."""

    def __init__(self, examples: list[Example], config: TrainConfig, rank: int = 0, world: int = 1) -> None:
        import torch

        lengths = [len(e) for e in examples]
        per_step = config.batch_size * config.grad_accum * world
        self.steps: list[list[list[list[int]]]] = []
        self.epoch_of: list[float] = []
        epoch = 0
        while True:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
            rows = pack(lengths, order, config.max_seq_len, config.packing)
            rows += rows[: (-len(rows)) % world]  # every process gets rows in the last step
            n_steps = math.ceil(len(rows) / per_step)
            if config.max_steps is None:
                left = config.epochs - epoch
                if left <= 0:
                    break
                if left < 1:
                    n_steps = max(1, round(n_steps * left))
            for s in range(n_steps):
                chunk = rows[s * per_step:(s + 1) * per_step]
                mine = chunk[rank::world]
                self.steps.append([mine[i:i + config.batch_size] for i in range(0, len(mine), config.batch_size)])
                self.epoch_of.append(epoch + (s + 1) / n_steps)
                if config.max_steps is not None and len(self.steps) == config.max_steps:
                    return
            epoch += 1

    def __len__(self) -> int:
        return len(self.steps)


def lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_scheduler == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(data: str | Path, base_model: str, specialist: str, output: str | Path, config: TrainConfig | None = None,
          *, all_specialists: bool = False, val_path: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, on_step: Callable[[int, float], None] | None = None) -> TrainOutcome:
    """Train the adapter ``specialist`` on ``data`` over ``base_model``; write it to ``output``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from transformers import AutoTokenizer

    cfg = config or TrainConfig()
    out = Path(output)

    # 1. the accelerator: one process here, or one per GPU under `accelerate launch`.
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU")
    on_cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and not on_cpu)
    # step_scheduler_with_optimizer=False: our schedule counts optimiser steps of the whole run
    # (StepPlan already divides the data among processes); by default accelerate would step it
    # once per process per optimiser step, and with N processes the learning rate would reach its
    # end after 1/N of the run (seen with 2 processes: the last half trained at lr 0).
    acc = Accelerator(cpu=on_cpu, mixed_precision="bf16" if bf16 and not on_cpu else "no",
                      step_scheduler_with_optimizer=False)
    main = acc.is_main_process
    fsdp = acc.distributed_type == DistributedType.FSDP
    say = _reporter(main and not cfg.quiet)
    set_seed(cfg.seed)
    if cfg.gradient_checkpointing is None:
        checkpointing, why = _auto_checkpointing(cfg, base_model, acc, fsdp)
        cfg = dataclasses.replace(cfg, gradient_checkpointing=checkpointing)
        say(why)

    # 2. the data: select the specialist's records, lay them out, label only the replies.
    dataset = load_dataset(data, specialist, all_specialists=all_specialists, val_path=val_path)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encode_split(tokenizer, dataset.train, cfg.template, cfg.max_seq_len)
    encode_split(tokenizer, dataset.val, cfg.template, cfg.max_seq_len)
    if not dataset.train.examples:
        raise DataError(f"{data}: none of the {len(dataset.train.records)} {specialist} records has a reply "
                        f"token within max_seq_len={cfg.max_seq_len}")
    stats = {"train": dataset.train.stats(), "val": dataset.val.stats()}
    for name, split in (("train", dataset.train), ("val", dataset.val)):
        if split.dropped:
            say(f"warning: {len(split.dropped)} {name} samples have no reply token within max_seq_len "
                f"{cfg.max_seq_len} and are skipped (first: {split.dropped[0]})")
        if split.truncated:
            say(f"note: {split.truncated} {name} samples are longer than max_seq_len {cfg.max_seq_len} and were cut")

    # 3. the model: frozen base (bf16 on GPU, fp32 on CPU), float32 LoRA layers.
    dtype = torch.bfloat16 if bf16 else torch.float32
    attn = _pick_attention(cfg, on_cuda=acc.device.type == "cuda")
    from training.trainer.model import load_model, make_loss_model

    peft_model = load_model(base_model, cfg, dtype=dtype, device=acc.device, attn=attn,
                            device_map={"": acc.local_process_index} if not fsdp else None)
    peft_model.peft_config["default"].base_model_name_or_path = _base_ref(base_model)
    if not (fsdp or cfg.load_in_4bit):
        peft_model.to(acc.device)
    loss_model = make_loss_model(peft_model, cfg.loss_chunk_tokens)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in peft_model.parameters())

    # 4. the plan, the optimiser and the schedule.
    plan = StepPlan(dataset.train.examples, cfg, acc.process_index, acc.num_processes)
    total_steps = len(plan)
    optimizer = _optimizer(cfg, params, acc.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    loss_model, optimizer, scheduler = acc.prepare(loss_model, optimizer, scheduler)

    def unwrapped():
        return acc.unwrap_model(loss_model).peft_model

    record = {"specialist": specialist, "all_specialists": all_specialists, "base_model": _base_ref(base_model),
              "data": str(data), "data_sha256": dataset.fingerprint(), "hyperparameters": cfg.to_dict(),
              "data_stats": stats, "total_steps": total_steps, "processes": acc.num_processes,
              "attn_implementation": attn, "dtype": str(dtype).removeprefix("torch."),
              "trainable_params": n_trainable, "total_params": n_total, "versions": _versions()}

    # 5. resume: the last complete checkpoint in the output folder.
    start, history = 0, {"log_history": [], "eval_history": []}
    resumed_from = None
    if not resume and last_checkpoint(out) is not None:
        if not overwrite:
            raise ValueError(f"{out / CHECKPOINTS} holds checkpoints of an earlier run: pass --resume to continue "
                             "it, --overwrite to start again, or choose another --output")
        acc.wait_for_everyone()
        if main:
            shutil.rmtree(out / CHECKPOINTS)
    if resume:
        ck = last_checkpoint(out)
        if ck is None:
            say(f"--resume: no checkpoint in {out / CHECKPOINTS}; starting from step 0")
        else:
            start, history = _load_checkpoint(ck, acc, loss_model, unwrapped(), optimizer, scheduler, record, fsdp)
            resumed_from = start
            say(f"resumed from {ck} (step {start} of {total_steps})")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / CHECKPOINTS).glob(".tmp-*") if (out / CHECKPOINTS).is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
    say(f"training {specialist}: {stats['train']['samples']} samples ({stats['train']['tokens']} tokens), "
        f"{stats['val']['samples']} val, {total_steps} steps, {n_trainable:,} trainable params, {attn}, "
        f"{record['dtype']}, {acc.device}")

    # 6. the loop.
    def evaluate() -> float | None:
        if not dataset.val.examples:
            return None
        loss_model.eval()
        vplan = pack([len(e) for e in dataset.val.examples], list(range(len(dataset.val.examples))),
                     cfg.max_seq_len, cfg.packing)[acc.process_index::acc.num_processes]
        total = torch.zeros(2, device=acc.device, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, len(vplan), cfg.batch_size):
                batch = _batch(vplan[i:i + cfg.batch_size], dataset.val.examples, pad_id, attn, acc.device)
                s, n = loss_model(**batch)
                total += torch.tensor([float(s), n], device=acc.device, dtype=torch.float64)
        total = acc.reduce(total, reduction="sum")
        loss_model.train()
        return float(total[0] / total[1]) if total[1] > 0 else None

    outcome = TrainOutcome(out_dir=out, steps=total_steps, resumed_from=resumed_from, main_process=main)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start, desc=f"train {specialist}", unit="step",
               disable=cfg.quiet or not main or not sys.stderr.isatty())
    loss_model.train()
    started = time.perf_counter()
    examples = dataset.train.examples
    for step in range(start, total_steps):
        micro = plan.steps[step]
        batches = [_batch(rows, examples, pad_id, attn, acc.device) for rows in micro]
        step_targets = sum(int((b["targets"] != -100).sum()) for b in batches)
        step_tokens = sum(len(examples[i]) for rows in micro for row in rows for i in row)
        # The loss is the mean over every reply token of the step, on all processes: DDP and FSDP
        # average the gradients over the processes, so each scales its sum by N / (all targets).
        all_targets = step_targets
        if acc.num_processes > 1:
            all_targets = int(acc.reduce(torch.tensor(step_targets, device=acc.device), reduction="sum"))
        scale = acc.num_processes / max(1, all_targets)
        loss_sum = 0.0
        for k, batch in enumerate(batches):
            last = k == len(batches) - 1
            with (acc.no_sync(loss_model) if not last else _nullcontext()):
                s, _ = loss_model(**batch)
                acc.backward(s * scale)
            loss_sum += float(s.detach())
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(loss_model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        sums = acc.reduce(torch.tensor([loss_sum, step_targets, step_tokens], device=acc.device,
                                       dtype=torch.float64), reduction="sum")
        loss = float(sums[0] / max(1.0, float(sums[1])))
        outcome.losses.append(loss)
        outcome.tokens += int(sums[2])
        elapsed = time.perf_counter() - started
        tps = outcome.tokens / elapsed if elapsed > 0 else 0.0
        done = step + 1
        entry = {"step": done, "epoch": round(plan.epoch_of[step], 4), "loss": round(loss, 6),
                 "lr": scheduler.get_last_lr()[0], "tokens_per_second": round(tps, 1)}
        history["log_history"].append(entry)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
        if bar.disable and (done % cfg.log_steps == 0 or done == total_steps):
            say(f"step {done}/{total_steps} loss {loss:.4f} lr {entry['lr']:.2e} {tps:,.0f} tokens/s")
        if cfg.eval_steps and done % cfg.eval_steps == 0 and done < total_steps:
            ev = evaluate()
            if ev is not None:
                history["eval_history"].append({"step": done, "eval_loss": round(ev, 6)})
                outcome.eval_losses.append((done, ev))
                say(f"step {done}: eval loss {ev:.4f}")
        if cfg.save_steps and done % cfg.save_steps == 0 and done < total_steps:
            _save_checkpoint(out, done, acc, loss_model, unwrapped(), optimizer, scheduler, record, history, cfg, fsdp)
        if on_step is not None:
            on_step(done, loss)
    bar.close()
    outcome.seconds = time.perf_counter() - started

    # 7. the end: a last eval, then the adapter and its records, each file written atomically.
    ev = evaluate()
    if ev is not None:
        history["eval_history"].append({"step": total_steps, "eval_loss": round(ev, 6)})
        outcome.eval_losses.append((total_steps, ev))
        say(f"final eval loss {ev:.4f}")
    metrics = {"final_loss": outcome.losses[-1] if outcome.losses else None, "final_eval_loss": ev,
               "train_seconds": round(outcome.seconds, 2), "train_tokens": outcome.tokens,
               "tokens_per_second": round(outcome.tokens_per_second, 1), "resumed_from_step": resumed_from}
    state = {"global_step": total_steps, **history, "metrics": metrics}
    _save_adapter(out, acc, loss_model, unwrapped(), record, state, fsdp)
    say(f"adapter {specialist} written to {out}")
    acc.wait_for_everyone()
    acc.end_training()
    return outcome


# -- helpers ----------------------------------------------------------------------------------


def _auto_checkpointing(cfg: TrainConfig, base_model: str, acc, fsdp: bool) -> tuple[bool, str]:
    """``gradient_checkpointing = None``: ask the planner whether this run fits this GPU without it."""
    import torch

    if acc.device.type != "cuda":
        return False, "gradient checkpointing off (auto: not on a GPU)"
    from training.planner import GIB, auto_checkpointing, plan_input, shape_from_config

    try:
        shape = shape_from_config(base_model)
    except (OSError, ValueError, KeyError) as exc:
        return False, f"gradient checkpointing off (auto: the planner cannot read {base_model}'s shape: {exc})"
    memory = torch.cuda.get_device_properties(acc.device).total_memory / GIB
    plan = plan_input(shape, cfg, num_gpus=acc.num_processes if fsdp else 1)
    return auto_checkpointing(plan, memory)


def _pick_attention(cfg: TrainConfig, on_cuda: bool) -> str:
    from training.trainer.model import pick_attention

    return pick_attention(cfg, on_cuda)


def _batch(rows: list[list[int]], examples: list[Example], pad_id: int, attn: str, device,
           flatten: bool | None = None) -> dict[str, Any]:
    """A micro-batch's tensors. For flash-attention (``flatten``) the rows are laid end to end in
    one sequence without padding (transformers' varlen path wants batch size 1) and the sample
    boundaries also go in as cu_seq_lens, which spares a device sync per layer."""
    import torch

    seqs = [[examples[i] for i in row] for row in rows]
    if not (attn == "flash_attention_2" if flatten is None else flatten):
        ids, pos, tgt = collate(seqs, pad_id)
        return {"input_ids": ids.to(device), "position_ids": pos.to(device), "targets": tgt.to(device)}
    flat = [e for row in seqs for e in row]
    ids, pos, tgt = collate([flat], pad_id)
    lens = torch.tensor([0] + [len(e) for e in flat]).cumsum(0).to(torch.int32)
    longest = max(len(e) for e in flat)
    return {"input_ids": ids.to(device), "position_ids": pos.to(device), "targets": tgt.to(device),
            "cu_seq_lens_q": lens.to(device), "cu_seq_lens_k": lens.to(device),
            "max_length_q": longest, "max_length_k": longest}


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _optimizer(cfg: TrainConfig, params, on_cuda: bool):
    import torch

    kwargs = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay, "betas": (cfg.adam_beta1, cfg.adam_beta2)}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ValueError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, fused=on_cuda, **kwargs)


def _base_ref(base_model: str) -> str:
    p = Path(base_model).expanduser()
    return str(p.resolve()) if p.is_dir() else base_model


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "oracle-council"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _reporter(on: bool):
    if on:
        return lambda message: print(message, file=sys.stderr, flush=True)
    return lambda message: None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trainable(peft_model) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def last_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``out/checkpoints`` (temp folders are ignored)."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _save_checkpoint(out: Path, step: int, acc, loss_model, peft_model, optimizer, scheduler,
                     record: dict, history: dict, cfg: TrainConfig, fsdp: bool) -> None:
    """checkpoints/.tmp-step-N is filled, then renamed to checkpoints/step-N: complete or absent."""
    import torch

    folder = out / CHECKPOINTS
    tmp, final = folder / f".tmp-step-{step:08d}", folder / f"step-{step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if fsdp:
        acc.save_state(str(tmp / "accelerate"))
    else:
        torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        if not fsdp:
            peft_model.save_pretrained(tmp)
            torch.save({"trainable": _trainable(peft_model), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()}, tmp / "state.pt")
        _write_json(tmp / CONFIG_FILE, record)
        _write_json(tmp / STATE_FILE, {"global_step": step, **history})
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        kept = sorted(p for p in folder.glob("step-*"))
        for old in kept[:-cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_checkpoint(ck: Path, acc, loss_model, peft_model, optimizer, scheduler, record: dict,
                     fsdp: bool) -> tuple[int, dict]:
    import torch

    saved = json.loads((ck / CONFIG_FILE).read_text("utf-8"))
    then, now = TrainConfig.from_dict(saved["hyperparameters"]), TrainConfig.from_dict(record["hyperparameters"])
    changed = then.differences(now)
    problems = [f"{k}: {saved['hyperparameters'][k]!r} -> {record['hyperparameters'][k]!r}" for k in changed]
    if saved.get("data_sha256") != record["data_sha256"]:
        problems.append("the selected training data changed")
    if saved.get("base_model") != record["base_model"]:
        problems.append(f"base_model: {saved.get('base_model')!r} -> {record['base_model']!r}")
    if saved.get("processes") != record["processes"]:
        problems.append(f"processes: {saved.get('processes')} -> {record['processes']}")
    if problems:
        raise ValueError(f"cannot resume from {ck}: the run differs from the one that wrote it ("
                         + "; ".join(problems) + "); use a new --output or the same settings")
    state = json.loads((ck / STATE_FILE).read_text("utf-8"))
    if fsdp:
        acc.load_state(str(ck / "accelerate"))
    else:
        blob = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in blob["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        rng = ck / f"rng-{acc.process_index}.pt"
        _set_rng_state(torch.load(rng, weights_only=False))
    history = {"log_history": state.get("log_history", []), "eval_history": state.get("eval_history", [])}
    return int(state["global_step"]), history


def _save_adapter(out: Path, acc, loss_model, peft_model, record: dict, state: dict, fsdp: bool) -> None:
    """The adapter files land in ``out`` by rename, each complete or absent."""
    state_dict = None
    if fsdp:
        full = acc.get_state_dict(loss_model)
        state_dict = {k.removeprefix("peft_model."): v for k, v in full.items()}
    if not acc.is_main_process:
        return
    tmp = out / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if state_dict is not None:
            from peft import get_peft_model_state_dict

            peft_model.save_pretrained(tmp, state_dict=get_peft_model_state_dict(peft_model, state_dict=state_dict))
        else:
            peft_model.save_pretrained(tmp)
        _write_json(tmp / CONFIG_FILE, record)
        _write_json(tmp / STATE_FILE, state)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
