"""The full LoRA trainer behind ``oracle-council train`` (see ``loop.train``).

``training.lora`` is the minimal trainer the offline demo uses; this one adds the users' recipe
as defaults, prepared datasets, the Alpaca template, packing, gradient accumulation, eval,
checkpoints with exact resume, accelerate (DDP/FSDP) and the fast GPU path.
"""

from training.trainer.config import ALL_LINEAR, TrainConfig
from training.trainer.data import IGNORE_INDEX, DataError, load_dataset
from training.trainer.loop import CONFIG_FILE, STATE_FILE, StepPlan, TrainOutcome, last_checkpoint, train

__all__ = [
           "ALL_LINEAR",
           "CONFIG_FILE",
           "IGNORE_INDEX",
           "STATE_FILE",
           "DataError",
           "StepPlan",
           "TrainConfig",
           "TrainOutcome",
           "last_checkpoint",
           "load_dataset",
           "train",
]
