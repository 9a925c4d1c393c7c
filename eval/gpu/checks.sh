#!/usr/bin/env bash
# The GPU checks, as one bounded script for a lent GPU machine (no network; torch, transformers
# and peft preinstalled; the project's other dependencies may be missing, so nothing here goes
# through the `oracle-council` console script). Results land in $OUT (default ./gpu-results):
#
#   bash eval/gpu/checks.sh            # about 6-10 minutes on an H100
#
# 1. the training benchmark (design.md §5: >= 55k tokens/s on the 1.5B shape), our trainer's fast
#    path beside the plain transformers + peft loop, with the VRAM planner's estimate beside the
#    measured peak;
# 2. the same with torch.compile;
# 3. generation with LoRA adapters (design.md §5: a mixed-adapter batch <= 1.3x one adapter) on
#    the 1.5B shape: our batching engine beside peft's mixed-batch generate;
# 4. the GPU-only tests (bf16 trainer paths, the local backend on CUDA), when pytest is there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python - <<'PY' 2>&1 | tee "$OUT/device.txt"
import torch, transformers, peft
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "peft", peft.__version__)
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
try:
    import flash_attn; print("flash_attn", flash_attn.__version__)
except ImportError:
    print("flash_attn: not installed (sdpa with a block-diagonal mask)")
PY
timeout 300 python -m eval.bench_train --json "$OUT/bench-train.json" 2>&1 | tee "$OUT/bench-train.txt"
timeout 240 python -m eval.bench_train --loops ours --compile --json "$OUT/bench-train-compile.json" 2>&1 \
    | tee "$OUT/bench-train-compile.txt"
timeout 240 python -m eval.bench_generate --shape qwen1.5b --new-tokens 128 --json "$OUT/bench-generate.json" 2>&1 \
    | tee "$OUT/bench-generate.txt"
if python -c "import pytest" 2>/dev/null; then
    timeout 300 python -m pytest -q -m gpu -p no:cacheprovider tests/training tests/backends 2>&1 | tail -30 \
        | tee "$OUT/pytest-gpu.txt"
else
    echo "pytest not installed: GPU tests not run" | tee "$OUT/pytest-gpu.txt"
fi
