"""The trainer under ``accelerate launch`` (one CPU process here; DDP/FSDP on GPUs), and the
shipped accelerate configs parse as accelerate reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from tests import tiny_lm
from tests.serving import free_port

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_trainer_runs_under_accelerate_launch(tiny_base: Path, tmp_path: Path) -> None:
    config = tmp_path / "cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\n"
                      "num_processes: 1\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n")
    data = tmp_path / "asm.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in tiny_lm.ASM_SAMPLES))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "gateway.cli",
           "train", "--data", str(data), "--base-model", str(tiny_base), "--specialist", "euclid-asm",
           "--output", str(tmp_path / "out"), "--max-steps", "6", "--batch-size", "2", "--grad-accum", "2",
           "--max-seq-len", "128", "--lr", "5e-3", "--warmup-steps", "0", "--save-steps", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out" / "euclid-asm"
    record = json.loads((out / "training_config.json").read_text())
    assert record["processes"] == 1
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (out / "adapter_model.safetensors").is_file() and (out / "checkpoints" / "step-00000003").is_dir()


def test_two_processes_train_as_one_with_twice_the_accumulation(tiny_base: Path, tmp_path: Path) -> None:
    """Data parallel for real: two CPU processes (torchrun, gloo) each take half of every step's
    rows, and the gradients are averaged. With dropout off and no packing, the adapter is the one
    a single process makes with twice the accumulation: the same rows per step, the loss a mean
    over all of their reply tokens, the same learning-rate schedule."""
    import torch
    from safetensors.torch import load_file

    from training.trainer import TrainConfig, train

    data = tmp_path / "asm.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in tiny_lm.ASM_SAMPLES))
    common = ["--data", str(data), "--base-model", str(tiny_base), "--specialist", "euclid-asm", "--max-steps", "4",
              "--batch-size", "2", "--max-seq-len", "128", "--lr", "5e-3", "--warmup-steps", "0", "--dropout", "0",
              "--no-packing", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "gateway.cli", "train", *common, "--grad-accum", "2", "--save-steps", "2",
           "--output", str(tmp_path / "two")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    one = train(data, str(tiny_base), "euclid-asm", tmp_path / "one" / "euclid-asm",
                TrainConfig(max_steps=4, batch_size=2, grad_accum=4, max_seq_len=128, learning_rate=5e-3,
                            warmup_steps=0, dropout=0.0, packing=False, device="cpu", save_steps=0, quiet=True))
    two = tmp_path / "two" / "euclid-asm"
    record = json.loads((two / "training_config.json").read_text())
    assert record["processes"] == 2
    losses = [e["loss"] for e in json.loads((two / "trainer_state.json").read_text())["log_history"]]
    assert losses == pytest.approx(one.losses, rel=1e-5)
    assert len(set(losses)) == 4  # every step trained (the learning rate did not run out half-way)
    a, b = load_file(two / "adapter_model.safetensors"), load_file(one.out_dir / "adapter_model.safetensors")
    # Adam turns rounding in a near-zero gradient into a whole lr-sized step, so compare the
    # weights as a whole, not element by element
    diff = sum(float((a[k] - b[k]).norm() ** 2) for k in a) ** 0.5
    norm = sum(float(b[k].norm() ** 2) for k in b) ** 0.5
    assert diff < 1e-3 * norm, (diff, norm)
    assert (two / "checkpoints" / "step-00000002").is_dir()


def test_two_processes_resume_exactly(tiny_base: Path, tmp_path: Path) -> None:
    """A two-process run resumed from its step-2 checkpoint (under two processes again) ends with
    the uninterrupted run's weights bit for bit: each process's data order, dropout RNG, optimiser
    and schedule state come back."""
    import shutil

    from safetensors.torch import load_file

    data = tmp_path / "asm.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in tiny_lm.ASM_SAMPLES))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    def launch(output: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "gateway.cli", "train", "--data", str(data), "--base-model", str(tiny_base),
               "--specialist", "euclid-asm", "--max-steps", "5", "--batch-size", "1", "--grad-accum", "2",
               "--max-seq-len", "128", "--lr", "5e-3", "--warmup-steps", "1", "--save-steps", "2",
               "--dropout", "0.1", "--device", "cpu", "--quiet", "--output", str(output), *extra]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(tmp_path / "whole")
    whole = tmp_path / "whole" / "euclid-asm"
    cut = tmp_path / "cut" / "euclid-asm"
    shutil.copytree(whole / "checkpoints" / "step-00000002", cut / "checkpoints" / "step-00000002")
    launch(tmp_path / "cut", "--resume")
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(cut / "adapter_model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
    history = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (whole, cut)]
    assert [e["loss"] for e in history[0]] == [e["loss"] for e in history[1]] and len(history[0]) == 5


@pytest.mark.parametrize("name, kind", [("accelerate-ddp.yaml", DistributedType.MULTI_GPU),
                                        ("master-sword-fsdp.yaml", DistributedType.FSDP)])
def test_shipped_configs_parse(name: str, kind: DistributedType) -> None:
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind and config.mixed_precision == "bf16" and not config.use_cpu
    if kind == DistributedType.FSDP:
        fsdp = config.fsdp_config
        assert fsdp["fsdp_use_orig_params"] is True  # frozen and trainable weights share flat parameters
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
