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


@pytest.mark.parametrize("name, kind", [("accelerate-ddp.yaml", DistributedType.MULTI_GPU),
                                        ("master-sword-fsdp.yaml", DistributedType.FSDP)])
def test_shipped_configs_parse(name: str, kind: DistributedType) -> None:
    config = load_config_from_file(str(CONFIGS / name))
    assert config.distributed_type == kind and config.mixed_precision == "bf16" and not config.use_cpu
    if kind == DistributedType.FSDP:
        fsdp = config.fsdp_config
        assert fsdp["fsdp_use_orig_params"] is True  # frozen and trainable weights share flat parameters
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
