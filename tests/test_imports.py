"""Importing the gateway must stay cheap: no torch, sentence-transformers or litellm."""

import subprocess
import sys


def test_gateway_import_is_free_of_heavy_libraries():
    code = ("import sys, gateway, gateway.app, gateway.cli, gateway.backends.openai, gateway.backends.ollama; "
            "from gateway.app import create_app; from gateway.config import load_config; "
            "create_app(load_config(None)); "
            "heavy = [m for m in ('torch', 'sentence_transformers', 'litellm', 'transformers', 'peft') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"
